package chunk

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"sync"
)

// ID names a chunk by a keyed hash (HMAC-SHA256 under the repository's ID
// key) of its plaintext: identical data dedupes within one repository, while
// the storage provider cannot confirm guesses about the contents.
type ID [32]byte

// String returns the ID in lower-case hex.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 8 hex digits, for messages.
func (id ID) Short() string { return hex.EncodeToString(id[:4]) }

// ParseID parses a 64-digit hex ID.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*len(id) {
		return id, fmt.Errorf("chunk id %q: want %d hex digits", s, 2*len(id))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("chunk id %q: %w", s, err)
	}
	return id, nil
}

// IDKey computes chunk IDs. It is safe for concurrent use.
type IDKey struct {
	pool sync.Pool
}

// NewIDKey returns an IDKey for the given secret key.
func NewIDKey(key []byte) *IDKey {
	k := append([]byte(nil), key...)
	return &IDKey{pool: sync.Pool{New: func() any { return hmac.New(sha256.New, k) }}}
}

// Sum returns the ID of data.
func (k *IDKey) Sum(data []byte) ID {
	h := k.pool.Get().(hash.Hash)
	h.Reset()
	h.Write(data)
	var id ID
	h.Sum(id[:0])
	k.pool.Put(h)
	return id
}
