package backup_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
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

var params = chunk.Params{Pol: 0x3DA3358B4DC173, MinSize: 64 << 10, MaxSize: 512 << 10, AverageBits: 17}

func memRepo(t *testing.T, scheme erasure.Scheme, targets int) *repo.Repo {
	t.Helper()
	var stores []objstore.Store
	for range targets {
		stores = append(stores, objstore.NewMem())
	}
	r, err := repo.Init(context.Background(), stores, []byte("pw"), repo.Options{
		Erasure: scheme, PackSize: 1 << 20, Chunking: &params, KDF: crypt.KDFParams{N: 1024, R: 8, P: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func run(t *testing.T, r *repo.Repo, data []byte, holes []chunk.Range) *backup.Summary {
	t.Helper()
	s, err := backup.Run(context.Background(), r, bytes.NewReader(data), int64(len(data)), backup.Options{Name: "v", Holes: holes})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func restoreBytes(t *testing.T, r *repo.Repo, id string) []byte {
	t.Helper()
	snap, err := r.FindSnapshot(context.Background(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	if _, err := restore.Run(context.Background(), r, snap, out, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDedupeAcrossSnapshotsAndVolumes(t *testing.T) {
	r := memRepo(t, erasure.Scheme{K: 2, M: 1}, 3)
	rnd := rand.New(rand.NewPCG(1, 1))
	a := volume.Data(rnd, 16<<20)
	s1 := run(t, r, a, nil)
	if s1.BytesNew == 0 || s1.BytesNew > int64(len(a)) {
		t.Fatalf("first backup new bytes %d", s1.BytesNew)
	}
	if s2 := run(t, r, a, nil); s2.BytesNew != 0 || s2.NewChunks != 0 {
		t.Fatalf("same volume again stored %d bytes", s2.BytesNew)
	}
	// Another volume that shares most of its content, shifted by an insert.
	b := append(append(append([]byte(nil), a[:5<<20]...), volume.Data(rnd, 100<<10)...), a[5<<20:]...)
	s3 := run(t, r, b, nil)
	if s3.BytesNew > 2<<20 {
		t.Fatalf("similar volume stored %d new bytes; want about the 100 KiB insert plus two chunks", s3.BytesNew)
	}
	for _, c := range []struct {
		id   string
		want []byte
	}{{s1.SnapshotID, a}, {s3.SnapshotID, b}} {
		if got := restoreBytes(t, r, c.id); !bytes.Equal(got, c.want) {
			t.Fatalf("snapshot %s restored differently", c.id[:8])
		}
	}
}

func TestZerosCostNothing(t *testing.T) {
	r := memRepo(t, erasure.Scheme{K: 1, M: 1}, 1)
	data := make([]byte, 64<<20)
	rnd := rand.New(rand.NewPCG(2, 2))
	copy(data[10<<20:], volume.Data(rnd, 1<<20))
	// Allocated zeros (read, not declared): stored as holes, not uploaded.
	s := run(t, r, data, nil)
	if s.BytesNew > 2<<20 || s.BytesZero < 60<<20 {
		t.Fatalf("zeros stored: new %d, zero %d", s.BytesNew, s.BytesZero)
	}
	// Declared holes are not even read.
	holes := []chunk.Range{{Off: 0, Len: 10 << 20}, {Off: 11 << 20, Len: 53 << 20}}
	s2 := run(t, r, data, holes)
	if s2.BytesRead > 4<<20 {
		t.Fatalf("read %d bytes of a volume with 1 MiB of data", s2.BytesRead)
	}
	if s2.BytesNew != 0 {
		t.Fatalf("hole-aware backup of the same data stored %d new bytes", s2.BytesNew)
	}
	if got := restoreBytes(t, r, s2.SnapshotID); !bytes.Equal(got, data) {
		t.Fatal("restore differs")
	}
}

func TestEmptyAndTinyVolumes(t *testing.T) {
	r := memRepo(t, erasure.Scheme{K: 2, M: 2}, 4)
	for _, n := range []int{0, 1, 4095, 70000} {
		data := volume.Data(rand.New(rand.NewPCG(uint64(n), 3)), n)
		s := run(t, r, data, nil)
		if got := restoreBytes(t, r, s.SnapshotID); !bytes.Equal(got, data) {
			t.Fatalf("size %d: restore differs", n)
		}
	}
}

// TestIncrementalEqualsFull backs a changed volume up twice, once reading
// everything and once from the parent's manifest and the changed ranges:
// the manifests must describe the same chunks, and the second read little.
//
// With small segments, the parent, the full and the incremental manifests
// are segmented.
func TestIncrementalEqualsFull(t *testing.T) {
	for _, segment := range []int{0, 16} {
		t.Run(fmt.Sprintf("segment=%d", segment), func(t *testing.T) { testIncrementalEqualsFull(t, segment) })
	}
}

func testIncrementalEqualsFull(t *testing.T, segment int) {
	ctx := context.Background()
	r := memRepo(t, erasure.Scheme{K: 2, M: 1}, 3)
	r.SegmentExtents = segment
	rnd := rand.New(rand.NewPCG(7, 7))
	a := volume.Data(rnd, 32<<20)
	s1 := run(t, r, a, nil)
	parent, err := r.FindSnapshot(ctx, s1.SnapshotID, "")
	if err != nil {
		t.Fatal(err)
	}
	b := append([]byte(nil), a...)
	var changed []chunk.Range
	for _, off := range []int{1 << 20, 9<<20 + 123, 20 << 20} {
		copy(b[off:], volume.Data(rnd, 8192))
		changed = append(changed, chunk.Range{Off: int64(off), Len: 8192})
	}
	b = append(b, volume.Data(rnd, 3<<20)...) // the volume grew
	changed = append(changed, chunk.Range{Off: int64(len(a)), Len: 3 << 20})

	full := run(t, r, b, nil)
	inc, err := backup.Run(ctx, r, bytes.NewReader(b), int64(len(b)), backup.Options{Name: "v", Parent: parent, Changed: changed})
	if err != nil {
		t.Fatal(err)
	}
	sameManifest(t, r, full, inc, "incremental")
	if inc.BytesRead > 3<<20+3*2*int64(params.MaxSize)+4*int64(params.MaxSize) {
		t.Fatalf("incremental backup read %d bytes for %d changed", inc.BytesRead, 3*8192+3<<20)
	}
	if got := restoreBytes(t, r, inc.SnapshotID); !bytes.Equal(got, b) {
		t.Fatal("incremental snapshot restores differently")
	}
}

// TestBasisEqualsFull backs changed volumes up twice, once chunking
// everything and once comparing with an earlier snapshot (Options.Basis,
// no list of changes): the manifests must describe the same chunks, and
// the comparison must read each byte of data about once.
func TestBasisEqualsFull(t *testing.T) {
	for _, segment := range []int{0, 16} {
		t.Run(fmt.Sprintf("segment=%d", segment), func(t *testing.T) { testBasisEqualsFull(t, segment) })
	}
}

func testBasisEqualsFull(t *testing.T, segment int) {
	ctx := context.Background()
	r := memRepo(t, erasure.Scheme{K: 2, M: 1}, 3)
	r.SegmentExtents = segment
	rnd := rand.New(rand.NewPCG(8, 8))
	a := volume.Data(rnd, 24<<20)
	clear(a[4<<20 : 7<<20]) // a long zero run: a Zero chunk of the basis
	s1 := run(t, r, a, nil)
	basis, err := r.FindSnapshot(ctx, s1.SnapshotID, "")
	if err != nil {
		t.Fatal(err)
	}
	changedCopy := func(size int) []byte {
		b := make([]byte, size)
		copy(b, a)
		for _, off := range []int{1 << 20, 9<<20 + 123, 20 << 20} {
			copy(b[off:], volume.Data(rnd, 8192))
		}
		copy(b[5<<20:], volume.Data(rnd, 4096)) // data inside the zero run
		clear(b[12<<20 : 14<<20])               // data that became zeros
		return b
	}
	for _, tc := range []struct {
		name  string
		b     []byte
		holes []chunk.Range
	}{
		{"same size", changedCopy(len(a)), nil},
		{"same size, holes declared", changedCopy(len(a)), []chunk.Range{{Off: 12 << 20, Len: 2 << 20}}},
		{"grown", append(changedCopy(len(a)), volume.Data(rnd, 3<<20)...), nil},
		{"shrunk", changedCopy(len(a))[:17<<20+5], nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			full, err := backup.Run(ctx, r, bytes.NewReader(tc.b), int64(len(tc.b)), backup.Options{Name: "v", Holes: tc.holes})
			if err != nil {
				t.Fatal(err)
			}
			cmpd, err := backup.Run(ctx, r, bytes.NewReader(tc.b), int64(len(tc.b)), backup.Options{Name: "v", Holes: tc.holes, Basis: basis})
			if err != nil {
				t.Fatal(err)
			}
			sameManifest(t, r, full, cmpd, "by comparison")
			// Every byte once to compare, then the changed chunks and
			// their neighbours again.
			if limit := int64(len(tc.b)) + 10*int64(params.MaxSize) + 3<<20; cmpd.BytesRead > limit {
				t.Fatalf("comparison read %d bytes of a %d-byte volume (limit %d)", cmpd.BytesRead, len(tc.b), limit)
			}
			if cmpd.NewChunks != 0 {
				t.Fatalf("the same bytes again stored %d new chunks", cmpd.NewChunks)
			}
			if got := restoreBytes(t, r, cmpd.SnapshotID); !bytes.Equal(got, tc.b) {
				t.Fatal("snapshot made by comparison restores differently")
			}
		})
	}
}

// TestFileComparesWithLatest: backup.File takes the newest snapshot of the
// same name as its basis, and says so in the manifest.
func TestFileComparesWithLatest(t *testing.T) {
	ctx := context.Background()
	r := memRepo(t, erasure.Scheme{K: 2, M: 1}, 3)
	rnd := rand.New(rand.NewPCG(9, 9))
	path := filepath.Join(t.TempDir(), "vol.img")
	data := volume.Data(rnd, 8<<20)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	first, err := backup.File(ctx, r, path, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	copy(data[3<<20:], volume.Data(rnd, 4096))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	second, err := backup.File(ctx, r, path, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := r.FindSnapshot(ctx, second.SnapshotID, "")
	if err != nil {
		t.Fatal(err)
	}
	if m.Params["basis"] != first.SnapshotID {
		t.Fatalf("second backup's basis %q, want the first snapshot %s", m.Params["basis"], first.SnapshotID[:12])
	}
	if second.NewChunks == 0 || second.NewChunks > 3 {
		t.Fatalf("second backup stored %d new chunks for one changed block", second.NewChunks)
	}
	if got := restoreBytes(t, r, second.SnapshotID); !bytes.Equal(got, data) {
		t.Fatal("restore differs")
	}
}

// sameManifest fails unless the snapshot of got has the digest and extents
// of the full backup's: how is what kind of backup got was. With
// r.SegmentExtents set, both must be segmented.
func sameManifest(t *testing.T, r *repo.Repo, full, got *backup.Summary, how string) {
	t.Helper()
	var snaps []*repo.Snapshot
	for _, id := range []string{full.SnapshotID, got.SnapshotID} {
		s, err := r.FindSnapshot(context.Background(), id, "")
		if err != nil {
			t.Fatal(err)
		}
		if segmented := s.Segments != nil; segmented != (r.SegmentExtents > 0) {
			t.Fatalf("snapshot with %d segments, segments of %d extents", len(s.Segments), r.SegmentExtents)
		}
		if s, err = r.WithExtents(context.Background(), s); err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, s)
	}
	fm, gm := snaps[0], snaps[1]
	if fm.Digest != gm.Digest || !reflect.DeepEqual(fm.Extents, gm.Extents) {
		t.Fatalf("manifest %s differs from the full one (%d vs %d extents)", how, len(gm.Extents), len(fm.Extents))
	}
}
