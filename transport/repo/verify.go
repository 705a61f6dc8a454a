package repo

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
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
