package verify_test

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	miniogo "github.com/minio/minio-go/v7"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/verify"
)

// TestRepairDuringBackup damages an earlier snapshot, then verifies and
// repairs in a loop while a backup of many packs runs into the same
// repository. Neither may disturb the other: the backup succeeds, no
// verify run reports the backup's objects in flight as damage, no repair
// fails, the earlier snapshot is whole again, and both restore.
func TestRepairDuringBackup(t *testing.T) {
	ctx := context.Background()
	c := minio.StartCluster(t, 3, "ferry", "repo")
	f := &fixture{Cluster: c, images: map[string]string{}}
	r, err := repo.Init(ctx, c.Stores(t), password, repo.Options{
		Erasure: erasure.Scheme{K: 2, M: 1}, PackSize: 1 << 20, Chunking: &smallChunks,
		KDF: crypt.KDFParams{N: 1024, R: 8, P: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	image := func(name string, size int64, seed uint64) string {
		p := filepath.Join(dir, name)
		if err := volume.Write(p, volume.Spec{Size: size, DataFrac: 0.6, Seed: seed}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	first, err := backup.File(ctx, r, image("first.img", 24<<20, 21), backup.Options{Name: "first"})
	if err != nil {
		t.Fatal(err)
	}
	f.images[first.SnapshotID] = filepath.Join(dir, "first.img")

	// Damage one shard in each of several packs of the first snapshot:
	// gone, truncated, or replaced by other bytes of the same length.
	idx, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var victims []pack.ID
	for _, p := range idx.Packs() {
		victims = append(victims, p.ID)
	}
	slices.SortFunc(victims, func(a, b pack.ID) int { return bytes.Compare(a[:], b[:]) })
	if len(victims) < 6 {
		t.Fatalf("want at least 6 packs in the first snapshot, got %d", len(victims))
	}
	victims = victims[:6]
	for i, id := range victims {
		shard := (i + i/3) % 3 // each kind of damage to a data and a parity shard
		switch i % 3 {
		case 0:
			cl, key := f.shard(t, id, shard)
			if err := cl.RemoveObject(ctx, "ferry", key, miniogo.RemoveObjectOptions{}); err != nil {
				t.Fatal(err)
			}
		case 1:
			f.rewrite(t, id, shard, func(b []byte) []byte { return b[:len(b)-1] })
		case 2:
			f.replace(t, id, shard, scramble)
		}
	}

	second := image("second.img", 320<<20, 22)
	type result struct {
		sum *backup.Summary
		err error
	}
	done := make(chan result, 1)
	writer := f.open(t) // its own Repo, as another process would have
	go func() {
		s, err := backup.File(ctx, writer, second, backup.Options{Name: "second"})
		done <- result{s, err}
	}()

	// Rounds that end before the backup does count; the round that sees
	// it finished may have run after it.
	var rounds, repaired int
	var res result
	for finished := false; !finished; {
		rr := f.open(t)
		rep, err := verify.Run(ctx, rr, verify.Options{})
		if err != nil {
			t.Fatalf("verify during the backup: %v", err)
		}
		for _, p := range rep.Problems {
			if p.Severity == verify.Notice {
				continue // the backup's packs, not indexed yet
			}
			if id, err := pack.ParseID(p.Pack); err != nil || !slices.Contains(victims, id) {
				t.Errorf("round %d: verify reports damage the test did not cause: %s", rounds, p)
			}
		}
		fixed, err := verify.Repair(ctx, rr, rep)
		if err != nil {
			t.Errorf("round %d: repair during the backup: %v (%+v)", rounds, err, fixed)
		}
		if fixed.Indexed > 0 || len(fixed.Copied) > 0 {
			t.Errorf("round %d: repair indexed %d packs and copied %v while nothing but shards was damaged", rounds, fixed.Indexed, fixed.Copied)
		}
		select {
		case res = <-done:
			finished = true
		default:
			rounds++
			repaired += len(fixed.Shards)
		}
	}
	if res.err != nil {
		t.Fatalf("backup during repairs: %v", res.err)
	}
	if rounds < 2 || repaired != len(victims) {
		t.Fatalf("%d verify-and-repair rounds ended during the backup and rebuilt %d shards; want at least 2 rounds and the %d damaged shards", rounds, repaired, len(victims))
	}
	t.Logf("%d verify-and-repair rounds during a backup of %d packs", rounds, res.sum.Packs)
	f.images[res.sum.SnapshotID] = second

	// Repair wrote no index object: one per backup.
	var indexObjs int
	for o := range f.Servers[2].Client(t).ListObjects(ctx, "ferry", miniogo.ListObjectsOptions{Prefix: "repo/index/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		indexObjs++
	}
	if indexObjs != 2 {
		t.Fatalf("%d index objects, want the two backups'", indexObjs)
	}

	rep := f.run(t, verify.Options{ReadDataPercent: 100, StateFile: filepath.Join(t.TempDir(), "state.json")})
	if rep.Status != verify.OK || rep.Snapshots != 2 {
		t.Fatalf("after the backup and the repairs: %d snapshots, status %s: %v", rep.Snapshots, rep.Status, rep.Problems)
	}
	// Without server 1 every pack needs its shards on servers 2 and 3,
	// the repaired ones included.
	f.Servers[0].Stop()
	f.restoresAll(t)
}

// listHook is a Store that runs before() once, just before its first
// listing of prefix: a way to land a whole backup between two of verify's
// listings, which timing alone provokes only by chance.
type listHook struct {
	objstore.Store
	prefix string
	once   *sync.Once
	before func()
}

func (h listHook) List(ctx context.Context, prefix string, fn func(objstore.Info) error) error {
	if prefix == h.prefix {
		h.once.Do(h.before)
	}
	return h.Store.List(ctx, prefix, fn)
}

// TestVerifyDuringCommit commits a backup, its extents in segments, while
// verify lists the targets, just before each of its listings on one
// target. Whatever verify sees of the new snapshot, it must not see damage.
func TestVerifyDuringCommit(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	prefixes := []string{"keys/", "snapshots/", "index/", "data/"}
	for i, prefix := range prefixes {
		img := filepath.Join(t.TempDir(), "new.img")
		if err := volume.Write(img, volume.Spec{Size: 4 << 20, DataFrac: 0.5, Seed: uint64(30 + i)}); err != nil {
			t.Fatal(err)
		}
		stores := f.Stores(t)
		writer := f.open(t)
		writer.SegmentExtents = 8
		stores[1] = listHook{Store: stores[1], prefix: prefix, once: &sync.Once{}, before: func() {
			s, err := backup.File(ctx, writer, img, backup.Options{Name: "during"})
			if err != nil {
				t.Errorf("backup: %v", err)
				return
			}
			f.images[s.SnapshotID] = img
		}}
		r, err := repo.Open(ctx, stores, password)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := verify.Run(ctx, r, verify.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Status != verify.OK || len(f.images) != 3+i {
			t.Fatalf("backup committed before listing %s: status %s, %d snapshots: %v", prefix, rep.Status, len(f.images), rep.Problems)
		}
	}
	if rep := f.run(t, verify.Options{}); rep.Status != verify.OK || rep.Snapshots != 2+len(prefixes) || rep.Segments == 0 {
		t.Fatalf("after the backups: %d snapshots, %s: %v", rep.Snapshots, rep.Status, rep.Problems)
	}
	f.restoresAll(t)
}
