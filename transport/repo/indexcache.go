package repo

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The local index cache (Repo.IndexCache), for each repository
// <IndexCache>/<repository ID>/:
//
//	index/<id>        copies of the sealed index objects LoadIndex read
//	index-state       the index LoadIndex saved last (indexbase.go)
//	index-run-*       its runs; the runs a process adds later are
//	                  unlinked at creation
//	used              its mtime: when a process last used the directory
//	                  (cachegc.go)
//	segments/<id>     the plaintext of segments (segmentcache.go)
//
// A copy is used only when its SHA-256 is its name, which makes it the
// object the targets hold (index objects are never rewritten), and it is
// authenticated like one read from a target. LoadIndex reads only the
// objects the targets list, so the copy of one that prune deleted is
// never read again; LoadIndex removes it.

// indexDir makes and returns this repository's directory in the cache,
// or "" when there is no cache.
func (r *Repo) indexDir() (string, error) {
	if r.IndexCache == "" {
		return "", nil
	}
	dir := filepath.Join(r.IndexCache, r.Config.ID)
	if err := os.MkdirAll(filepath.Join(dir, "index"), 0o700); err != nil {
		return "", err
	}
	useCacheDir(r.IndexCache, r.Config.ID)
	return dir, nil
}

// isIndexName reports whether name is index/ and 64 lowercase hex digits:
// the only names that are cached, so a listing cannot name a path outside
// the cache.
func isIndexName(name string) bool {
	id, ok := strings.CutPrefix(name, "index/")
	if !ok || len(id) != 64 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}

func contentNamed(name string, b []byte) bool {
	sum := sha256.Sum256(b)
	return name == "index/"+hex.EncodeToString(sum[:])
}

// cachedIndex returns the cached copy of index object name, or nil.
func cachedIndex(dir, name string) []byte {
	if dir == "" || !isIndexName(name) {
		return nil
	}
	path := filepath.Join(dir, name)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	if !contentNamed(name, b) {
		os.Remove(path)
		return nil
	}
	return b
}

// keepIndex caches index object name, read from a target as b. A failure
// costs only a download next time.
func keepIndex(dir, name string, b []byte) {
	if dir == "" || !isIndexName(name) || !contentNamed(name, b) {
		return
	}
	if err := writeRenamed(filepath.Join(dir, name), ".tmp-*", b); err != nil {
		slog.Debug("caching an index object", "object", name, "error", err)
	}
}

// writeRenamed writes b to a new file in path's directory, named by
// pattern, and renames it to path: a reader finds the old file or the
// whole new one.
func writeRenamed(path, pattern string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), pattern)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// uncache removes the cached copies of index objects that are not in
// keep, and temporary files a process that stopped left behind.
func uncache(dir string, keep map[string]bool) {
	entries, err := os.ReadDir(filepath.Join(dir, "index"))
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			if info, err := e.Info(); err != nil || time.Since(info.ModTime()) < time.Hour {
				continue // another process may be writing it
			}
		} else if keep["index/"+e.Name()] {
			continue
		}
		os.Remove(filepath.Join(dir, "index", e.Name()))
	}
}
