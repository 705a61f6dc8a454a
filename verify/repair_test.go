package verify_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	miniogo "github.com/minio/minio-go/v7"

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
