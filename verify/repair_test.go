package verify_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	miniogo "github.com/minio/minio-go/v7"

	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/verify"
)

// repairAndCheck verifies (reading every pack), repairs, verifies again,
// and restores every snapshot bit-identically after stopping server
// `without`, so the restore needs what repair rebuilt.
func (f *fixture) repairAndCheck(t *testing.T, without int) *verify.Repaired {
	t.Helper()
	ctx := context.Background()
	state := filepath.Join(t.TempDir(), "state.json")
	before := f.run(t, verify.Options{ReadDataPercent: 100, StateFile: state})
	if before.Status != verify.Degraded {
		t.Fatalf("before repair: status %s: %v", before.Status, before.Problems)
	}
	done, err := verify.Repair(ctx, f.open(t), before)
	if err != nil {
		t.Fatalf("repair: %v (%+v)", err, done)
	}
	if after := f.run(t, verify.Options{ReadDataPercent: 100, StateFile: state}); after.Status != verify.OK {
		t.Fatalf("after repair: status %s: %v", after.Status, after.Problems)
	}
	f.Servers[without].Stop()
	f.restoresAll(t)
	return done
}

// TestRepairBucketRecreated: target 2's bucket is deleted with everything
// in it. While it is gone, repair says that target must be made reachable
// first; once it is recreated empty, repair refills it from the others.
func TestRepairBucketRecreated(t *testing.T) {
	f := setup(t)
	f.Servers[1].DeleteBucket(t, "ferry")
	rep := f.run(t, verify.Options{})
	done, err := verify.Repair(context.Background(), f.open(t), rep)
	if err == nil || len(done.Failed) == 0 || !strings.Contains(done.Failed[0], "target 2") || !strings.Contains(done.Failed[0], "unreachable") {
		t.Fatalf("repair with target 2's bucket gone: %v, failed %q; want target 2 named unreachable", err, done.Failed)
	}
	f.Servers[1].CreateBucket(t, "ferry")
	done = f.repairAndCheck(t, 0)
	if len(done.Shards) < 4 || len(done.Copied) < 4 {
		t.Fatalf("repair rebuilt %d shards and copied %d objects; want every shard and the metadata of target 2", len(done.Shards), len(done.Copied))
	}
	for _, s := range done.Shards {
		if s.Target != 2 {
			t.Fatalf("rebuilt a shard on target %d: %v", s.Target, s)
		}
	}
}

// TestRepairCorruptTruncatedAndIndex: a flipped byte, a truncated shard and
// an index object deleted from every target, in different packs.
func TestRepairCorruptTruncatedAndIndex(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	a, b := f.packOf(t, f.db.SnapshotID), f.packOf(t, f.logs.SnapshotID)
	f.rewrite(t, a, 0, func(x []byte) []byte { x[len(x)-100] ^= 0x40; return x })
	f.rewrite(t, b, 2, func(x []byte) []byte { return x[:len(x)/2] })
	var names []string
	for o := range f.Servers[0].Client(t).ListObjects(ctx, "ferry", miniogo.ListObjectsOptions{Prefix: "repo/index/", Recursive: true}) {
		names = append(names, o.Key)
	}
	slices.Sort(names)
	for _, s := range f.Servers {
		if err := s.Client(t).RemoveObject(ctx, "ferry", names[0], miniogo.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	done := f.repairAndCheck(t, 1) // shard 1 of every pack unreadable: a and b need their rebuilt shards
	if done.Indexed == 0 || len(done.Shards) != 2 {
		t.Fatalf("repair: %d packs indexed, shards %v", done.Indexed, done.Shards)
	}
}

// TestRepairCannotReviveLostData: more than m shards gone stays data lost,
// named, and repair says it could not.
func TestRepairCannotReviveLostData(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	victim := f.packOf(t, f.db.SnapshotID)
	for i := 0; i < 2; i++ {
		cl, key := f.shard(t, victim, i)
		if err := cl.RemoveObject(ctx, "ferry", key, miniogo.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	rep := f.run(t, verify.Options{})
	if rep.Status != verify.DataLost {
		t.Fatalf("status %s", rep.Status)
	}
	if _, err := verify.Repair(ctx, f.open(t), rep); err == nil {
		t.Fatal("repair of a lost pack reported success")
	}
	if again := f.run(t, verify.Options{}); again.Status != verify.DataLost || !errors.Is(again.Err(), verify.ErrDataLost) {
		t.Fatalf("after repair: %s", again.Status)
	}
}

// TestRecheckReadsAgainWhatReadingFound: shards replaced by other bytes of
// their size, with no checksum stored, pass every structural check; only
// reading finds them. The check after a repair (Recheck) reads those packs
// again: a pack lost that way stays lost, and a repaired one is read back.
func TestRecheckReadsAgainWhatReadingFound(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	state := filepath.Join(t.TempDir(), "state.json")
	db := f.packOf(t, f.db.SnapshotID)
	logs := f.packOf(t, f.logs.SnapshotID)
	f.rewrite(t, db, 0, scramble) // repairable: one of three
	for i := range 2 {
		f.rewrite(t, logs, i, scramble) // lost: two of three
	}
	if rep := f.run(t, verify.Options{}); rep.Status != verify.OK {
		t.Fatalf("the structural level saw what only reading can: %s %v", rep.Status, rep.Problems)
	}
	before := f.run(t, verify.Options{ReadDataPercent: 100, StateFile: state})
	if before.Status != verify.DataLost {
		t.Fatalf("reading every pack: status %s, want data lost: %v", before.Status, before.Problems)
	}
	want := []string{db.String(), logs.String()}
	slices.Sort(want)
	var got []string
	for _, id := range before.ReadDamaged() {
		got = append(got, id.String())
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ReadDamaged %v, want the two damaged packs %v", got, want)
	}
	cursor, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	done, err := verify.Repair(ctx, f.open(t), before)
	if err == nil {
		t.Fatalf("repair of a lost pack reported success: %+v", done)
	}
	after, err := verify.Recheck(ctx, f.open(t), before, password)
	if err != nil {
		t.Fatal(err)
	}
	if after.Status != verify.DataLost || after.Read == nil || after.Read.Packs != 2 || after.ReadBytes() == 0 {
		t.Fatalf("after repair: status %s, read %+v: want data lost, the two packs read again", after.Status, after.Read)
	}
	if len(after.Lost) != 1 || after.Lost[0].ID != f.logs.SnapshotID {
		t.Fatalf("after repair, lost %v: want only the logs snapshot", after.Lost)
	}
	if !slices.Contains(after.SnapshotIDs, f.db.SnapshotID) {
		t.Fatalf("the db snapshot, repaired, is not among those checked: %v", after.SnapshotIDs)
	}
	for _, p := range after.Problems {
		if p.Pack == db.String() {
			t.Errorf("the repaired pack still has a problem: %v", p)
		}
	}
	if b, err := os.ReadFile(state); err != nil || string(b) != string(cursor) {
		t.Errorf("the rotation state changed: %s, was %s (%v)", b, cursor, err)
	}
}

// interrupting is a Store whose writes (Create, Delete) end the repair
// that uses it: after its budget of writes, it cancels the context, so the
// repair stops at that point as a killed one would have. Only the
// interruption is staged; the stores are real.
type interrupting struct {
	objstore.Store
	writes *atomic.Int32
	budget int32
	cancel context.CancelFunc
}

func (s interrupting) wrote() {
	if s.writes.Add(1) >= s.budget {
		s.cancel()
	}
}

func (s interrupting) Create(ctx context.Context, name string, data []byte) error {
	err := s.Store.Create(ctx, name, data)
	s.wrote()
	return err
}

func (s interrupting) Delete(ctx context.Context, name string) error {
	err := s.Store.Delete(ctx, name)
	s.wrote()
	return err
}

// TestRepairInterrupted: repairs cut short at their first write
// (shards rebuilt, a corrupt shard deleted before its replacement is
// written, metadata copied to a target that lost nearly everything) never leave the repository worse: each verify
// in between finds it degraded, never data lost, and each repair goes on
// from where the last stopped, until one finishes and a restore without
// the other targets' help is bit-identical.
func TestRepairInterrupted(t *testing.T) {
	f := setup(t)
	a := f.packOf(t, f.db.SnapshotID)
	f.rewrite(t, a, 0, func(x []byte) []byte { x[len(x)-100] ^= 0x40; return x })
	// Target 2 loses everything but pack a's shard, which a needs.
	ctx := context.Background()
	cl := f.Servers[1].Client(t)
	for o := range cl.ListObjects(ctx, "ferry", miniogo.ListObjectsOptions{Prefix: "repo/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		if !strings.Contains(o.Key, a.String()) {
			if err := cl.RemoveObject(ctx, "ferry", o.Key, miniogo.RemoveObjectOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	state := filepath.Join(t.TempDir(), "state.json")
	rounds, claimed := 0, false
	for ; ; rounds++ {
		rep := f.run(t, verify.Options{ReadDataPercent: 100, StateFile: state})
		if rep.Status == verify.OK {
			break
		}
		if claimed {
			t.Fatalf("round %d: the last repair reported success, and verify finds: %v", rounds, rep.Problems)
		}
		if rep.Status != verify.Degraded || rounds > 100 {
			t.Fatalf("round %d: status %s: %v", rounds, rep.Status, rep.Problems)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var writes atomic.Int32
		stores := f.Stores(t)
		for i, s := range stores {
			stores[i] = interrupting{Store: s, writes: &writes, budget: 1, cancel: cancel}
		}
		r, err := repo.Open(ctx, stores, password)
		if err != nil {
			t.Fatal(err)
		}
		_, err = verify.Repair(ctx, r, rep)
		cancel()
		claimed = err == nil
	}
	t.Logf("%d repairs, each cut short at its first write (those in flight finish), until verify found nothing left", rounds)
	if rounds < 5 {
		t.Fatalf("the repair took %d rounds: the damage was too small to interrupt it much", rounds)
	}
	f.Servers[0].Stop()
	f.restoresAll(t)
}

// TestRepairTwoParity: with 2+2 over four targets, two shards of a pack
// may go, in any mix (missing, truncated, corrupt where only reading sees
// it): verify calls it degraded, repair rebuilds them, and a restore with
// two targets stopped needs what it rebuilt. A third shard gone is data
// lost, and names the snapshot.
func TestRepairTwoParity(t *testing.T) {
	f := setupScheme(t, 0, erasure.Scheme{K: 2, M: 2})
	ctx := context.Background()
	a, b := f.packOf(t, f.db.SnapshotID), f.packOf(t, f.logs.SnapshotID)
	remove := func(id pack.ID, i int) {
		t.Helper()
		cl, key := f.shard(t, id, i)
		if err := cl.RemoveObject(ctx, "ferry", key, miniogo.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	remove(a, 0)
	f.rewrite(t, a, 1, scramble)
	f.rewrite(t, b, 0, func(x []byte) []byte { return x[:len(x)/2] })
	remove(b, 1)
	state := filepath.Join(t.TempDir(), "state.json")
	before := f.run(t, verify.Options{ReadDataPercent: 100, StateFile: state})
	if before.Status != verify.Degraded {
		t.Fatalf("two of four shards damaged: status %s: %v", before.Status, before.Problems)
	}
	done, err := verify.Repair(ctx, f.open(t), before)
	if err != nil || len(done.Shards) != 4 {
		t.Fatalf("repair: %v, rebuilt %v: want the four shards", err, done.Shards)
	}
	if after := f.run(t, verify.Options{ReadDataPercent: 100, StateFile: state}); after.Status != verify.OK {
		t.Fatalf("after repair: status %s: %v", after.Status, after.Problems)
	}
	f.Servers[2].Stop()
	f.Servers[3].Stop()
	f.restoresAll(t) // packs a and b from their rebuilt shards 0 and 1 alone
	f.Servers[2].Restart()
	f.Servers[3].Restart()

	for i := range 3 {
		remove(a, i)
	}
	rep := f.run(t, verify.Options{})
	if rep.Status != verify.DataLost || len(rep.Lost) != 1 || rep.Lost[0].ID != f.db.SnapshotID || !strings.Contains(rep.Err().Error(), "shop/db-snap-1") {
		t.Fatalf("three of four shards gone: status %s, lost %v, %v", rep.Status, rep.Lost, rep.Err())
	}
}
