package backup

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/agent/source"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
)

// Options tune a backup.
type Options struct {
	Name    string            // defaults to the source's file name
	Volume  repo.Volume       // where the data came from, recorded in the manifest
	Holes   []chunk.Range     // ranges known to read as zeros (SEEK_HOLE)
	Params  map[string]string // recorded in the manifest
	Workers int               // hash/seal workers; default GOMAXPROCS

	// Parent and Changed make the backup incremental: only the ranges in
	// Changed (every byte that differs from the parent's volume, as
	// SnapshotMetadata's delta reports) and their surroundings are read;
	// every other chunk keeps the parent's ID. The result is identical to
	// a full backup of the same bytes.
	Parent  *repo.Snapshot
	Changed []chunk.Range
	// Basis, without Parent, is an earlier snapshot of the same volume
	// whose changes are not known: the backup finds them by reading the
	// basis's chunks again and comparing their keyed hashes (see
	// findChanges), then reads only around those that differ. The result
	// is again identical to a full backup.
	Basis   *repo.Snapshot
	Uploads int // packs uploaded at once; default 2
	// Progress, when set, is updated as the backup runs.
	Progress *Progress
}

// Progress counts a running backup's work. Fields are updated atomically.
type Progress struct {
	Total atomic.Int64 // bytes in the volume
	Done  atomic.Int64 // bytes of the volume chunked and hashed, in order
	// Compared counts the bytes of the volume compared with Options.Basis,
	// which comes before chunking; Covered combines the two.
	Compared atomic.Int64
	Read     atomic.Int64 // bytes read from the source
	New      atomic.Int64 // bytes of new chunks (before compression)
	Stored   atomic.Int64 // bytes written to the targets
}

// Covered is how far the backup has gone through the volume: the bytes
// compared with the basis until chunking passes them, then those chunked.
func (p *Progress) Covered() int64 { return max(p.Done.Load(), p.Compared.Load()) }

// Summary reports a finished backup. BytesStored counts everything
// written to the targets, the manifest's copies included.
type Summary struct {
	SnapshotID  string `json:"snapshot_id"`
	Name        string `json:"name"`
	BytesVolume int64  `json:"bytes_volume"`
	repo.Stats
	Duration        time.Duration `json:"-"`
	DurationSeconds float64       `json:"duration_seconds"`
	// Degraded lists the targets that were down during the backup and
	// what they lack: the snapshot is restorable, with less redundancy
	// until repair (ferry repair, the agent's verify loop) writes it.
	Degraded []repo.DegradedTarget `json:"degraded,omitempty"`
}

// DegradedMessage is one line saying what the backup could not write, for
// people; "" when it wrote everything.
func (s *Summary) DegradedMessage() string {
	if len(s.Degraded) == 0 {
		return ""
	}
	var parts []string
	for _, d := range s.Degraded {
		parts = append(parts, fmt.Sprintf("target %d (%s) was unavailable (%s); %d shards and %d replicated objects not written there",
			d.Target, d.Location, d.Error, d.Shards, d.Objects))
	}
	return "degraded: " + strings.Join(parts, "; ") + "; `ferry repair` (or the agent's verify loop) writes them when it is back"
}

// orderedQueue is how many chunks may wait for the collector, which takes
// them in volume order. Chunks the workers read are bounded by the work
// queue; the rest (kept from the parent, zeros) hold no data. An
// incremental backup yields hundreds of kept chunks between two changed
// ones: with a short queue the chunker would stop behind the changed chunk
// still being compressed instead of finding the next one (measured on the
// perf/compare images into file:// targets, medians of four: 1.02 s with
// 4*Workers, 0.84 s with this).
const orderedQueue = 4096

// indexFlush is how many entries an index object holds at most.
const indexFlush = 64 << 10

// item is one chunk on its way through the pipeline: the collector takes
// items in volume order and waits for each to be done.
type item struct {
	c      chunk.Chunk
	seq    int64 // among the items the workers read, in volume order
	id     chunk.ID
	stored bool // new: sealed into a pack
	done   chan struct{}
}

// Run backs up the volume src[0:size) into r and commits a snapshot. It
// goes on without targets that are or go down while the layout survives
// their loss (see repo.DegradedWrites); Summary.Degraded says what they
// lack.
func Run(ctx context.Context, r *repo.Repo, src io.ReaderAt, size int64, opts Options) (*Summary, error) {
	start := time.Now()
	ctx, degraded := repo.DegradedWrites(ctx)
	if err := r.RequireWritable(); err != nil {
		return nil, err
	}
	// A backup lock tells prune which packs it may still reference (see
	// repo.PruneOptions); taken before the index is loaded.
	release, err := r.Lock(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.Uploads <= 0 {
		opts.Uploads = 2
	}
	prog := opts.Progress
	if prog == nil {
		prog = &Progress{}
	}
	prog.Total.Store(size)

	idx, err := r.LoadIndex(ctx)
	if err != nil {
		return nil, fmt.Errorf("load index: %w", err)
	}
	params := r.Config.Chunking()
	sp, err := newChunks(ctx, r, src, size, opts, params, prog)
	if err != nil {
		return nil, err
	}
	defer sp.close()

	// The extents, in volume order, wait on the local disk for the commit.
	extents, err := r.NewSnapshotWriter()
	if err != nil {
		return nil, err
	}
	defer extents.Close()
	var (
		stats     repo.Stats
		digest    = repo.NewVolumeDigest()
		claimedMu sync.Mutex
		// claimed holds the chunks this backup stores that the index does
		// not know yet; flushIndex forgets them once it does, so that the
		// map stays as small as the packs in flight, not the volume.
		claimed = map[chunk.ID]bool{}
		batchMu sync.Mutex
		batch   = &repo.IndexBatch{}
		stored  atomic.Int64
		packs   atomic.Int64
	)
	// flushIndex writes the entries of packs whose shards are written.
	flushIndex := func(ctx context.Context, min int) error {
		batchMu.Lock()
		b := batch
		if b.Len() < min || b.Len() == 0 {
			batchMu.Unlock()
			return nil
		}
		batch = &repo.IndexBatch{}
		batchMu.Unlock()
		n, err := r.WriteIndex(ctx, b)
		stored.Add(n)
		prog.Stored.Add(n)
		if err != nil {
			return err
		}
		claimedMu.Lock()
		for _, es := range b.Entries {
			for _, e := range es {
				if idx.Has(e.ID) { // WriteIndex added it to idx
					delete(claimed, e.ID)
				}
			}
		}
		claimedMu.Unlock()
		return nil
	}

	g, gctx := errgroup.WithContext(ctx)
	work := make(chan *item, opts.Workers)
	ordered := make(chan *item, orderedQueue)
	pk := newPacker(gctx, r)

	g.Go(func() error { // split
		defer close(ordered)
		defer close(work)
		for seq := int64(0); ; {
			c, id, reused, err := sp.next()
			prog.Read.Store(sp.BytesRead())
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			it := &item{c: c, id: id, done: make(chan struct{})}
			hash := !c.Zero && !reused
			if hash {
				it.seq = seq
				seq++
			} else {
				close(it.done)
			}
			select {
			case ordered <- it:
			case <-gctx.Done():
				return gctx.Err()
			}
			if hash {
				select {
				case work <- it:
				case <-gctx.Done():
					return gctx.Err()
				}
			}
		}
	})

	var workers sync.WaitGroup
	for range opts.Workers {
		workers.Add(1)
		g.Go(func() error { // read, hash, dedupe, seal, pack
			defer workers.Done()
			sealer := r.Codec.NewSealer(int(params.MaxSize))
			for it := range work {
				plain, err := sp.ReadData(sealer.Plain(int(it.c.Len)), it.c)
				if err != nil {
					return err
				}
				it.id = r.IDKey.Sum(plain)
				claimedMu.Lock()
				isNew := !claimed[it.id] && !idx.Has(it.id)
				if isNew {
					claimed[it.id] = true
				}
				claimedMu.Unlock()
				var sealed []byte
				var compressed bool
				if isNew {
					sealed, compressed = sealer.Seal(it.id, len(plain))
				}
				if err := pk.add(gctx, it.seq, it.id, sealed, len(plain), compressed); err != nil {
					return err
				}
				it.stored = isNew
				close(it.done)
			}
			return nil
		})
	}
	g.Go(func() error { // the last pack, once every chunk is in one
		defer close(pk.full)
		workers.Wait()
		return pk.flush(gctx)
	})

	g.Go(func() error { // collect in volume order
		for it := range ordered {
			select {
			case <-it.done:
			case <-gctx.Done():
				return gctx.Err()
			}
			e := repo.Extent{Off: it.c.Off, Len: it.c.Len, Zero: it.c.Zero, ID: it.id}
			digest.Add(e)
			stats.Chunks++
			if e.Zero {
				stats.BytesZero += e.Len
			}
			if err := extents.Add(e); err != nil {
				return err
			}
			if it.stored {
				stats.NewChunks++
				stats.BytesNew += it.c.Len
				prog.New.Add(it.c.Len)
			}
			prog.Done.Store(it.c.Off + it.c.Len)
		}
		return nil
	})

	for range opts.Uploads {
		g.Go(func() error { // erasure-code and upload
			var shards repo.Shards
			for f := range pk.full {
				err := r.EncodePack(&shards, f.id, f.pack)
				// Only the shards stay in memory while they upload.
				pk.free <- f.pack[:0]
				if err != nil {
					return err
				}
				n, err := r.WriteShards(gctx, &shards)
				if err != nil {
					return err
				}
				stored.Add(n)
				prog.Stored.Add(n)
				packs.Add(1)
				batchMu.Lock()
				batch.Add(repo.PackInfo{ID: f.id, Length: int64(len(f.pack))}, f.entries)
				batchMu.Unlock()
				if err := flushIndex(gctx, indexFlush); err != nil {
					return err
				}
			}
			return nil
		})
	}

	if err := g.Wait(); err != nil {
		return nil, err
	}
	if err := flushIndex(ctx, 0); err != nil {
		return nil, err
	}

	stats.BytesRead = sp.BytesRead()
	stats.Packs = packs.Load()
	name := opts.Name
	if name == "" {
		name = opts.Volume.Source
	}
	if opts.Volume.Host == "" {
		opts.Volume.Host, _ = os.Hostname()
	}
	m := repo.Meta{
		Name: name, Volume: opts.Volume, Size: size, Digest: digest.Hex(),
		Started: start.UTC(), Params: opts.Params,
	}
	// The manifest records what was stored before it; its own copies (and
	// its segments') are added to the summary below.
	m.Stats = stats
	m.Stats.BytesStored = stored.Load()
	m.Finished = time.Now().UTC()
	id, n, err := extents.Commit(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("commit snapshot: %w", err)
	}
	stored.Add(n)
	prog.Stored.Add(n)
	d := time.Since(start)
	sum := &Summary{SnapshotID: id, Name: name, BytesVolume: size, Stats: stats, Duration: d, DurationSeconds: d.Seconds()}
	sum.BytesStored = stored.Load()
	sum.Degraded = degraded.Targets()
	return sum, nil
}

// packBuffers is how many packs a backup fills or hands to an uploader at
// once: while one fills, the last one is erasure-coded.
const packBuffers = 2

// packer puts sealed blobs into packs in volume order, so that a pack
// holds a stretch of the volume (a rewritten region's old packs die
// together), and hands full packs to the uploaders. A worker waits for its
// chunk's turn with the blob in its Sealer: at most the other workers'
// chunks ahead of it, and no buffer of its own.
type packer struct {
	r    *repo.Repo
	size int // a pack is full from this many bytes of blobs
	mu   sync.Mutex
	turn *sync.Cond
	next int64        // seq of the item whose blob goes in next
	w    *pack.Writer // the pack being filled, nil between packs
	free chan []byte  // pack buffers
	full chan filled
}

type filled struct {
	pack    []byte
	id      pack.ID
	entries []pack.Entry
}

func newPacker(ctx context.Context, r *repo.Repo) *packer {
	pk := &packer{r: r, size: r.Config.PackSize, free: make(chan []byte, packBuffers), full: make(chan filled)}
	pk.turn = sync.NewCond(&pk.mu)
	for range packBuffers {
		pk.free <- make([]byte, 0, r.PackBufferSize())
	}
	// Wake the waiters when the backup fails, or they would wait for a
	// turn that never comes.
	context.AfterFunc(ctx, func() {
		pk.mu.Lock()
		pk.turn.Broadcast()
		pk.mu.Unlock()
	})
	return pk
}

// add waits for the turn of the item seq, puts its sealed blob (none when
// sealed is nil: not a new chunk) into the current pack, and hands the pack
// over when that filled it.
func (pk *packer) add(ctx context.Context, seq int64, id chunk.ID, sealed []byte, rawLen int, compressed bool) error {
	pk.mu.Lock()
	for pk.next != seq && ctx.Err() == nil {
		pk.turn.Wait()
	}
	if err := ctx.Err(); err != nil {
		pk.mu.Unlock()
		return err
	}
	var w *pack.Writer
	if sealed != nil {
		if pk.w == nil {
			select {
			case buf := <-pk.free:
				pk.w = pk.r.Codec.NewWriterBuffer(buf)
			case <-ctx.Done():
				pk.mu.Unlock()
				return ctx.Err()
			}
		}
		pk.w.Add(id, sealed, rawLen, compressed)
		if pk.w.Len() >= pk.size {
			w, pk.w = pk.w, nil
		}
	}
	pk.next++
	pk.turn.Broadcast()
	pk.mu.Unlock()
	if w == nil {
		return nil
	}
	return pk.send(ctx, w)
}

// flush hands over the last pack, if it holds anything.
func (pk *packer) flush(ctx context.Context) error {
	if pk.w == nil || pk.w.Count() == 0 {
		return nil
	}
	return pk.send(ctx, pk.w)
}

// send finishes w (its ID is a SHA-256 over it, so outside the lock) and
// waits for an uploader to take it.
func (pk *packer) send(ctx context.Context, w *pack.Writer) error {
	p, id, entries := w.Finish()
	select {
	case pk.full <- filled{p, id, entries}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// chunks yields the volume's canonical chunks without their data, which
// the workers read where they need it, in parallel.
type chunks interface {
	// next returns the next chunk; reused says it is the parent's (not
	// read), with the parent's id.
	next() (c chunk.Chunk, id chunk.ID, reused bool, err error)
	ReadData(buf []byte, c chunk.Chunk) ([]byte, error)
	BytesRead() int64
	close()
}

// fullChunks chunks the whole volume, in parallel.
type fullChunks struct{ *chunk.Parallel }

func (f fullChunks) next() (chunk.Chunk, chunk.ID, bool, error) {
	c, err := f.Next()
	return c, chunk.ID{}, false, err
}

func (f fullChunks) close() { f.Close() }

// incrementalChunks reads only around the changes, into buf; the workers
// read the few chunks that changed again.
type incrementalChunks struct {
	*chunk.Incremental
	buf      []byte
	compared int64         // bytes read by findChanges first
	stop     func()        // ends the read-ahead and waits for it
	at       *atomic.Int64 // end of the last chunk, for the read-ahead
	ids      *parentIDs    // the IDs of the chunks it reuses
}

func (x incrementalChunks) BytesRead() int64 { return x.compared + x.Incremental.BytesRead() }

func (x incrementalChunks) next() (chunk.Chunk, chunk.ID, bool, error) {
	c, reused, err := x.Next(x.buf)
	c.Data = nil
	if err != nil {
		return c, chunk.ID{}, false, err
	}
	x.at.Store(c.Off + c.Len)
	if reused < 0 {
		return c, chunk.ID{}, false, nil
	}
	id, err := x.ids.id(reused)
	return c, id, true, err
}

func (x incrementalChunks) close() {
	x.stop()
	x.ids.close()
	x.Incremental.Close()
}

func newChunks(ctx context.Context, r *repo.Repo, src io.ReaderAt, size int64, opts Options, p chunk.Params, prog *Progress) (chunks, error) {
	parent, changed := opts.Parent, opts.Changed
	if parent == nil && opts.Basis == nil {
		x, err := chunk.NewParallel(src, size, opts.Holes, p, opts.Workers)
		return fullChunks{x}, err
	}
	// A parent whose manifest holds its extents is read once; a segmented
	// one's are read a segment at a time, whenever they are needed.
	what := "parent"
	if parent == nil {
		parent, what = opts.Basis, "basis"
	}
	if parent.Segments == nil {
		var err error
		if parent, err = r.WithExtents(ctx, parent); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	var compared int64
	if opts.Parent == nil {
		// Compared with the basis first, a segment at a time.
		holes := slices.Clone(opts.Holes)
		slices.SortFunc(holes, func(a, b chunk.Range) int { return cmp.Compare(a.Off, b.Off) })
		bufs := make([][]byte, max(opts.Workers, 1))
		for i := range bufs {
			bufs[i] = make([]byte, p.MaxSize)
		}
		var compareErr error
		err := r.Extents(ctx, parent, func(exts []repo.Extent) error {
			ch, n, err := findChanges(ctx, src, size, holes, exts, r.IDKey, bufs, prog)
			changed = append(changed, ch...)
			compared += n
			compareErr = err
			return err
		})
		switch {
		case compareErr != nil:
			return nil, fmt.Errorf("compare with snapshot %s: %w", parent.ID[:12], err)
		case err != nil:
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	prev := func(yield func(chunk.Chunk) bool) error {
		err := r.Extents(ctx, parent, func(exts []repo.Extent) error {
			for _, e := range exts {
				if !yield(chunk.Chunk{Off: e.Off, Len: e.Len, Zero: e.Zero}) {
					return errStopped
				}
			}
			return nil
		})
		if errors.Is(err, errStopped) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
	x, err := chunk.NewIncrementalFrom(src, size, opts.Holes, p, prev, changed)
	if err != nil {
		return nil, fmt.Errorf("incremental chunking against snapshot %s: %w", parent.ID[:12], err)
	}
	stop, at := func() {}, new(atomic.Int64)
	if compared == 0 { // with a basis, findChanges has just read it all
		pctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			prefetch(pctx, src, x.Expected(), size, at.Load)
		}()
		stop = func() { cancel(); <-done }
	}
	return incrementalChunks{x, make([]byte, p.MaxSize), compared, stop, at, newParentIDs(ctx, r, parent)}, nil
}

// parentIDs gives the IDs of the parent's extents by index, in increasing
// order (as chunk.Incremental reuses them), reading the parent's extents
// again, a segment at a time for a segmented manifest.
type parentIDs struct {
	next  func() ([]repo.Extent, error, bool)
	stop  func()
	batch []repo.Extent
	base  int // index of batch[0]
}

var errStopped = errors.New("stopped")

func newParentIDs(ctx context.Context, r *repo.Repo, s *repo.Snapshot) *parentIDs {
	next, stop := iter.Pull2(func(yield func([]repo.Extent, error) bool) {
		err := r.Extents(ctx, s, func(exts []repo.Extent) error {
			if !yield(exts, nil) {
				return errStopped
			}
			return nil
		})
		if err != nil && !errors.Is(err, errStopped) {
			yield(nil, err)
		}
	})
	return &parentIDs{next: next, stop: stop}
}

func (p *parentIDs) id(i int) (chunk.ID, error) {
	if i < p.base {
		return chunk.ID{}, fmt.Errorf("parent's extent %d asked for after %d", i, p.base)
	}
	for i >= p.base+len(p.batch) {
		p.base += len(p.batch)
		b, err, ok := p.next()
		if err != nil {
			return chunk.ID{}, fmt.Errorf("parent: %w", err)
		}
		if !ok {
			return chunk.ID{}, fmt.Errorf("parent has no extent %d", i)
		}
		p.batch = b
	}
	return p.batch[i-p.base].ID, nil
}

func (p *parentIDs) close() { p.stop() }

// File backs up the block device or image file at path: holes are found
// with SEEK_DATA/SEEK_HOLE, the name defaults to the file's base name and
// the manifest records the absolute path.
func File(ctx context.Context, r *repo.Repo, path string, opts Options) (*Summary, error) {
	vol, err := source.Open(path)
	if err != nil {
		return nil, err
	}
	defer vol.Close()
	holes, err := vol.Holes()
	if err != nil {
		return nil, fmt.Errorf("map holes of %s: %w", path, err)
	}
	opts.Holes = holes
	if opts.Name == "" {
		opts.Name = filepath.Base(path)
	}
	if opts.Volume.Source == "" {
		opts.Volume.Source, _ = filepath.Abs(path)
	}
	if opts.Parent == nil && opts.Basis == nil {
		// The newest snapshot of the same name, to compare with (see
		// Options.Basis); without one, or when it cannot be read, the
		// backup chunks the whole volume.
		switch s, err := r.FindSnapshot(ctx, "latest", opts.Name); {
		case err == nil:
			opts.Basis = s
			opts.Params = maps.Clone(opts.Params)
			if opts.Params == nil {
				opts.Params = map[string]string{}
			}
			opts.Params["basis"] = s.ID
		case !errors.Is(err, repo.ErrSnapshotNotFound):
			slog.Warn("no earlier snapshot to compare with, reading the whole volume", "name", opts.Name, "error", err)
		}
	}
	return Run(ctx, r, vol, vol.Size(), opts)
}
