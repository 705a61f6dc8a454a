package repo

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
)

// storeChunks writes one pack holding data, indexes it, and returns the
// chunks' IDs and the pack's.
func storeChunks(t *testing.T, r *Repo, data ...[]byte) []chunk.ID {
	t.Helper()
	ids, _ := storePack(t, r, data...)
	return ids
}

func storePack(t *testing.T, r *Repo, data ...[]byte) ([]chunk.ID, pack.ID) {
	t.Helper()
	ids, b := writePack(t, r, data...)
	if _, err := r.WriteIndex(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	return ids, b.Packs[0].ID
}

// writePack writes one pack holding data and returns its chunks and its
// index entries, not written.
func writePack(t *testing.T, r *Repo, data ...[]byte) ([]chunk.ID, *IndexBatch) {
	t.Helper()
	ctx := context.Background()
	w := r.Codec.NewWriter(1 << 20)
	var ids []chunk.ID
	for _, d := range data {
		id := r.IDKey.Sum(d)
		sealed, _, comp := r.Codec.SealBlob(nil, nil, id, d)
		w.Add(id, sealed, len(d), comp)
		ids = append(ids, id)
	}
	p, pid, entries := w.Finish()
	if _, err := r.WritePack(ctx, pid, p); err != nil {
		t.Fatal(err)
	}
	b := &IndexBatch{}
	b.Add(PackInfo{ID: pid, Length: int64(len(p))}, entries)
	return ids, b
}

// snapshotOf commits a manifest of one 1-byte-per-chunk extent per ID.
func snapshotOf(t *testing.T, r *Repo, name string, ids ...chunk.ID) (string, error) {
	t.Helper()
	m := &Manifest{Meta: Meta{Name: name, Size: int64(len(ids)), Started: time.Now().UTC()}}
	for i, id := range ids {
		m.Extents = append(m.Extents, Extent{Off: int64(i), Len: 1, ID: id})
	}
	id, _, err := r.SaveSnapshot(context.Background(), m)
	return id, err
}

func TestParseShardName(t *testing.T) {
	id := pack.ID{0xab, 0xcd}
	for _, c := range []struct {
		name  string
		shard int
		ok    bool
	}{
		{"data/ab/" + id.String() + ".2", 2, true},
		{"data/ab/" + id.String() + ".02", 0, false},
		{"data/ac/" + id.String() + ".2", 0, false},
		{"data/ab/" + id.String(), 0, false},
		{"data/ab/" + id.String() + ".-1", 0, false},
		{"data/ab/xyz.1", 0, false},
		{"data/a", 0, false},
	} {
		got, shard, ok := ParseShardName(c.name)
		if ok != c.ok || ok && (got != id || shard != c.shard) {
			t.Errorf("%s: got %v %d %v", c.name, got, shard, ok)
		}
	}
}

func TestPlanRoundTrip(t *testing.T) {
	at := time.UnixMilli(1_700_000_000_123).UTC()
	p := &Plan{Created: at, Marks: map[pack.ID]Mark{
		{1}: {Marked: at, Deletable: at.Add(time.Hour)},
		{2}: {Marked: at.Add(-time.Minute), Deletable: at.Add(-time.Minute)},
	}}
	got, err := ParsePlan(p.marshal())
	if err != nil {
		t.Fatal(err)
	}
	if !got.Created.Equal(p.Created) || len(got.Marks) != 2 {
		t.Fatalf("got %+v", got)
	}
	for id, m := range p.Marks {
		if g := got.Marks[id]; !g.Marked.Equal(m.Marked) || !g.Deletable.Equal(m.Deletable) {
			t.Errorf("pack %x: got %+v, want %+v", id[:1], g, m)
		}
	}
	// The same pack twice, and trailing bytes, are malformed.
	one := (&Plan{Created: at, Marks: map[pack.ID]Mark{{1}: {Marked: at, Deletable: at}}}).marshal()
	head := binary.AppendUvarint([]byte{1}, uint64(at.UnixMilli()))
	mark := one[len(head)+1:]
	dup := append(append(binary.AppendUvarint(head, 2), mark...), mark...)
	if _, err := ParsePlan(dup); err == nil {
		t.Error("a plan marking one pack twice parsed")
	}
	if _, err := ParsePlan(append(one, 0)); err == nil {
		t.Error("a plan with trailing bytes parsed")
	}
}

func FuzzParsePlan(f *testing.F) {
	at := time.UnixMilli(1_700_000_000_000)
	f.Add((&Plan{Created: at, Marks: map[pack.ID]Mark{{7}: {Marked: at, Deletable: at.Add(time.Hour)}}}).marshal())
	f.Add((&Plan{Created: at}).marshal())
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePlan(b)
		if err != nil {
			return
		}
		again, err := ParsePlan(p.marshal())
		if err != nil || len(again.Marks) != len(p.Marks) {
			t.Fatalf("re-parse: %v", err)
		}
		for id, m := range p.Marks {
			if m.Deletable.Before(m.Marked) {
				t.Fatalf("pack %x deletable before it was marked", id[:4])
			}
		}
	})
}

func FuzzParseDeletion(f *testing.F) {
	id := strings.Repeat("ab", 32)
	f.Add([]byte(`{"created":"2026-01-02T03:04:05Z","snapshots":["` + id + `"],"index":["` + id + `"],"packs":["` + id + `"]}`))
	f.Add([]byte(`{"packs":["zz"]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDeletion(b)
		if err != nil {
			return
		}
		for _, o := range d.objects() {
			if _, err := checkedID(o); err != nil {
				t.Fatalf("object %q: %v", o, err)
			}
		}
		if len(d.packIDs()) != len(d.Packs) {
			t.Fatal("pack IDs lost")
		}
	})
}

func checkedID(name string) (pack.ID, error) {
	_, id, ok := strings.Cut(name, "/")
	if !ok {
		return pack.ID{}, fmt.Errorf("no directory")
	}
	return pack.ParseID(id)
}

// TestCommitChecks: SaveSnapshot refuses chunks that are in no index, in a
// pack a deletion record names, or only in a pack marked for deletion
// soon, unless the writer's lock is older than the mark.
func TestCommitChecks(t *testing.T) {
	ctx := context.Background()
	r := initRepo(t, memStores(3))
	if _, err := snapshotOf(t, r, "ghost", chunk.ID{1}); err == nil || !strings.Contains(err.Error(), "no index object") {
		t.Fatalf("a chunk in no index: %v", err)
	}
	ids, pid := storePack(t, r, []byte("a"), []byte("b"))
	if _, err := snapshotOf(t, r, "ok", ids...); err != nil {
		t.Fatal(err)
	}

	now := time.Now().UTC()
	for _, c := range []struct {
		name     string
		mark     Mark
		lockAge  time.Duration // the writer lock started this long before the mark; 0: no lock
		conflict bool
	}{
		{"deletable in an hour", Mark{Marked: now, Deletable: now.Add(time.Hour)}, 0, false},
		{"deletable now", Mark{Marked: now, Deletable: now}, 0, true},
		{"deletable now, lock taken before the mark", Mark{Marked: now, Deletable: now}, time.Minute, false},
		{"deletable now, lock taken long after the mark", Mark{Marked: now.Add(-time.Hour), Deletable: now}, -time.Hour, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			name, err := r.writePlan(ctx, &Plan{Created: now, Marks: map[pack.ID]Mark{pid: c.mark}})
			if err != nil {
				t.Fatal(err)
			}
			defer r.deleteEverywhere(ctx, name)
			if c.lockAge != 0 {
				release, err := r.Lock(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer release()
				r.writer.info.Started = c.mark.Marked.Add(-c.lockAge)
			}
			_, err = snapshotOf(t, r, c.name, ids...)
			if got := errors.Is(err, ErrConflict); got != c.conflict {
				t.Fatalf("conflict %v, want %v (%v)", got, c.conflict, err)
			}
			// A fresh index does not offer marked packs for dedupe.
			x, err := r.LoadIndex(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if x.Has(ids[0]) {
				t.Error("Has offers a chunk of a marked pack")
			}
			if _, _, ok := x.Lookup(ids[0]); !ok {
				t.Error("Lookup lost a chunk of a marked pack")
			}
		})
	}

	name, err := r.writeDeletion(ctx, &Deletion{Created: now, Packs: []string{pid.String()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := snapshotOf(t, r, "deleting", ids...); !errors.Is(err, ErrConflict) {
		t.Fatalf("a pack being deleted: %v", err)
	}
	r.deleteEverywhere(ctx, name)

	// A chunk in a marked pack and in an unmarked one is offered and committed.
	again, _ := storePack(t, r, []byte("a"))
	if _, err := r.writePlan(ctx, &Plan{Created: now, Marks: map[pack.ID]Mark{pid: {Marked: now, Deletable: now}}}); err != nil {
		t.Fatal(err)
	}
	x, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !x.Has(again[0]) || x.Has(ids[1]) {
		t.Error("Has: want the chunk with an unmarked copy only")
	}
	if _, err := snapshotOf(t, r, "copy", again[0]); err != nil {
		t.Fatal(err)
	}
}

// TestLockLost: a writer whose lock went unrefreshed too long must not commit.
func TestLockLost(t *testing.T) {
	ctx := context.Background()
	r := initRepo(t, memStores(3))
	ids := storeChunks(t, r, []byte("x"))
	release, err := r.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if locks, err := r.Locks(ctx); err != nil || len(locks) != 1 {
		t.Fatalf("locks %v, %v", locks, err)
	}
	r.writer.lastOK = time.Now().Add(-lockKeepWithin - time.Second)
	if _, err := snapshotOf(t, r, "late", ids...); !errors.Is(err, ErrLockLost) {
		t.Fatalf("commit with a lost lock: %v", err)
	}
}

func TestPruneLockExcludesAnotherPrune(t *testing.T) {
	ctx := context.Background()
	r := initRepo(t, memStores(3))
	h, err := r.lockPrune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Prune(ctx, PruneOptions{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second prune: %v", err)
	}
	h.release()
	if _, err := r.Prune(ctx, PruneOptions{}); err != nil {
		t.Fatal(err)
	}
	if locks, _ := r.Locks(ctx); len(locks) != 0 {
		t.Fatalf("locks left: %v", locks)
	}
}

// TestPruneMechanics: a pack is marked by one run and deleted by the next;
// index objects that named it are rewritten with the packs that stay; a
// live writer lock older than the mark holds it back; stale locks are
// cleared.
func TestPruneMechanics(t *testing.T) {
	ctx := context.Background()
	stores := memStores(3)
	r := initRepo(t, stores)
	// One index object naming both packs, as a backup writes them, and
	// one more naming only the pack that goes.
	keepIDs, both := writePack(t, r, []byte("keep"))
	dropIDs, drop1 := writePack(t, r, []byte("drop"))
	keepPack, dropPack := both.Packs[0].ID, drop1.Packs[0].ID
	both.Add(drop1.Packs[0], drop1.Entries[0])
	for _, b := range []*IndexBatch{both, drop1} {
		if _, err := r.WriteIndex(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	keep, err := snapshotOf(t, r, "keep", keepIDs...)
	if err != nil {
		t.Fatal(err)
	}
	drop, err := snapshotOf(t, r, "drop", dropIDs...)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Forget(ctx, []string{drop}); err != nil {
		t.Fatal(err)
	}
	if snaps, _ := r.Snapshots(ctx); len(snaps) != 1 || snaps[0].ID != keep {
		t.Fatalf("after forget: %v", snaps)
	}

	// A stale lock of a crashed writer is ignored and cleared.
	old := time.Now().Add(-2 * LockStale)
	if _, err := r.writeLock(ctx, LockInfo{Kind: LockWriter, Host: "gone", Started: old, Refreshed: old}); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Marked != 1 || len(rep.Deleted) != 0 || rep.Referenced != 1 {
		t.Fatalf("first run: %+v", rep)
	}
	if locks, _ := r.Locks(ctx); len(locks) != 0 {
		t.Fatalf("stale lock kept: %v", locks)
	}

	// A backup that started before the mark holds the pack back.
	release, err := r.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r.writer.info.Started = time.Now().Add(-time.Hour)
	rep, err = r.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.HeldBack != 1 || len(rep.Deleted) != 0 || len(rep.Writers) != 1 {
		t.Fatalf("with a writer: %+v", rep)
	}
	release()

	dry, err := r.Prune(ctx, PruneOptions{DryRun: true})
	if err != nil || len(dry.Deleted) != 1 || dry.Deleted[0].ID != dropPack.String() {
		t.Fatalf("dry run: %+v, %v", dry, err)
	}
	rep, err = r.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) != 1 || rep.Deleted[0].ID != dropPack.String() || rep.IndexDeleted != 2 || rep.IndexWritten != 1 {
		t.Fatalf("second run: %+v", rep)
	}
	for i := range r.Config.Erasure.Shards() {
		if _, err := r.TargetOf(i).Store.Stat(ctx, ShardName(dropPack, i)); !errors.Is(err, objstore.ErrNotFound) {
			t.Errorf("shard %d of the dropped pack: %v", i, err)
		}
		if _, err := r.TargetOf(i).Store.Stat(ctx, ShardName(keepPack, i)); err != nil {
			t.Errorf("shard %d of the kept pack: %v", i, err)
		}
	}
	x, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !x.Has(keepIDs[0]) || x.Has(dropIDs[0]) {
		t.Fatal("index after prune")
	}
	// Nothing is left to do; the deletion record stays for one run.
	rep, err = r.Prune(ctx, PruneOptions{})
	if err != nil || rep.Unreferenced != 0 || len(rep.Deleted) != 0 || rep.Finished != 0 {
		t.Fatalf("third run: %+v, %v", rep, err)
	}
	for _, s := range stores {
		for _, prefix := range []string{"plans/", "deletions/", "locks/"} {
			if n := count(t, s, prefix); n != 0 {
				t.Errorf("%s: %d objects under %s", s.Location(), n, prefix)
			}
		}
	}
}

func count(t *testing.T, s objstore.Store, prefix string) int {
	t.Helper()
	n := 0
	if err := s.List(context.Background(), prefix, func(objstore.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestForgetInterrupted: a deletion record written and the manifest
// deleted from one target only; readers see the snapshot gone, and the
// next forget finishes.
func TestForgetInterrupted(t *testing.T) {
	ctx := context.Background()
	stores := memStores(3)
	r := initRepo(t, stores)
	ids := storeChunks(t, r, []byte("x"))
	id, err := snapshotOf(t, r, "x", ids...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.writeDeletion(ctx, &Deletion{Created: time.Now(), Snapshots: []string{id}}); err != nil {
		t.Fatal(err)
	}
	if err := stores[0].Delete(ctx, "snapshots/"+id); err != nil {
		t.Fatal(err)
	}
	if snaps, err := r.Snapshots(ctx); err != nil || len(snaps) != 0 {
		t.Fatalf("a half-forgotten snapshot is listed: %v %v", snaps, err)
	}
	if _, err := r.FindSnapshot(ctx, id, ""); !errors.Is(err, ErrSnapshotNotFound) {
		t.Fatalf("found by ID: %v", err)
	}
	if wrote, err := r.RepairMetadata(ctx); err != nil || len(wrote) != 0 {
		t.Fatalf("repair copied %v (%v)", wrote, err)
	}
	if err := r.Forget(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for _, s := range stores {
		if n := count(t, s, "snapshots/") + count(t, s, "deletions/"); n != 0 {
			t.Errorf("%s: %d objects left", s.Location(), n)
		}
	}
}

// TestLockStale: a lock is stale once unrefreshed for LockStale, or when
// its process is gone from this process space; a PID from another
// process space (another container on the same host) proves nothing.
func TestLockStale(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	now := time.Now()
	for _, c := range []struct {
		name  string
		l     LockInfo
		stale bool
	}{
		{"fresh, this process", LockInfo{PID: os.Getpid(), Processes: processSpace, Refreshed: now}, false},
		{"fresh, process gone", LockInfo{PID: dead, Processes: processSpace, Refreshed: now}, true},
		{"fresh, process elsewhere", LockInfo{PID: dead, Processes: "other boot", Refreshed: now}, false},
		{"not refreshed", LockInfo{PID: os.Getpid(), Processes: processSpace, Refreshed: now.Add(-LockStale - time.Second)}, true},
	} {
		if got := c.l.Stale(now); got != c.stale {
			t.Errorf("%s: stale %v", c.name, got)
		}
	}
	if processSpace == "" {
		t.Error("no process space on Linux")
	}
}
