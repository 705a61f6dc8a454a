package repo_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
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
func newFixture(t *testing.T) *fixture { return newFixtureSegments(t, 0) }

// newFixtureSegments is newFixture with the snapshot's extents in segments
// of perSegment (see repo.Repo.SegmentExtents; 0: the default, so none).
func newFixtureSegments(t *testing.T, perSegment int) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{stores: []objstore.Store{objstore.NewMem(), objstore.NewMem(), objstore.NewMem()}}
	p := chunk.Params{Pol: 0x3DA3358B4DC173, MinSize: 64 << 10, MaxSize: 512 << 10, AverageBits: 17}
	r, err := repo.Init(ctx, f.stores, pw, repo.Options{Erasure: erasure.Scheme{K: 2, M: 1}, PackSize: 1 << 20, Chunking: &p, KDF: crypt.KDFParams{N: 1024, R: 8, P: 1}})
	if err != nil {
		t.Fatal(err)
	}
	r.SegmentExtents = perSegment
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
	a, b := ps[0], ps[1]
	if err := f.stores[0].Delete(ctx, repo.ShardName(a.ID, 0)); err != nil {
		t.Fatal(err)
	}
	obj, _ := f.stores[1].Get(ctx, repo.ShardName(b.ID, 1))
	obj[len(obj)-1] ^= 0xff
	f.stores[1].Delete(ctx, repo.ShardName(b.ID, 1))
	f.stores[1].Create(ctx, repo.ShardName(b.ID, 1), obj)

	fixed, err := r.RepairPack(ctx, a)
	if err != nil || len(fixed) != 1 || fixed[0].Shard != 0 || fixed[0].Reason != "missing" {
		t.Fatalf("repair of a missing shard: %v %v", fixed, err)
	}
	fixed, err = r.RepairPack(ctx, b)
	if err != nil || len(fixed) != 1 || fixed[0].Shard != 1 || !strings.Contains(fixed[0].Reason, "crc") {
		t.Fatalf("repair of a corrupt shard: %v %v", fixed, err)
	}
	for _, p := range []repo.PackInfo{a, b} {
		if _, problems, err := r.ReadPack(ctx, p.ID); err != nil || len(problems) != 0 {
			t.Fatalf("after repair: %v %v", problems, err)
		}
		sameAsRecorded(t, f.stores, p)
	}
	// Idempotent: nothing left to do.
	if fixed, err := r.RepairPack(ctx, a); err != nil || len(fixed) != 0 {
		t.Fatalf("second repair: %v %v", fixed, err)
	}
	// More than m shards gone: lost, and said so.
	f.stores[0].Delete(ctx, repo.ShardName(ps[2].ID, 0))
	f.stores[1].Delete(ctx, repo.ShardName(ps[2].ID, 1))
	if _, err := r.RepairPack(ctx, ps[2]); !errors.Is(err, repo.ErrPackLost) {
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
		if _, err := r.RepairPack(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(names(t, fresh[2], "data/")); n != len(packs(t, r)) {
		t.Fatalf("target 3 holds %d shards, want one per pack (%d)", n, len(packs(t, r)))
	}
	f.restores(t, []objstore.Store{objstore.Unavailable("gone", errors.New("gone")), fresh[1], fresh[2]})
}

// TestRepairSegments: the shards of the pack holding a snapshot's
// segments, one missing and then one corrupt, are rebuilt from the others;
// before the first repair the segments do not read without a second
// target, after each they read and restore bit for bit without the one
// target that holds no rebuilt shard.
func TestRepairSegments(t *testing.T) {
	ctx := context.Background()
	f := newFixtureSegments(t, 8)
	r := f.open(t, f.stores)
	s, err := r.FindSnapshot(ctx, f.snap, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Segments) < 3 {
		t.Fatalf("%d segments, want several", len(s.Segments))
	}
	want := allExtents(t, r, s)
	idx, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sp, _, ok := idx.Lookup(s.Segments[0].ID)
	if !ok {
		t.Fatal("the first segment is not indexed")
	}
	for _, e := range want {
		if info, _, _ := idx.Lookup(e.ID); !e.Zero && info.ID == sp.ID {
			t.Fatalf("chunk %s is in the pack of the segments", e.ID.Short())
		}
	}
	// without returns the stores with the target of shard i gone.
	without := func(i int) []objstore.Store {
		out := slices.Clone(f.stores)
		out[r.TargetOf(i).Index] = objstore.Unavailable("gone", errors.New("gone"))
		return out
	}
	damage := func(i int, corrupt bool) {
		t.Helper()
		st, name := f.stores[r.TargetOf(i).Index], repo.ShardName(sp.ID, i)
		obj, err := st.Get(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Delete(ctx, name); err != nil {
			t.Fatal(err)
		}
		if corrupt {
			obj[len(obj)-1] ^= 0xff
			if err := st.Create(ctx, name, obj); err != nil {
				t.Fatal(err)
			}
		}
	}

	damage(0, false)
	lost := f.open(t, without(1))
	if err := lost.Extents(ctx, s, func([]repo.Extent) error { return nil }); !errors.Is(err, repo.ErrSegmentLost) {
		t.Fatalf("segments read with one shard of their pack missing and another's target gone: %v", err)
	}
	fixed, err := r.RepairPack(ctx, sp)
	if err != nil || len(fixed) != 1 || fixed[0].Shard != 0 || fixed[0].Reason != "missing" {
		t.Fatalf("repair of a missing shard: %v %v", fixed, err)
	}
	sameAsRecorded(t, f.stores, sp)
	if got := allExtents(t, f.open(t, without(1)), s); !reflect.DeepEqual(got, want) {
		t.Fatal("the segments read otherwise after repair")
	}
	f.restores(t, without(1))

	damage(2, true)
	fixed, err = r.RepairPack(ctx, sp)
	if err != nil || len(fixed) != 1 || fixed[0].Shard != 2 || !strings.Contains(fixed[0].Reason, "crc") {
		t.Fatalf("repair of a corrupt shard: %v %v", fixed, err)
	}
	sameAsRecorded(t, f.stores, sp)
	if got := allExtents(t, f.open(t, without(0)), s); !reflect.DeepEqual(got, want) {
		t.Fatal("the segments read otherwise after repair")
	}
	f.restores(t, without(0))
}

// allExtents reads the extents of snapshot s, a segment at a time.
func allExtents(t *testing.T, r *repo.Repo, s *repo.Snapshot) []repo.Extent {
	t.Helper()
	var out []repo.Extent
	if err := r.Extents(context.Background(), s, func(exts []repo.Extent) error { out = append(out, exts...); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// sameAsRecorded checks that every shard of p is stored with the CRC32C the
// index recorded.
func sameAsRecorded(t *testing.T, stores []objstore.Store, p repo.PackInfo) {
	t.Helper()
	if len(p.ShardCRC) != len(stores) {
		t.Fatalf("pack %s: %d shard CRCs recorded", p.ID.Short(), len(p.ShardCRC))
	}
	for i, want := range p.ShardCRC {
		obj, err := stores[i].Get(context.Background(), repo.ShardName(p.ID, i))
		if err != nil {
			t.Fatal(err)
		}
		if got := repo.ShardCRC(obj); got != want {
			t.Fatalf("shard %d of pack %s: CRC32C %08x, the index recorded %08x", i, p.ID.Short(), got, want)
		}
	}
}

// TestRepairSelfConsistentShard: a shard rewritten with other data and a
// header whose CRCs match that data passes every check of its own; only
// the CRC the index recorded tells it is wrong.
func TestRepairSelfConsistentShard(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	r := f.open(t, f.stores)
	p := packs(t, r)[0]
	name := repo.ShardName(p.ID, 2)
	obj, _ := f.stores[2].Get(ctx, name)
	for i := erasure.HeaderSize; i < len(obj); i++ {
		obj[i] = byte(i)
	}
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	binary.LittleEndian.PutUint32(obj[56:], crc32.Checksum(obj[erasure.HeaderSize:], castagnoli))
	binary.LittleEndian.PutUint32(obj[60:], crc32.Checksum(obj[:60], castagnoli))
	if err := erasure.Check(p.ID, 2, r.Config.Erasure, obj); err != nil {
		t.Fatalf("the forged shard should pass its own checks: %v", err)
	}
	f.stores[2].Delete(ctx, name)
	f.stores[2].Create(ctx, name, obj)

	fixed, err := r.RepairPack(ctx, p)
	if err != nil || len(fixed) != 1 || fixed[0].Shard != 2 || !strings.Contains(fixed[0].Reason, "the index recorded") {
		t.Fatalf("repair: %v %v", fixed, err)
	}
	sameAsRecorded(t, f.stores, p)

	// Without the record it is found all the same: the authentic pack
	// (from the data shards) encodes to another parity shard.
	f.stores[2].Delete(ctx, name)
	f.stores[2].Create(ctx, name, obj)
	if fixed, err := r.RepairPack(ctx, repo.PackInfo{ID: p.ID, Length: p.Length}); err != nil || len(fixed) != 1 || fixed[0].Reason != repo.ReasonNotEncoded {
		t.Fatalf("repair without CRCs: %v %v", fixed, err)
	}
	sameAsRecorded(t, f.stores, p)
	// With a data shard lost, the forged one and the other data shard make
	// a pack that does not match its ID, even where the index recorded the
	// forged shard's CRC: repair writes nothing.
	f.stores[2].Delete(ctx, name)
	f.stores[2].Create(ctx, name, obj)
	if err := f.stores[0].Delete(ctx, repo.ShardName(p.ID, 0)); err != nil {
		t.Fatal(err)
	}
	p2 := p
	p2.ShardCRC = append([]uint32{}, p.ShardCRC...)
	p2.ShardCRC[2] = repo.ShardCRC(obj) // as if the forged one had been recorded
	if fixed, err := r.RepairPack(ctx, p2); !errors.Is(err, repo.ErrPackLost) || len(fixed) != 0 {
		t.Fatalf("repair from survivors that do not make the pack: %v %v", fixed, err)
	}
}

func TestRebuildIndex(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	r := f.open(t, f.stores)
	want := packs(t, r)
	var ids []pack.ID
	for _, p := range want {
		ids = append(ids, p.ID)
	}
	for _, s := range f.stores {
		for _, n := range names(t, s, "index/") {
			s.Delete(ctx, n)
		}
	}
	if got := len(packs(t, r)); got != 0 {
		t.Fatalf("%d packs indexed after deleting every index object", got)
	}
	// A shard corrupt: the rebuilt record still says what it must be.
	obj, _ := f.stores[1].Get(ctx, repo.ShardName(ids[0], 1))
	obj[100] ^= 1
	f.stores[1].Delete(ctx, repo.ShardName(ids[0], 1))
	f.stores[1].Create(ctx, repo.ShardName(ids[0], 1), obj)

	done, err := r.RebuildIndex(ctx, ids)
	if err != nil || len(done) != len(want) {
		t.Fatalf("rebuilt %d of %d packs: %v", len(done), len(want), err)
	}
	got := map[pack.ID]repo.PackInfo{}
	for _, p := range packs(t, r) {
		got[p.ID] = p
	}
	for _, p := range want {
		if !reflect.DeepEqual(got[p.ID], p) {
			t.Fatalf("pack %s: rebuilt %+v, first indexed %+v", p.ID.Short(), got[p.ID], p)
		}
	}
	f.restores(t, f.stores)
	if fixed, err := r.RepairPack(ctx, got[ids[0]]); err != nil || len(fixed) != 1 {
		t.Fatalf("repair after the rebuild: %v %v", fixed, err)
	}
	sameAsRecorded(t, f.stores, got[ids[0]])
}
