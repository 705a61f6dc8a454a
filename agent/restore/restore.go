package restore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
)

var (
	// ErrDataLost means the snapshot cannot be restored: chunks or packs are gone.
	ErrDataLost = errors.New("data lost")
	// ErrMismatch means restored data did not match the snapshot's hashes.
	ErrMismatch = errors.New("restored data does not match the snapshot")
	// ErrTargetTooSmall means an existing target is smaller than the snapshot.
	ErrTargetTooSmall = errors.New("target is smaller than the snapshot")
)

// Options tune a restore.
type Options struct {
	Workers  int // packs read (a range at a time) and written at once; default 4
	Progress *Progress
}

// Progress counts a running restore's work.
type Progress struct {
	Total   atomic.Int64 // bytes of the volume
	Written atomic.Int64 // bytes of data chunks written
	Fetched atomic.Int64 // bytes of shards received (ranges, stripes and what rebuilt them, whole packs)
}

// Summary reports a finished restore.
type Summary struct {
	SnapshotID      string              `json:"snapshot_id"`
	Target          string              `json:"target"`
	BytesVolume     int64               `json:"bytes_volume"`
	BytesWritten    int64               `json:"bytes_written"`
	BytesZero       int64               `json:"bytes_zero"`
	BytesFetched    int64               `json:"bytes_fetched"` // shard bytes received from the targets
	Packs           int                 `json:"packs"`
	Digest          string              `json:"digest"`
	Repaired        []repo.ShardProblem `json:"-"`
	RepairedShards  []string            `json:"reconstructed_shards,omitempty"`
	Duration        time.Duration       `json:"-"`
	DurationSeconds float64             `json:"duration_seconds"`

	direct int64 // bytes written with direct I/O
}

// place is where a data extent's blob is in its pack: its pack.Entry less
// the chunk ID, which the extent holds. A restore keeps one per data
// extent of the window at hand: 24 bytes, 56 more for the extent.
type place struct {
	extent     int // position in the window
	offset     uint32
	length     uint32
	rawLength  uint32
	compressed bool
}

func placeOf(extent int, e pack.Entry) place {
	return place{extent: extent, offset: e.Offset, length: e.Length, rawLength: e.RawLength, compressed: e.Compressed}
}

func (pl place) entry(id chunk.ID) pack.Entry {
	return pack.Entry{ID: id, Offset: pl.offset, Length: pl.length, RawLength: pl.rawLength, Compressed: pl.compressed}
}

// Run restores snapshot s from r into target.
func Run(ctx context.Context, r *repo.Repo, s *repo.Snapshot, target string, opts Options) (*Summary, error) {
	start := time.Now()
	if opts.Progress == nil {
		opts.Progress = &Progress{}
	}
	opts.Progress.Total.Store(s.Size)
	plan, err := NewPlan(ctx, r, s, nil)
	if err != nil {
		return nil, err
	}
	out, err := openTarget(target, s.Size)
	if err != nil {
		return nil, err
	}
	defer out.abort()
	wb := newWriteBehind(out.f, out.regular, openDirect(out.f.Name()))
	var zero int64
	w, err := plan.write(ctx, wb, opts, func(e repo.Extent) error {
		zero += e.Len
		return out.zero(e.Off, e.Len)
	})
	if cerr := wb.close(); err == nil && cerr != nil {
		err = fmt.Errorf("close target: %w", cerr)
	}
	if err != nil {
		return nil, err
	}
	if err := out.commit(); err != nil {
		return nil, err
	}
	direct := wb.directBytes.Load()
	slog.Debug("restore: written", "direct_bytes", direct, "page_cache_bytes", wb.n.Load())
	d := time.Since(start)
	sum := &Summary{
		SnapshotID: s.ID, Target: target, BytesVolume: s.Size, BytesWritten: w.BytesWritten,
		BytesZero: zero, BytesFetched: w.BytesFetched, Packs: plan.Packs(), Digest: s.Digest, Repaired: w.Repaired,
		Duration: d, DurationSeconds: d.Seconds(), direct: direct,
	}
	for _, p := range w.Repaired {
		sum.RepairedShards = append(sum.RepairedShards, p.String())
	}
	return sum, nil
}

// Plan is a snapshot's chunks resolved to their packs, checked restorable.
//
// It holds no more than a window of the snapshot's extents: those of an
// unsegmented snapshot, read once; a segmented one's are read again, a
// segment at a time, by WriteTo.
type Plan struct {
	r     *repo.Repo
	snap  *repo.Snapshot
	idx   *repo.Index
	held  []repo.Extent // an unsegmented snapshot's extents
	packs int           // distinct packs the restore reads
	Data  int64         // bytes of data extents
}

// Packs is how many packs the restore reads.
func (p *Plan) Packs() int { return p.packs }

// NewPlan resolves every data extent of s to its pack (idx, or the
// repository's index loaded when nil) and checks, by listing the targets,
// that every pack it needs still has at least k shards, before anything is
// written. s may come from Snapshots: NewPlan reads its extents, a segment
// at a time.
//
// Memory: one segment's extents at a time (an unsegmented snapshot's, all
// of them, which the Plan keeps for WriteTo), and an ID per pack the
// snapshot uses; also one per chunk the index does not know (normally
// none).
func NewPlan(ctx context.Context, r *repo.Repo, s *repo.Snapshot, idx *repo.Index) (*Plan, error) {
	if idx == nil {
		var err error
		if idx, err = r.LoadIndex(ctx); err != nil {
			return nil, fmt.Errorf("load index: %w", err)
		}
	}
	p := &Plan{r: r, snap: s, idx: idx}
	seen := map[pack.ID]bool{}
	var packs []pack.ID // by first use
	use := func(id pack.ID) {
		if !seen[id] {
			seen[id] = true
			packs = append(packs, id)
		}
	}
	// Chunks that findUnindexed looks for, and the first extent of each.
	want := map[chunk.ID]bool{}
	var unindexed []repo.Extent
	err := p.extents(ctx, func(exts []repo.Extent, _ []repo.ShardProblem) error {
		if s.Segments == nil {
			p.held = exts
		}
		for _, e := range exts {
			if e.Zero {
				continue
			}
			p.Data += e.Len
			// A chunk only in a pack that a prune plan marks (idx.Has is
			// false) is looked for too: a backup that saw the mark stored
			// it again, perhaps in a pack whose index object is lost.
			info, _, ok := idx.Lookup(e.ID)
			_, marked := idx.Marked(info.ID)
			switch {
			case ok && !marked:
				use(info.ID)
			case !want[e.ID]:
				want[e.ID] = true
				unindexed = append(unindexed, e)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(want) > 0 {
		if err := findUnindexed(ctx, r, s, idx, want); err != nil {
			return nil, err
		}
		var missing []repo.Extent
		for _, e := range unindexed {
			if info, _, ok := idx.Lookup(e.ID); ok {
				use(info.ID)
			} else {
				missing = append(missing, e)
			}
		}
		if len(missing) > 0 {
			return nil, errUnindexed(missing)
		}
	}
	if err := checkShards(ctx, r, packs, idx.PackCount()); err != nil {
		return nil, err
	}
	p.packs = len(packs)
	return p, nil
}

// errUnindexed is the error for data extents the index knows no pack for.
func errUnindexed(missing []repo.Extent) error {
	var s []string
	for _, e := range missing[:min(5, len(missing))] {
		s = append(s, fmt.Sprintf("chunk %s at offset %d", e.ID.Short(), e.Off))
	}
	return fmt.Errorf("%w: the index knows no pack for %s (run repair to rebuild the index)", ErrDataLost, strings.Join(s, ", "))
}

// extents calls fn with the snapshot's extents a window at a time: those
// NewPlan kept, or each segment read from its pack, with the shards of the
// pack the read did without. A manifest no target holds a valid copy of,
// or a segment that cannot be read (in no index object, or its pack short
// of k good shards), fails with ErrDataLost.
func (p *Plan) extents(ctx context.Context, fn func([]repo.Extent, []repo.ShardProblem) error) error {
	if p.held != nil {
		return fn(p.held, nil)
	}
	var fnErr error
	err := p.r.ExtentsWithProblems(ctx, p.snap, func(exts []repo.Extent, problems []repo.ShardProblem) error {
		fnErr = fn(exts, problems)
		return fnErr
	})
	if err != nil && fnErr == nil && (errors.Is(err, objstore.ErrNotFound) || errors.Is(err, repo.ErrNoValidCopy) || errors.Is(err, repo.ErrSegmentLost)) {
		return fmt.Errorf("%w: %v", ErrDataLost, err)
	}
	return err
}

// window is the restore of consecutive extents of the snapshot: one
// segment's, or all of an unsegmented one's. A restore holds one at a
// time.
type window struct {
	extents []repo.Extent
	packs   []*packPlaces // by first use, so writes run roughly in order
	written []bool        // per extent: its chunk checked and written
}

// packPlaces is what a window reads from one pack.
type packPlaces struct {
	id     pack.ID
	length int64   // the pack's, from the index
	places []place // by offset in the pack
}

// newWindow maps the data extents of exts to their blobs in idx.
func newWindow(exts []repo.Extent, idx *repo.Index) (*window, error) {
	w := &window{extents: exts, written: make([]bool, len(exts))}
	byID := map[pack.ID]*packPlaces{}
	var missing []repo.Extent
	for i, e := range exts {
		if e.Zero {
			continue
		}
		info, entry, ok := idx.Lookup(e.ID)
		if !ok {
			missing = append(missing, e)
			continue
		}
		pp := byID[info.ID]
		if pp == nil {
			pp = &packPlaces{id: info.ID, length: info.Length}
			byID[info.ID] = pp
			w.packs = append(w.packs, pp)
		}
		pp.places = append(pp.places, placeOf(i, entry))
	}
	if len(missing) > 0 {
		return nil, errUnindexed(missing)
	}
	// In pack order: a pack is read front to back, and extents that share
	// a blob (a chunk repeated in the volume) are next to each other.
	for _, pp := range w.packs {
		slices.SortStableFunc(pp.places, func(a, b place) int { return cmp.Compare(a.offset, b.offset) })
	}
	return w, nil
}

// Written reports what WriteTo did.
type Written struct {
	BytesWritten int64
	BytesFetched int64
	Repaired     []repo.ShardProblem // shards done without (reconstructed from parity), in packs of chunks or of segments
}

// Reads of a restore. Blobs next to each other in a pack are read together,
// up to rangeMax bytes, over gaps (blobs this snapshot does not use) of up
// to rangeGap.
const (
	rangeMax = 4 << 20
	rangeGap = 256 << 10
)

// stripeWindow, when above 0, is byStripes' window instead of rangeMax/k
// (for tests).
var stripeWindow int64

// batchSize is how many bytes of consecutive chunks a worker writes at once.
const batchSize = 4 << 20

// WriteTo writes the snapshot's data extents into w, a window (a segment
// of the snapshot's extents, or all of an unsegmented one's) at a time and
// Workers packs at a time within it: every chunk decrypted, its keyed hash
// checked, written at its offset; then the whole-volume digest recomputed
// from what was written. Zero extents are not written: the caller makes w
// read as zeros there.
//
// A worker reads only the blobs the window uses, a range of at most
// rangeMax at a time, the next one while it writes one (repo.ReadRange:
// where a data shard's target is down, the range is rebuilt from the same
// range of the other shards). Where a data shard's target is down and the
// window wants most of a pack, it reads the pack as stripes instead
// (byStripes: the same rangeMax/k of k shards at a time), so that the
// shards left are read once, not again for the rebuilding. Should a range not be read or a blob in it
// not authenticate, it reads the whole pack instead (repo.FetchPack),
// whose shards are checked one by one and replaced from parity where bad,
// and goes on from there. A pack that serves several windows is read
// again for each, the ranges that window needs.
//
// Memory: two ranges or stripe windows (one read ahead; a window also
// holds what it rebuilt, and the parts of blobs it began), a compressed
// chunk and a 4 MiB batch of opened chunks per worker, the batch kept from
// window to window;
// the window's extents and a place per data extent; a record per pack the
// window reads from, and per shard done without.
func (p *Plan) WriteTo(ctx context.Context, w io.WriterAt, opts Options) (*Written, error) {
	var zero func(repo.Extent) error
	if z, ok := w.(Zeroer); ok {
		zero = func(e repo.Extent) error { return z.Zero(e.Off, e.Len) }
	}
	return p.write(ctx, w, opts, zero)
}

// Zeroer is a destination WriteTo must tell where the snapshot reads as
// zeros, because it may hold other data there (a Device).
type Zeroer interface {
	Zero(off, n int64) error
}

// Device is a block device opened to be written by WriteTo, which zeroes
// the ranges the snapshot reads as zeros (see output.zero): a scratch
// volume for a drill.
type Device struct{ o *output }

// OpenDevice opens the block device at path, which must hold at least
// size bytes.
func OpenDevice(path string, size int64) (*Device, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode()&os.ModeDevice == 0 {
		return nil, fmt.Errorf("%s is not a block device", path)
	}
	o, err := openTarget(path, size)
	if err != nil {
		return nil, err
	}
	return &Device{o}, nil
}

func (d *Device) WriteAt(p []byte, off int64) (int, error) { return d.o.f.WriteAt(p, off) }

// Zero makes [off, off+n) read as zeros.
func (d *Device) Zero(off, n int64) error { return d.o.zero(off, n) }

// Close flushes what was written to the device and closes it.
func (d *Device) Close() error {
	err := d.o.f.Sync()
	if cerr := d.o.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// shardKey names a shard of a pack.
type shardKey struct {
	pack  pack.ID
	shard int
}

// write is WriteTo, calling zero, when not nil, with each window's zero
// extents once its data extents are written.
func (p *Plan) write(ctx context.Context, w io.WriterAt, opts Options, zero func(repo.Extent) error) (*Written, error) {
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	prog := opts.Progress
	if prog == nil {
		prog = &Progress{}
	}
	out := &Written{}
	var mu sync.Mutex
	reported := map[shardKey]bool{} // a pack read in several windows, or by several ranges, reports a shard once
	// Every shard byte received counts, as the repository receives it:
	// the ranges and stripes read, what rebuilt them from parity, whole
	// packs, and the packs that hold the snapshot's segments.
	fetchedBefore := prog.Fetched.Load()
	ctx = repo.CountFetched(ctx, &prog.Fetched)
	defer func() { out.BytesFetched = prog.Fetched.Load() - fetchedBefore }()
	done := func(problems []repo.ShardProblem) {
		mu.Lock()
		defer mu.Unlock()
		for _, sp := range problems {
			if k := (shardKey{sp.Pack, sp.Shard}); !reported[k] {
				reported[k] = true
				out.Repaired = append(out.Repaired, sp)
			}
		}
	}
	// The digest is over the IDs of what was written: write checks each
	// chunk's keyed hash, recomputed from the bytes, against the extent's
	// ID before writing it, and an extent never written counts with a zero
	// ID and fails it.
	digest := repo.NewVolumeDigest()
	writers := make([]*packWriter, opts.Workers) // made as first needed, then kept
	err := p.extents(ctx, func(exts []repo.Extent, problems []repo.ShardProblem) error {
		done(problems) // the shards this segment's read did without
		win, err := newWindow(exts, p.idx)
		if err != nil {
			return err
		}
		if err := p.writeWindow(ctx, win, w, writers, prog, done); err != nil {
			return err
		}
		for i, e := range exts {
			switch {
			case e.Zero && zero != nil:
				if err := zero(e); err != nil {
					return err
				}
			case !e.Zero && !win.written[i]:
				e.ID = chunk.ID{}
			}
			digest.Add(e)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if got := digest.Hex(); got != p.snap.Digest {
		return nil, fmt.Errorf("%w: volume digest %s, snapshot says %s", ErrMismatch, got[:16], p.snap.Digest[:min(16, len(p.snap.Digest))])
	}
	out.BytesWritten = prog.Written.Load()
	return out, nil
}

// writeWindow writes the data extents of win into w, a pack per worker at
// a time, and hands done what each pack cost. writers holds a worker's
// packWriter per slot, made when the slot is first used.
func (p *Plan) writeWindow(ctx context.Context, win *window, w io.WriterAt, writers []*packWriter, prog *Progress, done func([]repo.ShardProblem)) error {
	g, gctx := errgroup.WithContext(ctx)
	packs := make(chan *packPlaces)
	g.Go(func() error {
		defer close(packs)
		for _, pp := range win.packs {
			select {
			case packs <- pp:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for i := range min(len(writers), len(win.packs)) {
		if writers[i] == nil {
			buf := pageAligned(max(batchSize, int(p.r.Config.Chunking().MaxSize)) + batchAlign)
			writers[i] = &packWriter{r: p.r, w: w, prog: prog, o: p.r.Codec.NewOpener(0), buf: buf, batch: buf[:0]}
		}
		wk := writers[i]
		wk.win = win
		g.Go(func() error {
			for pp := range packs {
				problems, err := wk.restore(gctx, pp)
				if err != nil {
					return err
				}
				done(problems)
			}
			return nil
		})
	}
	return g.Wait()
}

// packWriter restores a window's packs, one at a time, keeping its buffers.
type packWriter struct {
	r    *repo.Repo
	win  *window // its written is shared by the writers
	w    io.WriterAt
	prog *Progress
	o    *pack.Opener
	d    erasure.Decoded
	done []bool // per place of the pack at hand: written

	// batch gathers checked blobs that follow each other in the volume,
	// from offset at, to write them with one call: a buffered write costs
	// about 18 µs besides its bytes (perf/README.md, "Restore writes").
	// batch is in buf, from the offset in a batchAlign-sized page that at
	// has in the volume, so that its whole pages can be written direct
	// (writeBehind).
	buf   []byte
	batch []byte
	at    int64

	gather []byte // a blob read across windows of a stripe (byStripes)
}

// batchAlign is the alignment a packWriter's batch keeps with the volume:
// a page, which covers the 512 or 4096 bytes disks need for direct writes.
// A target that needs more gets every write through the page cache.
var batchAlign = max(os.Getpagesize(), 4096)

// pageAligned returns n bytes starting at a multiple of batchAlign in
// memory.
func pageAligned(n int) []byte {
	b := make([]byte, n+batchAlign)
	skip := (batchAlign - int(uintptr(unsafe.Pointer(&b[0]))%uintptr(batchAlign))) % batchAlign
	return b[skip : skip+n : skip+n]
}

// errReadAgain marks a failure that reading the whole pack may cure.
var errReadAgain = errors.New("read the whole pack")

// restore writes the extents pack pp serves, by ranges, or from the whole
// pack should that fail. It returns the shards it did without.
func (wk *packWriter) restore(ctx context.Context, pp *packPlaces) ([]repo.ShardProblem, error) {
	wk.done = append(wk.done[:0], make([]bool, len(pp.places))...)
	problems, err := wk.byRanges(ctx, pp)
	if !errors.Is(err, errReadAgain) {
		return problems, err
	}
	problems, err = wk.r.FetchPack(ctx, pp.id, &wk.d)
	if err != nil {
		if errors.Is(err, repo.ErrPackLost) {
			return nil, fmt.Errorf("%w: %v", ErrDataLost, err)
		}
		return nil, err
	}
	err = wk.write(pp, 0, len(pp.places), func(e pack.Entry) ([]byte, error) {
		return wk.d.Bytes(int64(e.Offset), int64(e.Length))
	})
	if errors.Is(err, errReadAgain) {
		err = fmt.Errorf("%w: %v", ErrMismatch, err)
	}
	return problems, err
}

// byRanges reads the blobs of pp's places in ranges and writes them,
// reading the next range while it writes one: a target in another region
// takes a round trip to answer each, which the writes then hide. Where a
// data shard's target is down and one stripe costs fewer bytes (stripeOf),
// it reads that instead (byStripe).
func (wk *packWriter) byRanges(ctx context.Context, pp *packPlaces) ([]repo.ShardProblem, error) {
	spans := spansOf(pp.places, 0, len(pp.places))
	lost := make([]bool, wk.r.Config.Erasure.K)
	for i := range lost {
		lost[i] = wk.r.TargetOf(i).Down() != nil
	}
	if lo, hi, ok := stripeOf(spans, pp.length, lost); ok {
		return wk.byStripes(ctx, pp, lo, hi)
	}
	return wk.readSpans(ctx, pp, spans)
}

// readSpans reads spans of pp's places and writes their blobs, reading the
// next span while it writes one.
func (wk *packWriter) readSpans(ctx context.Context, pp *packPlaces, spans []span) ([]repo.ShardProblem, error) {
	type read struct {
		b        []byte
		problems []repo.ShardProblem
		err      error
	}
	readSpan := func(s span) <-chan read {
		c := make(chan read, 1)
		go func() {
			b, ps, err := wk.r.ReadRange(ctx, pp.id, pp.length, s.start, s.end-s.start)
			c <- read{b, ps, err}
		}()
		return c
	}
	var next <-chan read // the read ahead, when one is under way
	// A read ahead is waited for, not cancelled, when byRanges fails: a
	// request cut off might pass for a target failing, and the whole pack
	// is read next.
	defer func() {
		if next != nil {
			<-next
		}
	}()
	var problems []repo.ShardProblem
	if len(spans) > 0 {
		next = readSpan(spans[0])
	}
	for k, s := range spans {
		rd := <-next
		next = nil
		if rd.err != nil {
			return nil, readFailed(ctx, rd.err)
		}
		if k+1 < len(spans) {
			next = readSpan(spans[k+1])
		}
		problems = append(problems, rd.problems...)
		err := wk.write(pp, s.lo, s.hi, func(e pack.Entry) ([]byte, error) {
			return rd.b[int64(e.Offset)-s.start : int64(e.Offset+e.Length)-s.start], nil
		})
		if err != nil {
			return nil, err
		}
	}
	return problems, nil
}

// span is places lo to hi of a pack, whose blobs are read together: the
// pack's bytes [start, end).
type span struct {
	lo, hi     int
	start, end int64
}

// spansOf groups places[from:to] (by offset in the pack) into spans of at
// most rangeMax bytes, over gaps of at most rangeGap.
func spansOf(places []place, from, to int) []span {
	var spans []span
	for i := from; i < to; {
		start := int64(places[i].offset)
		end := start + int64(places[i].length)
		j := i + 1
		for ; j < to; j++ {
			pl := places[j]
			if int64(pl.offset) > end+rangeGap || int64(pl.offset+pl.length)-start > rangeMax {
				break
			}
			end = max(end, int64(pl.offset+pl.length))
		}
		spans = append(spans, span{i, j, start, end})
		i = j
	}
	return spans
}

// stripeOf says whether the spans of a pack of packLen bytes, some of
// whose data shards are lost (on a target that is down; len(lost) is k),
// cost fewer bytes read as stripes (repo.ReadStripe: the same range
// [lo, hi) of k shards) than span by span (repo.ReadRange: k times a
// span's part in a lost shard, once its part in another). A whole pack at
// 2+1 is one pack's bytes as stripes, one and a half span by span, all
// of that half more from the one data shard left.
func stripeOf(spans []span, packLen int64, lost []bool) (lo, hi int64, ok bool) {
	k := int64(len(lost))
	shardLen := (packLen + k - 1) / k
	lo, hi = shardLen, 0
	var ranges int64
	anyLost := false
	for _, sp := range spans {
		for off := sp.start; off < sp.end; {
			i := off / shardLen
			piece := min(sp.end, (i+1)*shardLen) - off
			rel := off - i*shardLen
			lo, hi = min(lo, rel), max(hi, rel+piece)
			if i < k && lost[i] {
				ranges += k * piece
				anyLost = true
			} else {
				ranges += piece
			}
			off += piece
		}
	}
	return lo, hi, anyLost && k*(hi-lo) <= ranges
}

// byStripes writes the blobs of pp's places from the bytes [lo, hi) of
// every data shard of its pack, read a window at a time (repo.ReadStripe:
// rangeMax/k of each shard, so rangeMax in all, and as much again rebuilt
// for the shards on targets that are down), the next window while it
// writes one. A blob is written from the first window that holds its end;
// the part of it in earlier windows is kept until then. A blob that runs
// from one shard into the next (at most k-1 of them) is written at the
// end, from its tail so kept and its head, kept from the first windows.
func (wk *packWriter) byStripes(ctx context.Context, pp *packPlaces, lo, hi int64) ([]repo.ShardProblem, error) {
	places := pp.places
	k := int64(wk.r.Config.Erasure.K)
	shardLen := (pp.length + k - 1) / k
	window := stripeWindow // of each shard
	if window <= 0 {
		window = max(rangeMax/k, 64<<10)
	}
	// Per data shard: the places whose blobs start in it not yet written;
	// the bytes from the start of the first of them, when an earlier
	// window held it; and the head of the blob that runs into it from the
	// shard before.
	type shard struct {
		base      int64 // its first byte's offset in the pack
		next, end int   // places[next:end] are left
		carry     []byte
		carryAt   int64 // where carry starts in the shard
		head      []byte
		headLen   int64 // the bytes of the blob before in the shard, 0: none
	}
	sh := make([]shard, k)
	for s, i := 0, 0; s < int(k); s++ {
		x := &sh[s]
		x.base, x.next = int64(s)*shardLen, i
		for i < len(places) && int64(places[i].offset) < x.base+shardLen {
			i++
		}
		x.end = i
		if s > 0 && sh[s-1].end > sh[s-1].next {
			last := places[sh[s-1].end-1]
			x.headLen = max(0, min(shardLen, int64(last.offset+last.length)-x.base))
		}
	}
	type read struct {
		data     [][]byte
		problems []repo.ShardProblem
		err      error
	}
	readAt := func(a int64) <-chan read {
		c := make(chan read, 1)
		go func() {
			d, ps, err := wk.r.ReadStripe(ctx, pp.id, pp.length, a, min(hi, a+window)-a)
			c <- read{d, ps, err}
		}()
		return c
	}
	next := readAt(lo) // the read ahead, when one is under way (see readSpans)
	defer func() {
		if next != nil {
			<-next
		}
	}()
	var problems []repo.ShardProblem
	for a := lo; a < hi; a += window {
		b := min(hi, a+window)
		rd := <-next
		next = nil
		if rd.err != nil {
			return nil, readFailed(ctx, rd.err)
		}
		if b < hi {
			next = readAt(b)
		}
		problems = append(problems, rd.problems...)
		for s := range sh {
			x, data := &sh[s], rd.data[s]
			if a < x.headLen {
				x.head = append(x.head, data[:min(x.headLen, b)-a]...)
			}
			j := x.next
			for j < x.end && int64(places[j].offset+places[j].length)-x.base <= b {
				j++
			}
			if j > x.next {
				err := wk.write(pp, x.next, j, func(e pack.Entry) ([]byte, error) {
					r0, r1 := int64(e.Offset)-x.base, int64(e.Offset+e.Length)-x.base
					switch {
					case r0 >= a:
						return data[r0-a : r1-a], nil
					case r0 < x.carryAt || r0-x.carryAt > int64(len(x.carry)):
						return nil, fmt.Errorf("blob at %d+%d: its start was not kept", e.Offset, e.Length)
					}
					wk.gather = append(append(wk.gather[:0], x.carry[r0-x.carryAt:]...), data[:r1-a]...)
					return wk.gather, nil
				})
				if err != nil {
					return nil, err
				}
				x.next = j
			}
			// Keep what this window holds of the next blob.
			kept := x.carry
			x.carry = kept[:0]
			if x.next < x.end {
				r0 := int64(places[x.next].offset) - x.base
				if r0 < b {
					if r0 < a { // kept holds [x.carryAt, a)
						x.carry = append(append(x.carry, kept[r0-x.carryAt:]...), data...)
					} else {
						x.carry = append(x.carry, data[r0-a:]...)
					}
					x.carryAt = r0
				}
			}
		}
	}
	// What is left runs from one shard into the next: written from the
	// tail kept of the one and the head kept of the other where that is
	// all of it, read as a range otherwise (a blob over three shards).
	var spans []span
	for s := range sh {
		x := &sh[s]
		if x.next == x.end {
			continue
		}
		last := places[x.end-1]
		r0 := int64(last.offset) - x.base
		same := true
		for _, pl := range places[x.next:x.end] {
			same = same && pl.offset == last.offset
		}
		if s+1 < len(sh) && same && x.carryAt == r0 && x.carryAt+int64(len(x.carry)) == shardLen &&
			int64(len(sh[s+1].head)) == sh[s+1].headLen && r0+int64(last.length) == shardLen+sh[s+1].headLen {
			whole := append(append(wk.gather[:0], x.carry...), sh[s+1].head...)
			wk.gather = whole
			if err := wk.write(pp, x.next, x.end, func(pack.Entry) ([]byte, error) { return whole, nil }); err != nil {
				return nil, err
			}
			continue
		}
		spans = append(spans, spansOf(places, x.next, x.end)...)
	}
	ps, err := wk.readSpans(ctx, pp, spans)
	return append(problems, ps...), err
}

// readFailed is the error of a read that failed: the pack is read whole
// next (errReadAgain), unless ctx is done.
func readFailed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("%w: %v", errReadAgain, err)
}

// write opens the blobs of pp's places lo to hi (sorted by their offset
// in the pack), each once however many extents share it, checks them
// against the extents, and writes them, skipping places done before. A
// blob that does not authenticate fails with errReadAgain.
func (wk *packWriter) write(pp *packPlaces, lo, hi int, sealed func(pack.Entry) ([]byte, error)) error {
	err := wk.writePlaces(pp, lo, hi, sealed)
	// What is gathered was checked: out with it, also before the pack is
	// read again whole (the places are marked done).
	if ferr := wk.flush(); ferr != nil {
		return ferr
	}
	return err
}

// writePlaces opens the blobs of places lo to hi into wk.batch, where
// each follows the blob before it in the volume, and writes a place whose
// blob was opened for the place before it (a chunk repeated) directly.
func (wk *packWriter) writePlaces(pp *packPlaces, lo, hi int, sealed func(pack.Entry) ([]byte, error)) error {
	var plain []byte
	var id chunk.ID
	opened := int64(-1) // offset in the pack of the blob in plain
	for i, pl := range pp.places[lo:hi] {
		if wk.done[lo+i] {
			continue
		}
		e := wk.win.extents[pl.extent]
		repeated := int64(pl.offset) == opened
		if !repeated {
			entry := pl.entry(e.ID)
			if n := len(wk.batch); n > 0 && (e.Off != wk.at+int64(n) || n+int(entry.RawLength) > cap(wk.batch)) {
				if err := wk.flush(); err != nil {
					return err
				}
			}
			if len(wk.batch) == 0 {
				wk.at = e.Off
				ph := int(e.Off % int64(batchAlign))
				wk.batch = wk.buf[ph:ph]
			}
			start := len(wk.batch)
			b, err := sealed(entry)
			var grown []byte
			if err == nil {
				grown, err = wk.o.OpenAppend(wk.batch, b, entry)
			}
			if err != nil {
				return fmt.Errorf("%w: chunk at offset %d in pack %s: %v", errReadAgain, e.Off, pp.id.Short(), err)
			}
			wk.batch = grown
			plain = wk.batch[start:]
			id, opened = wk.r.IDKey.Sum(plain), int64(pl.offset)
		}
		if id != e.ID || int64(len(plain)) != e.Len {
			if !repeated {
				wk.batch = wk.batch[:len(wk.batch)-len(plain)] // never written
			}
			return fmt.Errorf("%w: chunk at offset %d: hash or length differs from the manifest", ErrMismatch, e.Off)
		}
		if repeated {
			if _, err := wk.w.WriteAt(plain, e.Off); err != nil {
				return fmt.Errorf("write at offset %d: %w", e.Off, err)
			}
		}
		wk.win.written[pl.extent] = true
		wk.done[lo+i] = true
		wk.prog.Written.Add(e.Len)
	}
	return nil
}

// flush writes out the blobs gathered in wk.batch.
func (wk *packWriter) flush() error {
	if len(wk.batch) == 0 {
		return nil
	}
	_, err := wk.w.WriteAt(wk.batch, wk.at)
	wk.batch = wk.batch[:0]
	if err != nil {
		return fmt.Errorf("write at offset %d: %w", wk.at, err)
	}
	return nil
}

// findUnindexed looks for the snapshot's chunks that idx does not know in
// the headers of the packs the targets hold but idx does not (an index
// object lost or damaged on every target; repair would write it again,
// but a restore should not need write access to every target), and adds
// the packs that hold any to idx. Each such pack is read whole. want is
// the chunks looked for.
func findUnindexed(ctx context.Context, r *repo.Repo, s *repo.Snapshot, idx *repo.Index, want map[chunk.ID]bool) error {
	stray := map[pack.ID]bool{}
	for _, t := range r.Targets {
		if t.Down() != nil {
			continue
		}
		err := r.ListShards(ctx, t, func(i objstore.Info) error {
			name := strings.TrimSuffix(path.Base(i.Name), path.Ext(i.Name))
			if id, err := pack.ParseID(name); err == nil {
				if _, known := idx.Pack(id); !known {
					stray[id] = true
				}
			}
			return nil
		})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			t.MarkDown(err)
		}
	}
	slog.Warn("chunks of the snapshot are missing from the index; looking for them in the headers of the packs it does not know (ferry repair writes the index again)",
		"snapshot", s.ID[:12], "chunks", len(want), "packs", len(stray))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for id := range stray {
		g.Go(func() error {
			p, _, err := r.ReadPack(gctx, id)
			if err != nil {
				return gctx.Err() // unreadable: its chunks stay missing
			}
			entries, err := r.Codec.ParseHeader(p)
			if err != nil {
				return nil
			}
			if slices.ContainsFunc(entries, func(e pack.Entry) bool { return want[e.ID] }) {
				idx.AddPack(repo.PackInfo{ID: id, Length: int64(len(p))}, entries)
			}
			return nil
		})
	}
	return g.Wait()
}

// checkShards lists the shards on every reachable target and fails, naming
// the packs, when any needed pack has fewer than k shards present. inRepo
// is how many packs the repository has (the index's count).
//
// Where it takes fewer round trips (repo.ListByDirectory), only the
// directories (data/XX/) that hold needed packs are listed, several at
// once per target, instead of data/ whole: a large repository in another
// region would take minutes to list whole.
func checkShards(ctx context.Context, r *repo.Repo, packs []pack.ID, inRepo int) error {
	dirs := map[string]bool{}
	for _, id := range packs {
		dirs[path.Dir(repo.ShardName(id, 0))+"/"] = true
	}
	prefixes := []string{"data/"}
	if r.ListByDirectory(len(dirs), inRepo) {
		prefixes = slices.Sorted(maps.Keys(dirs))
	}
	present := map[string]bool{}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	for _, t := range r.Targets {
		if t.Down() != nil {
			continue
		}
		g.Go(func() error {
			err := repo.ListPrefixes(gctx, t, prefixes, func(i objstore.Info) error {
				mu.Lock()
				present[fmt.Sprintf("%d/%s", t.Index, i.Name)] = true
				mu.Unlock()
				return nil
			})
			if err != nil && gctx.Err() == nil {
				t.MarkDown(err)
			}
			return gctx.Err()
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	k, n := r.Config.Erasure.K, r.Config.Erasure.Shards()
	var lost []string
	for _, id := range packs {
		have := 0
		var gone []string
		for i := 0; i < n; i++ {
			t := r.TargetOf(i)
			if present[fmt.Sprintf("%d/%s", t.Index, repo.ShardName(id, i))] {
				have++
			} else {
				gone = append(gone, fmt.Sprintf("%d (target %d)", i, t.Index+1))
			}
		}
		if have < k {
			lost = append(lost, fmt.Sprintf("pack %s has %d of %d shards, %d needed; missing shards %s", id.Short(), have, n, k, strings.Join(gone, ", ")))
		}
	}
	if len(lost) > 0 {
		more := ""
		if len(lost) > 3 {
			more = fmt.Sprintf(" and %d more packs", len(lost)-3)
			lost = lost[:3]
		}
		return fmt.Errorf("%w: %s%s", ErrDataLost, strings.Join(lost, "; "), more)
	}
	return nil
}

// output is the file or device being restored into.
type output struct {
	f        *os.File
	final    string // rename target for a new file; "" when writing in place
	fresh    bool   // holes need not be written
	regular  bool
	size     int64
	finished bool
}

func openTarget(path string, size int64) (*output, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		dir := filepath.Dir(path)
		f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".ferry-restore-*")
		if err != nil {
			return nil, fmt.Errorf("create %s: %w", path, err)
		}
		if err := f.Truncate(size); err != nil {
			f.Close()
			os.Remove(f.Name())
			return nil, fmt.Errorf("size %s: %w", path, err)
		}
		return &output{f: f, final: path, fresh: true, regular: true, size: size}, nil
	case err != nil:
		return nil, fmt.Errorf("target %s: %w", path, err)
	case fi.IsDir():
		return nil, fmt.Errorf("target %s is a directory", path)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("open target %s: %w", path, err)
	}
	o := &output{f: f, regular: fi.Mode().IsRegular(), size: size}
	if !o.regular {
		devSize, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("size of %s: %w", path, err)
		}
		if devSize < size {
			f.Close()
			return nil, fmt.Errorf("%w: %s has %d bytes, the snapshot %d", ErrTargetTooSmall, path, devSize, size)
		}
	}
	return o, nil
}

var zeros = make([]byte, 1<<20)

// zero makes [off, off+n) read as zeros unless the file is new: a hole
// punched in a file, the range zeroed by the kernel on a block device
// (BLKZEROOUT, which thin and loop devices turn into discards), or,
// where neither is supported, zeros written.
func (o *output) zero(off, n int64) error {
	if o.fresh {
		return nil
	}
	fd := int(o.f.Fd())
	if o.regular {
		if unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n) == nil {
			return nil
		}
	} else if off%512 == 0 && n%512 == 0 {
		r := [2]uint64{uint64(off), uint64(n)}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r))); errno == 0 {
			return nil
		}
	}
	for n > 0 {
		w := min(n, int64(len(zeros)))
		if _, err := o.f.WriteAt(zeros[:w], off); err != nil {
			return fmt.Errorf("write zeros at offset %d: %w", off, err)
		}
		off += w
		n -= w
	}
	return nil
}

func (o *output) commit() error {
	if o.regular && !o.fresh {
		if err := o.f.Truncate(o.size); err != nil {
			return fmt.Errorf("truncate target: %w", err)
		}
	}
	if err := o.f.Sync(); err != nil {
		return fmt.Errorf("sync target: %w", err)
	}
	if err := o.f.Close(); err != nil {
		return err
	}
	if o.final != "" {
		if err := os.Rename(o.f.Name(), o.final); err != nil {
			return fmt.Errorf("rename into place: %w", err)
		}
		if d, err := os.Open(filepath.Dir(o.final)); err == nil {
			d.Sync()
			d.Close()
		}
	}
	o.finished = true
	return nil
}

// abort removes a temporary file that was not committed.
func (o *output) abort() {
	if o.finished {
		return
	}
	o.f.Close()
	if o.final != "" {
		os.Remove(o.f.Name())
	}
}
