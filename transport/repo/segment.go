package repo

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/transport/objstore"
)

// Segmented manifests. A manifest that held every extent of a large volume
// would be read, parsed and written whole, so a backup or a restore would
// hold all of the volume's extents at once: memory in proportion to the
// volume. A volume of more than Repo.SegmentExtents extents therefore keeps
// them in segments, objects of their own,
//
//	extents/<ID>   sealed (associated data "ferry extents v1"), on every target
//
// where ID is the SHA-256 of the sealed object and the plaintext is
//
//	zstd("FRYE" || version (1) || offset (uvarint) || extents (uvarint) || extents × extent)
//
// with extents encoded as in a version 1 manifest. The manifest (version 2)
// lists the segments in volume order with the extents and bytes each holds,
// so a reader takes one segment at a time, and knows from the name alone
// that the object it reads is the one the manifest meant.
//
// A backup writes its segments before the manifest (the commit point);
// segments that no manifest names (a backup that failed, a snapshot
// forgotten) are garbage for prune, like packs.

// DefaultSegmentExtents is how many extents a segment holds unless
// Repo.SegmentExtents says otherwise: about 2.6 MiB of plaintext, the
// extents of some 64 GiB of volume at the default 1 MiB average chunk.
const DefaultSegmentExtents = 64 << 10

var extentsAD = []byte("ferry extents v1")

// Segment is one object of a segmented manifest's extents.
type Segment struct {
	ID      [32]byte // SHA-256 of the sealed object extents/<hex ID>
	Extents int64
	Len     int64 // bytes of the volume its extents cover
}

// Name is the segment's object name.
func (sg Segment) Name() string { return "extents/" + hex.EncodeToString(sg.ID[:]) }

func (r *Repo) segmentExtents() int64 {
	if r.SegmentExtents > 0 {
		return int64(r.SegmentExtents)
	}
	return DefaultSegmentExtents
}

// parseSegmentRefs parses a version 2 manifest's segment list, which must
// cover size bytes.
func parseSegmentRefs(r *reader, size int64) []Segment {
	n := r.uvarint(uint64(len(r.b)) / 34)
	out := make([]Segment, 0, n)
	var off int64
	for i := uint64(0); i < n && r.err == nil; i++ {
		sg := Segment{Extents: int64(r.uvarint(maxManifestSize)), Len: int64(r.uvarint(1 << 62))}
		copy(sg.ID[:], r.bytes(32))
		if sg.Extents <= 0 || sg.Len <= 0 || sg.Len > size-off {
			r.err = errManifestFormat
		}
		off += sg.Len
		out = append(out, sg)
	}
	if r.err == nil && (off != size || n == 0) {
		r.err = errManifestFormat
	}
	return out
}

// sealSegment makes the segment object of the encoded extents enc, the
// first at off, n of them covering length bytes.
func (r *Repo) sealSegment(enc []byte, off, n, length int64) (Segment, []byte) {
	plain := append([]byte("FRYE"), 1)
	plain = binary.AppendUvarint(plain, uint64(off))
	plain = binary.AppendUvarint(plain, uint64(n))
	plain = append(plain, enc...)
	obj := r.key.Seal(nil, zenc.EncodeAll(plain, nil), extentsAD)
	return Segment{ID: sha256.Sum256(obj), Extents: n, Len: length}, obj
}

// parseSegment parses segment sg's compressed plaintext, whose first
// extent is at off.
func parseSegment(z []byte, sg Segment, off int64) ([]Extent, error) {
	b, err := decompress(z)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errManifestFormat, err)
	}
	r := &reader{b: b}
	if h := r.bytes(5); r.err != nil || string(h[:4]) != "FRYE" || h[4] != 1 {
		return nil, fmt.Errorf("%w: segment: bad magic or version", errManifestFormat)
	}
	if at := r.uvarint(1 << 62); r.err != nil || int64(at) != off {
		return nil, fmt.Errorf("%w: segment starts at offset %d, the manifest says %d", errManifestFormat, at, off)
	}
	if n := r.uvarint(uint64(len(r.b))); r.err != nil || int64(n) != sg.Extents {
		return nil, fmt.Errorf("%w: segment holds %d extents, the manifest says %d", errManifestFormat, n, sg.Extents)
	}
	exts, end := parseExtents(r, uint64(sg.Extents), off, off+sg.Len)
	if r.err != nil || len(r.b) != 0 || end != off+sg.Len {
		return nil, fmt.Errorf("%w: segment's extents do not cover its bytes", errManifestFormat)
	}
	return exts, nil
}

// readSegment reads segment sg, whose first extent is at off, from any
// target with a valid copy.
func (r *Repo) readSegment(ctx context.Context, sg Segment, off int64) ([]Extent, error) {
	var exts []Extent
	err := r.getAny(ctx, sg.Name(), func(b []byte) error {
		var err error
		exts, err = r.OpenSegment(sg, off, b)
		return err
	})
	return exts, err
}

// Extents calls fn with the extents of snapshot s in volume order: a
// segment at a time, or all at once for a manifest that holds them. A
// reader that takes them this way holds one segment's extents at a time.
// The slices are fn's to keep.
func (r *Repo) Extents(ctx context.Context, s *Snapshot, fn func([]Extent) error) error {
	if s.Segments == nil || s.Extents != nil {
		s, err := r.WithExtents(ctx, s)
		if err != nil {
			return err
		}
		return fn(s.Extents)
	}
	var off int64
	for i, sg := range s.Segments {
		exts, err := r.readSegment(ctx, sg, off)
		if errors.Is(err, objstore.ErrNotFound) {
			// Forgotten and pruned since it was listed, or a segment lost.
			if _, lerr := r.loadSnapshot(ctx, s.ID); errors.Is(lerr, objstore.ErrNotFound) {
				return fmt.Errorf("snapshot %s: %w (deleted since it was listed)", s.ID, ErrSnapshotNotFound)
			}
		}
		if err != nil {
			return fmt.Errorf("snapshot %s, segment %d of %d: %w", s.ID, i+1, len(s.Segments), err)
		}
		if err := fn(exts); err != nil {
			return err
		}
		off += sg.Len
	}
	return nil
}

// SnapshotWriter takes a backup's extents in volume order and commits them
// with the manifest. It keeps them on the local disk (in Repo.IndexCache,
// in an unlinked file) until the commit, or in memory without a cache; at
// the commit, a volume of more than one segment's extents has them written
// as segments, one at a time per uploader. Memory does not grow with the
// volume's size.
type SnapshotWriter struct {
	r      *Repo
	per    int64
	f      *os.File // the spool; nil: mem
	bw     *bufio.Writer
	mem    []byte
	size   int64   // bytes spooled
	starts []int64 // spool offset of each segment's first extent
	firsts []int64 // volume offset of each segment's first extent
	n      int64   // extents spooled
	end    int64   // volume offset past the last extent added
	last   Extent  // the last extent added, spooled once the next is not a zero to merge
	held   bool
}

// NewSnapshotWriter returns a writer for a snapshot's extents. Close it.
func (r *Repo) NewSnapshotWriter() (*SnapshotWriter, error) {
	w := &SnapshotWriter{r: r, per: r.segmentExtents()}
	dir, err := r.indexDir()
	if err == nil && dir != "" {
		f, err := os.CreateTemp(dir, "extents-*")
		if err != nil {
			return nil, fmt.Errorf("spool the snapshot's extents: %w", err)
		}
		if err := os.Remove(f.Name()); err != nil {
			f.Close()
			return nil, fmt.Errorf("spool the snapshot's extents: %w", err)
		}
		w.f, w.bw = f, bufio.NewWriterSize(f, 64<<10)
	}
	return w, nil
}

// Close releases the writer's spool.
func (w *SnapshotWriter) Close() {
	if w.f != nil {
		w.f.Close()
	}
	w.mem = nil
}

// Add appends e, which must start where the last extent ended. Zero
// extents next to each other are merged.
func (w *SnapshotWriter) Add(e Extent) error {
	if e.Off != w.end || e.Len <= 0 {
		return fmt.Errorf("extent at offset %d of %d bytes after offset %d: extents must be consecutive", e.Off, e.Len, w.end)
	}
	w.end += e.Len
	if w.held && w.last.Zero && e.Zero {
		w.last.Len += e.Len
		return nil
	}
	if err := w.spool(); err != nil {
		return err
	}
	w.last, w.held = e, true
	return nil
}

// spool writes the held extent to the spool.
func (w *SnapshotWriter) spool() error {
	if !w.held {
		return nil
	}
	if w.n%w.per == 0 {
		w.starts = append(w.starts, w.size)
		w.firsts = append(w.firsts, w.last.Off)
	}
	var buf [1 + binary.MaxVarintLen64 + 32]byte
	b := appendExtent(buf[:0], w.last)
	if w.bw != nil {
		if _, err := w.bw.Write(b); err != nil {
			return fmt.Errorf("spool the snapshot's extents: %w", err)
		}
	} else {
		w.mem = append(w.mem, b...)
	}
	w.size += int64(len(b))
	w.n++
	w.held = false
	return nil
}

// Extents is how many extents the writer holds.
func (w *SnapshotWriter) Extents() int64 {
	if w.held {
		return w.n + 1
	}
	return w.n
}

// finish spools the held extent and makes the spool readable.
func (w *SnapshotWriter) finish() error {
	if err := w.spool(); err != nil {
		return err
	}
	if w.bw != nil {
		if err := w.bw.Flush(); err != nil {
			return fmt.Errorf("spool the snapshot's extents: %w", err)
		}
	}
	return nil
}

func (w *SnapshotWriter) readAt(b []byte, off int64) error {
	if w.f == nil {
		copy(b, w.mem[off:])
		return nil
	}
	_, err := w.f.ReadAt(b, off)
	return err
}

// segment returns the encoded extents of segment i.
func (w *SnapshotWriter) segment(i int) ([]byte, error) {
	end := w.size
	if i+1 < len(w.starts) {
		end = w.starts[i+1]
	}
	b := make([]byte, end-w.starts[i])
	if err := w.readAt(b, w.starts[i]); err != nil {
		return nil, fmt.Errorf("read the spooled extents: %w", err)
	}
	return b, nil
}

// each calls fn with every spooled extent in order, reading the spool a
// segment at a time.
func (w *SnapshotWriter) each(fn func(Extent) error) error {
	for i := range w.starts {
		b, err := w.segment(i)
		if err != nil {
			return err
		}
		n := min(w.per, w.n-int64(i)*w.per)
		rd := &reader{b: b}
		exts, _ := parseExtents(rd, uint64(n), w.firsts[i], w.end)
		if rd.err != nil || len(rd.b) != 0 {
			return fmt.Errorf("read the spooled extents: %w", errManifestFormat)
		}
		for _, e := range exts {
			if err := fn(e); err != nil {
				return err
			}
		}
	}
	return nil
}

// segmentUploads is how many segments a commit seals and writes at once.
const segmentUploads = 2

// Commit writes the snapshot of meta and the extents added: its segments,
// when there are more extents than one holds, then the manifest, after
// the checks of SaveSnapshot. meta.Size must be the bytes the extents
// cover. It returns the snapshot ID and the bytes written.
func (w *SnapshotWriter) Commit(ctx context.Context, meta Meta) (string, int64, error) {
	if err := w.finish(); err != nil {
		return "", 0, err
	}
	if meta.Size != w.end {
		return "", 0, fmt.Errorf("snapshot of %d bytes, but its extents cover %d", meta.Size, w.end)
	}
	r := w.r
	m := &Manifest{Meta: meta}
	if w.n <= w.per {
		m.Extents = make([]Extent, 0, w.n)
		if err := w.each(func(e Extent) error { m.Extents = append(m.Extents, e); return nil }); err != nil {
			return "", 0, err
		}
		return r.SaveSnapshot(ctx, m)
	}
	// Prune deletes segments no manifest names unless a backup holds a
	// writer lock (prune.go): these must not go before the manifest is in.
	if r.heldWriter() == nil {
		return "", 0, errors.New("a snapshot of more than one segment is committed under a writer lock (Repo.Lock)")
	}
	m.Segments = make([]Segment, len(w.starts))
	var written atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(segmentUploads)
	for i := range w.starts {
		g.Go(func() error {
			enc, err := w.segment(i)
			if err != nil {
				return err
			}
			end := w.end
			if i+1 < len(w.firsts) {
				end = w.firsts[i+1]
			}
			sg, obj := r.sealSegment(enc, w.firsts[i], min(w.per, w.n-int64(i)*w.per), end-w.firsts[i])
			if err := r.putEverywhere(gctx, sg.Name(), func(*Target) ([]byte, error) { return obj, nil }); err != nil {
				return fmt.Errorf("write segment %d of %d: %w", i+1, len(w.starts), err)
			}
			written.Add(int64(len(obj) * r.copies(gctx)))
			m.Segments[i] = sg
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return "", 0, err
	}
	id, n, err := r.commit(ctx, m, w.each)
	return id, n + written.Load(), err
}

// eachIn returns a function that calls its argument with every extent of
// m (SaveSnapshot's manifests hold theirs).
func eachIn(m *Manifest) func(func(Extent) error) error {
	return func(fn func(Extent) error) error {
		for _, e := range m.Extents {
			if err := fn(e); err != nil {
				return err
			}
		}
		return nil
	}
}
