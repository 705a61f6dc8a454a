package repo

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"os"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
)

// Segmented manifests. A manifest that held every extent of a large volume
// would be read, parsed and written whole, so a backup or a restore would
// hold all of the volume's extents at once: memory in proportion to the
// volume; and every snapshot would store all of them again, however little
// changed. A volume of more than Repo.SegmentExtents extents therefore keeps
// them in segments, runs of consecutive extents each stored as a blob in a
// pack, as a chunk of data is, with the plaintext
//
//	"FRYE" || version (1) || offset (uvarint) || extents (uvarint) || extents × extent
//
// (extents encoded as in a version 1 manifest; offset is the volume offset
// of the first) and named, as a chunk is, by the keyed hash of that
// plaintext (chunk.IDKey). The manifest (version 2) lists the segments in
// volume order with the extents and bytes each holds, so a reader takes one
// segment at a time and knows from the ID that the blob it read is the one
// the manifest meant.
//
// Where a segment ends depends on its content, as where a chunk ends does:
// after an extent whose chunk ID says so (segmentCut), between a minimum and
// a maximum count. The cuts of two snapshots of a volume therefore agree
// wherever their extents do, and a snapshot that differs from the one
// before in a few places has the same segments elsewhere: a backup stores
// only the segments the index does not hold yet, so what a snapshot costs
// beyond its new data grows with what changed, not with the volume.
//
// Being blobs in packs, segments are deduplicated, erasure-coded, verified,
// repaired and pruned as data is: a pack holding a segment a manifest
// names is referenced, and a commit checks a manifest's segments as it
// checks its chunks (checkCommit).

// DefaultSegmentExtents is the average number of extents in a segment
// unless Repo.SegmentExtents says otherwise (a segment holds a quarter of
// it to four times it, 1.25 times it on average): about 180 KiB of
// plaintext, the extents of some 640 MiB of volume at 128 KiB chunks.
const DefaultSegmentExtents = 4 << 10

// maxExtentLen is the most bytes one encoded extent takes.
const maxExtentLen = 1 + binary.MaxVarintLen64 + len(chunk.ID{})

// ErrSegmentLost means a segment of a snapshot's extents cannot be read:
// it is in no index object, or its pack has lost more shards than the
// erasure coding rebuilds.
var ErrSegmentLost = errors.New("segment of the snapshot's extents lost")

// Segment is one blob of a segmented manifest's extents.
type Segment struct {
	ID      chunk.ID // keyed hash of its plaintext
	Extents int64
	Len     int64 // bytes of the volume its extents cover
}

// segmentSizes returns the average, least and most extents of a segment.
func (r *Repo) segmentSizes() (avg, least, most int64) {
	avg = DefaultSegmentExtents
	if r.SegmentExtents > 0 {
		avg = int64(r.SegmentExtents)
	}
	most = min(4*avg, int64((pack.MaxRawLength-32)/maxExtentLen))
	return avg, max(1, min(avg/4, most)), most
}

// segmentCut reports whether a segment ends after the data extent of chunk
// id: with probability 1/avg, from bits of the chunk ID that nothing else
// uses (chunk IDs are keyed hashes, so the cuts are as random).
func segmentCut(id chunk.ID, avg int64) bool {
	return binary.LittleEndian.Uint64(id[24:])%uint64(avg) == 0
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

// segmentPlain returns the plaintext of the segment of the encoded extents
// enc, n of them, the first at off.
func segmentPlain(enc []byte, off, n int64) []byte {
	plain := make([]byte, 0, 5+2*binary.MaxVarintLen64+len(enc))
	plain = append(plain, "FRYE"...)
	plain = append(plain, 1)
	plain = binary.AppendUvarint(plain, uint64(off))
	plain = binary.AppendUvarint(plain, uint64(n))
	return append(plain, enc...)
}

// parseSegment parses the plaintext of segment sg, whose first extent is at
// off.
func parseSegment(b []byte, sg Segment, off int64) ([]Extent, error) {
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

// OpenSegment authenticates and parses segment sg of a manifest, whose
// first extent is at off, from the blob e of pack bytes p: it must open
// with the key, hash to the segment's ID, and hold the extents the manifest
// says, from off.
func (r *Repo) OpenSegment(sg Segment, off int64, p []byte, e pack.Entry) ([]Extent, error) {
	exts, _, err := r.openSegment(sg, off, p, e)
	return exts, err
}

// openSegment is OpenSegment, also returning the segment's plaintext.
func (r *Repo) openSegment(sg Segment, off int64, p []byte, e pack.Entry) ([]Extent, []byte, error) {
	plain, err := r.Codec.OpenBlob(nil, p, e)
	if err != nil {
		return nil, nil, fmt.Errorf("segment %s: %w", sg.ID.Short(), err)
	}
	if r.IDKey.Sum(plain) != sg.ID {
		return nil, nil, fmt.Errorf("segment %s: content does not match its ID", sg.ID.Short())
	}
	exts, err := parseSegment(plain, sg, off)
	if err != nil {
		return nil, nil, fmt.Errorf("segment %s: %w", sg.ID.Short(), err)
	}
	return exts, plain, nil
}

// lookupSegment finds segment id in the index LoadIndex last read, or in
// the index read afresh when that lacks it (it may predate the backup that
// wrote the segment, or nothing has read the index yet).
func (r *Repo) lookupSegment(ctx context.Context, id chunk.ID) (PackInfo, pack.Entry, error) {
	x := r.loaded.Load()
	if x != nil {
		if info, e, ok := x.Lookup(id); ok {
			return info, e, nil
		}
	}
	r.reloadMu.Lock()
	defer r.reloadMu.Unlock()
	if y := r.loaded.Load(); y == x || y == nil {
		var err error
		if y, err = r.LoadIndex(ctx); err != nil {
			return PackInfo{}, pack.Entry{}, err
		}
		x = y
	} else {
		x = y // another reader loaded it meanwhile
	}
	if info, e, ok := x.Lookup(id); ok {
		return info, e, nil
	}
	return PackInfo{}, pack.Entry{}, fmt.Errorf("%w: segment %s is in no index object (ferry repair rebuilds the index from the packs)", ErrSegmentLost, id.Short())
}

// readSegment reads segment sg, whose first extent is at off, from the
// pack the index says, and returns the shards of that pack it did without.
// A copy in the local cache (segmentcache.go) spares the read; one read
// from the targets is kept there.
func (r *Repo) readSegment(ctx context.Context, sg Segment, off int64) ([]Extent, []ShardProblem, error) {
	if !fromTargets(ctx) {
		if plain := r.cachedSegment(sg.ID); plain != nil {
			if exts, err := parseSegment(plain, sg, off); err == nil {
				return exts, nil, nil
			}
		}
	}
	info, e, err := r.lookupSegment(ctx, sg.ID)
	if err != nil {
		return nil, nil, err
	}
	exts, plain, problems, err := r.readSegmentFrom(ctx, sg, off, info, e)
	if err == nil {
		r.keepSegment(sg.ID, plain)
	}
	return exts, problems, err
}

// ReadSegmentFrom reads segment sg, whose first extent is at off, from
// blob e of pack info: the blob's range from the shards that hold it, or,
// when that does not authenticate, the whole pack, checked and rebuilt
// from any k shards. It returns the segment's extents and the shards of
// the pack it did without (those of the read that served). A pack lost,
// or a blob that does not open as sg, fails with ErrSegmentLost.
func (r *Repo) ReadSegmentFrom(ctx context.Context, sg Segment, off int64, info PackInfo, e pack.Entry) ([]Extent, []ShardProblem, error) {
	exts, _, problems, err := r.readSegmentFrom(ctx, sg, off, info, e)
	return exts, problems, err
}

// readSegmentFrom is ReadSegmentFrom, also returning the segment's
// plaintext.
func (r *Repo) readSegmentFrom(ctx context.Context, sg Segment, off int64, info PackInfo, e pack.Entry) ([]Extent, []byte, []ShardProblem, error) {
	b, problems, err := r.ReadRange(ctx, info.ID, info.Length, int64(e.Offset), int64(e.Length))
	if err == nil {
		at := e
		at.Offset = 0
		exts, plain, err := r.openSegment(sg, off, b, at)
		if err == nil {
			return exts, plain, problems, nil
		}
	}
	p, problems, perr := r.ReadPack(ctx, info.ID)
	if perr != nil {
		if errors.Is(perr, ErrPackLost) {
			return nil, nil, nil, fmt.Errorf("%w: segment %s in pack %s: %v", ErrSegmentLost, sg.ID.Short(), info.ID.Short(), perr)
		}
		return nil, nil, nil, fmt.Errorf("segment %s: %w", sg.ID.Short(), perr)
	}
	exts, plain, err := r.openSegment(sg, off, p, e)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %v", ErrSegmentLost, err)
	}
	return exts, plain, problems, nil
}

// Extents calls fn with the extents of snapshot s in volume order: a
// segment at a time, or all at once for a manifest that holds them. A
// reader that takes them this way holds one segment's extents at a time.
// The slices are fn's to keep.
func (r *Repo) Extents(ctx context.Context, s *Snapshot, fn func([]Extent) error) error {
	return r.ExtentsWithProblems(ctx, s, func(exts []Extent, _ []ShardProblem) error { return fn(exts) })
}

// ExtentsWithProblems is Extents, handing fn with each segment's extents
// the shards of its pack the read did without (none for a manifest that
// holds its extents), for a reader that reports them, as a restore does.
// A pack that holds several segments is read once for each, and may
// report a shard each time.
func (r *Repo) ExtentsWithProblems(ctx context.Context, s *Snapshot, fn func([]Extent, []ShardProblem) error) error {
	if s.Segments == nil || s.Extents != nil {
		s, err := r.WithExtents(ctx, s)
		if err != nil {
			return err
		}
		return fn(s.Extents, nil)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i, res := range r.readSegments(ctx, s.Segments) {
		exts, problems, err := res.exts, res.problems, res.err
		if errors.Is(err, ErrSegmentLost) {
			// Forgotten and pruned since it was listed, or a segment lost.
			if _, lerr := r.loadSnapshot(ctx, s.ID); errors.Is(lerr, objstore.ErrNotFound) {
				return fmt.Errorf("snapshot %s: %w (deleted since it was listed)", s.ID, ErrSnapshotNotFound)
			}
		}
		if err != nil {
			return fmt.Errorf("snapshot %s, segment %d of %d: %w", s.ID, i+1, len(s.Segments), err)
		}
		if err := fn(exts, problems); err != nil {
			return err
		}
	}
	return nil
}

// segmentsAhead is how many segments a reader of a snapshot's extents
// reads ahead of the one it hands on: each read from a target waits a
// round trip, and a pass over a large volume's extents reads hundreds.
// The extents held are those of segmentsAhead+2 segments at most.
const segmentsAhead = 4

type segmentRead struct {
	exts     []Extent
	problems []ShardProblem
	err      error
}

// readSegments yields, in order, the reads of segs (the first at offset
// 0), segmentsAhead of them under way ahead of the one yielded. ctx must
// be cancelled when the caller stops early, to stop the reads ahead.
func (r *Repo) readSegments(ctx context.Context, segs []Segment) iter.Seq2[int, segmentRead] {
	return func(yield func(int, segmentRead) bool) {
		pending := make(chan chan segmentRead, segmentsAhead)
		go func() {
			defer close(pending)
			var off int64
			for _, sg := range segs {
				ch := make(chan segmentRead, 1)
				go func(sg Segment, off int64) {
					exts, problems, err := r.readSegment(ctx, sg, off)
					ch <- segmentRead{exts, problems, err}
				}(sg, off)
				select {
				case pending <- ch:
				case <-ctx.Done():
					return
				}
				off += sg.Len
			}
		}()
		i := 0
		for ch := range pending {
			res := <-ch
			if !yield(i, res) || res.err != nil {
				return
			}
			i++
		}
		if i < len(segs) { // the reads ahead stopped: ctx is done
			yield(i, segmentRead{err: ctx.Err()})
		}
	}
}

// SnapshotWriter takes a backup's extents in volume order and commits them
// with the manifest. It keeps them on the local disk (in Repo.IndexCache,
// in an unlinked file) until the commit, or in memory without a cache; at
// the commit, a volume of more than Repo.SegmentExtents extents has them
// written as segments, those the index does not hold yet into packs. Memory
// does not grow with the volume's size (bar 24 bytes per segment).
type SnapshotWriter struct {
	r         *Repo
	avg       int64 // extents per segment: average, least, most
	least     int64
	most      int64
	f         *os.File // the spool; nil: mem
	bw        *bufio.Writer
	mem       []byte
	size      int64     // bytes spooled
	segs      []spooled // the segments cut so far, and the one being filled
	n         int64     // extents spooled
	end       int64     // volume offset past the last extent added
	last      Extent    // the last extent added, spooled once the next is not a zero to merge
	held      bool
	cutBefore bool // the next extent spooled starts a segment
}

// spooled is a segment in the spool.
type spooled struct {
	start int64 // spool offset of its first extent
	first int64 // volume offset of its first extent
	n     int64 // its extents
}

// NewSnapshotWriter returns a writer for a snapshot's extents. Close it.
func (r *Repo) NewSnapshotWriter() (*SnapshotWriter, error) {
	w := &SnapshotWriter{r: r, cutBefore: true}
	w.avg, w.least, w.most = r.segmentSizes()
	dir, err := r.indexDir()
	if err == nil && dir != "" {
		f, err := os.CreateTemp(dir, "extents-*")
		if err == nil {
			if err = os.Remove(f.Name()); err != nil {
				f.Close()
			}
		}
		if err != nil {
			// As the index does, the extents go to memory instead.
			slog.Warn("cannot spool the snapshot's extents in the local cache; keeping them in memory", "dir", dir, "error", err)
			return w, nil
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

// spool writes the held extent to the spool, and decides whether the
// segment ends after it.
func (w *SnapshotWriter) spool() error {
	if !w.held {
		return nil
	}
	if w.cutBefore {
		w.segs = append(w.segs, spooled{start: w.size, first: w.last.Off})
		w.cutBefore = false
	}
	var buf [maxExtentLen]byte
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
	sg := &w.segs[len(w.segs)-1]
	sg.n++
	w.cutBefore = sg.n >= w.most || sg.n >= w.least && !w.last.Zero && segmentCut(w.last.ID, w.avg)
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

// segment returns the encoded extents of segment i and the volume offset
// past its last.
func (w *SnapshotWriter) segment(i int) ([]byte, int64, error) {
	end, vend := w.size, w.end
	if i+1 < len(w.segs) {
		end, vend = w.segs[i+1].start, w.segs[i+1].first
	}
	b := make([]byte, end-w.segs[i].start)
	if err := w.readAt(b, w.segs[i].start); err != nil {
		return nil, 0, fmt.Errorf("read the spooled extents: %w", err)
	}
	return b, vend, nil
}

// each calls fn with every spooled extent in order, reading the spool a
// segment at a time.
func (w *SnapshotWriter) each(fn func(Extent) error) error {
	for i, sg := range w.segs {
		b, _, err := w.segment(i)
		if err != nil {
			return err
		}
		rd := &reader{b: b}
		exts, _ := parseExtents(rd, uint64(sg.n), sg.first, w.end)
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

// Commit writes the snapshot of meta and the extents added: its segments
// the index does not hold yet, when there are more extents than
// Repo.SegmentExtents, then the manifest, after the checks of SaveSnapshot
// (which cover the segments too). meta.Size must be the bytes the extents
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
	if w.n <= w.avg {
		m.Extents = make([]Extent, 0, w.n)
		if err := w.each(func(e Extent) error { m.Extents = append(m.Extents, e); return nil }); err != nil {
			return "", 0, err
		}
		return r.SaveSnapshot(ctx, m)
	}
	// New packs are safe from prune only under a writer lock (prune.go).
	if r.heldWriter() == nil {
		return "", 0, errors.New("a snapshot of more than one segment is committed under a writer lock (Repo.Lock)")
	}
	written, err := w.writeSegments(ctx, m)
	if err != nil {
		return "", 0, err
	}
	id, n, err := r.commit(ctx, m, w.each)
	return id, n + written, err
}

// writeSegments names the segments in m and stores those the index does
// not hold yet (nor an earlier segment of m), in packs, then indexes them.
// It returns the bytes written.
func (w *SnapshotWriter) writeSegments(ctx context.Context, m *Manifest) (int64, error) {
	r := w.r
	x := r.loaded.Load()
	if x == nil {
		var err error
		if x, err = r.LoadIndex(ctx); err != nil {
			return 0, fmt.Errorf("load index: %w", err)
		}
	}
	var (
		written int64
		batch   IndexBatch
		pw      *pack.Writer
		scratch []byte
		seen    = map[chunk.ID]bool{}
	)
	flush := func() error {
		if pw == nil {
			return nil
		}
		p, id, entries := pw.Finish()
		pw = nil
		n, err := r.WritePack(ctx, id, p)
		written += n
		if err != nil {
			return fmt.Errorf("write a pack of segments: %w", err)
		}
		batch.Add(PackInfo{ID: id, Length: int64(len(p))}, entries)
		return nil
	}
	m.Segments = make([]Segment, len(w.segs))
	for i, sg := range w.segs {
		enc, end, err := w.segment(i)
		if err != nil {
			return written, err
		}
		plain := segmentPlain(enc, sg.first, sg.n)
		id := r.IDKey.Sum(plain)
		m.Segments[i] = Segment{ID: id, Extents: sg.n, Len: end - sg.first}
		// The next backup of the volume reads its parent's segments
		// from here instead of from the targets.
		r.keepSegment(id, plain)
		if seen[id] || x.Has(id) {
			continue
		}
		seen[id] = true
		var sealed []byte
		var compressed bool
		sealed, scratch, compressed = r.Codec.SealBlob(nil, scratch, id, plain)
		if pw == nil {
			pw = r.Codec.NewWriter(1 << 20) // grows as needed: most commits write a few segments
		}
		pw.Add(id, sealed, len(plain), compressed)
		if pw.Len() >= r.Config.PackSize {
			if err := flush(); err != nil {
				return written, err
			}
		}
	}
	if err := flush(); err != nil {
		return written, err
	}
	if batch.Len() > 0 {
		n, err := r.WriteIndex(ctx, &batch)
		written += n
		if err != nil {
			return written, fmt.Errorf("index the segments: %w", err)
		}
	}
	return written, nil
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
