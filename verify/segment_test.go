package verify_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/verify"
)

// TestSegmentedSnapshots: the extents of a volume of many extents are in
// segments, blobs in packs that the snapshots of the volume share where
// their extents agree. Verify reads them from their packs. A shard of a
// pack of segments damaged is repairable. A pack of segments with more
// shards lost than the parity covers loses every snapshot that names one of
// its segments, each named with its volume, whether its segments still
// read from the shards left (the pack is lost all the same) or not. A
// forgotten snapshot's segments are garbage that prune deletes with its
// packs, and the repository verifies clean.
func TestSegmentedSnapshots(t *testing.T) {
	f := setupSegments(t, 8)
	ctx := context.Background()
	r := f.open(t)
	r.SegmentExtents = 8
	db1, logs := mustSnapshot(t, r, f.db.SnapshotID), mustSnapshot(t, r, f.logs.SnapshotID)
	db2 := f.backupChanged(t, r, db1, "db-snap-2")
	in1 := map[chunk.ID]bool{}
	for _, sg := range db1.Segments {
		in1[sg.ID] = true
	}
	var shared []repo.Segment
	for _, sg := range db2.Segments {
		if in1[sg.ID] {
			shared = append(shared, sg)
		}
	}
	fresh := len(db2.Segments) - len(shared)
	t.Logf("db: %d segments; changed db: %d, %d of them new; logs: %d", len(db1.Segments), len(db2.Segments), fresh, len(logs.Segments))
	if len(db1.Segments) < 6 || len(logs.Segments) == 0 || fresh == 0 || 2*fresh >= len(db2.Segments) {
		t.Fatalf("db has %d segments, logs %d, the changed db %d of which %d new: want several, and few new", len(db1.Segments), len(logs.Segments), len(db2.Segments), fresh)
	}
	// The second backup stored only its new segments.
	for _, sg := range db2.Segments {
		if in1[sg.ID] {
			continue
		}
		p, _, err := r.ReadPack(ctx, f.packHolding(t, sg.ID))
		if err != nil {
			t.Fatal(err)
		}
		if entries, err := r.Codec.ParseHeader(p); err != nil || len(entries) != fresh {
			t.Fatalf("the new segments' pack holds %d blobs (%v), want the %d new segments", len(entries), err, fresh)
		}
		break
	}
	all := map[chunk.ID]bool{}
	for _, s := range []*repo.Snapshot{db1, db2, logs} {
		for _, sg := range s.Segments {
			all[sg.ID] = true
		}
	}
	// Each segment is read once, however many snapshots share it.
	logged := rangeLog{reads: map[string]int{}, mu: &sync.Mutex{}}
	var stores []objstore.Store
	for _, st := range f.Stores(t) {
		l := logged
		l.Store = st
		stores = append(stores, l)
	}
	lr, err := repo.Open(ctx, stores, password)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := verify.Run(ctx, lr, verify.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != verify.OK || len(rep.Problems) != 0 || rep.Segments != len(all) {
		t.Fatalf("segmented snapshots: %s, %d segments, want %d: %v", rep.Status, rep.Segments, len(all), rep.Problems)
	}
	if len(logged.reads) == 0 {
		t.Fatal("verify read no segment")
	}
	for r, n := range logged.reads {
		if n > 1 {
			t.Fatalf("verify read %s %d times (%d segments, %d of them in both db snapshots)", r, n, len(all), len(shared))
		}
	}
	// The pack of a segment both db snapshots name, and the one of logs' segments.
	victim, logsPack := f.packHolding(t, shared[len(shared)/2].ID), f.packHolding(t, logs.Segments[0].ID)
	if victim == logsPack {
		t.Fatal("the segments of db and logs share a pack")
	}

	// One shard replaced: repairable, and repair puts it back.
	f.replace(t, victim, 0, scramble)
	rep = f.run(t, verify.Options{})
	bad := problems(rep, verify.KindShardCorrupt)
	if rep.Status != verify.Degraded || len(rep.Lost) != 0 || len(rep.Problems) != 1 || len(bad) != 1 || bad[0].Pack != victim.String() || *bad[0].Shard != 0 {
		t.Fatalf("a shard of a pack of segments replaced: want shard 0 of %s corrupt, repairable; got %s: %v", victim.Short(), rep.Status, rep.Problems)
	}
	done, err := verify.Repair(ctx, f.open(t), rep)
	if err != nil || len(done.Shards) != 1 || done.Shards[0].Pack != victim || done.Shards[0].Shard != 0 {
		t.Fatalf("repair: %v (%+v)", err, done)
	}
	if rep := f.run(t, verify.Options{}); rep.Status != verify.OK || len(rep.Problems) != 0 {
		t.Fatalf("after repair: %s: %v", rep.Status, rep.Problems)
	}
	f.restoresAll(t)

	orig := make([][]byte, 3)
	for i := range orig {
		orig[i] = f.get(t, f.Servers[i].Client(t), "repo/"+repo.ShardName(victim, i))
	}
	putBack := func() {
		t.Helper()
		for i, b := range orig {
			f.putShard(t, victim, i, b)
		}
		if rep := f.run(t, verify.Options{}); rep.Status != verify.OK || len(rep.Problems) != 0 {
			t.Fatalf("shards put back: %s: %v", rep.Status, rep.Problems)
		}
	}
	lostBoth := func(rep *verify.Report, kind string) {
		t.Helper()
		if rep.Status != verify.DataLost || !errors.Is(rep.Err(), verify.ErrDataLost) {
			t.Fatalf("status %s: %v", rep.Status, rep.Problems)
		}
		lost := problems(rep, verify.KindPackLost)
		if len(lost) != 1 || lost[0].Pack != victim.String() {
			t.Fatalf("want pack %s lost, got %v", victim.Short(), rep.Problems)
		}
		var got []string
		for _, l := range rep.Lost {
			got = append(got, l.ID)
			if l.Name != "db" || l.Namespace != "shop" || l.PVC != "db-data" || len(l.Why) == 0 || !strings.Contains(l.Why[0], "segment ") {
				t.Errorf("lost snapshot named wrongly: %+v", l)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, slices.Sorted(slices.Values([]string{db1.ID, db2.ID}))) {
			t.Fatalf("want both db snapshots lost (a segment they share), got %+v", rep.Lost)
		}
		named := problems(rep, kind)
		if len(named) != 2 {
			t.Fatalf("want both db snapshots reported as %s, got %v", kind, rep.Problems)
		}
		for _, p := range named {
			if p.Severity != verify.DataLost || !strings.Contains(p.Detail, "segment ") || !strings.Contains(p.Detail, "shop/db-snap-") || !strings.HasPrefix(p.Object, "snapshots/") {
				t.Errorf("lost snapshot reported as %s", p)
			}
		}
		if msg := rep.Err().Error(); !strings.Contains(msg, "shop/db-snap-1") || !strings.Contains(msg, "shop/db-snap-2") {
			t.Errorf("error does not name the snapshots: %s", msg)
		}
	}

	// Two shards cut short: the pack is lost, though every segment still
	// reads from the shards' ranges (the pack header at its end is cut).
	for i := 1; i < 3; i++ {
		f.replace(t, victim, i, func(b []byte) []byte { return b[:len(b)-1] })
	}
	rep = f.run(t, verify.Options{})
	lostBoth(rep, verify.KindSnapshotUnrestorable)
	if rep.Segments != len(all) {
		t.Fatalf("%d segments counted, want %d: every segment reads", rep.Segments, len(all))
	}
	for _, l := range rep.Lost {
		if !strings.Contains(strings.Join(l.Why, " "), victim.Short()+" lost") {
			t.Errorf("lost snapshot does not name the pack: %+v", l)
		}
	}
	putBack()

	// Both data shards gone: the segments in the pack cannot be read, and
	// verify says so rather than failing.
	for i := range 2 {
		f.remove(t, i, repo.ShardName(victim, i))
	}
	rep = f.run(t, verify.Options{})
	lostBoth(rep, verify.KindSnapshotLost)
	if _, err := verify.Drill(ctx, f.open(t), db2, verify.Discard, verify.DrillOptions{}); !errors.Is(err, restore.ErrDataLost) {
		t.Fatalf("drill of a lost snapshot: want ErrDataLost, got %v", err)
	}
	putBack()

	// Forgotten, db1 and logs leave garbage in packs: the db1 segments that
	// db2 does not share, every pack of logs. Prune deletes logs' packs.
	if err := r.Forget(ctx, []string{db1.ID, logs.ID}); err != nil {
		t.Fatal(err)
	}
	delete(f.images, db1.ID)
	delete(f.images, logs.ID)
	rep = f.run(t, verify.Options{})
	if rep.Status != verify.OK || len(rep.Problems) != 0 || rep.Segments != len(db2.Segments) {
		t.Fatalf("after forget: %s, %d segments, want %d: %v", rep.Status, rep.Segments, len(db2.Segments), rep.Problems)
	}
	var deleted []string
	for range 2 { // the first run marks, the second deletes
		pr, err := f.open(t).Prune(ctx, repo.PruneOptions{})
		if err != nil {
			t.Fatalf("prune: %v", err)
		}
		for _, p := range pr.Deleted {
			deleted = append(deleted, p.ID)
		}
	}
	if !slices.Contains(deleted, logsPack.String()) || slices.Contains(deleted, victim.String()) {
		t.Fatalf("prune deleted %d packs: want the pack of logs' segments %s among them, not %s", len(deleted), logsPack.Short(), victim.Short())
	}
	if rep := f.run(t, verify.Options{}); rep.Status != verify.OK || len(rep.Problems) != 0 || rep.Segments != len(db2.Segments) {
		t.Fatalf("after prune: %s, %d segments: %v", rep.Status, rep.Segments, rep.Problems)
	}
	f.restoresAll(t)
}

// TestSegmentsIndexLost: with every index object gone, the segments of the
// snapshots are found in the pack headers, and then the chunks they name:
// the repository is repairable, not lost, and repair indexes both again.
func TestSegmentsIndexLost(t *testing.T) {
	f := setupSegments(t, 8)
	ctx := context.Background()
	r := f.open(t)
	db := mustSnapshot(t, r, f.db.SnapshotID)
	if len(db.Segments) < 2 {
		t.Fatalf("db has %d segments: want several", len(db.Segments))
	}
	segPack := f.packHolding(t, db.Segments[0].ID)
	for i := range f.Servers {
		for _, name := range f.list(t, i, "index/") {
			f.remove(t, i, name)
		}
	}
	rep := f.run(t, verify.Options{})
	if rep.Status != verify.Degraded || len(rep.Lost) != 0 || len(rep.NeedRebuild) != 2 {
		t.Fatalf("index lost: want degraded, both snapshots needing repair; got %s, lost %v, needing repair %v: %v", rep.Status, rep.Lost, rep.NeedRebuild, rep.Problems)
	}
	if !slices.ContainsFunc(problems(rep, verify.KindIndexRebuildable), func(p verify.Problem) bool { return p.Pack == segPack.String() }) {
		t.Fatalf("the pack of db's segments %s is not reported rebuildable: %v", segPack.Short(), rep.Problems)
	}
	for _, s := range rep.NeedRebuild {
		if s.ID != db.ID && s.ID != f.logs.SnapshotID || s.ID == db.ID && (s.Namespace != "shop" || s.PVC != "db-data") || !strings.Contains(strings.Join(s.Why, " "), "segment ") {
			t.Errorf("snapshot needing repair named wrongly: %+v", s)
		}
	}
	done, err := verify.Repair(ctx, f.open(t), rep)
	if err != nil || done.Indexed < 2 {
		t.Fatalf("repair: %v (%+v)", err, done)
	}
	if rep := f.run(t, verify.Options{}); rep.Status != verify.OK || len(rep.Problems) != 0 || rep.Segments == 0 {
		t.Fatalf("after repair: %s, %d segments: %v", rep.Status, rep.Segments, rep.Problems)
	}
	f.restoresAll(t)
}

// backupChanged backs up s's volume again with 256 KiB in its middle
// changed, as snapshot vs of the same PVC, and returns the new snapshot.
func (f *fixture) backupChanged(t *testing.T, r *repo.Repo, s *repo.Snapshot, vs string) *repo.Snapshot {
	t.Helper()
	b, err := os.ReadFile(f.images[s.ID])
	if err != nil {
		t.Fatal(err)
	}
	copy(b[len(b)/2:], volume.Data(rand.New(rand.NewPCG(99, 1)), 256<<10))
	img := filepath.Join(t.TempDir(), "changed.img")
	if err := os.WriteFile(img, b, 0o600); err != nil {
		t.Fatal(err)
	}
	vol := s.Volume
	vol.VolumeSnapshot = vs
	sum, err := backup.File(context.Background(), r, img, backup.Options{Name: s.Name, Volume: vol})
	if err != nil {
		t.Fatal(err)
	}
	f.images[sum.SnapshotID] = img
	return mustSnapshot(t, r, sum.SnapshotID)
}

// packHolding returns the pack the index says holds blob id.
func (f *fixture) packHolding(t *testing.T, id chunk.ID) pack.ID {
	t.Helper()
	idx, err := f.open(t).LoadIndex(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	p, _, ok := idx.Lookup(id)
	if !ok {
		t.Fatalf("%s not indexed", id.Short())
	}
	return p.ID
}

// rangeLog counts the reads of each range of data/ objects.
type rangeLog struct {
	objstore.Store
	mu    *sync.Mutex
	reads map[string]int
}

func (s rangeLog) GetRange(ctx context.Context, name string, off, length int64) ([]byte, error) {
	if strings.HasPrefix(name, "data/") {
		s.mu.Lock()
		s.reads[fmt.Sprintf("%s [%d,+%d)", name, off, length)]++
		s.mu.Unlock()
	}
	return s.Store.GetRange(ctx, name, off, length)
}
