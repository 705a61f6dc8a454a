package repo

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

const (
	day     = 24 * time.Hour
	idInUse = "00000000000000000000000000000000"
	idA     = "0123456789abcdef0123456789abcdef"
	idB     = "fedcba9876543210fedcba9876543210"
	idC     = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
)

// setAge sets path's mtime to d ago.
func setAge(t *testing.T, path string, d time.Duration) {
	t.Helper()
	at := time.Now().Add(-d)
	if err := os.Chtimes(path, at, at); err != nil {
		t.Fatal(err)
	}
}

// cacheDir makes the directory of repository id in the cache root, with a
// copy of an index object, its marker last set marked ago (no marker if
// 0) and its own mtime dirAge ago.
func cacheDir(t *testing.T, root, id string, marked, dirAge time.Duration) string {
	t.Helper()
	dir := filepath.Join(root, id)
	if err := os.MkdirAll(filepath.Join(dir, "index"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index", "copy"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if marked != 0 {
		if err := os.WriteFile(filepath.Join(dir, usedMarker), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		setAge(t, filepath.Join(dir, usedMarker), marked)
	}
	setAge(t, dir, dirAge)
	return dir
}

func pathExists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Lstat(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return err == nil
}

func markerAge(t *testing.T, dir string) time.Duration {
	t.Helper()
	info, err := os.Stat(filepath.Join(dir, usedMarker))
	if err != nil {
		t.Fatal(err)
	}
	return time.Since(info.ModTime())
}

func TestCacheRemovesUnused(t *testing.T) {
	root := t.TempDir()
	cacheDir(t, root, idInUse, 0, 0)
	stale := cacheDir(t, root, idA, 31*day, 40*day)
	legacy := cacheDir(t, root, idB, 0, 31*day) // made before markers
	useCacheDir(root, idInUse)
	for _, dir := range []string{stale, legacy} {
		if pathExists(t, dir) {
			t.Errorf("%s, unused for 31 days, was kept", filepath.Base(dir))
		}
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != idInUse {
		t.Errorf("cache holds %v, want only %s", entries, idInUse)
	}
}

func TestCacheKeepsUsed(t *testing.T) {
	root := t.TempDir()
	cacheDir(t, root, idInUse, 0, 0)
	kept := map[string]string{
		"marked 29 days ago":               cacheDir(t, root, idA, 29*day, 40*day),
		"without a marker, used yesterday": cacheDir(t, root, idB, 0, day),
		"marked long ago, a run made now":  cacheDir(t, root, idC, 40*day, 0),
	}
	useCacheDir(root, idInUse)
	for what, dir := range kept {
		if !pathExists(t, filepath.Join(dir, "index", "copy")) {
			t.Errorf("the directory %s was removed", what)
		}
	}
}

func TestCacheKeepsInUse(t *testing.T) {
	root := t.TempDir()
	dir := cacheDir(t, root, idInUse, 60*day, 60*day)
	useCacheDir(root, idInUse)
	if !pathExists(t, filepath.Join(dir, "index", "copy")) {
		t.Fatal("the directory in use was removed")
	}
	if a := markerAge(t, dir); a > time.Minute {
		t.Errorf("the directory in use was marked %s ago, want now", a)
	}

	// Without a marker yet, as an older Ferry left it.
	if err := os.Remove(filepath.Join(dir, usedMarker)); err != nil {
		t.Fatal(err)
	}
	setAge(t, dir, 60*day)
	useCacheDir(root, idInUse)
	if a := markerAge(t, dir); a > time.Minute {
		t.Errorf("the directory in use was marked %s ago, want now", a)
	}
}

func TestCacheKeepsOtherNames(t *testing.T) {
	root := t.TempDir()
	cacheDir(t, root, idInUse, 0, 0)
	var kept []string
	for _, name := range []string{
		"0123456789ABCDEF0123456789ABCDEF", // not lowercase
		idA[:30],
		idA[:31],
		idA + "0",
		idA + "00",
		"0123456789abcdef0123456789abcdeg",
		"notes",
		".removing-notes",
	} {
		kept = append(kept, cacheDir(t, root, name, 60*day, 60*day))
	}
	file := filepath.Join(root, idB) // a plain file named like a repository
	if err := os.WriteFile(file, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	setAge(t, file, 60*day)
	kept = append(kept, file)
	useCacheDir(root, idInUse)
	for _, path := range kept {
		if !pathExists(t, path) {
			t.Errorf("%s was removed", path)
		}
	}
}

func TestCacheIgnoresOtherInUseNames(t *testing.T) {
	root := t.TempDir()
	notes := cacheDir(t, root, "notes", 0, 0)
	stale := cacheDir(t, root, idA, 60*day, 60*day)
	useCacheDir(root, "notes")
	if pathExists(t, filepath.Join(notes, usedMarker)) {
		t.Error("a directory not named by a repository ID was marked")
	}
	if !pathExists(t, stale) {
		t.Error("a repository's directory was removed for one not named by a repository ID")
	}
}

func TestCacheScansDaily(t *testing.T) {
	root := t.TempDir()
	inUse := cacheDir(t, root, idInUse, time.Hour, time.Hour)
	stale := cacheDir(t, root, idA, 60*day, 60*day)
	useCacheDir(root, idInUse)
	if !pathExists(t, stale) {
		t.Fatal("scanned the cache an hour after the last scan")
	}
	if a := markerAge(t, inUse); a < 59*time.Minute {
		t.Errorf("marked again an hour after the last time (marker %s old)", a)
	}

	setAge(t, filepath.Join(inUse, usedMarker), 25*time.Hour)
	useCacheDir(root, idInUse)
	if pathExists(t, stale) {
		t.Error("did not scan the cache 25 hours after the last scan")
	}

	// A marker set while the clock was ahead does not put scans off.
	stale = cacheDir(t, root, idA, 60*day, 60*day)
	setAge(t, filepath.Join(inUse, usedMarker), -day)
	useCacheDir(root, idInUse)
	if pathExists(t, stale) {
		t.Error("did not scan the cache with the marker a day in the future")
	}
	if a := markerAge(t, inUse); a < 0 || a > time.Minute {
		t.Errorf("the marker a day in the future is now %s old, want now", a)
	}
}

func TestCacheFinishesRemoval(t *testing.T) {
	root := t.TempDir()
	cacheDir(t, root, idInUse, 0, 0)
	left := cacheDir(t, root, removingPrefix+idA, 0, 0) // a stopped removal
	useCacheDir(root, idInUse)
	if pathExists(t, left) {
		t.Error("a removal left unfinished was not finished")
	}
}
