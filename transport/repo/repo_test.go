package repo

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/alloc"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
)

var (
	testKDF    = crypt.KDFParams{N: 1024, R: 8, P: 1}
	testParams = chunk.Params{Pol: 0x3DA3358B4DC173, MinSize: 64 << 10, MaxSize: 512 << 10, AverageBits: 17}
)

func memStores(n int) []objstore.Store {
	var s []objstore.Store
	for range n {
		s = append(s, objstore.NewMem())
	}
	return s
}

func initRepo(t *testing.T, stores []objstore.Store) *Repo {
	t.Helper()
	r, err := Init(context.Background(), stores, []byte("pw"), Options{Erasure: erasure.Scheme{K: 2, M: 1}, Chunking: &testParams, KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestInitOpen(t *testing.T) {
	ctx := context.Background()
	stores := memStores(3)
	r := initRepo(t, stores)
	if r.SurvivableTargetLosses() != 1 {
		t.Fatalf("2+1 on 3 targets survives %d losses", r.SurvivableTargetLosses())
	}
	if _, err := Init(ctx, stores, []byte("pw"), Options{Erasure: erasure.Scheme{K: 2, M: 1}, KDF: testKDF}); !errors.Is(err, ErrExists) {
		t.Fatalf("second init: %v", err)
	}
	r2, err := Open(ctx, stores, []byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	if r2.Config.ID != r.Config.ID || r2.Config.Chunking() != testParams {
		t.Fatalf("config differs: %+v vs %+v", r2.Config, r.Config)
	}
	if _, err := Open(ctx, stores, []byte("nope")); !errors.Is(err, crypt.ErrWrongPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := Open(ctx, memStores(2), []byte("pw")); !errors.Is(err, ErrNotRepository) {
		t.Fatalf("empty stores: %v", err)
	}
	if _, err := Open(ctx, []objstore.Store{stores[1], stores[0], stores[2]}, []byte("pw")); !errors.Is(err, ErrTargetMismatch) {
		t.Fatalf("targets out of order: %v", err)
	}
	if _, err := Open(ctx, stores[:2], []byte("pw")); !errors.Is(err, ErrTargetMismatch) {
		t.Fatalf("a target left out: %v", err)
	}
	other := memStores(1)
	initRepo(t, other)
	if _, err := Open(ctx, []objstore.Store{stores[0], stores[1], other[0]}, []byte("pw")); !errors.Is(err, ErrTargetMismatch) {
		t.Fatalf("a target of another repository: %v", err)
	}
	// An empty (recreated) target still opens: restores use the others.
	if _, err := Open(ctx, []objstore.Store{stores[0], objstore.NewMem(), stores[2]}, []byte("pw")); err != nil {
		t.Fatalf("one empty target: %v", err)
	}
}

func TestPackRoundTripAndLoss(t *testing.T) {
	ctx := context.Background()
	stores := memStores(3)
	r := initRepo(t, stores)
	w := r.Codec.NewWriter(1 << 20)
	data := []byte("some chunk data")
	id := r.IDKey.Sum(data)
	sealed, _, comp := r.Codec.SealBlob(nil, nil, id, data)
	w.Add(id, sealed, len(data), comp)
	p, pid, _ := w.Finish()
	if _, err := r.WritePack(ctx, pid, p); err != nil {
		t.Fatal(err)
	}
	got, problems, err := r.ReadPack(ctx, pid)
	if err != nil || string(got) != string(p) || len(problems) != 0 {
		t.Fatalf("read pack: %v %v", problems, err)
	}
	if err := stores[0].Delete(ctx, ShardName(pid, 0)); err != nil {
		t.Fatal(err)
	}
	got, problems, err = r.ReadPack(ctx, pid)
	if err != nil || string(got) != string(p) {
		t.Fatalf("read pack with shard 0 gone: %v", err)
	}
	if len(problems) != 1 || problems[0].Shard != 0 || problems[0].Reason != "missing" {
		t.Fatalf("problems: %v", problems)
	}
	if err := stores[1].Delete(ctx, ShardName(pid, 1)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.ReadPack(ctx, pid); !errors.Is(err, ErrPackLost) {
		t.Fatalf("two of three shards gone: %v", err)
	}
}

// randomBatch makes a batch of up to four packs of a 2+1 scheme, some with
// shard CRCs and some without.
func randomBatch(r *rand.Rand) *IndexBatch {
	b := &IndexBatch{}
	for range 1 + r.IntN(4) {
		var p PackInfo
		for i := range p.ID {
			p.ID[i] = byte(r.Uint32())
		}
		p.Length = 1 << 24
		if r.IntN(3) > 0 {
			p.ShardCRC = []uint32{r.Uint32(), r.Uint32(), r.Uint32()}
		}
		var entries []pack.Entry
		for j := range r.IntN(50) {
			var e pack.Entry
			for i := range e.ID {
				e.ID[i] = byte(r.Uint32())
			}
			e.Offset, e.Length, e.RawLength, e.Compressed = uint32(j*1000), 900, uint32(r.IntN(1<<20)), j%2 == 0
			entries = append(entries, e)
		}
		b.Add(p, entries)
	}
	return b
}

// marshalV1 encodes a batch in index version 1, as Ferry wrote it before
// version 2 (docs/repository-format.md): no shard CRCs.
func marshalV1(b *IndexBatch) []byte {
	out := []byte{1}
	out = binary.AppendUvarint(out, uint64(len(b.Packs)))
	for i, p := range b.Packs {
		out = append(out, p.ID[:]...)
		out = binary.AppendUvarint(out, uint64(p.Length))
		out = binary.AppendUvarint(out, uint64(len(b.Entries[i])))
		for _, e := range b.Entries[i] {
			var flags byte
			if e.Compressed {
				flags = 1
			}
			out = append(out, flags)
			out = append(out, e.ID[:]...)
			out = binary.AppendUvarint(out, uint64(e.Offset))
			out = binary.AppendUvarint(out, uint64(e.Length))
			out = binary.AppendUvarint(out, uint64(e.RawLength))
		}
	}
	return out
}

func samePacks(t *testing.T, got, want *IndexBatch, withCRCs bool) {
	t.Helper()
	if len(got.Packs) != len(want.Packs) {
		t.Fatalf("%d packs, want %d", len(got.Packs), len(want.Packs))
	}
	for i, w := range want.Packs {
		if !withCRCs {
			w.ShardCRC = nil
		}
		if !reflect.DeepEqual(got.Packs[i], w) || (len(want.Entries[i]) > 0 && !reflect.DeepEqual(got.Entries[i], want.Entries[i])) {
			t.Fatalf("pack %d differs: %+v, want %+v", i, got.Packs[i], w)
		}
	}
}

func TestIndexRoundTrip(t *testing.T) {
	ctx := context.Background()
	r := initRepo(t, memStores(3))
	rnd := rand.New(rand.NewPCG(4, 4))
	b := randomBatch(rnd)
	got, err := ParseIndexBatch(b.marshal(nil))
	if err != nil {
		t.Fatal(err)
	}
	samePacks(t, got, b, true)
	if _, err := r.WriteIndex(ctx, b); err != nil {
		t.Fatal(err)
	}
	x, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if x.Len() != b.Len() {
		t.Fatalf("loaded %d entries, wrote %d", x.Len(), b.Len())
	}
	for i, entries := range b.Entries {
		for _, e := range entries {
			p, got, ok := x.Lookup(e.ID)
			if !ok || got != e || !reflect.DeepEqual(p, b.Packs[i]) {
				t.Fatalf("lookup %s: %v %+v", e.ID.Short(), ok, got)
			}
		}
	}
}

// TestIndexV1 reads index objects written before version 2: their packs
// have no shard CRCs. A version 2 record of the same pack adds them.
func TestIndexV1(t *testing.T) {
	ctx := context.Background()
	stores := memStores(3)
	r := initRepo(t, stores)
	b := randomBatch(rand.New(rand.NewPCG(5, 5)))
	got, err := ParseIndexBatch(marshalV1(b))
	if err != nil {
		t.Fatal(err)
	}
	samePacks(t, got, b, false)

	obj := r.key.Seal(nil, marshalV1(b), indexADv1)
	name := "index/" + pack.Sum(obj).String()
	for _, s := range stores {
		if err := s.Create(ctx, name, obj); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.OpenIndexObject(pack.Sum(obj).String(), obj); err != nil {
		t.Fatalf("open a version 1 index object: %v", err)
	}
	x, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := b.Packs[0]
	if p, ok := x.Pack(first.ID); !ok || p.ShardCRC != nil || p.Length != first.Length {
		t.Fatalf("pack of a v1 index: %+v %v", p, ok)
	}
	// The same pack indexed again by a version 2 object gains its CRCs.
	v2 := &IndexBatch{}
	v2.Add(PackInfo{ID: first.ID, Length: first.Length, ShardCRC: []uint32{1, 2, 3}}, b.Entries[0])
	if _, err := r.WriteIndex(ctx, v2); err != nil {
		t.Fatal(err)
	}
	if x, err = r.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if p, _ := x.Pack(first.ID); !reflect.DeepEqual(p.ShardCRC, []uint32{1, 2, 3}) {
		t.Fatalf("pack indexed by v1 and v2 objects: %+v", p)
	}

	// The version inside must match the seal's, and the CRCs the scheme.
	for _, bad := range []struct {
		name  string
		plain []byte
		ad    []byte
	}{
		{"v2 content sealed as v1", b.marshal(nil), indexADv1},
		{"v1 content sealed as v2", marshalV1(b), indexAD},
		{"CRCs of a 4-shard scheme", func() []byte {
			c := &IndexBatch{}
			c.Add(PackInfo{ID: first.ID, Length: 1, ShardCRC: []uint32{1, 2, 3, 4}}, nil)
			return c.marshal(nil)
		}(), indexAD},
	} {
		if _, err := r.openIndex(r.key.Seal(nil, bad.plain, bad.ad)); !errors.Is(err, errIndexFormat) {
			t.Errorf("%s: %v", bad.name, err)
		}
	}
}

// TestWritePackRecordsCRCs: the index records the CRC32C of every shard
// object, the one the store keeps.
func TestWritePackRecordsCRCs(t *testing.T) {
	ctx := context.Background()
	stores := memStores(3)
	r := initRepo(t, stores)
	b := &IndexBatch{}
	for i := range 3 {
		w := r.Codec.NewWriter(1 << 20)
		data := []byte{byte(i), 'x'}
		id := r.IDKey.Sum(data)
		sealed, _, comp := r.Codec.SealBlob(nil, nil, id, data)
		w.Add(id, sealed, len(data), comp)
		p, pid, entries := w.Finish()
		if _, err := r.WritePack(ctx, pid, p); err != nil {
			t.Fatal(err)
		}
		b.Add(PackInfo{ID: pid, Length: int64(len(p))}, entries)
	}
	if _, err := r.WriteIndex(ctx, b); err != nil {
		t.Fatal(err)
	}
	x, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range b.Packs {
		p, _ := x.Pack(want.ID)
		if len(p.ShardCRC) != 3 {
			t.Fatalf("pack %s indexed without shard CRCs", p.ID.Short())
		}
		for i, crc := range p.ShardCRC {
			info, err := r.TargetOf(i).Store.Stat(ctx, ShardName(p.ID, i))
			if err != nil || !info.HasCRC32C || info.CRC32C != crc {
				t.Fatalf("shard %d of %s: store has %08x (%v), index %08x", i, p.ID.Short(), info.CRC32C, err, crc)
			}
		}
		if _, ok := r.unindexed.Load(p.ID); ok {
			t.Fatal("CRCs kept after the index was written")
		}
	}
}

func TestManifestRoundTrip(t *testing.T) {
	ctx := context.Background()
	r := initRepo(t, memStores(3))
	m := &Manifest{Meta: Meta{Name: "db", Size: 3 << 20, Digest: "ab", Started: time.Unix(100, 0).UTC(), Volume: Volume{Namespace: "ns", PVC: "data"}}}
	ids := storeChunks(t, r, []byte("first"), []byte("second"))
	m.Extents = []Extent{{Off: 0, Len: 1 << 20, ID: ids[0]}, {Off: 1 << 20, Len: 1 << 20, Zero: true}, {Off: 2 << 20, Len: 1 << 20, ID: ids[1]}}
	id, _, err := r.SaveSnapshot(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.FindSnapshot(ctx, id[:6], "")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s.Manifest, m) {
		t.Fatalf("manifest differs:\n%+v\n%+v", s.Manifest, m)
	}
	if s, err := r.FindSnapshot(ctx, "latest", "db"); err != nil || s.ID != id {
		t.Fatalf("latest: %v", err)
	}
	if _, err := r.FindSnapshot(ctx, "latest", "other"); !errors.Is(err, ErrSnapshotNotFound) {
		t.Fatalf("latest of unknown name: %v", err)
	}
	if _, err := r.FindSnapshot(ctx, "ffff", ""); !errors.Is(err, ErrSnapshotNotFound) && id[:4] != "ffff" {
		t.Fatalf("unknown prefix: %v", err)
	}
	// A manifest whose extents do not cover the volume is rejected.
	m.Size++
	plain, _ := m.marshal()
	if _, err := ParseManifest(plain); err == nil {
		t.Fatal("manifest with a gap parsed")
	}
}

// TestSnapshotsListMetadata checks that a listing keeps each manifest's
// metadata and not its extents, and that WithExtents and FindSnapshot give
// the extents back.
func TestSnapshotsListMetadata(t *testing.T) {
	ctx := context.Background()
	stores := memStores(3)
	r := initRepo(t, stores)
	ids := storeChunks(t, r, []byte("first"), []byte("second"))
	m := &Manifest{Meta: Meta{Name: "db", Size: 3 << 20, Digest: "ab", Started: time.Unix(100, 0).UTC(), Volume: Volume{Namespace: "ns", PVC: "data"}},
		Extents: []Extent{{Off: 0, Len: 1 << 20, ID: ids[0]}, {Off: 1 << 20, Len: 1 << 20, Zero: true}, {Off: 2 << 20, Len: 1 << 20, ID: ids[1]}}}
	id, _, err := r.SaveSnapshot(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := r.Snapshots(ctx)
	if err != nil || len(snaps) != 1 {
		t.Fatalf("Snapshots: %d, %v", len(snaps), err)
	}
	listed := snaps[0]
	if !listed.MetaOnly() || listed.Extents != nil || listed.ID != id {
		t.Fatalf("listed with extents (%d) or under another ID", len(listed.Extents))
	}
	if !reflect.DeepEqual(listed.Meta, m.Meta) {
		t.Fatalf("metadata differs:\n%+v\n%+v", listed.Meta, m.Meta)
	}
	full, err := r.WithExtents(ctx, listed)
	if err != nil || full.MetaOnly() || !reflect.DeepEqual(full.Manifest, m) {
		t.Fatalf("WithExtents: %v, %+v", err, full)
	}
	if again, err := r.WithExtents(ctx, full); err != nil || again != full {
		t.Fatalf("WithExtents of a whole snapshot read it again: %v", err)
	}
	for _, ref := range []string{"latest", id[:6]} {
		if s, err := r.FindSnapshot(ctx, ref, ""); err != nil || s.MetaOnly() || len(s.Extents) != 3 {
			t.Fatalf("FindSnapshot(%s): %v, %+v", ref, err, s)
		}
	}
	// Deleted after the listing: a clear not-found.
	for _, st := range stores {
		if err := st.Delete(ctx, "snapshots/"+id); err != nil {
			t.Fatal(err)
		}
	}
	_, err = r.WithExtents(ctx, listed)
	if !errors.Is(err, ErrSnapshotNotFound) || strings.Count(err.Error(), id) != 1 {
		t.Fatalf("WithExtents of a deleted snapshot: %v (want snapshot not found, naming it once)", err)
	}
}

func FuzzParseIndexBatch(f *testing.F) {
	f.Add(randomBatch(rand.New(rand.NewPCG(1, 1))).marshal(nil))
	f.Add(marshalV1(randomBatch(rand.New(rand.NewPCG(2, 2)))))
	f.Add([]byte{1, 0})
	f.Add([]byte{2, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		batch, err := ParseIndexBatch(b)
		if err != nil {
			return
		}
		again, err := ParseIndexBatch(batch.marshal(nil))
		if err != nil || again.Len() != batch.Len() || !reflect.DeepEqual(again.Packs, batch.Packs) {
			t.Fatalf("re-parse: %v", err)
		}
	})
}

func FuzzParseManifest(f *testing.F) {
	m := &Manifest{Meta: Meta{Name: "x", Size: 10}, Extents: []Extent{{Len: 4, ID: chunk.ID{9}}, {Off: 4, Len: 6, Zero: true}}}
	b, _ := m.marshal()
	f.Add(b)
	m.Extents, m.Segments = nil, []Segment{{ID: [32]byte{1}, Extents: 1, Len: 4}, {ID: [32]byte{2}, Extents: 3, Len: 6}}
	b, _ = m.marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var m *Manifest
		var err error
		n := alloc.Bytes(func() { m, err = ParseManifest(b) })
		// A frame's claimed content size is never allocated: what a parse
		// allocates follows what the frame decodes to (the output as it
		// grows, and extents of 56 bytes for each 2 bytes of it at most),
		// plus the decoder's window and tables.
		if limit := 40*decodedLen(b) + 32<<20; n > limit {
			t.Fatalf("parsing %d bytes (%d decoded) allocated %d bytes, more than %d", len(b), decodedLen(b), n, limit)
		}
		// A listing's parse of the metadata alone: no panic, no more.
		if nm := alloc.Bytes(func() { parseMeta(b) }); nm > 4*decodedLen(b)+32<<20 {
			t.Fatalf("parseMeta of %d bytes (%d decoded) allocated %d bytes", len(b), decodedLen(b), nm)
		}
		if err != nil {
			return
		}
		var off int64
		for _, e := range m.Extents {
			if e.Off != off || e.Len <= 0 {
				t.Fatalf("bad extent %+v", e)
			}
			off += e.Len
		}
		for _, sg := range m.Segments { // a segmented manifest: no extents
			if sg.Extents <= 0 || sg.Len <= 0 {
				t.Fatalf("bad segment %+v", sg)
			}
			off += sg.Len
		}
		if off != m.Size || m.Segments != nil && m.Extents != nil {
			t.Fatalf("extents and segments cover %d of %d", off, m.Size)
		}
		// What a listing reads is the same metadata.
		meta, err := parseMeta(b)
		if err != nil || !reflect.DeepEqual(meta.Meta, m.Meta) {
			t.Fatalf("parseMeta of a valid manifest: %v", err)
		}
	})
}

// decodedLen is how many bytes the zstd frames in z decode to, up to the
// first error.
func decodedLen(z []byte) uint64 {
	d, err := zstd.NewReader(bytes.NewReader(z), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(manifestWindow), zstd.WithDecoderMaxMemory(maxManifestSize))
	if err != nil {
		return 0
	}
	defer d.Close()
	n, _ := io.Copy(io.Discard, io.LimitReader(d, maxManifestSize+1))
	return uint64(n)
}
