package repo

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/ferrydr/ferry/transport/crypt"
)

// OpenIndexObject authenticates and parses the bytes of index object id
// (the name without "index/"), as read from one target. It checks the bytes
// against their name, so a caller can tell which target's copy is bad.
func (r *Repo) OpenIndexObject(id string, b []byte) (*IndexBatch, error) {
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != id {
		return nil, fmt.Errorf("index object %s: content does not match its name", id)
	}
	batch, err := r.openIndex(b)
	if err != nil {
		return nil, fmt.Errorf("index object %s: %w", id, err)
	}
	return batch, nil
}

// OpenSnapshot authenticates and parses the bytes of snapshot manifest id
// (the name without "snapshots/"), as read from one target.
func (r *Repo) OpenSnapshot(id string, b []byte) (*Snapshot, error) {
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != id {
		return nil, fmt.Errorf("snapshot %s: content does not match its name", id)
	}
	plain, err := r.key.Open(nil, b, manifestAD)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	m, err := ParseManifest(plain)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	return &Snapshot{ID: id, Manifest: m}, nil
}

// CheckConfig checks the config object as read from target t (0-based):
// it must open with the master key and describe this repository, with t's
// position.
func (r *Repo) CheckConfig(t int, b []byte) error {
	c, err := openConfig(r.key, b)
	if err != nil {
		return fmt.Errorf("config does not open with this repository's key: %w", err)
	}
	want := r.Config
	want.Target = t
	if !c.Created.Equal(want.Created) {
		return fmt.Errorf("config created %s, the repository's %s", c.Created, want.Created)
	}
	c.Created = want.Created
	if c != want {
		return fmt.Errorf("config differs from the repository's (id %s, target %d of %d, scheme %s)", c.ID, c.Target+1, c.Targets, c.Erasure)
	}
	return nil
}

// CheckKeyObject checks a key object as read from one target: its content
// must match its name (keys/<sha256>) and, given the password, it must
// open with it to this repository's master key. A key object of another
// password gives crypt.ErrWrongPassword.
func (r *Repo) CheckKeyObject(id string, b []byte, password []byte) error {
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != id {
		return fmt.Errorf("key object %s: content does not match its name", id)
	}
	if password == nil {
		return nil
	}
	k, err := crypt.Unwrap(b, password)
	if err != nil {
		return fmt.Errorf("key object %s: %w", id, err)
	}
	// Same master key: the same chunk ID key, and what one seals the other opens.
	probe := []byte("ferry key check")
	if !bytes.Equal(k.IDKey(), r.key.IDKey()) {
		return fmt.Errorf("key object %s holds another repository's master key", id)
	}
	if _, err := k.Open(nil, r.key.Seal(nil, probe, probe), probe); err != nil {
		return fmt.Errorf("key object %s holds another repository's master key", id)
	}
	return nil
}
