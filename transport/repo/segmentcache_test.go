package repo

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/objstore"
)

// TestSegmentCache: the machine that committed a segmented snapshot keeps
// its segments in the local cache, and reads them from there (none from the
// packs) when it reads the snapshot's extents again, as the next backup of
// the volume does with its parent. A copy that does not hash to its ID is
// read from the targets instead and replaced; a missing one is read and
// kept. FromTargets reads them all from the targets, as a drill does.
// LoadIndex removes the copies of segments no index object knows.
func TestSegmentCache(t *testing.T) {
	ctx := context.Background()
	stores := memStores(3)
	w := initRepo(t, stores)
	w.IndexCache = t.TempDir()
	s, want := commitSegmented(t, w, 120)
	id := s.ID
	dir := filepath.Join(w.IndexCache, w.Config.ID, "segments")
	var reads atomic.Int64
	counted := make([]objstore.Store, len(stores))
	for i, s := range stores {
		counted[i] = countingStore{s, "data/", &reads}
	}
	// extents reads the snapshot's extents through a fresh Repo with the
	// cache, and returns how many pack reads that took.
	extents := func(ctx context.Context, stage string) int64 {
		t.Helper()
		r, err := Open(ctx, counted, []byte("pw"))
		if err != nil {
			t.Fatal(err)
		}
		r.IndexCache = w.IndexCache
		s, err := r.FindSnapshot(ctx, id, "")
		if err != nil {
			t.Fatal(err)
		}
		reads.Store(0)
		var got []Extent
		if err := r.Extents(ctx, s, func(exts []Extent) error { got = append(got, exts...); return nil }); err != nil {
			t.Fatalf("%s: %v", stage, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: extents differ", stage)
		}
		return reads.Load()
	}
	distinct := map[chunk.ID]bool{}
	for _, sg := range s.Segments {
		distinct[sg.ID] = true
	}
	files, err := os.ReadDir(dir)
	if err != nil || len(files) != len(distinct) || len(distinct) < 5 {
		t.Fatalf("the cache holds %d segments (%v); the snapshot has %d", len(files), err, len(distinct))
	}
	if n := extents(ctx, "read back"); n != 0 {
		t.Fatalf("reading the extents back read %d times from the packs, want none", n)
	}

	// A damaged copy, and a missing one.
	damaged, missing := filepath.Join(dir, files[0].Name()), filepath.Join(dir, files[1].Name())
	good, _ := os.ReadFile(damaged)
	bad := append([]byte(nil), good...)
	bad[len(bad)-1] ^= 1
	if err := os.WriteFile(damaged, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(missing); err != nil {
		t.Fatal(err)
	}
	if n := extents(ctx, "a copy damaged, another missing"); n < 2 {
		t.Fatalf("a damaged and a missing copy: %d reads from the packs, want them read there", n)
	}
	if now, _ := os.ReadFile(damaged); string(now) != string(good) {
		t.Fatal("the damaged copy was not replaced")
	}
	if _, err := os.Stat(missing); err != nil {
		t.Fatalf("the missing copy was not kept: %v", err)
	}
	if n := extents(ctx, "again"); n != 0 {
		t.Fatalf("%d reads from the packs once the copies are back", n)
	}
	if n := extents(FromTargets(ctx), "from the targets"); n < int64(len(distinct)) {
		t.Fatalf("reading from the targets: %d reads from the packs for %d segments", n, len(distinct))
	}

	// A copy of a segment no index object knows goes at the next load;
	// a temporary file of another process stays while young.
	unknown := filepath.Join(dir, strings.Repeat("ab", 32))
	tmp := filepath.Join(dir, ".tmp-123")
	for _, p := range []string{unknown, tmp} {
		if err := os.WriteFile(p, good, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(unknown); !os.IsNotExist(err) {
		t.Fatalf("the copy of a segment no index knows is still there: %v", err)
	}
	if _, err := os.Stat(tmp); err != nil {
		t.Fatalf("a young temporary file was removed: %v", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != len(distinct)+1 {
		t.Fatalf("%d files left in the cache, want the %d segments and the temporary file", len(left), len(distinct))
	}
}

// TestExtentsReadAhead: Extents reads segments ahead of the one it hands
// on, and still hands them on in order, stops when fn fails (with fn's
// error, after exactly the calls made), and reports a cancelled context.
func TestExtentsReadAhead(t *testing.T) {
	ctx := context.Background()
	_, r, s, want := segmentedSnapshot(t)
	if len(s.Segments) < 3*segmentsAhead {
		t.Fatalf("%d segments, want more than the reads ahead", len(s.Segments))
	}
	var got []Extent
	if err := r.Extents(ctx, s, func(exts []Extent) error { got = append(got, exts...); return nil }); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("extents in order: %v", err)
	}
	stop := errors.New("stop")
	calls := 0
	err := r.Extents(ctx, s, func([]Extent) error {
		calls++
		if calls == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || calls != 3 {
		t.Fatalf("fn failing at its third call: %v after %d calls", err, calls)
	}
	cctx, cancel := context.WithCancel(ctx)
	calls = 0
	err = r.Extents(cctx, s, func([]Extent) error {
		if calls++; calls == 2 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || calls >= len(s.Segments) {
		t.Fatalf("context cancelled at the second segment: %v after %d calls of %d", err, calls, len(s.Segments))
	}
}
