package crypt

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/testenv/alloc"
)

var fastKDF = KDFParams{N: 1024, R: 8, P: 1}

func TestSealOpen(t *testing.T) {
	k, err := NewRandomKey()
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("volume bytes")
	s := k.Seal(nil, msg, []byte("ad"))
	if len(s) != len(msg)+Overhead {
		t.Fatalf("sealed length %d, want %d", len(s), len(msg)+Overhead)
	}
	got, err := k.Open(nil, s, []byte("ad"))
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("open: %q, %v", got, err)
	}
	if _, err := k.Open(nil, s, []byte("other")); !errors.Is(err, ErrAuth) {
		t.Fatalf("wrong ad: %v", err)
	}
	for i := range s {
		bad := append([]byte(nil), s...)
		bad[i] ^= 0x40
		if _, err := k.Open(nil, bad, []byte("ad")); !errors.Is(err, ErrAuth) {
			t.Fatalf("flip byte %d: %v", i, err)
		}
	}
	if _, err := k.Open(nil, s[:10], []byte("ad")); !errors.Is(err, ErrAuth) {
		t.Fatalf("short: %v", err)
	}
}

func TestWrapUnwrap(t *testing.T) {
	k, _ := NewRandomKey()
	obj, err := Wrap(k, []byte("pw"), fastKDF)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(obj, k.enc[:]) || bytes.Contains(obj, []byte("pw\"")) {
		t.Fatal("key object holds a secret in the clear")
	}
	k2, err := Unwrap(obj, []byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	if k2.enc != k.enc || k2.id != k.id {
		t.Fatal("unwrapped key differs")
	}
	if _, err := Unwrap(obj, []byte("nope")); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	for _, bad := range []string{``, `{}`, `{"version":1,"kdf":"scrypt","n":1099511627776,"r":8,"p":1,"salt":"AAAAAAAAAAAAAAAAAAAAAA=="}`, `[`} {
		if _, err := Unwrap([]byte(bad), []byte("pw")); err == nil || errors.Is(err, ErrWrongPassword) {
			t.Fatalf("%q: want a format error, got %v", bad, err)
		}
	}
}

// FuzzUnwrap feeds key objects to Unwrap with the password "pw". Seeds in
// testdata/fuzz/FuzzUnwrap: key objects for "pw" and for another password,
// and near misses (versions, KDFs, scrypt costs, salts, sealed data).
func FuzzUnwrap(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		var err error
		n := alloc.Bytes(func() { _, err = Unwrap(b, []byte("pw")) })
		// A key object is read before anything is authenticated: what it
		// may cost is scrypt's 128·N·r bytes, which Unwrap caps at 256 MiB,
		// and the JSON, whatever its numbers say.
		if limit := uint64(256<<20 + 64*len(b) + 1<<20); n > limit {
			t.Fatalf("Unwrap of %d bytes allocated %d bytes (limit %d): %v", len(b), n, limit, err)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("error is not one line: %q", err)
		}
	})
}
