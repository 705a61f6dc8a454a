package repo_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

var pw = []byte("pw")

type fixture struct {
	stores []objstore.Store
	data   []byte
	snap   string
}

// newFixture backs an 8 MiB volume up into 2+1 over three in-memory
// targets, in several small packs.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{stores: []objstore.Store{objstore.NewMem(), objstore.NewMem(), objstore.NewMem()}}
	p := chunk.Params{Pol: 0x3DA3358B4DC173, MinSize: 64 << 10, MaxSize: 512 << 10, AverageBits: 17}
	r, err := repo.Init(ctx, f.stores, pw, repo.Options{Erasure: erasure.Scheme{K: 2, M: 1}, PackSize: 1 << 20, Chunking: &p, KDF: crypt.KDFParams{N: 1024, R: 8, P: 1}})
	if err != nil {
		t.Fatal(err)
	}
	f.data = volume.Data(rand.New(rand.NewPCG(3, 3)), 8<<20)
	sum, err := backup.Run(ctx, r, bytes.NewReader(f.data), int64(len(f.data)), backup.Options{Name: "v"})
	if err != nil {
		t.Fatal(err)
	}
	f.snap = sum.SnapshotID
	return f
}

func (f *fixture) open(t *testing.T, stores []objstore.Store) *repo.Repo {
	t.Helper()
	r, err := repo.Open(context.Background(), stores, pw)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (f *fixture) restores(t *testing.T, stores []objstore.Store) {
	t.Helper()
	ctx := context.Background()
	r := f.open(t, stores)
	s, err := r.FindSnapshot(ctx, f.snap, "")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	if _, err := restore.Run(ctx, r, s, out, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, f.data) {
		t.Fatal("restored bytes differ")
	}
}

func names(t *testing.T, s objstore.Store, prefix string) []string {
	var out []string
	if err := s.List(context.Background(), prefix, func(i objstore.Info) error { out = append(out, i.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func packs(t *testing.T, r *repo.Repo) []repo.PackInfo {
	x, err := r.LoadIndex(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return x.Packs()
}

func TestRepairShards(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	r := f.open(t, f.stores)
	ps := packs(t, r)
	if len(ps) < 3 {
		t.Fatalf("want several packs, have %d", len(ps))
	}
	a, b := ps[0].ID, ps[1].ID
	if err := f.stores[0].Delete(ctx, repo.ShardName(a, 0)); err != nil {
		t.Fatal(err)
	}
	obj, _ := f.stores[1].Get(ctx, repo.ShardName(b, 1))
	obj[len(obj)-1] ^= 0xff
	f.stores[1].Delete(ctx, repo.ShardName(b, 1))
	f.stores[1].Create(ctx, repo.ShardName(b, 1), obj)

	fixed, err := r.RepairPack(ctx, a)
	if err != nil || len(fixed) != 1 || fixed[0].Shard != 0 || fixed[0].Reason != "missing" {
		t.Fatalf("repair of a missing shard: %v %v", fixed, err)
	}
	fixed, err = r.RepairPack(ctx, b)
	if err != nil || len(fixed) != 1 || fixed[0].Shard != 1 || !strings.Contains(fixed[0].Reason, "crc") {
		t.Fatalf("repair of a corrupt shard: %v %v", fixed, err)
	}
	for _, id := range []repo.PackInfo{ps[0], ps[1]} {
		if _, problems, err := r.ReadPack(ctx, id.ID); err != nil || len(problems) != 0 {
			t.Fatalf("after repair: %v %v", problems, err)
		}
	}
	// Idempotent: nothing left to do.
	if fixed, err := r.RepairPack(ctx, a); err != nil || len(fixed) != 0 {
		t.Fatalf("second repair: %v %v", fixed, err)
	}
	// More than m shards gone: lost, and said so.
	f.stores[0].Delete(ctx, repo.ShardName(ps[2].ID, 0))
	f.stores[1].Delete(ctx, repo.ShardName(ps[2].ID, 1))
	if _, err := r.RepairPack(ctx, ps[2].ID); !errors.Is(err, repo.ErrPackLost) {
		t.Fatalf("two of three shards gone: %v", err)
	}
}

// TestRepairTargetThatCameBackEmpty: target 3's bucket is lost and
// recreated empty. Repair refills it: afterwards the repository restores
// with target 1 gone, which needs target 3's shards.
func TestRepairTargetThatCameBackEmpty(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	fresh := []objstore.Store{f.stores[0], f.stores[1], objstore.NewMem()}
	r := f.open(t, fresh)
	wrote, err := r.RepairMetadata(ctx)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(wrote, "\n")
	for _, want := range []string{"target 3: config", "target 3: keys/", "target 3: index/", "target 3: snapshots/" + f.snap} {
		if !strings.Contains(joined, want) {
			t.Fatalf("repair did not write %q; wrote:\n%s", want, joined)
		}
	}
	for _, p := range packs(t, r) {
		if _, err := r.RepairPack(ctx, p.ID); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(names(t, fresh[2], "data/")); n != len(packs(t, r)) {
		t.Fatalf("target 3 holds %d shards, want one per pack (%d)", n, len(packs(t, r)))
	}
	f.restores(t, []objstore.Store{objstore.Unavailable("gone", errors.New("gone")), fresh[1], fresh[2]})
}

func TestRebuildIndex(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	r := f.open(t, f.stores)
	want := len(packs(t, r))
	for _, s := range f.stores {
		for _, n := range names(t, s, "index/") {
			s.Delete(ctx, n)
		}
	}
	if got := len(packs(t, r)); got != 0 {
		t.Fatalf("%d packs indexed after deleting every index object", got)
	}
	done, err := r.RebuildIndex(ctx)
	if err != nil || len(done) != want {
		t.Fatalf("rebuilt %d of %d packs: %v", len(done), want, err)
	}
	f.restores(t, f.stores)
	if again, err := r.RebuildIndex(ctx); err != nil || len(again) != 0 {
		t.Fatalf("second rebuild: %v %v", again, err)
	}
}
