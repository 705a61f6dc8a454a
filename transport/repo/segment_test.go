package repo

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/objstore"
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

// TestSegmentedSnapshot writes snapshots through a SnapshotWriter, with
// the spool on disk and in memory, and reads them back whole, a segment
// at a time and as a listing does.
func TestSegmentedSnapshot(t *testing.T) {
	for _, cache := range []bool{true, false} {
		t.Run(fmt.Sprintf("cache=%v", cache), func(t *testing.T) {
			ctx := context.Background()
			stores := memStores(3)
			r := initRepo(t, stores)
			if cache {
				r.IndexCache = t.TempDir()
			}
			r.SegmentExtents = 4
			ids := storeChunks(t, r, []byte("first"), []byte("second"), []byte("third"))
			in, want := testExtents(ids, 11) // 11 data extents and 3 runs of zeros: 14 extents, 4 segments

			id, err := writeSnapshot(t, r, "db", in)
			if err != nil {
				t.Fatal(err)
			}
			s, err := r.FindSnapshot(ctx, id, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Segments) != 4 || s.Extents != nil {
				t.Fatalf("%d segments, %d extents in the manifest; want 4 segments", len(s.Segments), len(s.Extents))
			}
			var got []Extent
			batches := 0
			err = r.Extents(ctx, s, func(exts []Extent) error {
				if len(exts) > 4 {
					t.Errorf("a batch of %d extents, more than a segment", len(exts))
				}
				batches++
				got = append(got, exts...)
				return nil
			})
			if err != nil || batches != 4 || !reflect.DeepEqual(got, want) {
				t.Fatalf("Extents: %v, %d batches\n got %+v\nwant %+v", err, batches, got, want)
			}
			full, err := r.WithExtents(ctx, s)
			if err != nil || !reflect.DeepEqual(full.Extents, want) || full.Size != s.Size {
				t.Fatalf("WithExtents: %v", err)
			}
			snaps, err := r.Snapshots(ctx)
			if err != nil || len(snaps) != 1 || !snaps[0].MetaOnly() || !reflect.DeepEqual(snaps[0].Segments, s.Segments) {
				t.Fatalf("Snapshots: %v, %+v", err, snaps)
			}
			for i, st := range stores {
				n := 0
				st.List(ctx, "extents/", func(objstore.Info) error { n++; return nil })
				if n != 4 {
					t.Fatalf("target %d holds %d segments, want 4", i+1, n)
				}
			}

			// No more extents than a segment holds: the manifest keeps them.
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

// TestSegmentedSnapshotDamage: a segment deleted or replaced on some
// targets is read from another; gone from all, the error says which.
func TestSegmentedSnapshotDamage(t *testing.T) {
	ctx := context.Background()
	stores, r, s, want := segmentedSnapshot(t)
	other, err := r.readSegmentObject(ctx, s.Segments[0])
	if err != nil {
		t.Fatal(err)
	}
	second := s.Segments[1].Name()
	// Target 1 lacks the second segment, target 2 holds the first in its
	// place (valid, sealed with the key, but not the object named).
	stores[0].Delete(ctx, second)
	stores[1].Delete(ctx, second)
	if err := stores[1].Create(ctx, second, other); err != nil {
		t.Fatal(err)
	}
	full, err := r.WithExtents(ctx, s)
	if err != nil || !reflect.DeepEqual(full.Extents, want) {
		t.Fatalf("with a good copy on one target: %v", err)
	}
	stores[2].Delete(ctx, second)
	_, err = r.WithExtents(ctx, s)
	if err == nil || !strings.Contains(err.Error(), "segment 2 of") || !strings.Contains(err.Error(), "does not match its name") {
		t.Fatalf("no good copy left: %v", err)
	}
}

// segmentedSnapshot commits a snapshot of 7 extents in segments of 2 to
// three memory stores and returns them, the repository, the snapshot (as
// FindSnapshot gives it) and its extents.
func segmentedSnapshot(t *testing.T) ([]objstore.Store, *Repo, *Snapshot, []Extent) {
	t.Helper()
	stores := memStores(3)
	r := initRepo(t, stores)
	r.SegmentExtents = 2
	ids := storeChunks(t, r, []byte("first"), []byte("second"))
	in, want := testExtents(ids, 5)
	id, err := writeSnapshot(t, r, "db", in)
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.FindSnapshot(context.Background(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	return stores, r, s, want
}

// readSegmentObject returns segment sg's sealed object from any target.
func (r *Repo) readSegmentObject(ctx context.Context, sg Segment) ([]byte, error) {
	var obj []byte
	err := r.getAny(ctx, sg.Name(), func(b []byte) error { obj = b; return nil })
	return obj, err
}

// TestSnapshotWriterRefuses: extents out of order, a size they do not
// cover, and a chunk no index holds (the segments may be written, never
// the manifest).
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
	// Segments without a writer lock: prune could take them for garbage.
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
	n := 0
	stores[0].List(ctx, "extents/", func(objstore.Info) error { n++; return nil })
	if n != 0 {
		t.Fatalf("%d segments written without a lock", n)
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
	plain := append([]byte("FRYE"), 1, 7, 2)
	f.Add(zenc.EncodeAll(append(plain, enc...), nil), int64(7), int64(2), int64(10))
	f.Fuzz(func(t *testing.T, z []byte, off, n, length int64) {
		if off < 0 || n <= 0 || length <= 0 || off > 1<<60 || length > 1<<60 {
			return
		}
		exts, err := parseSegment(z, Segment{Extents: n, Len: length}, off)
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
