package repo_test

import (
	"context"
	"maps"
	"slices"
	"testing"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

// TestPruneSegments: the segments of a forgotten snapshot and of a backup
// whose commit was refused are garbage. Prune leaves them while a writer
// lock is live (that backup might yet commit a manifest naming them),
// reports them in a dry run, and deletes them once no backup runs, even
// after a run stopped at that step. It never deletes a pack or a segment
// the remaining snapshot needs: it restores bit for bit.
func TestPruneSegments(t *testing.T) {
	ctx := context.Background()
	p := newPruneRepo(t, minio.StartCluster(t, 3, "ferry", ""), "repo")
	r := p.open(t)
	r.SegmentExtents = 5
	a := p.backup(t, r, "a", p.image(t, "a", 8<<20, 71))
	b := p.backup(t, r, "b", p.image(t, "b", 8<<20, 71, [3]int64{4 << 20, 4 << 20, 72}))
	segs := map[string][]string{}
	for _, id := range []string{a, b} {
		s, err := r.FindSnapshot(ctx, id, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Segments) < 2 {
			t.Fatalf("snapshot %s has %d segments, want several", id[:12], len(s.Segments))
		}
		for _, sg := range s.Segments {
			segs[id] = append(segs[id], sg.Name())
		}
	}
	if err := r.Forget(ctx, []string{a}); err != nil {
		t.Fatal(err)
	}
	delete(p.images, a)
	live := packsOf(t, r, b)
	if before := p.packsOnTargets(t); len(before) <= len(live) {
		t.Fatalf("nothing to prune: %d packs, %d live", len(before), len(live))
	}

	// A backup running: it holds its lock, and its commit is refused (a
	// chunk no index holds) after its segments are written.
	w := p.open(t)
	w.SegmentExtents = 2
	release, err := w.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sw, err := w.NewSnapshotWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer sw.Close()
	for i := range 6 {
		if err := sw.Add(repo.Extent{Off: int64(i) * 100, Len: 100, ID: chunk.ID{byte(i + 1)}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := sw.Commit(ctx, repo.Meta{Name: "failed", Size: 600}); err == nil {
		t.Fatal("a manifest naming chunks no index holds was committed")
	}
	failed := slices.DeleteFunc(segmentsOn(t, p.stores(t)), func(n string) bool {
		return slices.Contains(segs[a], n) || slices.Contains(segs[b], n)
	})
	if len(failed) != 3 {
		t.Fatalf("the refused commit left %d segments, want 3: %v", len(failed), failed)
	}
	garbage := slices.Sorted(slices.Values(slices.Concat(segs[a], failed)))
	all := slices.Sorted(slices.Values(slices.Concat(garbage, segs[b])))

	first := prune(t, p.open(t), 0)
	if len(first.SegmentsDeleted) != 0 || first.SegmentsHeldBack != len(garbage) || len(first.Writers) != 1 || first.Marked == 0 {
		t.Fatalf("prune while a backup runs: %d segments deleted, %d held back (want %d), %d writers, %d packs marked",
			len(first.SegmentsDeleted), first.SegmentsHeldBack, len(garbage), len(first.Writers), first.Marked)
	}
	if got := segmentsOn(t, p.stores(t)); !slices.Equal(got, all) {
		t.Fatalf("segments after prune while a backup runs: %v, want %v", got, all)
	}
	release()

	dry, err := p.open(t).Prune(ctx, repo.PruneOptions{DryRun: true})
	if err != nil || !slices.Equal(dry.SegmentsDeleted, garbage) || dry.SegmentsHeldBack != 0 {
		t.Fatalf("dry run: %v, segments %v, want %v", err, dry.SegmentsDeleted, garbage)
	}
	if got := segmentsOn(t, p.stores(t)); !slices.Equal(got, all) {
		t.Fatalf("the dry run deleted segments: %v", got)
	}

	// Stopped as it starts deleting segments; then finished.
	stopped, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, err := p.open(t).Prune(stopped, repo.PruneOptions{Progress: func(step string) {
		if step == "segments" {
			cancel()
		}
	}}); err == nil || stopped.Err() == nil {
		t.Fatalf("prune did not stop at its segments step: %v", err)
	}
	p.check(t, false)
	last := prune(t, p.open(t), 0)
	if !slices.Equal(last.SegmentsDeleted, garbage) || last.Unreferenced != 0 {
		t.Fatalf("last run: segments deleted %v, want %v; %d packs unreferenced", last.SegmentsDeleted, garbage, last.Unreferenced)
	}
	if got := segmentsOn(t, p.stores(t)); !slices.Equal(got, slices.Sorted(slices.Values(segs[b]))) {
		t.Fatalf("segments left: %v, want b's %v", got, segs[b])
	}
	if got := p.packsOnTargets(t); !maps.Equal(got, live) {
		t.Fatalf("%d packs on the targets, want the %d b refers to", len(got), len(live))
	}
	p.check(t, true)
}

// segmentsOn returns the objects under extents/ on every target; they must
// be the same everywhere.
func segmentsOn(t *testing.T, stores []objstore.Store) []string {
	t.Helper()
	var first []string
	for i, s := range stores {
		got := names(t, s, "extents/")
		slices.Sort(got)
		if i == 0 {
			first = got
		} else if !slices.Equal(got, first) {
			t.Fatalf("target %d holds segments %v, target 1 %v", i+1, got, first)
		}
	}
	return first
}
