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
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
)

// segmentExtents is the average size of the segments the tests back up
// with: a window of a few chunks, so a pack serves many windows.
const segmentExtents = 5

// segmented is a snapshot of a volume whose extents are in segments.
type segmented struct {
	*cluster
	img  string
	snap *repo.Snapshot
	want restore.Summary // Packs, BytesWritten, BytesZero, as the snapshot's extents and index say
}

// setupSegmented backs up, in segments of segmentExtents extents on
// average, a 32 MiB volume of data between holes, some of it repeated: the
// same chunks in windows far apart.
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
	seg, segEnd := 0, snap.Segments[0].Extents // the window of extent i, where it ends
	for i, e := range all.Extents {
		for int64(i) >= segEnd {
			seg++
			segEnd += snap.Segments[seg].Extents
		}
		if e.Zero {
			s.want.BytesZero += e.Len
			continue
		}
		s.want.BytesWritten += e.Len
		info, _, ok := idx.Lookup(e.ID)
		if !ok {
			t.Fatalf("chunk at offset %d not in the index", e.Off)
		}
		chunks.add(e.ID, seg)
		packs.add(info.ID, seg)
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

// changed is the segmented volume backed up twice, with a few KiB late in
// the volume changed in between.
type changed struct {
	*segmented
	orig     string           // the volume as s.snap has it; s.img is as snap2 has it
	snap2    *repo.Snapshot   // the second snapshot
	new      []repo.Segment   // the second's that the first does not name
	newPacks map[pack.ID]bool // packs the second backup wrote
}

func setupChanged(t *testing.T) *changed {
	t.Helper()
	s := &changed{segmented: setupSegmented(t), newPacks: map[pack.ID]bool{}}
	ctx := context.Background()
	r := s.open(t)
	r.SegmentExtents = segmentExtents
	idx, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	packs1, segs1 := map[pack.ID]bool{}, map[chunk.ID]bool{}
	for _, p := range idx.Packs() {
		packs1[p.ID] = true
	}
	for _, sg := range s.snap.Segments {
		segs1[sg.ID] = true
	}

	b, err := os.ReadFile(s.img)
	if err != nil {
		t.Fatal(err)
	}
	s.orig = filepath.Join(t.TempDir(), "orig.img")
	if err := os.WriteFile(s.orig, b, 0o600); err != nil {
		t.Fatal(err)
	}
	copy(b[27<<20+1000:], volume.Data(rand.New(rand.NewPCG(12, 0)), 4<<10))
	if err := os.WriteFile(s.img, b, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := backupImage(t, r, s.img)
	if s.snap2, err = r.FindSnapshot(ctx, sum.SnapshotID, ""); err != nil {
		t.Fatal(err)
	}
	if len(s.snap2.Segments) < 2 {
		t.Fatalf("second snapshot has %d segments, want several", len(s.snap2.Segments))
	}
	for _, sg := range s.snap2.Segments {
		if !segs1[sg.ID] {
			s.new = append(s.new, sg)
		}
	}
	if idx, err = r.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range idx.Packs() {
		if !packs1[p.ID] {
			s.newPacks[p.ID] = true
		}
	}
	t.Logf("second snapshot: %d segments, %d of them not the first one's", len(s.snap2.Segments), len(s.new))
	return s
}

// TestSegmentsShared: the second snapshot names mostly the first one's
// segments, and its backup stored only the few it does not share. Both
// snapshots restore.
func TestSegmentsShared(t *testing.T) {
	s := setupChanged(t)
	ctx := context.Background()
	r := s.open(t)
	if len(s.new) == 0 || len(s.new) > 4 {
		t.Fatalf("second snapshot shares %d of its %d segments with the first; want all but 1 to 4",
			len(s.snap2.Segments)-len(s.new), len(s.snap2.Segments))
	}

	// Stored: the segment blobs in the packs the second backup wrote.
	named := map[chunk.ID]bool{}
	for _, sg := range s.snap2.Segments {
		named[sg.ID] = true
	}
	stored := 0
	for id := range s.newPacks {
		p, _, err := r.ReadPack(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		entries, err := r.Codec.ParseHeader(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if named[e.ID] {
				stored++
			}
		}
	}
	if stored != len(s.new) {
		t.Fatalf("second backup stored %d segment blobs; want the %d the first snapshot does not name", stored, len(s.new))
	}

	out, _, err := restoreImage(t, r, s.snap.ID)
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, s.orig, out)
	out, _, err = restoreImage(t, r, s.snap2.ID)
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, s.img, out)
}

// TestRestoreSegmentDamaged damages the pack of the second snapshot's first
// new segment, which holds none of the first snapshot's: with the shard
// that holds the segment's blob corrupt there, or gone (m = 1), the
// segment is rebuilt from the others, and the summary names that shard
// once, as it does a chunk's; with one gone and another corrupt, the
// segment is lost and the restore fails with ErrDataLost before it writes
// anything, though windows before the lost segment could be restored. The
// first snapshot, which does not use the pack, still restores.
func TestRestoreSegmentDamaged(t *testing.T) {
	s := setupChanged(t)
	ctx := context.Background()
	r := s.open(t)
	if len(s.new) == 0 {
		t.Fatal("the second snapshot has no segment of its own")
	}
	lost := s.new[0]
	if lost.ID == s.snap2.Segments[0].ID {
		t.Fatal("the change is in the first window: no window before the lost segment")
	}
	idx, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	info, entry, ok := idx.Lookup(lost.ID)
	if !ok {
		t.Fatalf("segment %s not in the index", lost.ID.Short())
	}
	victim := info.ID
	if !s.newPacks[victim] {
		t.Fatalf("segment %s is in pack %s, which the first backup wrote", lost.ID.Short(), victim.Short())
	}
	shard := func(i int) (*miniogo.Client, string) {
		return s.raw(t, r.TargetOf(i).Index), "repo/" + repo.ShardName(victim, i)
	}
	put := func(cl *miniogo.Client, name string, b []byte) {
		t.Helper()
		if _, err := cl.PutObject(ctx, "ferry", name, bytes.NewReader(b), int64(len(b)), miniogo.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The data shard that holds the segment's blob (its start, should it
	// span two), so that reading the blob's range meets the damage.
	k := int64(r.Config.Erasure.K)
	shardLen := (info.Length + k - 1) / k
	held := int(int64(entry.Offset) / shardLen)
	other := (held + 1) % r.Config.Erasure.Shards()
	restored := func(what, reason string) {
		t.Helper()
		out, sum, err := restoreImage(t, s.open(t), s.snap2.ID)
		if err != nil {
			t.Fatalf("restore with shard %d of the segment's pack %s: %v", held, what, err)
		}
		assertSame(t, s.img, out)
		want := repo.ShardProblem{Pack: victim, Shard: held, Target: r.TargetOf(held).Index + 1, Reason: reason}
		if len(sum.Repaired) != 1 || sum.Repaired[0].Pack != want.Pack || sum.Repaired[0].Shard != want.Shard ||
			sum.Repaired[0].Target != want.Target || !strings.Contains(sum.Repaired[0].Reason, reason) {
			t.Fatalf("shard %d of the segment's pack %s: summary reports %v; want once: %s", held, what, sum.Repaired, want)
		}
		if len(sum.RepairedShards) != 1 || sum.RepairedShards[0] != sum.Repaired[0].String() {
			t.Fatalf("reconstructed_shards %q; want %q", sum.RepairedShards, sum.Repaired[0])
		}
	}

	// A byte of the blob flipped in its shard: the range does not
	// authenticate, and the whole pack is rebuilt without that shard.
	cl, name := shard(held)
	orig := getRaw(t, cl, name)
	b := bytes.Clone(orig)
	b[erasure.HeaderSize+int64(entry.Offset)-int64(held)*shardLen] ^= 0xff
	put(cl, name, b)
	restored("corrupt", "crc")
	put(cl, name, orig)

	// The shard gone.
	if err := cl.RemoveObject(ctx, "ferry", name, miniogo.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	restored("gone", "missing")

	// Another shard corrupt too: two of three shards bad, more than m.
	cl, name = shard(other)
	b = getRaw(t, cl, name)
	b[len(b)/2] ^= 0xff
	put(cl, name, b)
	out, _, err := restoreImage(t, s.open(t), s.snap2.ID)
	if !errors.Is(err, restore.ErrDataLost) {
		t.Fatalf("want ErrDataLost, got %v", err)
	}
	if !strings.Contains(err.Error(), lost.ID.Short()) || !strings.Contains(err.Error(), victim.Short()) {
		t.Fatalf("error does not name the lost segment %s in pack %s: %v", lost.ID.Short(), victim.Short(), err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
		t.Fatalf("a failed restore left files: %v", entries)
	}
	dst, before := garbage(t, s.snap2.Size)
	if _, err := restore.Run(ctx, s.open(t), s.snap2, dst, restore.Options{}); !errors.Is(err, restore.ErrDataLost) {
		t.Fatalf("want ErrDataLost, got %v", err)
	}
	if b, _ := os.ReadFile(dst); !bytes.Equal(b, before) {
		t.Fatal("a restore that could not read a segment wrote to the target")
	}

	out, _, err = restoreImage(t, s.open(t), s.snap.ID)
	if err != nil {
		t.Fatalf("restore of the first snapshot, which does not use the lost pack: %v", err)
	}
	assertSame(t, s.orig, out)
}
