package repo

import (
	"context"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrydr/ferry/chunk"
)

// The segments in the local cache, <IndexCache>/<repository ID>/segments/<id>:
// the plaintext of segments this machine wrote or read. An incremental
// backup reads its parent's extents several times (the checks, the
// read-ahead, the chunking, the reused IDs), each time every segment: for
// a volume of 1 TiB, 250 segments of about 160 KiB. The parent is almost
// always the snapshot this machine wrote last, whose segments SnapshotWriter
// keeps here, so the backup reads them from the local disk instead of the
// targets, and the objects it fetches are in proportion to the change, not
// the volume.
//
// A copy is used only when its keyed hash is the segment's ID, which makes
// it the segment the manifest names, as read from a target. verify never
// uses them: it checks the targets, and its drill reads under FromTargets. LoadIndex removes the copies of
// segments no index object knows (pruned, or never committed).

type fromTargetsKey struct{}

// FromTargets returns a context under which segments are read from the
// targets, not the local cache: a drill, which proves a snapshot
// restorable from the targets, reads them so.
func FromTargets(ctx context.Context) context.Context {
	return context.WithValue(ctx, fromTargetsKey{}, true)
}

func fromTargets(ctx context.Context) bool {
	v, _ := ctx.Value(fromTargetsKey{}).(bool)
	return v
}

// segmentPath returns where the copy of segment id lives, or "" without a
// cache.
func (r *Repo) segmentPath(id chunk.ID) string {
	if r.IndexCache == "" {
		return ""
	}
	return filepath.Join(r.IndexCache, r.Config.ID, "segments", hex.EncodeToString(id[:]))
}

// cachedSegment returns the plaintext of segment id from the cache, or nil.
func (r *Repo) cachedSegment(id chunk.ID) []byte {
	path := r.segmentPath(id)
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	if r.IDKey.Sum(b) != id {
		os.Remove(path)
		return nil
	}
	return b
}

// keepSegment keeps plain, the plaintext of segment id, in the cache. A
// failure costs only a read from the targets next time.
func (r *Repo) keepSegment(id chunk.ID, plain []byte) {
	path := r.segmentPath(id)
	if path == "" {
		return
	}
	if _, err := os.Stat(path); err == nil {
		return
	}
	err := os.MkdirAll(filepath.Dir(path), 0o700)
	if err == nil {
		err = writeRenamed(path, ".tmp-*", plain)
	}
	if err != nil {
		slog.Debug("caching a segment", "segment", id.Short(), "error", err)
	}
}

// uncacheSegments removes from dir's segments the copies of segments that
// x does not know, and temporary files a process that stopped left.
func uncacheSegments(dir string, x *Index) {
	entries, err := os.ReadDir(filepath.Join(dir, "segments"))
	if err != nil {
		return
	}
	for _, e := range entries {
		var id chunk.ID
		if b, err := hex.DecodeString(e.Name()); err == nil && len(b) == len(id) {
			copy(id[:], b)
			if _, _, ok := x.Lookup(id); ok {
				continue
			}
		} else if info, err := e.Info(); err != nil || time.Since(info.ModTime()) < orphanAge {
			continue // another process may be writing it
		}
		os.Remove(filepath.Join(dir, "segments", e.Name()))
	}
}
