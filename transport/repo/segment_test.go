package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
)

// writeSnapshot commits the extents exts (consecutive from 0) through a
// SnapshotWriter, under a writer lock, and returns the snapshot's ID.
func writeSnapshot(t *testing.T, r *Repo, name string, exts []Extent) (string, error) {
	t.Helper()
	release, err := r.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	w, err := r.NewSnapshotWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var size int64
	for _, e := range exts {
		if err := w.Add(e); err != nil {
			t.Fatal(err)
		}
		size = e.Off + e.Len
	}
	id, _, err := w.Commit(context.Background(), Meta{Name: name, Size: size, Digest: "ab", Started: time.Unix(100, 0).UTC()})
	return id, err
}

// testExtents returns n extents: data (of the chunks ids, in turn) with a
// run of two zero extents after every third.
func testExtents(ids []chunk.ID, n int) (in, merged []Extent) {
	var off int64
	add := func(e Extent) {
		e.Off = off
		off += e.Len
		in = append(in, e)
		if k := len(merged); e.Zero && k > 0 && merged[k-1].Zero {
			merged[k-1].Len += e.Len
		} else {
			merged = append(merged, e)
		}
	}
	for i := range n {
		add(Extent{Len: int64(1000 + i), ID: ids[i%len(ids)]})
		if i%3 == 2 {
			add(Extent{Len: 4096, Zero: true})
			add(Extent{Len: 512, Zero: true})
		}
	}
	return in, merged
}

// manyChunks stores n distinct chunks in one pack and returns their IDs:
// segment cuts depend on chunk IDs, so a test of cuts needs many.
func manyChunks(t *testing.T, r *Repo, n int) []chunk.ID {
	t.Helper()
	data := make([][]byte, n)
	for i := range data {
		data[i] = fmt.Appendf(nil, "chunk %d", i)
	}
	return storeChunks(t, r, data...)
}

// segmentBlobs returns how many blobs the index holds that are segments of
// the snapshots ids (each counted once).
func segmentBlobs(t *testing.T, r *Repo, ids ...string) (named, indexed int) {
	t.Helper()
	ctx := context.Background()
	x, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[chunk.ID]bool{}
	for _, id := range ids {
		s, err := r.FindSnapshot(ctx, id, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, sg := range s.Segments {
			if seen[sg.ID] {
				continue
			}
			seen[sg.ID] = true
			named++
			if _, _, ok := x.Lookup(sg.ID); ok {
				indexed++
			}
		}
	}
	return named, indexed
}

// TestSegmentedSnapshot writes snapshots through a SnapshotWriter, with
// the spool on disk and in memory, and reads them back whole, a segment
// at a time and as a listing does. Segments are blobs in packs, indexed,
// and nothing is written under the prefix of the replicated segments of
// an earlier format.
func TestSegmentedSnapshot(t *testing.T) {
	for _, cache := range []string{"disk", "memory", "unwritable"} {
		t.Run("cache="+cache, func(t *testing.T) {
			ctx := context.Background()
			stores := memStores(3)
			r := initRepo(t, stores)
			switch cache {
			case "disk":
				r.IndexCache = t.TempDir()
			case "unwritable":
				// The repository's cache directory takes no new file
				// (immutable, which binds root too): the extents are
				// spooled in memory.
				r.IndexCache = t.TempDir()
				dir := filepath.Join(r.IndexCache, r.Config.ID)
				if err := os.MkdirAll(filepath.Join(dir, "index"), 0o700); err != nil {
					t.Fatal(err)
				}
				if out, err := exec.Command("chattr", "+i", dir).CombinedOutput(); err != nil {
					t.Fatalf("chattr +i %s (needs root and a filesystem with the attribute): %v: %s", dir, err, out)
				}
				t.Cleanup(func() { exec.Command("chattr", "-i", dir).Run() })
			}
			r.SegmentExtents = 4 // segments of 1 to 16 extents
			ids := manyChunks(t, r, 150)
			in, want := testExtents(ids, 150) // 150 data extents and 50 runs of zeros

			id, err := writeSnapshot(t, r, "db", in)
			if err != nil {
				t.Fatal(err)
			}
			s, err := r.FindSnapshot(ctx, id, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Segments) < 10 || s.Extents != nil {
				t.Fatalf("%d segments, %d extents in the manifest; want at least 10 segments", len(s.Segments), len(s.Extents))
			}
			var got []Extent
			batches, cut := 0, 0
			err = r.Extents(ctx, s, func(exts []Extent) error {
				if len(exts) > 16 {
					t.Errorf("a batch of %d extents, more than a segment holds", len(exts))
				}
				// A segment shorter than the most ends where its last
				// chunk ID says (the last segment ends with the volume).
				if last := exts[len(exts)-1]; len(exts) < 16 && batches+1 < len(s.Segments) {
					if last.Zero || !segmentCut(last.ID, 4) {
						t.Errorf("segment %d of %d extents ends after extent %+v, not at a cut", batches+1, len(exts), last)
					}
					cut++
				}
				batches++
				got = append(got, exts...)
				return nil
			})
			if err != nil || batches != len(s.Segments) || !reflect.DeepEqual(got, want) {
				t.Fatalf("Extents: %v, %d batches\n got %+v\nwant %+v", err, batches, got, want)
			}
			if cut == 0 {
				t.Fatal("no segment ended at a cut its content chose")
			}
			full, err := r.WithExtents(ctx, s)
			if err != nil || !reflect.DeepEqual(full.Extents, want) || full.Size != s.Size {
				t.Fatalf("WithExtents: %v", err)
			}
			snaps, err := r.Snapshots(ctx)
			if err != nil || len(snaps) != 1 || !snaps[0].MetaOnly() || !reflect.DeepEqual(snaps[0].Segments, s.Segments) {
				t.Fatalf("Snapshots: %v, %+v", err, snaps)
			}
			if named, indexed := segmentBlobs(t, r, id); named != len(s.Segments) || indexed != named {
				t.Fatalf("%d distinct segments, %d indexed; want all %d", named, indexed, len(s.Segments))
			}
			for i, st := range stores {
				if n := len(names(t, st, "extents/")); n != 0 {
					t.Fatalf("target %d holds %d objects under extents/", i+1, n)
				}
			}

			// A repository opened afresh reads the segments through the
			// index it loads itself.
			again, err := Open(ctx, stores, []byte("pw"))
			if err != nil {
				t.Fatal(err)
			}
			if full, err := again.WithExtents(ctx, s); err != nil || !reflect.DeepEqual(full.Extents, want) {
				t.Fatalf("WithExtents from a fresh Open: %v", err)
			}

			// No more extents than a segment holds on average: the manifest
			// keeps them.
			in, want = testExtents(ids, 3)
			id, err = writeSnapshot(t, r, "small", in)
			if err != nil {
				t.Fatal(err)
			}
			if s, err := r.FindSnapshot(ctx, id, ""); err != nil || s.Segments != nil || !reflect.DeepEqual(s.Extents, want) {
				t.Fatalf("small snapshot: %v, %+v", err, s)
			}
		})
	}
}

// TestSegmentsShared: a snapshot that differs from the one before in one
// place names the same segments elsewhere and stores only those around the
// change; the cuts find each other again after it.
func TestSegmentsShared(t *testing.T) {
	ctx := context.Background()
	r := initRepo(t, memStores(3))
	r.SegmentExtents = 8 // segments of 2 to 32 extents
	ids := manyChunks(t, r, 601)
	in, want := testExtents(ids[:600], 600)
	first, err := writeSnapshot(t, r, "db", in)
	if err != nil {
		t.Fatal(err)
	}
	// Change a chunk in the middle: another chunk of the same length.
	changed := slices.Clone(in)
	mid := len(changed) / 2
	for changed[mid].Zero {
		mid++
	}
	changed[mid].ID = ids[600]
	x, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := x.Len()
	second, err := writeSnapshot(t, r, "db", changed)
	if err != nil {
		t.Fatal(err)
	}
	a, err := r.FindSnapshot(ctx, first, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.FindSnapshot(ctx, second, "")
	if err != nil {
		t.Fatal(err)
	}
	old := map[chunk.ID]bool{}
	for _, sg := range a.Segments {
		old[sg.ID] = true
	}
	fresh := 0
	for _, sg := range b.Segments {
		if !old[sg.ID] {
			fresh++
		}
	}
	if len(a.Segments) < 20 || fresh == 0 || fresh > 2 {
		t.Fatalf("%d segments, of which the second snapshot names %d anew; want 1 or 2 of many", len(a.Segments), fresh)
	}
	x, err = r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if added := x.Len() - before; added != fresh {
		t.Fatalf("the second commit indexed %d blobs, want its %d new segments", added, fresh)
	}
	// The pack the second commit wrote holds its new segments only.
	var newPack *PackInfo
	for _, sg := range b.Segments {
		if info, _, ok := x.Lookup(sg.ID); ok && !old[sg.ID] {
			newPack = &info
		}
	}
	if newPack == nil {
		t.Fatal("the new segments are in no pack")
	}
	p, _, err := r.ReadPack(ctx, newPack.ID)
	if err != nil {
		t.Fatal(err)
	}
	if entries, err := r.Codec.ParseHeader(p); err != nil || len(entries) != fresh {
		t.Fatalf("the second commit's pack holds %d blobs (%v), want its %d new segments", len(entries), err, fresh)
	}
	want2 := slices.Clone(want)
	for i := range want2 {
		if want2[i].Off == changed[mid].Off {
			want2[i].ID = ids[600]
		}
	}
	for _, c := range []struct {
		s    *Snapshot
		want []Extent
	}{{a, want}, {b, want2}} {
		if full, err := r.WithExtents(ctx, c.s); err != nil || !reflect.DeepEqual(full.Extents, c.want) {
			t.Fatalf("snapshot %s: %v", c.s.ID[:12], err)
		}
	}
}

// TestCommitChecksSegments: a commit refuses a manifest whose segment is
// only in a pack that a prune may delete before the manifest is in, as it
// refuses one whose chunk is: here the index this Repo loaded predates the
// prune plan that marked the pack, so the backup reused the segment.
func TestCommitChecksSegments(t *testing.T) {
	ctx := context.Background()
	_, r, s, want := segmentedSnapshot(t)
	info, _, ok := r.loaded.Load().Lookup(s.Segments[0].ID)
	if !ok {
		t.Fatal("segment 1 is in no index object")
	}
	now := time.Now()
	if _, err := r.writePlan(ctx, &Plan{Created: now.Add(-time.Hour), Marks: map[pack.ID]Mark{
		info.ID: {Marked: now.Add(-time.Hour), Deletable: now.Add(-time.Minute)},
	}}); err != nil {
		t.Fatal(err)
	}
	_, err := writeSnapshot(t, r, "again", want) // the same extents

	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "segment 1 of") {
		t.Fatalf("a segment only in a marked pack: %v", err)
	}
}

// TestSegmentedSnapshotDamage: a segment whose pack lost a shard, or holds
// a corrupt one, is rebuilt from the others; with more shards gone than
// the parity covers, the error says which segment, as ErrSegmentLost.
func TestSegmentedSnapshotDamage(t *testing.T) {
	ctx := context.Background()
	stores, r, s, want := segmentedSnapshot(t)
	x, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	info, _, ok := x.Lookup(s.Segments[1].ID)
	if !ok {
		t.Fatal("segment 2 is in no index object")
	}
	// (The segments of one commit share a pack.)
	// Shard 0 corrupt (a byte flipped), on target 1.
	name := ShardName(info.ID, 0)
	b, err := stores[0].Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/3] ^= 0xff
	stores[0].Delete(ctx, name)
	if err := stores[0].Create(ctx, name, b); err != nil {
		t.Fatal(err)
	}
	full, err := r.WithExtents(ctx, s)
	if err != nil || !reflect.DeepEqual(full.Extents, want) {
		t.Fatalf("with one corrupt shard: %v", err)
	}
	// And shard 1 gone: two of three shards of a 2+1 pack.
	stores[1].Delete(ctx, ShardName(info.ID, 1))
	_, err = r.WithExtents(ctx, s)
	if !errors.Is(err, ErrSegmentLost) || !strings.Contains(err.Error(), fmt.Sprintf(" of %d: ", len(s.Segments))) || !strings.Contains(err.Error(), info.ID.Short()) {
		t.Fatalf("two shards of three gone: %v", err)
	}
}

// segmentedSnapshot commits a snapshot of about 200 extents in segments of
// about 4 to three memory stores and returns them, the repository, the
// snapshot (as FindSnapshot gives it) and its extents.
func segmentedSnapshot(t *testing.T) ([]objstore.Store, *Repo, *Snapshot, []Extent) {
	t.Helper()
	stores := memStores(3)
	r := initRepo(t, stores)
	s, want := commitSegmented(t, r, 150)
	if len(s.Segments) < 3 {
		t.Fatalf("%d segments, want several", len(s.Segments))
	}
	return stores, r, s, want
}

// commitSegmented commits, in segments of about 4 extents, n data
// extents of distinct chunks and runs of zeros (testExtents), and returns
// the snapshot and the extents it must read back.
func commitSegmented(t *testing.T, r *Repo, n int) (*Snapshot, []Extent) {
	t.Helper()
	r.SegmentExtents = 4
	in, want := testExtents(manyChunks(t, r, n), n)
	id, err := writeSnapshot(t, r, "db", in)
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.FindSnapshot(context.Background(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	return s, want
}

// TestSnapshotWriterRefuses: extents out of order, a size they do not
// cover, segments without a writer lock, and a chunk no index holds (the
// segments may be written, never the manifest).
func TestSnapshotWriterRefuses(t *testing.T) {
	ctx := context.Background()
	stores := memStores(3)
	r := initRepo(t, stores)
	r.SegmentExtents = 2
	w, err := r.NewSnapshotWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Add(Extent{Off: 10, Len: 5, Zero: true}); err == nil {
		t.Fatal("an extent not at offset 0 was taken")
	}
	w.Add(Extent{Len: 5, Zero: true})
	if _, _, err := w.Commit(ctx, Meta{Name: "x", Size: 6}); err == nil || !strings.Contains(err.Error(), "cover 5") {
		t.Fatalf("size the extents do not cover: %v", err)
	}
	// Segments without a writer lock: prune could take their pack for
	// garbage.
	w, err = r.NewSnapshotWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := range int64(3) {
		w.Add(Extent{Off: i, Len: 1, Zero: i%2 == 1, ID: chunk.ID{byte(i)}})
	}
	if _, _, err := w.Commit(ctx, Meta{Name: "x", Size: 3}); err == nil || !strings.Contains(err.Error(), "writer lock") {
		t.Fatalf("segments without a lock: %v", err)
	}
	if n := len(names(t, stores[0], "data/")); n != 0 {
		t.Fatalf("%d shards written without a lock", n)
	}

	ids := storeChunks(t, r, []byte("first"))
	in, _ := testExtents(ids, 5)
	in[6].ID = chunk.ID{1} // the last extent, in the last segment
	if in[6].Zero {
		t.Fatal("test extents changed")
	}
	_, err = writeSnapshot(t, r, "db", in)
	if err == nil || !strings.Contains(err.Error(), "in no index object") {
		t.Fatalf("a chunk in no index: %v", err)
	}
	if snaps, err := r.Snapshots(ctx); err != nil || len(snaps) != 0 {
		t.Fatalf("a manifest was written: %d, %v", len(snaps), err)
	}
}

func FuzzParseSegment(f *testing.F) {
	enc := appendExtent(nil, Extent{Len: 4, ID: chunk.ID{9}})
	enc = appendExtent(enc, Extent{Len: 6, Zero: true})
	f.Add(segmentPlain(enc, 7, 2), int64(7), int64(2), int64(10))
	f.Fuzz(func(t *testing.T, b []byte, off, n, length int64) {
		if off < 0 || n <= 0 || length <= 0 || off > 1<<60 || length > 1<<60 {
			return
		}
		exts, err := parseSegment(b, Segment{Extents: n, Len: length}, off)
		if err != nil {
			return
		}
		if int64(len(exts)) != n {
			t.Fatalf("%d extents, want %d", len(exts), n)
		}
		at := off
		for _, e := range exts {
			if e.Off != at || e.Len <= 0 {
				t.Fatalf("bad extent %+v at %d", e, at)
			}
			at += e.Len
		}
		if at != off+length {
			t.Fatalf("extents end at %d, want %d", at, off+length)
		}
	})
}
