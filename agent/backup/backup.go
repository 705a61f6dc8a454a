package backup

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
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
	Uploads int // packs uploaded at once; default 2
	// Progress, when set, is updated as the backup runs.
	Progress *Progress
}

// Progress counts a running backup's work. Fields are updated atomically.
type Progress struct {
	Total  atomic.Int64 // bytes in the volume
	Done   atomic.Int64 // bytes of the volume chunked and hashed, in order
	Read   atomic.Int64 // bytes read from the source
	New    atomic.Int64 // bytes of new chunks (before compression)
	Stored atomic.Int64 // bytes written to the targets
}

// Summary reports a finished backup. BytesStored counts everything
// written to the targets, the manifest's copies included.
type Summary struct {
	SnapshotID  string `json:"snapshot_id"`
	Name        string `json:"name"`
	BytesVolume int64  `json:"bytes_volume"`
	repo.Stats
	Duration        time.Duration `json:"-"`
	DurationSeconds float64       `json:"duration_seconds"`
}

// chunkBuffers is how many chunk buffers a backup reads into at once.
func chunkBuffers(workers int) int { return 2*workers + 2 }

// indexFlush is how many entries an index object holds at most.
const indexFlush = 64 << 10

type item struct {
	c          chunk.Chunk
	buf        []byte
	id         chunk.ID
	sealed     []byte
	compressed bool
	done       chan struct{}
}

type upload struct {
	pack    []byte
	id      pack.ID
	entries []pack.Entry
}

// Run backs up the volume src[0:size) into r and commits a snapshot.
func Run(ctx context.Context, r *repo.Repo, src io.ReaderAt, size int64, opts Options) (*Summary, error) {
	start := time.Now()
	if err := r.RequireAll(); err != nil {
		return nil, err
	}
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
	sp, err := newChunks(src, size, opts, params)
	if err != nil {
		return nil, err
	}

	var (
		stats     repo.Stats
		extents   []repo.Extent
		digest    = repo.NewVolumeDigest()
		claimedMu sync.Mutex
		claimed   = map[chunk.ID]bool{} // new in this backup
		batchMu   sync.Mutex
		batch     = &repo.IndexBatch{}
		stored    atomic.Int64
		packs     atomic.Int64
	)
	// flushIndex writes the entries of packs whose shards are all written.
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
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	free := make(chan []byte, chunkBuffers(opts.Workers))
	for range cap(free) {
		free <- make([]byte, params.MaxSize)
	}
	work := make(chan *item, opts.Workers)
	ordered := make(chan *item, cap(free)+opts.Workers)
	uploads := make(chan upload)

	g.Go(func() error { // split
		defer close(ordered)
		defer close(work)
		for {
			var buf []byte
			select {
			case buf = <-free:
			case <-gctx.Done():
				return gctx.Err()
			}
			c, reused, err := sp.next(buf)
			prog.Read.Store(sp.BytesRead())
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			it := &item{c: c, buf: buf, done: make(chan struct{})}
			if reused >= 0 {
				it.id = opts.Parent.Extents[reused].ID
			}
			hash := !c.Zero && reused < 0
			if !hash {
				free <- buf
				it.buf = nil
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

	for range opts.Workers {
		g.Go(func() error { // hash, dedupe, seal
			var scratch []byte
			for it := range work {
				it.id = r.IDKey.Sum(it.c.Data)
				claimedMu.Lock()
				isNew := !claimed[it.id] && !idx.Has(it.id)
				if isNew {
					claimed[it.id] = true
				}
				claimedMu.Unlock()
				if isNew {
					it.sealed, scratch, it.compressed = r.Codec.SealBlob(nil, scratch, it.id, it.c.Data)
				}
				it.c.Data = nil
				free <- it.buf
				it.buf = nil
				close(it.done)
			}
			return nil
		})
	}

	g.Go(func() error { // collect in order, pack
		defer close(uploads)
		pw := r.Codec.NewWriter(r.Config.PackSize + int(params.MaxSize))
		send := func() error {
			p, id, entries := pw.Finish()
			select {
			case uploads <- upload{p, id, entries}:
			case <-gctx.Done():
				return gctx.Err()
			}
			pw = r.Codec.NewWriter(r.Config.PackSize + int(params.MaxSize))
			return nil
		}
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
				if n := len(extents); n > 0 && extents[n-1].Zero {
					extents[n-1].Len += e.Len
				} else {
					extents = append(extents, e)
				}
			} else {
				extents = append(extents, e)
			}
			if it.sealed != nil {
				pw.Add(it.id, it.sealed, int(it.c.Len), it.compressed)
				stats.NewChunks++
				stats.BytesNew += it.c.Len
				prog.New.Add(it.c.Len)
				if pw.Len() >= r.Config.PackSize {
					if err := send(); err != nil {
						return err
					}
				}
			}
			prog.Done.Store(it.c.Off + it.c.Len)
		}
		if pw.Count() > 0 {
			return send()
		}
		return nil
	})

	for range opts.Uploads {
		g.Go(func() error { // erasure-code and upload
			for u := range uploads {
				// Drop the pack once it is erasure-coded: only the shards
				// need to stay in memory while they upload.
				p, plen := u.pack, int64(len(u.pack))
				u.pack = nil
				n, err := r.WritePack(gctx, u.id, p)
				if err != nil {
					return err
				}
				stored.Add(n)
				prog.Stored.Add(n)
				packs.Add(1)
				batchMu.Lock()
				batch.Add(repo.PackInfo{ID: u.id, Length: plen}, u.entries)
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
	m := &repo.Manifest{
		Meta: repo.Meta{
			Name: name, Volume: opts.Volume, Size: size, Digest: digest.Hex(),
			Started: start.UTC(), Params: opts.Params,
		},
		Extents: extents,
	}
	// The manifest records what was stored before it; its own copies are
	// added to the summary below.
	m.Stats = stats
	m.Stats.BytesStored = stored.Load()
	m.Finished = time.Now().UTC()
	id, n, err := r.SaveSnapshot(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("commit snapshot: %w", err)
	}
	stored.Add(n)
	prog.Stored.Add(n)
	d := time.Since(start)
	sum := &Summary{SnapshotID: id, Name: name, BytesVolume: size, Stats: stats, Duration: d, DurationSeconds: d.Seconds()}
	sum.BytesStored = stored.Load()
	return sum, nil
}

// chunks yields the volume's canonical chunks; reused is the index of the
// parent's extent a chunk keeps (not read), or -1.
type chunks interface {
	next(buf []byte) (c chunk.Chunk, reused int, err error)
	BytesRead() int64
}

type fullChunks struct{ *chunk.Splitter }

func (f fullChunks) next(buf []byte) (chunk.Chunk, int, error) {
	c, err := f.Next(buf)
	return c, -1, err
}

type incrementalChunks struct{ *chunk.Incremental }

func (x incrementalChunks) next(buf []byte) (chunk.Chunk, int, error) { return x.Next(buf) }

func newChunks(src io.ReaderAt, size int64, opts Options, p chunk.Params) (chunks, error) {
	if opts.Parent == nil {
		sp, err := chunk.NewSplitter(src, size, opts.Holes, p)
		return fullChunks{sp}, err
	}
	prev := make([]chunk.Chunk, len(opts.Parent.Extents))
	for i, e := range opts.Parent.Extents {
		prev[i] = chunk.Chunk{Off: e.Off, Len: e.Len, Zero: e.Zero}
	}
	x, err := chunk.NewIncremental(src, size, opts.Holes, p, prev, opts.Changed)
	if err != nil {
		return nil, fmt.Errorf("incremental chunking against snapshot %s: %w", opts.Parent.ID[:12], err)
	}
	return incrementalChunks{x}, nil
}

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
	return Run(ctx, r, vol, vol.Size(), opts)
}
