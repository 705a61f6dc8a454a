package restore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
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
	Fetched atomic.Int64 // bytes of packs read (the ranges needed, or whole packs)
}

// Summary reports a finished restore.
type Summary struct {
	SnapshotID      string              `json:"snapshot_id"`
	Target          string              `json:"target"`
	BytesVolume     int64               `json:"bytes_volume"`
	BytesWritten    int64               `json:"bytes_written"`
	BytesZero       int64               `json:"bytes_zero"`
	Packs           int                 `json:"packs"`
	Digest          string              `json:"digest"`
	Repaired        []repo.ShardProblem `json:"-"`
	RepairedShards  []string            `json:"reconstructed_shards,omitempty"`
	Duration        time.Duration       `json:"-"`
	DurationSeconds float64             `json:"duration_seconds"`
}

// place is where a data extent's blob is in its pack: its pack.Entry less
// the chunk ID, which the manifest's extent holds. A restore keeps one per
// chunk of the volume: 24 bytes, 56 with the ID.
type place struct {
	extent     int // position in the manifest
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
	s = plan.snap // with its extents
	out, err := openTarget(target, s.Size)
	if err != nil {
		return nil, err
	}
	defer out.abort()
	wb := newWriteBehind(out.f, out.regular)
	w, err := plan.WriteTo(ctx, wb, opts)
	wb.close()
	if err != nil {
		return nil, err
	}
	var zero int64
	for _, e := range s.Extents {
		if e.Zero {
			zero += e.Len
			if err := out.zero(e.Off, e.Len); err != nil {
				return nil, err
			}
		}
	}
	if err := out.commit(); err != nil {
		return nil, err
	}
	d := time.Since(start)
	sum := &Summary{
		SnapshotID: s.ID, Target: target, BytesVolume: s.Size, BytesWritten: w.BytesWritten,
		BytesZero: zero, Packs: plan.Packs(), Digest: s.Digest, Repaired: w.Repaired,
		Duration: d, DurationSeconds: d.Seconds(),
	}
	for _, p := range w.Repaired {
		sum.RepairedShards = append(sum.RepairedShards, p.String())
	}
	return sum, nil
}

// Plan is a snapshot's chunks resolved to their packs, checked restorable.
type Plan struct {
	r     *repo.Repo
	snap  *repo.Snapshot
	packs map[pack.ID][]place
	sizes map[pack.ID]int64 // pack lengths, from the index
	order []pack.ID         // packs by first use, so writes run roughly in order
	Data  int64             // bytes of data extents
}

// Packs is how many packs the restore reads.
func (p *Plan) Packs() int { return len(p.order) }

// NewPlan maps every data extent of s to its blob (idx, or the repository's
// index loaded when nil) and checks, by listing the targets, that every
// pack it needs still has at least k shards, before anything is written.
// s may come from Snapshots: NewPlan reads its extents.
func NewPlan(ctx context.Context, r *repo.Repo, s *repo.Snapshot, idx *repo.Index) (*Plan, error) {
	s, err := r.WithExtents(ctx, s)
	if err != nil {
		return nil, err
	}
	if idx == nil {
		if idx, err = r.LoadIndex(ctx); err != nil {
			return nil, fmt.Errorf("load index: %w", err)
		}
	}
	if err := findUnindexed(ctx, r, s, idx); err != nil {
		return nil, err
	}
	p := &Plan{r: r, snap: s, packs: map[pack.ID][]place{}, sizes: map[pack.ID]int64{}}
	var missing []string
	for i, e := range s.Extents {
		if e.Zero {
			continue
		}
		p.Data += e.Len
		info, entry, ok := idx.Lookup(e.ID)
		if !ok {
			if len(missing) < 5 {
				missing = append(missing, fmt.Sprintf("chunk %s at offset %d", e.ID.Short(), e.Off))
			}
			continue
		}
		if _, seen := p.packs[info.ID]; !seen {
			p.order = append(p.order, info.ID)
			p.sizes[info.ID] = info.Length
		}
		p.packs[info.ID] = append(p.packs[info.ID], placeOf(i, entry))
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: the index knows no pack for %s (run repair to rebuild the index)", ErrDataLost, strings.Join(missing, ", "))
	}
	// In pack order: a pack is read front to back, and extents that share
	// a blob (a chunk repeated in the volume) are next to each other.
	for _, places := range p.packs {
		slices.SortStableFunc(places, func(a, b place) int { return cmp.Compare(a.offset, b.offset) })
	}
	if err := checkShards(ctx, r, p.order); err != nil {
		return nil, err
	}
	return p, nil
}

// Written reports what WriteTo did.
type Written struct {
	BytesWritten int64
	BytesFetched int64
	Repaired     []repo.ShardProblem // shards done without (reconstructed from parity)
}

// Reads of a restore. Blobs next to each other in a pack are read together,
// up to rangeMax bytes, over gaps (blobs this snapshot does not use) of up
// to rangeGap.
const (
	rangeMax = 4 << 20
	rangeGap = 256 << 10
)

// WriteTo writes the snapshot's data extents into w, Workers packs at a
// time: every chunk decrypted, its keyed hash checked, written at its
// offset; then the whole-volume digest recomputed from what was written.
// Zero extents are not written: the caller makes w read as zeros there.
//
// A worker reads only the blobs the snapshot uses, a range of at most
// rangeMax at a time (repo.ReadRange: where a data shard's target is down,
// the range is rebuilt from the same range of the other shards). Should a
// range not be read or a blob in it not authenticate, it reads the whole
// pack instead (repo.FetchPack), whose shards are checked one by one and
// replaced from parity where bad, and goes on from there. Memory is a
// range and two chunk buffers per worker.
func (p *Plan) WriteTo(ctx context.Context, w io.WriterAt, opts Options) (*Written, error) {
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	prog := opts.Progress
	if prog == nil {
		prog = &Progress{}
	}
	s, r := p.snap, p.r
	// Which extents were written: write checks each chunk's keyed hash,
	// recomputed from the bytes, against the manifest's ID before writing
	// it, so the digest below is over the IDs of what was written (an
	// extent never written counts with a zero ID and fails it). One byte
	// per chunk, not the 32 of the recomputed IDs.
	written := make([]bool, len(s.Extents))
	var mu sync.Mutex
	out := &Written{}
	g, gctx := errgroup.WithContext(ctx)
	packs := make(chan pack.ID)
	g.Go(func() error {
		defer close(packs)
		for _, pid := range p.order {
			select {
			case packs <- pid:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range min(opts.Workers, len(p.order)) {
		g.Go(func() error {
			wk := &packWriter{p: p, w: w, written: written, prog: prog, o: r.Codec.NewOpener(int(r.Config.Chunking().MaxSize))}
			for pid := range packs {
				problems, fetched, err := wk.restore(gctx, pid)
				if err != nil {
					return err
				}
				prog.Fetched.Add(fetched)
				mu.Lock()
				out.BytesFetched += fetched
				out.Repaired = append(out.Repaired, problems...)
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	digest := repo.NewVolumeDigest()
	for i, e := range s.Extents {
		if !e.Zero && !written[i] {
			e.ID = chunk.ID{}
		}
		digest.Add(e)
	}
	if got := digest.Hex(); got != s.Digest {
		return nil, fmt.Errorf("%w: volume digest %s, snapshot says %s", ErrMismatch, got[:16], s.Digest[:min(16, len(s.Digest))])
	}
	out.BytesWritten = prog.Written.Load()
	return out, nil
}

// packWriter restores packs, one at a time, keeping its buffers.
type packWriter struct {
	p       *Plan
	w       io.WriterAt
	written []bool // per extent of the snapshot, shared by the writers
	prog    *Progress
	o       *pack.Opener
	d       erasure.Decoded
	done    []bool // per place of the pack at hand: written
}

// errReadAgain marks a failure that reading the whole pack may cure.
var errReadAgain = errors.New("read the whole pack")

// restore writes the extents pack pid serves, by ranges, or from the whole
// pack should that fail. It returns the shards it did without and the bytes
// it read.
func (wk *packWriter) restore(ctx context.Context, pid pack.ID) ([]repo.ShardProblem, int64, error) {
	places := wk.p.packs[pid]
	wk.done = append(wk.done[:0], make([]bool, len(places))...)
	problems, fetched, err := wk.byRanges(ctx, pid, places)
	if !errors.Is(err, errReadAgain) {
		return problems, fetched, err
	}
	problems, err = wk.p.r.FetchPack(ctx, pid, &wk.d)
	if err != nil {
		if errors.Is(err, repo.ErrPackLost) {
			return nil, 0, fmt.Errorf("%w: %v", ErrDataLost, err)
		}
		return nil, 0, err
	}
	err = wk.write(pid, 0, len(places), func(e pack.Entry) ([]byte, error) {
		return wk.d.Bytes(int64(e.Offset), int64(e.Length))
	})
	if errors.Is(err, errReadAgain) {
		err = fmt.Errorf("%w: %v", ErrMismatch, err)
	}
	return problems, fetched + wk.d.Len(), err
}

// byRanges reads the blobs of places in ranges and writes them.
func (wk *packWriter) byRanges(ctx context.Context, pid pack.ID, places []place) ([]repo.ShardProblem, int64, error) {
	var problems []repo.ShardProblem
	var fetched int64
	for i := 0; i < len(places); {
		start := int64(places[i].offset)
		end := start + int64(places[i].length)
		j := i + 1
		for ; j < len(places); j++ {
			pl := places[j]
			if int64(pl.offset) > end+rangeGap || int64(pl.offset+pl.length)-start > rangeMax {
				break
			}
			end = max(end, int64(pl.offset+pl.length))
		}
		b, ps, err := wk.p.r.ReadRange(ctx, pid, wk.p.sizes[pid], start, end-start)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fetched, ctx.Err()
			}
			return nil, fetched, fmt.Errorf("%w: %v", errReadAgain, err)
		}
		fetched += end - start
		problems = append(problems, ps...)
		err = wk.write(pid, i, j, func(e pack.Entry) ([]byte, error) {
			return b[int64(e.Offset)-start : int64(e.Offset+e.Length)-start], nil
		})
		if err != nil {
			return nil, fetched, err
		}
		i = j
	}
	return dedupe(problems), fetched, nil
}

// write opens the blobs of the pack's places lo to hi (sorted by their
// offset in the pack), each once however many extents share it, checks
// them against the manifest, and writes them, skipping places done before.
// A blob that does not authenticate fails with errReadAgain.
func (wk *packWriter) write(pid pack.ID, lo, hi int, sealed func(pack.Entry) ([]byte, error)) error {
	s, r := wk.p.snap, wk.p.r
	var plain []byte
	var id chunk.ID
	opened := int64(-1) // offset of the blob in plain
	for i, pl := range wk.p.packs[pid][lo:hi] {
		if wk.done[lo+i] {
			continue
		}
		e := s.Extents[pl.extent]
		if int64(pl.offset) != opened {
			entry := pl.entry(e.ID)
			b, err := sealed(entry)
			if err == nil {
				plain, err = wk.o.Open(b, entry)
			}
			if err != nil {
				return fmt.Errorf("%w: chunk at offset %d in pack %s: %v", errReadAgain, e.Off, pid.Short(), err)
			}
			id, opened = r.IDKey.Sum(plain), int64(pl.offset)
		}
		if id != e.ID || int64(len(plain)) != e.Len {
			return fmt.Errorf("%w: chunk at offset %d: hash or length differs from the manifest", ErrMismatch, e.Off)
		}
		if _, err := wk.w.WriteAt(plain, e.Off); err != nil {
			return fmt.Errorf("write at offset %d: %w", e.Off, err)
		}
		wk.written[pl.extent] = true
		wk.done[lo+i] = true
		wk.prog.Written.Add(e.Len)
	}
	return nil
}

// dedupe keeps one report per shard: the ranges of a pack that a lost
// shard held each report it.
func dedupe(ps []repo.ShardProblem) []repo.ShardProblem {
	out := ps[:0]
	for _, p := range ps {
		if !slices.ContainsFunc(out, func(q repo.ShardProblem) bool { return q.Shard == p.Shard }) {
			out = append(out, p)
		}
	}
	return out
}

// findUnindexed looks for the snapshot's chunks that idx does not know in
// the headers of the packs the targets hold but idx does not (an index
// object lost or damaged on every target; repair would write it again,
// but a restore should not need write access to every target), and adds
// the packs that hold any to idx. Each such pack is read whole.
func findUnindexed(ctx context.Context, r *repo.Repo, s *repo.Snapshot, idx *repo.Index) error {
	want := map[chunk.ID]bool{}
	for _, e := range s.Extents {
		if !e.Zero && !idx.Has(e.ID) {
			want[e.ID] = true
		}
	}
	if len(want) == 0 {
		return nil
	}
	var mu sync.Mutex
	stray := map[pack.ID]bool{}
	for _, t := range r.Targets {
		if t.Down() != nil {
			continue
		}
		err := t.Store.List(ctx, "data/", func(i objstore.Info) error {
			name := strings.TrimSuffix(path.Base(i.Name), path.Ext(i.Name))
			if id, err := pack.ParseID(name); err == nil {
				if _, known := idx.Pack(id); !known {
					mu.Lock()
					stray[id] = true
					mu.Unlock()
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
// the packs, when any needed pack has fewer than k shards present.
func checkShards(ctx context.Context, r *repo.Repo, packs []pack.ID) error {
	present := map[string]bool{}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	for _, t := range r.Targets {
		if t.Down() != nil {
			continue
		}
		g.Go(func() error {
			err := t.Store.List(gctx, "data/", func(i objstore.Info) error {
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
