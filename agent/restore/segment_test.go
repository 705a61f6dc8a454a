package restore_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	miniogo "github.com/minio/minio-go/v7"

	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
)

// segmentExtents is the size of the segments the tests back up with: a
// window of a few chunks, so a pack serves many windows.
const segmentExtents = 5

// segmented is a snapshot of a volume whose extents are in segments.
type segmented struct {
	*cluster
	img  string
	snap *repo.Snapshot
	want restore.Summary // Packs, BytesWritten, BytesZero, as the snapshot's extents and index say
}

// setupSegmented backs up, in segments of segmentExtents extents, a 32 MiB
// volume of data between holes, some of it repeated: the same chunks in
// windows far apart.
func setupSegmented(t *testing.T) *segmented {
	t.Helper()
	c := newRepoCluster(t)
	ctx := context.Background()
	const mib = 1 << 20
	rnd := rand.New(rand.NewPCG(11, 0))
	a, b := volume.Data(rnd, 6*mib), volume.Data(rnd, 6*mib)
	img := filepath.Join(t.TempDir(), "vol.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(32 * mib); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		off int64
		b   []byte
	}{{0, a}, {10 * mib, b}, {16 * mib, a}, {26 * mib, a[:4*mib]}, {30 * mib, b[:mib]}} {
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	r := c.open(t)
	r.SegmentExtents = segmentExtents
	sum := backupImage(t, r, img)
	snap, err := r.FindSnapshot(ctx, sum.SnapshotID, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Segments) < 2 {
		t.Fatalf("snapshot has %d segments, want several", len(snap.Segments))
	}

	// What a restore should report, from all the extents at once, and that
	// the volume has what the test is about: chunks and packs that several
	// windows share, and zero extents.
	all, err := r.WithExtents(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := &segmented{cluster: c, img: img, snap: snap}
	chunks, packs := windows[chunk.ID]{}, windows[pack.ID]{}
	for i, e := range all.Extents {
		if e.Zero {
			s.want.BytesZero += e.Len
			continue
		}
		s.want.BytesWritten += e.Len
		info, _, ok := idx.Lookup(e.ID)
		if !ok {
			t.Fatalf("chunk at offset %d not in the index", e.Off)
		}
		chunks.add(e.ID, i/segmentExtents)
		packs.add(info.ID, i/segmentExtents)
	}
	s.want.Packs = len(packs)
	t.Logf("%d extents in %d segments, %d chunks, %d packs", len(all.Extents), len(snap.Segments), len(chunks), len(packs))
	if s.want.BytesZero == 0 {
		t.Fatal("no zero extents in the snapshot")
	}
	if chunks.most() < 2 {
		t.Fatal("no chunk repeated in two windows")
	}
	if packs.most() < 3 {
		t.Fatal("no pack serves three windows")
	}
	return s
}

// windows records the windows (segments) each chunk or pack is used in.
type windows[K comparable] map[K]map[int]bool

func (ws windows[K]) add(k K, w int) {
	if ws[k] == nil {
		ws[k] = map[int]bool{}
	}
	ws[k][w] = true
}

// most is the most windows a key is used in.
func (ws windows[K]) most() int {
	n := 0
	for _, w := range ws {
		n = max(n, len(w))
	}
	return n
}

// garbage writes a file of the volume's size full of 0xEE: an existing
// target whose holes a restore must write as zeros.
func garbage(t *testing.T, size int64) (string, []byte) {
	t.Helper()
	b := bytes.Repeat([]byte{0xEE}, int(size))
	path := filepath.Join(t.TempDir(), "garbage.img")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, b
}

func (s *segmented) checkSummary(t *testing.T, sum *restore.Summary) {
	t.Helper()
	if sum.Packs != s.want.Packs || sum.BytesWritten != s.want.BytesWritten || sum.BytesZero != s.want.BytesZero || sum.BytesVolume != s.snap.Size {
		t.Fatalf("summary: %d packs, %d bytes written, %d zero, %d in all; want %d, %d, %d, %d",
			sum.Packs, sum.BytesWritten, sum.BytesZero, sum.BytesVolume, s.want.Packs, s.want.BytesWritten, s.want.BytesZero, s.snap.Size)
	}
}

func TestRestoreSegmented(t *testing.T) {
	s := setupSegmented(t)
	ctx := context.Background()
	r := s.open(t)

	out, sum, err := restoreImage(t, r, s.snap.ID)
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, s.img, out)
	s.checkSummary(t, sum)

	// Into an existing file: every window's zero extents written, where
	// they are.
	dst, _ := garbage(t, s.snap.Size)
	sum, err = restore.Run(ctx, r, s.snap, dst, restore.Options{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, s.img, dst)
	s.checkSummary(t, sum)

	// As a drill does: the plan, then WriteTo into a new file.
	plan, err := restore.NewPlan(ctx, r, s.snap, nil)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Packs() != s.want.Packs || plan.Data != s.want.BytesWritten {
		t.Fatalf("plan: %d packs, %d bytes of data; want %d, %d", plan.Packs(), plan.Data, s.want.Packs, s.want.BytesWritten)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "drill.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(s.snap.Size); err != nil {
		t.Fatal(err)
	}
	w, err := plan.WriteTo(ctx, f, restore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if w.BytesWritten != s.want.BytesWritten {
		t.Fatalf("WriteTo wrote %d bytes, want %d", w.BytesWritten, s.want.BytesWritten)
	}
	assertSame(t, s.img, f.Name())
}

func TestRestoreSegmentedWithTargetServerStopped(t *testing.T) {
	s := setupSegmented(t)
	s.Servers[1].Stop()
	out, sum, err := restoreImage(t, s.open(t), s.snap.ID)
	if err != nil {
		t.Fatalf("restore with one of three targets stopped: %v", err)
	}
	assertSame(t, s.img, out)
	s.checkSummary(t, sum)
	if len(sum.Repaired) == 0 {
		t.Fatal("restore did not report the shards it did without")
	}
	// A pack read in several windows reports a shard once.
	type shard struct {
		pack  pack.ID
		shard int
	}
	seen := map[shard]bool{}
	for _, p := range sum.Repaired {
		k := shard{p.Pack, p.Shard}
		if seen[k] {
			t.Fatalf("shard reported twice: %s", p)
		}
		seen[k] = true
	}
}

// TestRestoreSegmentDamaged damages the snapshot's segments: copies that do
// not authenticate on one target are read from another; a segment gone
// from every target fails the restore before anything is written.
func TestRestoreSegmentDamaged(t *testing.T) {
	s := setupSegmented(t)
	ctx := context.Background()
	for _, sg := range s.snap.Segments {
		name := "repo/" + sg.Name()
		b := getRaw(t, s.raw(t, 0), name)
		b[len(b)/2] ^= 0xff
		if _, err := s.raw(t, 0).PutObject(ctx, "ferry", name, bytes.NewReader(b), int64(len(b)), miniogo.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	out, sum, err := restoreImage(t, s.open(t), s.snap.ID)
	if err != nil {
		t.Fatalf("restore with every segment corrupt on the first target: %v", err)
	}
	assertSame(t, s.img, out)
	s.checkSummary(t, sum)

	// The last segment lost: the restore finds out while planning.
	lost := s.snap.Segments[len(s.snap.Segments)-1]
	for i := range s.Servers {
		if err := s.raw(t, i).RemoveObject(ctx, "ferry", "repo/"+lost.Name(), miniogo.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	out, _, err = restoreImage(t, s.open(t), s.snap.ID)
	if !errors.Is(err, restore.ErrDataLost) {
		t.Fatalf("want ErrDataLost, got %v", err)
	}
	if !strings.Contains(err.Error(), lost.Name()) {
		t.Fatalf("error does not name the lost segment %s: %v", lost.Name(), err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
		t.Fatalf("a failed restore left files: %v", entries)
	}
	dst, before := garbage(t, s.snap.Size)
	if _, err := restore.Run(ctx, s.open(t), s.snap, dst, restore.Options{}); !errors.Is(err, restore.ErrDataLost) {
		t.Fatalf("want ErrDataLost, got %v", err)
	}
	if b, _ := os.ReadFile(dst); !bytes.Equal(b, before) {
		t.Fatal("a restore that could not read a segment wrote to the target")
	}
}
