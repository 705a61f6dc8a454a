package crypt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/scrypt"
)

// Overhead is the number of bytes Seal adds to a plaintext.
const Overhead = nonceSize + tagSize

const (
	nonceSize = 12
	tagSize   = 16
)

var (
	// ErrAuth means sealed data failed authentication: it was tampered
	// with, truncated, or sealed under another key.
	ErrAuth = errors.New("authentication failed")
	// ErrWrongPassword means no key object opens with the password.
	ErrWrongPassword = errors.New("wrong password")
)

// Key is a repository master key.
type Key struct {
	enc  [32]byte
	id   [32]byte
	aead cipher.AEAD
}

// NewRandomKey returns a fresh master key.
func NewRandomKey() (*Key, error) {
	var raw [64]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, fmt.Errorf("generate master key: %w", err)
	}
	return keyFromBytes(raw[:])
}

func keyFromBytes(raw []byte) (*Key, error) {
	if len(raw) != 64 {
		return nil, fmt.Errorf("master key: want 64 bytes, have %d", len(raw))
	}
	k := &Key{}
	copy(k.enc[:], raw[:32])
	copy(k.id[:], raw[32:])
	a, err := newAEAD(k.enc[:])
	if err != nil {
		return nil, err
	}
	k.aead = a
	return k, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("aes: %w", err)
	}
	return cipher.NewGCM(b)
}

// IDKey returns the secret that keys chunk IDs.
func (k *Key) IDKey() []byte { return k.id[:] }

// Seal encrypts and authenticates plaintext with associated data ad and
// appends the result to dst. It is safe for concurrent use.
func (k *Key) Seal(dst, plaintext, ad []byte) []byte {
	return seal(k.aead, dst, plaintext, ad)
}

// Open authenticates and decrypts sealed, appending the plaintext to dst.
func (k *Key) Open(dst, sealed, ad []byte) ([]byte, error) {
	return open(k.aead, dst, sealed, ad)
}

func seal(a cipher.AEAD, dst, plaintext, ad []byte) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, nonceSize)...)
	if _, err := rand.Read(dst[start:]); err != nil {
		// crypto/rand never fails on Linux; a nonce we cannot draw must
		// not be replaced by a predictable one.
		panic("crypt: read random nonce: " + err.Error())
	}
	return a.Seal(dst, dst[start:start+nonceSize], plaintext, ad)
}

func open(a cipher.AEAD, dst, sealed, ad []byte) ([]byte, error) {
	if len(sealed) < Overhead {
		return nil, fmt.Errorf("sealed data of %d bytes is shorter than %d: %w", len(sealed), Overhead, ErrAuth)
	}
	out, err := a.Open(dst, sealed[:nonceSize], sealed[nonceSize:], ad)
	if err != nil {
		return nil, ErrAuth
	}
	return out, nil
}

// KDFParams are scrypt's cost parameters.
type KDFParams struct{ N, R, P int }

// DefaultKDF costs about 100 ms and 32 MiB per password check.
var DefaultKDF = KDFParams{N: 1 << 15, R: 8, P: 1}

type keyFile struct {
	Version int       `json:"version"`
	KDF     string    `json:"kdf"`
	N       int       `json:"n"`
	R       int       `json:"r"`
	P       int       `json:"p"`
	Salt    []byte    `json:"salt"`
	Data    []byte    `json:"data"`
	Created time.Time `json:"created"`
}

var keyAD = []byte("ferry key v1")

// Wrap returns a key object that holds k sealed under password.
func Wrap(k *Key, password []byte, p KDFParams) ([]byte, error) {
	kf := keyFile{Version: 1, KDF: "scrypt", N: p.N, R: p.R, P: p.P, Salt: make([]byte, 32), Created: time.Now().UTC()}
	if _, err := rand.Read(kf.Salt); err != nil {
		return nil, fmt.Errorf("generate salt: %w", err)
	}
	a, err := deriveAEAD(password, kf)
	if err != nil {
		return nil, err
	}
	raw := append(append([]byte(nil), k.enc[:]...), k.id[:]...)
	kf.Data = seal(a, nil, raw, keyAD)
	return json.Marshal(kf)
}

// Unwrap opens a key object with password. It returns an error wrapping
// ErrWrongPassword when the password does not fit.
func Unwrap(obj, password []byte) (*Key, error) {
	var kf keyFile
	if err := json.Unmarshal(obj, &kf); err != nil {
		return nil, fmt.Errorf("key object: %w", err)
	}
	if kf.Version != 1 || kf.KDF != "scrypt" {
		return nil, fmt.Errorf("key object: unsupported version %d / kdf %q", kf.Version, kf.KDF)
	}
	// Bound the work and memory a hostile key object can make us spend:
	// scrypt needs 128*N*r bytes, so N*r <= 2^21 keeps it under 256 MiB.
	if kf.N < 1024 || kf.N > 1<<20 || kf.N&(kf.N-1) != 0 || kf.R < 1 || kf.R > 32 || kf.P < 1 || kf.P > 16 || kf.N*kf.R > 1<<21 || kf.N*kf.R*kf.P > 1<<22 || len(kf.Salt) < 16 {
		return nil, fmt.Errorf("key object: scrypt parameters out of range (N=%d r=%d p=%d)", kf.N, kf.R, kf.P)
	}
	a, err := deriveAEAD(password, kf)
	if err != nil {
		return nil, err
	}
	raw, err := open(a, nil, kf.Data, keyAD)
	if err != nil {
		return nil, ErrWrongPassword
	}
	return keyFromBytes(raw)
}

func deriveAEAD(password []byte, kf keyFile) (cipher.AEAD, error) {
	dk, err := scrypt.Key(password, kf.Salt, kf.N, kf.R, kf.P, 32)
	if err != nil {
		return nil, fmt.Errorf("derive key: %w", err)
	}
	return newAEAD(dk)
}
