package verify_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	miniogo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/verify"
)

var password = []byte("test password")

var smallChunks = chunk.Params{Pol: 0x3DA3358B4DC173, MinSize: 64 << 10, MaxSize: 512 << 10, AverageBits: 17}

// fixture is a 2+1 repository over three real MinIO servers holding two
// snapshots with disjoint data: "db" (48 MiB, from namespace shop) and
// "logs" (8 MiB).
type fixture struct {
	*minio.Cluster
	db, logs *backup.Summary
	images   map[string]string // snapshot ID -> the image backed up
}

func setup(t *testing.T) *fixture { return setupSegments(t, 0) }

// setupSegments is setup with the snapshots' extents in segments of
// perSegment (see repo.Repo.SegmentExtents; 0: the default, so none).
func setupSegments(t *testing.T, perSegment int) *fixture {
	return setupScheme(t, perSegment, erasure.Scheme{K: 2, M: 1})
}

// setupScheme is setupSegments with erasure scheme s over k+m servers.
func setupScheme(t *testing.T, perSegment int, s erasure.Scheme) *fixture {
	t.Helper()
	f := &fixture{Cluster: minio.StartCluster(t, s.Shards(), "ferry", "repo"), images: map[string]string{}}
	ctx := context.Background()
	r, err := repo.Init(ctx, f.Stores(t), password, repo.Options{
		Erasure: s, PackSize: 2 << 20, Chunking: &smallChunks,
		KDF: crypt.KDFParams{N: 1024, R: 8, P: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.SegmentExtents = perSegment
	dir := t.TempDir()
	for _, v := range []struct {
		out  **backup.Summary
		name string
		size int64
		seed uint64
		vol  repo.Volume
	}{
		{&f.db, "db", 48 << 20, 7, repo.Volume{Namespace: "shop", PVC: "db-data", VolumeSnapshot: "db-snap-1"}},
		{&f.logs, "logs", 8 << 20, 8, repo.Volume{Namespace: "ops", PVC: "logs", VolumeSnapshot: "logs-snap-1"}},
	} {
		img := filepath.Join(dir, v.name+".img")
		if err := volume.Write(img, volume.Spec{Size: v.size, DataFrac: 0.4, Seed: v.seed}); err != nil {
			t.Fatal(err)
		}
		s, err := backup.File(ctx, r, img, backup.Options{Name: v.name, Volume: v.vol})
		if err != nil {
			t.Fatal(err)
		}
		*v.out = s
		f.images[s.SnapshotID] = img
	}
	if f.db.Packs < 4 {
		t.Fatalf("want several packs, got %d", f.db.Packs)
	}
	return f
}

func (f *fixture) open(t *testing.T) *repo.Repo {
	t.Helper()
	r, err := repo.Open(context.Background(), f.Stores(t), password)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (f *fixture) run(t *testing.T, opts verify.Options) *verify.Report {
	t.Helper()
	rep, err := verify.Run(context.Background(), f.open(t), opts)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return rep
}

// packOf returns the pack holding the first data chunk of snapshot id.
func (f *fixture) packOf(t *testing.T, id string) pack.ID {
	t.Helper()
	ctx := context.Background()
	r := f.open(t)
	s, err := r.FindSnapshot(ctx, id, "")
	if err != nil {
		t.Fatal(err)
	}
	idx, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range s.Extents {
		if !e.Zero {
			p, _, ok := idx.Lookup(e.ID)
			if !ok {
				t.Fatal("chunk not indexed")
			}
			return p.ID
		}
	}
	t.Fatal("snapshot has no data")
	return pack.ID{}
}

// shard returns the MinIO client and key of shard i of pack id (2+1 over 3
// targets: shard i lives on server i).
func (f *fixture) shard(t *testing.T, id pack.ID, i int) (*miniogo.Client, string) {
	return f.Servers[i].Client(t), "repo/" + repo.ShardName(id, i)
}

// rewrite writes change(shard i of pack id) straight to the bucket without
// a checksum, as a tool that sends none would: MinIO then keeps none.
func (f *fixture) rewrite(t *testing.T, id pack.ID, i int, change func([]byte) []byte) {
	t.Helper()
	ctx := context.Background()
	cl, key := f.shard(t, id, i)
	obj, err := cl.GetObject(ctx, "ferry", key, miniogo.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(obj); err != nil {
		t.Fatal(err)
	}
	b := change(buf.Bytes())
	if _, err := cl.PutObject(ctx, "ferry", key, bytes.NewReader(b), int64(len(b)), miniogo.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
}

// replace writes change(shard i of pack id) straight to the bucket with a
// full-object CRC32C, as current S3 clients send one.
func (f *fixture) replace(t *testing.T, id pack.ID, i int, change func([]byte) []byte) {
	t.Helper()
	cl, key := f.shard(t, id, i)
	f.putShard(t, id, i, change(f.get(t, cl, key)))
}

// putShard writes b as shard i of pack id with a full-object CRC32C, as
// Ferry writes a shard.
func (f *fixture) putShard(t *testing.T, id pack.ID, i int, b []byte) {
	t.Helper()
	srv := f.Servers[i]
	// minio-go sends a checksum only as an HTTP trailer.
	cl, err := miniogo.New(srv.Endpoint, &miniogo.Options{Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""), TrailingHeaders: true})
	if err != nil {
		t.Fatal(err)
	}
	opts := miniogo.PutObjectOptions{Checksum: miniogo.ChecksumCRC32C, DisableMultipart: true}
	if _, err := cl.PutObject(context.Background(), "ferry", "repo/"+repo.ShardName(id, i), bytes.NewReader(b), int64(len(b)), opts); err != nil {
		t.Fatal(err)
	}
}

// scramble replaces every byte: other bytes of the same length.
func scramble(b []byte) []byte {
	for i := range b {
		b[i] = byte(i*7) ^ 0x5a
	}
	return b
}

func problems(rep *verify.Report, kind string) []verify.Problem {
	var out []verify.Problem
	for _, p := range rep.Problems {
		if p.Kind == kind {
			out = append(out, p)
		}
	}
	return out
}

func TestHealthyRepository(t *testing.T) {
	f := setup(t)
	rep := f.run(t, verify.Options{ReadDataPercent: 100, StateFile: filepath.Join(t.TempDir(), "state.json")})
	if rep.Status != verify.OK || len(rep.Problems) != 0 || rep.Err() != nil {
		t.Fatalf("healthy repository: status %s, problems %v", rep.Status, rep.Problems)
	}
	if rep.Snapshots != 2 || int64(rep.Packs) < f.db.Packs || rep.Read.Packs != rep.Packs {
		t.Fatalf("counted %d snapshots, %d packs, read %d; want 2, >= %d, all", rep.Snapshots, rep.Packs, rep.Read.Packs, f.db.Packs)
	}
}

func TestBucketDeletedIsDegraded(t *testing.T) {
	f := setup(t)
	f.Servers[1].DeleteBucket(t, "ferry")
	rep := f.run(t, verify.Options{})
	if rep.Status != verify.Degraded || !errors.Is(rep.Err(), verify.ErrDegraded) || len(rep.Lost) != 0 {
		t.Fatalf("status %s, lost %v: %v", rep.Status, rep.Lost, rep.Problems)
	}
	down := problems(rep, verify.KindTargetUnavailable)
	if len(down) != 1 || down[0].Target != 2 || !strings.Contains(down[0].Detail, "bucket") {
		t.Fatalf("want target 2 reported unavailable (bucket missing), got %v", down)
	}
	if rep.Targets[1].Reachable || !rep.Targets[0].Reachable {
		t.Fatalf("target status wrong: %+v", rep.Targets)
	}
}

// TestReplacedShardFoundByChecksum: a shard replaced by other bytes of the
// same length keeps its listed size, but not the CRC32C the store keeps:
// the structural check finds it with one HEAD per shard, downloading
// nothing, and repair puts back the very object first written.
func TestReplacedShardFoundByChecksum(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	victim := f.packOf(t, f.db.SnapshotID)
	f.replace(t, victim, 1, scramble)

	rep := f.run(t, verify.Options{})
	if rep.Status != verify.Degraded || len(rep.Lost) != 0 || rep.Read != nil {
		t.Fatalf("status %s, lost %v: %v", rep.Status, rep.Lost, rep.Problems)
	}
	bad := problems(rep, verify.KindShardCorrupt)
	if len(bad) != 1 || bad[0].Pack != victim.String() || *bad[0].Shard != 1 || bad[0].Target != 2 || !strings.Contains(bad[0].Detail, "CRC32C") {
		t.Fatalf("want shard 1 of pack %s on target 2 reported by its checksum, got %v", victim.Short(), rep.Problems)
	}
	shards := 3 * rep.Packs
	if rep.Shards.Checksum != shards || rep.Shards.SizeOnly != 0 || rep.HeadRequests != int64(shards) {
		t.Fatalf("want all %d shards checked by checksum with as many HEAD requests, got %+v, %d HEAD", shards, rep.Shards, rep.HeadRequests)
	}

	// Sizes only: no HEAD request, and nothing found.
	quick := f.run(t, verify.Options{SizesOnly: true})
	if quick.Status != verify.OK || quick.HeadRequests != 0 || quick.Shards.Skipped != shards || quick.Shards.Checksum != 0 {
		t.Fatalf("sizes only: status %s, %+v, %d HEAD: %v", quick.Status, quick.Shards, quick.HeadRequests, quick.Problems)
	}

	done, err := verify.Repair(ctx, f.open(t), rep)
	if err != nil || len(done.Shards) != 1 || done.Shards[0].Shard != 1 {
		t.Fatalf("repair: %v %+v", err, done)
	}
	if after := f.run(t, verify.Options{}); after.Status != verify.OK || after.Shards.Checksum != shards {
		t.Fatalf("after repair: status %s, %+v: %v", after.Status, after.Shards, after.Problems)
	}
	// Shard 0 gone with its server: the restore needs the repaired shard 1.
	f.Servers[0].Stop()
	f.restoresAll(t)
}

// TestShardWithoutChecksumFoundByReadingData: a shard rewritten by a tool
// that stores no checksum can only be checked by its size; verify says so,
// and reading the data finds the flipped byte.
func TestShardWithoutChecksumFoundByReadingData(t *testing.T) {
	f := setup(t)
	victim := f.packOf(t, f.db.SnapshotID)
	f.rewrite(t, victim, 0, func(b []byte) []byte { b[len(b)-100] ^= 0x40; return b })

	rep := f.run(t, verify.Options{})
	if rep.Status != verify.OK || rep.Shards.StoreHasNone != 1 || rep.Shards.SizeOnly != 1 {
		t.Fatalf("a flipped byte keeps the size and the store has no checksum: want OK, one shard by size only; got %s, %+v: %v", rep.Status, rep.Shards, rep.Problems)
	}
	note := problems(rep, verify.KindChecksumUnchecked)
	if len(note) != 1 || note[0].Target != 1 || note[0].Object != repo.ShardName(victim, 0) {
		t.Fatalf("want a notice naming the shard without a checksum on target 1, got %v", rep.Problems)
	}
	rep = f.run(t, verify.Options{ReadDataPercent: 100, StateFile: filepath.Join(t.TempDir(), "state.json")})
	if rep.Status != verify.Degraded || len(rep.Lost) != 0 {
		t.Fatalf("status %s, lost %v: %v", rep.Status, rep.Lost, rep.Problems)
	}
	bad := problems(rep, verify.KindShardCorrupt)
	if len(bad) != 1 || bad[0].Pack != victim.String() || *bad[0].Shard != 0 || bad[0].Target != 1 || !strings.Contains(bad[0].Detail, "crc") {
		t.Fatalf("want shard 0 of pack %s on target 1 reported with a CRC mismatch, got %v", victim.Short(), bad)
	}
}

// TestTruncatedShardFoundByStructure also lists the shards directory by
// directory, as verify lists a large repository's (taking a listing
// request to return one name): the same shards are counted and the same
// one found short.
func TestTruncatedShardFoundByStructure(t *testing.T) {
	f := setup(t)
	victim := f.packOf(t, f.logs.SnapshotID)
	f.rewrite(t, victim, 2, func(b []byte) []byte { return b[:len(b)/2] })
	var shards [2][]int
	for _, page := range []int{0, 1} {
		var byDir atomic.Int32 // targets that listed data/ff/
		var stores []objstore.Store
		for _, st := range f.Stores(t) {
			stores = append(stores, listHook{st, "data/ff/", &sync.Once{}, func() { byDir.Add(1) }})
		}
		r, err := repo.Open(context.Background(), stores, password)
		if err != nil {
			t.Fatal(err)
		}
		r.ListPage = page
		rep, err := verify.Run(context.Background(), r, verify.Options{})
		if err != nil {
			t.Fatalf("verify: %v", err)
		}
		if rep.Status != verify.Degraded || len(rep.Lost) != 0 {
			t.Fatalf("page %d: status %s, lost %v: %v", page, rep.Status, rep.Lost, rep.Problems)
		}
		bad := problems(rep, verify.KindShardSize)
		if len(bad) != 1 || bad[0].Pack != victim.String() || *bad[0].Shard != 2 || bad[0].Target != 3 {
			t.Fatalf("page %d: want the size of shard 2 of pack %s on target 3 reported, got %v", page, victim.Short(), bad)
		}
		for _, ts := range rep.Targets {
			shards[page] = append(shards[page], ts.Shards)
		}
		if want := int32(page * 3); byDir.Load() != want {
			t.Fatalf("page %d: %d targets listed by directory, want %d", page, byDir.Load(), want)
		}
	}
	if !slices.Equal(shards[0], shards[1]) || shards[0][0] == 0 {
		t.Fatalf("shards counted per target: %v listing data/ whole, %v by directory", shards[0], shards[1])
	}
}

func TestIndexObjectDeleted(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	var names []string
	for o := range f.Servers[0].Client(t).ListObjects(ctx, "ferry", miniogo.ListObjectsOptions{Prefix: "repo/index/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		names = append(names, o.Key)
	}
	if len(names) < 2 {
		t.Fatalf("want at least two index objects, got %d", len(names))
	}
	slices.Sort(names)
	// The first index object goes from every target, the second from target 3 only.
	for i, s := range f.Servers {
		for j, n := range names[:2] {
			if j == 1 && i != 2 {
				continue
			}
			if err := s.Client(t).RemoveObject(ctx, "ferry", n, miniogo.RemoveObjectOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	rep := f.run(t, verify.Options{})
	if rep.Status != verify.Degraded || len(rep.Lost) != 0 {
		t.Fatalf("an index is rebuildable from pack headers: want degraded, got %s, lost %v: %v", rep.Status, rep.Lost, rep.Problems)
	}
	missing := problems(rep, verify.KindObjectMissing)
	if len(missing) != 1 || missing[0].Target != 3 || missing[0].Object != strings.TrimPrefix(names[1], "repo/") {
		t.Fatalf("want %s reported missing on target 3, got %v", names[1], missing)
	}
	if len(problems(rep, verify.KindIndexRebuildable)) == 0 || len(rep.NeedRebuild) == 0 {
		t.Fatalf("the packs of the deleted index object were not found: %v", rep.Problems)
	}
}

func TestTwoShardsLostNamesTheSnapshot(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	victim := f.packOf(t, f.db.SnapshotID)
	for i := range 2 {
		cl, key := f.shard(t, victim, i)
		if err := cl.RemoveObject(ctx, "ferry", key, miniogo.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	rep := f.run(t, verify.Options{})
	if rep.Status != verify.DataLost || !errors.Is(rep.Err(), verify.ErrDataLost) {
		t.Fatalf("status %s: %v", rep.Status, rep.Problems)
	}
	if len(rep.Lost) != 1 {
		t.Fatalf("want only db lost, got %v", rep.Lost)
	}
	l := rep.Lost[0]
	if l.ID != f.db.SnapshotID || l.Name != "db" || l.Namespace != "shop" || l.VolumeSnapshot != "db-snap-1" || l.PVC != "db-data" {
		t.Fatalf("lost snapshot named wrongly: %+v", l)
	}
	msg := rep.Err().Error()
	if !strings.Contains(msg, "shop/db-snap-1") || !strings.Contains(msg, victim.Short()) {
		t.Fatalf("error does not name the snapshot and pack: %s", msg)
	}
	lost := problems(rep, verify.KindPackLost)
	if len(lost) != 1 || lost[0].Pack != victim.String() {
		t.Fatalf("want pack %s lost, got %v", victim.Short(), lost)
	}

	_, err := verify.Drill(ctx, f.open(t), mustSnapshot(t, f.open(t), f.db.SnapshotID), verify.Discard, verify.DrillOptions{})
	if !errors.Is(err, restore.ErrDataLost) {
		t.Fatalf("drill of a lost snapshot: want ErrDataLost, got %v", err)
	}
}

// restoresAll restores every snapshot and compares it with its image.
func (f *fixture) restoresAll(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	r := f.open(t)
	for id, img := range f.images {
		out := filepath.Join(t.TempDir(), "restored.img")
		if _, err := restore.Run(ctx, r, mustSnapshot(t, r, id), out, restore.Options{}); err != nil {
			t.Fatalf("restore %s: %v", id[:8], err)
		}
		want, _ := os.ReadFile(img)
		if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
			t.Fatalf("snapshot %s restores differently", id[:8])
		}
	}
}

func mustSnapshot(t *testing.T, r *repo.Repo, id string) *repo.Snapshot {
	t.Helper()
	s, err := r.FindSnapshot(context.Background(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestReadDataRotationCoversEveryPack(t *testing.T) {
	f := setup(t)
	state := filepath.Join(t.TempDir(), "sub", "state.json")
	const percent = 34 // ceil(100/34) = 3 runs
	seen := map[string]int{}
	var total int
	for run := range 3 {
		rep := f.run(t, verify.Options{ReadDataPercent: percent, StateFile: state})
		total = rep.Read.TotalPacks
		if want := (total*percent + 99) / 100; rep.Read.Packs != want || len(rep.Read.Checked) != want {
			t.Fatalf("run %d read %d packs, want %d of %d", run, rep.Read.Packs, want, total)
		}
		if rep.Read.Bytes == 0 {
			t.Fatalf("run %d downloaded nothing", run)
		}
		for _, id := range rep.Read.Checked {
			seen[id]++
		}
		if rep.Read.Wrapped != (run == 2) {
			t.Fatalf("run %d: wrapped %v, want only the third run to reach the end", run, rep.Read.Wrapped)
		}
	}
	if len(seen) != total {
		t.Fatalf("3 runs of %d%% read %d distinct packs of %d", percent, len(seen), total)
	}
	// The state survives (a new process reads it): the fourth run starts over.
	b, err := os.ReadFile(state)
	if err != nil || !strings.Contains(string(b), "cursor") {
		t.Fatalf("state file: %v %s", err, b)
	}
	rep := f.run(t, verify.Options{ReadDataPercent: percent, StateFile: state})
	all := slices.Sorted(func(yield func(string) bool) {
		for id := range seen {
			if !yield(id) {
				return
			}
		}
	})
	n := (total*percent + 99) / 100
	if want := all[(3*n)%total]; rep.Read.Checked[0] != want {
		t.Fatalf("fourth run started at %s, want %s (after the third run's cursor, wrapped)", rep.Read.Checked[0][:8], want[:8])
	}
}

func TestDrillRestoresIntoDiscard(t *testing.T) {
	f := setup(t)
	r := f.open(t)
	// A lost target costs the drill nothing but parity reads.
	f.Servers[0].Stop()
	res, err := verify.Drill(context.Background(), r, mustSnapshot(t, r, f.db.SnapshotID), verify.Discard, verify.DrillOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.BytesVolume != 48<<20 || res.BytesData == 0 || res.Duration <= 0 || res.BytesPerSecond <= 0 || res.Reconstructed == 0 {
		t.Fatalf("drill result: %+v", res)
	}
	if res.Snapshot.Namespace != "shop" {
		t.Fatalf("drill does not name the snapshot's volume: %+v", res.Snapshot)
	}
}

func TestPackWithoutShards(t *testing.T) {
	f := setup(t)
	victim := f.packOf(t, f.logs.SnapshotID)
	for i := range 3 {
		cl, key := f.shard(t, victim, i)
		if err := cl.RemoveObject(context.Background(), "ferry", key, miniogo.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	rep := f.run(t, verify.Options{})
	gone := problems(rep, verify.KindPackNoShards)
	if rep.Status != verify.DataLost || len(gone) != 1 || gone[0].Pack != victim.String() {
		t.Fatalf("want pack %s reported without shards, got %s: %v", victim.Short(), rep.Status, rep.Problems)
	}
	if len(rep.Lost) != 1 || rep.Lost[0].Name != "logs" || rep.Lost[0].Namespace != "ops" {
		t.Fatalf("want only logs lost, got %+v", rep.Lost)
	}
}
