package repo

import (
	"encoding/hex"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// A repository deleted, or no longer used from this machine, would keep
// its directory in the local index cache forever; as restic does with its
// cache, the directories of repositories unused for cacheUnused are
// removed.
//
// A process marks its repository's directory used by setting the mtime of
// the empty file "used" in it, at most once per cacheScanEvery, and only
// then looks for unused directories, so most calls cost one stat. A file
// rather than the directory's own mtime: that one moves whenever a run or
// a spool is made in the directory, which would put the scan off for as
// long as the repository is used every day. A directory counts as used at
// the newer of the two mtimes (a directory an older Ferry made has only
// its own).
//
// An unused directory is renamed to .removing-<ID> before it is removed,
// so a process that starts using that repository meanwhile makes a new
// one instead of losing files to the removal; the next scan finishes a
// removal that a stopped process left. A process already using it keeps
// reading the runs and the spool it has open (an open file outlives its
// name); what it makes there later fails, which the index survives by
// keeping its entries in memory (Index.spill), and the next call of
// indexDir makes the directory again.
const (
	cacheUnused    = 30 * 24 * time.Hour
	cacheScanEvery = 24 * time.Hour
	usedMarker     = "used"
	removingPrefix = ".removing-"
)

// useCacheDir marks the directory of repository id in the index cache
// root as used and, if it was not marked in the last cacheScanEvery,
// removes the directories of repositories unused for cacheUnused (which
// that one, just marked, is not). It touches nothing else in root. A
// failure leaves a directory there or costs downloads, so it is only
// logged.
func useCacheDir(root, id string) {
	if !isRepoID(id) {
		return // not a directory this manages, perhaps not even in root
	}
	marker := filepath.Join(root, id, usedMarker)
	now := time.Now()
	if info, err := os.Stat(marker); err == nil {
		if age := now.Sub(info.ModTime()); age >= 0 && age < cacheScanEvery {
			return
		}
	}
	err := os.Chtimes(marker, now, now)
	if errors.Is(err, fs.ErrNotExist) {
		err = os.WriteFile(marker, nil, 0o600)
	}
	if err != nil {
		slog.Debug("marking an index cache directory used", "dir", filepath.Dir(marker), "error", err)
		return
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		slog.Debug("listing the index cache", "dir", root, "error", err)
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !e.IsDir() {
			continue
		}
		if left, ok := strings.CutPrefix(name, removingPrefix); ok && isRepoID(left) {
			if err := os.RemoveAll(filepath.Join(root, name)); err != nil {
				slog.Debug("removing an unused index cache directory", "dir", filepath.Join(root, name), "error", err)
			}
			continue
		}
		if !isRepoID(name) {
			continue
		}
		dir := filepath.Join(root, name)
		used, err := lastUsed(e, dir)
		if err != nil || now.Sub(used) < cacheUnused {
			continue
		}
		gone := filepath.Join(root, removingPrefix+name)
		if err := os.Rename(dir, gone); err != nil {
			slog.Debug("removing an unused index cache directory", "dir", dir, "error", err)
			continue
		}
		if err := os.RemoveAll(gone); err != nil {
			slog.Debug("removing an unused index cache directory", "dir", gone, "error", err)
			continue
		}
		slog.Info("removed the index cache of an unused repository", "dir", dir, "unused", now.Sub(used).Round(time.Hour))
	}
}

// lastUsed returns the newer of the mtimes of dir, entry e of the cache,
// and of its marker.
func lastUsed(e fs.DirEntry, dir string) (time.Time, error) {
	info, err := e.Info()
	if err != nil {
		return time.Time{}, err
	}
	t := info.ModTime()
	if m, err := os.Stat(filepath.Join(dir, usedMarker)); err == nil && m.ModTime().After(t) {
		t = m.ModTime()
	}
	return t, nil
}

// isRepoID reports whether name is a repository ID, 32 lowercase hex
// digits: the names of the repositories' directories in the cache.
func isRepoID(name string) bool {
	_, err := hex.DecodeString(name)
	return len(name) == 32 && err == nil && strings.ToLower(name) == name
}
