package repo_test

import (
	"context"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
)

// TestPruneSegments: segments are blobs in packs, pruned as data is.
//
//   - Two snapshots of related images share most segments, each stored
//     once.
//   - Forgotten, a snapshot leaves garbage: its own data packs and the
//     pack of the segments only it had; so does a backup whose commit was
//     refused, in the pack of its segments. Prune marks exactly those,
//     holds them back while that backup's lock is live, and deletes them
//     after; every pack the remaining snapshot needs, segment packs
//     included, stays, and it restores bit for bit.
//   - A backup whose segments are only in a marked pack stores them anew:
//     a prune deletes the marked pack before the backup's manifest is
//     written, and the new snapshot reads all the same.
func TestPruneSegments(t *testing.T) {
	ctx := context.Background()
	p := newPruneRepo(t, minio.StartCluster(t, 3, "ferry", ""), "repo")
	r := p.open(t)
	r.SegmentExtents = 5
	b := p.backup(t, r, "b", p.image(t, "b", 16<<20, 71))
	a := p.backup(t, r, "a", p.image(t, "a", 16<<20, 71, [3]int64{8 << 20, 1 << 20, 72}))
	segsA, segsB := segmentIDs(t, r, a), segmentIDs(t, r, b)
	shared := 0
	for _, id := range segsA {
		if slices.Contains(segsB, id) {
			shared++
		}
	}
	if shared*2 <= len(segsA) || shared == len(segsA) {
		t.Fatalf("a shares %d of its %d segments with b, want most but not all", shared, len(segsA))
	}
	holders := blobPacks(t, p.stores(t)[0], r)
	for _, id := range slices.Concat(segsA, segsB) {
		if n := len(holders[id]); n != 1 {
			t.Fatalf("segment %s is in %d packs, want one: a backup stores only the segments the index lacks", id.Short(), n)
		}
	}

	needA := packsNeeded(t, r, a)
	if err := r.Forget(ctx, []string{a}); err != nil {
		t.Fatal(err)
	}
	delete(p.images, a)
	// The packs of b's segments are packs of their own, which an account
	// of its data chunks alone would miss.
	live := packsNeeded(t, r, b)
	data := packsOf(t, r, b)
	if len(live) <= len(data) {
		t.Fatalf("b needs %d packs, %d of them for its data: no pack of segments", len(live), len(data))
	}
	garbage := map[pack.ID]bool{}
	for id := range needA {
		if !live[id] {
			garbage[id] = true
		}
	}
	if len(garbage) < 2 || !garbage[segmentPack(t, r, segsA, segsB)] {
		t.Fatalf("forgetting a leaves %d packs of garbage, want its data and a pack of its own segments", len(garbage))
	}

	// A backup running: it holds its lock, and its commit is refused (a
	// chunk no index holds) after its segments are written.
	before := p.packsOnTargets(t)
	w := p.open(t)
	w.SegmentExtents = 2
	release, err := w.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
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
	if _, _, err := sw.Commit(ctx, repo.Meta{Name: "failed", Size: 600}); err == nil || !strings.Contains(err.Error(), "in no index object") {
		t.Fatalf("a manifest naming chunks no index holds: %v", err)
	}
	var failed []pack.ID
	for id := range p.packsOnTargets(t) {
		if !before[id] {
			failed = append(failed, id)
			garbage[id] = true
		}
	}
	if len(failed) != 1 {
		t.Fatalf("the refused commit left %d packs, want one of segments", len(failed))
	}

	first := prune(t, p.open(t), 0)
	if len(first.Deleted) != 0 || first.Marked != len(garbage) || len(first.Writers) != 1 {
		t.Fatalf("prune while a backup runs: %d packs deleted, %d marked (want %d), %d writers",
			len(first.Deleted), first.Marked, len(garbage), len(first.Writers))
	}
	marks, err := p.open(t).LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for id := range p.packsOnTargets(t) {
		if _, marked := marks.Marked(id); marked != garbage[id] {
			t.Errorf("pack %s: marked %v, garbage %v (b needs it: %v)", id.Short(), marked, garbage[id], live[id])
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	second := prune(t, p.open(t), 0)
	if len(second.Deleted) != 0 || second.HeldBack != len(garbage) || len(second.Writers) != 1 {
		t.Fatalf("second prune while a backup runs: %d packs deleted, %d held back (want %d), %d writers",
			len(second.Deleted), second.HeldBack, len(garbage), len(second.Writers))
	}
	if got := p.packsOnTargets(t); len(got) != len(live)+len(garbage) {
		t.Fatalf("%d packs on the targets while a backup runs, want %d", len(got), len(live)+len(garbage))
	}
	release()

	last := prune(t, p.open(t), 0)
	if got := deletedPacks(t, last); !maps.Equal(got, garbage) {
		t.Fatalf("deleted %d packs, want the %d of garbage", len(got), len(garbage))
	}
	if got := p.packsOnTargets(t); !maps.Equal(got, live) {
		t.Fatalf("%d packs on the targets, want the %d b needs", len(got), len(live))
	}
	p.check(t, true)

	// A snapshot forgotten and its packs marked long ago, as an earlier
	// prune leaves them; a backup of the same volume then has the same
	// segments, only in marked packs.
	dImg := p.image(t, "d", 8<<20, 73)
	d := p.backup(t, r, "d", dImg)
	segsD, extsD := segmentIDs(t, r, d), extentsOf(t, r, d)
	dPacks := packsNeeded(t, r, d)
	if err := r.Forget(ctx, []string{d}); err != nil {
		t.Fatal(err)
	}
	delete(p.images, d)
	if err := r.MarkForTest(ctx, time.Now().Add(-time.Hour), slices.Collect(maps.Keys(dPacks))...); err != nil {
		t.Fatal(err)
	}
	cw, gate := p.openGated(t, "snapshots/")
	var released sync.Once
	openGate := func() { released.Do(func() { close(gate.open) }) }
	defer openGate()
	cw.SegmentExtents = 5
	done := make(chan error, 1)
	var sum *backup.Summary
	go func() {
		var err error
		sum, err = backup.File(ctx, cw, dImg, backup.Options{Name: "c"})
		done <- err
	}()
	select {
	case <-gate.reached:
	case err := <-done:
		t.Fatalf("backup c ended before writing its manifest: %v", err)
	}
	// Its segments are checked and in the index, its manifest not yet
	// written: they are in new packs, and the marked ones go.
	x, err := p.open(t).LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range segsD {
		if info, _, ok := x.Lookup(id); !ok || dPacks[info.ID] {
			t.Fatalf("segment %s: indexed %v, only in a marked pack %v", id.Short(), ok, ok && dPacks[info.ID])
		}
	}
	during := prune(t, p.open(t), 0)
	if got := deletedPacks(t, during); !maps.Equal(got, dPacks) || len(during.Writers) != 1 {
		t.Fatalf("prune during backup c: deleted %d packs, want the %d marked long ago; %d writers", len(got), len(dPacks), len(during.Writers))
	}
	openGate()
	if err := <-done; err != nil {
		t.Fatalf("backup c: %v", err)
	}
	c := sum.SnapshotID
	p.images[c] = dImg
	if got := segmentIDs(t, p.open(t), c); !slices.Equal(got, segsD) {
		t.Fatalf("c has %d segments, want d's %d", len(got), len(segsD))
	}
	if got := extentsOf(t, p.open(t), c); !reflect.DeepEqual(got, extsD) {
		t.Fatal("c's extents differ from d's")
	}
	after := prune(t, p.open(t), 0)
	if len(after.Deleted) != 0 || after.Unreferenced != 0 {
		t.Fatalf("prune after backup c: %d deleted, %d unreferenced", len(after.Deleted), after.Unreferenced)
	}
	want := packsNeeded(t, p.open(t), b, c)
	if got := p.packsOnTargets(t); !maps.Equal(got, want) {
		t.Fatalf("%d packs on the targets, want the %d b and c need", len(got), len(want))
	}
	p.check(t, true)
}

// segmentIDs returns the segments of snapshot id, which must be segmented.
func segmentIDs(t *testing.T, r *repo.Repo, id string) []chunk.ID {
	t.Helper()
	s, err := r.FindSnapshot(context.Background(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Segments) < 2 || s.Extents != nil {
		t.Fatalf("snapshot %s has %d segments, want several", id[:12], len(s.Segments))
	}
	var out []chunk.ID
	for _, sg := range s.Segments {
		out = append(out, sg.ID)
	}
	return out
}

// extentsOf reads the extents of snapshot id, a segment at a time.
func extentsOf(t *testing.T, r *repo.Repo, id string) []repo.Extent {
	t.Helper()
	s, err := r.FindSnapshot(context.Background(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	return allExtents(t, r, s)
}

// packsNeeded returns the packs holding the data chunks and the segments
// of the given snapshots.
func packsNeeded(t *testing.T, r *repo.Repo, ids ...string) map[pack.ID]bool {
	t.Helper()
	out := packsOf(t, r, ids...)
	x, err := r.LoadIndex(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		for _, sg := range segmentIDs(t, r, id) {
			info, _, ok := x.Lookup(sg)
			if !ok {
				t.Fatalf("segment %s of %s is not indexed", sg.Short(), id[:12])
			}
			out[info.ID] = true
		}
	}
	return out
}

// segmentPack returns the pack of a segment of mine not in others.
func segmentPack(t *testing.T, r *repo.Repo, mine, others []chunk.ID) pack.ID {
	t.Helper()
	x, err := r.LoadIndex(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range mine {
		if !slices.Contains(others, id) {
			info, _, ok := x.Lookup(id)
			if !ok {
				t.Fatalf("segment %s is not indexed", id.Short())
			}
			return info.ID
		}
	}
	t.Fatal("no segment of its own")
	return pack.ID{}
}

// blobPacks returns the packs each blob is in, by every index object on s.
func blobPacks(t *testing.T, s objstore.Store, r *repo.Repo) map[chunk.ID][]pack.ID {
	t.Helper()
	out := map[chunk.ID][]pack.ID{}
	for _, name := range names(t, s, "index/") {
		b, err := s.Get(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		batch, err := r.OpenIndexObject(strings.TrimPrefix(name, "index/"), b)
		if err != nil {
			t.Fatal(err)
		}
		for i, info := range batch.Packs {
			for _, e := range batch.Entries[i] {
				if !slices.Contains(out[e.ID], info.ID) {
					out[e.ID] = append(out[e.ID], info.ID)
				}
			}
		}
	}
	return out
}

// deletedPacks returns the packs a prune deleted.
func deletedPacks(t *testing.T, rep *repo.PruneReport) map[pack.ID]bool {
	t.Helper()
	out := map[pack.ID]bool{}
	for _, d := range rep.Deleted {
		id, err := pack.ParseID(d.ID)
		if err != nil {
			t.Fatal(err)
		}
		out[id] = true
	}
	return out
}
