package chunk

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
)

// minSegment is the smallest segment a Parallel hands to one goroutine.
// Each segment boundary costs about two chunks chunked twice (the chain
// that crosses it, and the segment's own chunks before the chains meet),
// so 32 MiB keeps that below 10% of the work with 1 MiB chunks while a
// volume of a few hundred MiB still has enough segments for every core.
const minSegment = 32 << 20

// Parallel produces the canonical chunks of a volume, exactly as a Splitter
// does, with several goroutines chunking segments of it at once.
//
// A cut depends only on the bytes since the previous cut. So a goroutine
// chunks each segment from its first byte as if a cut were there; its
// chunks are wrong until its cuts meet the cuts of the canonical chain
// coming from before, and right from the first cut both share (DESIGN.md,
// "Incremental CDC with resynchronisation"). Next follows the canonical
// chain: it takes a segment's chunks from the first one that starts at a
// cut of the chain, and chunks the stretch between that and the end of the
// previous segment's chunks itself, usually a chunk or two. Where the
// chains do not meet within a segment (data whose cut candidates repeat
// with a period below MinSize can keep them apart) Next chunks on by
// itself: slower, never different.
//
// Chunks come without their data: the finders look at each byte once to
// place the cuts, and ReadData reads a chunk's bytes when its consumer wants
// them, in parallel and usually from the page cache. Memory is one MaxSize
// buffer and about 2.5 MiB of chunker and read buffers per goroutine, the
// chunk lists of the segments ahead (a few KiB each), and a bit per block
// read (128 KiB per TiB of volume) so that BytesRead counts each byte once.
type Parallel struct {
	p       Params
	stride  int64
	src     io.ReaderAt
	size    int64
	holes   []Range
	bsize   int64
	segSize int64
	nseg    int64
	window  int // segments chunked ahead of Next
	seen    *blockSet

	// Guarded by mu: segments waiting for a finder, in order.
	mu     sync.Mutex
	wake   *sync.Cond
	queue  []*segment
	closed bool
	wg     sync.WaitGroup
	read   atomic.Int64 // bytes counted by finished finders

	// Next's state.
	ahead   []*segment // dispatched segments from ahead[0].idx on, in order
	nextSeg int64      // the next segment to dispatch
	pos     int64      // offset of the next chunk, a canonical cut
	list    []Chunk    // canonical chunks from pos, taken from a segment
	tail    *Splitter  // the chain beyond list, when no segment has met it yet
	buf     []byte     // tail's chunk buffer
	err     error
}

// segment is the chunking of [start,end) from start, as if start were a cut.
type segment struct {
	idx        int64
	start, end int64
	// chunks are valid once done is closed: every chunk that ends before
	// end (the chunker needs bytes past end to place the next cut, which
	// is the chain's business).
	chunks  []Chunk
	err     error
	dropped atomic.Bool // Next went past it: stop, or do not start
	done    chan struct{}
}

// NewParallel chunks the volume src[0:size) with workers goroutines; holes
// are as for NewSplitter. Next must be called until it returns io.EOF or an
// error, or Close must be called.
func NewParallel(src io.ReaderAt, size int64, holes []Range, p Params, workers int) (*Parallel, error) {
	seg := int64(max(minSegment, 8*p.MaxSize))
	return newParallel(src, size, holes, p, workers, (seg+blockSize-1)/blockSize*blockSize, blockSize)
}

// newParallel is NewParallel with other segment and read sizes, for tests;
// seg must be a multiple of bsize.
func newParallel(src io.ReaderAt, size int64, holes []Range, p Params, workers int, seg, bsize int64) (*Parallel, error) {
	stride, err := p.ZeroStride()
	if err != nil {
		return nil, err
	}
	if size < 0 {
		return nil, fmt.Errorf("chunk: negative volume size %d", size)
	}
	if seg <= 0 || seg%bsize != 0 {
		return nil, fmt.Errorf("chunk: segment size %d is not a multiple of the read size %d", seg, bsize)
	}
	holes, err = normalizeHoles(holes, size)
	if err != nil {
		return nil, fmt.Errorf("chunk: %w", err)
	}
	workers = max(workers, 1)
	x := &Parallel{
		p: p, stride: stride, src: src, size: size, holes: holes, bsize: bsize, segSize: seg,
		nseg:   (size + seg - 1) / seg,
		window: 2 * workers,
		seen:   newBlockSet((size + bsize - 1) / bsize),
	}
	x.wake = sync.NewCond(&x.mu)
	x.dispatch()
	for range min(int64(workers), x.nseg) {
		x.wg.Add(1)
		go x.finder()
	}
	return x, nil
}

// Next returns the next chunk, or io.EOF after the last one. Data is always
// nil: see ReadData. After an error Next keeps returning it.
func (x *Parallel) Next() (Chunk, error) {
	if x.err != nil {
		return Chunk{}, x.err
	}
	for x.pos < x.size {
		if len(x.list) > 0 {
			c := x.list[0]
			x.list = x.list[1:]
			x.pos = c.Off + c.Len
			return c, nil
		}
		// pos is a canonical cut. If the segment holding it has a chunk
		// that starts there, that chunk and the ones after it are the
		// canonical ones.
		s, err := x.segmentAt(x.pos)
		if err != nil {
			return Chunk{}, x.fail(err)
		}
		if i, ok := s.chunkAt(x.pos); ok {
			x.list = s.chunks[i:]
			x.releaseTail()
			continue
		}
		c, err := x.chain()
		if err != nil {
			return Chunk{}, x.fail(err)
		}
		x.pos = c.Off + c.Len
		return c, nil
	}
	x.Close()
	return Chunk{}, io.EOF
}

// chain chunks the canonical chain on from pos by itself.
func (x *Parallel) chain() (Chunk, error) {
	if x.tail == nil {
		if x.buf == nil {
			x.buf = make([]byte, x.p.MaxSize)
		}
		t := splitterOver(x.src, x.size, x.holes, x.p, x.stride, x.bsize)
		t.v.seen = x.seen
		t.seek(x.pos)
		x.tail = t
	}
	c, err := x.tail.Next(x.buf)
	c.Data = nil
	return c, err
}

func (x *Parallel) releaseTail() {
	if x.tail != nil {
		x.read.Add(x.tail.v.read)
		x.tail.release()
		x.tail = nil
	}
}

// segmentAt waits for the segment holding off, dropping the ones before it
// and dispatching the ones after it up to the window.
func (x *Parallel) segmentAt(off int64) (*segment, error) {
	idx := off / x.segSize
	for len(x.ahead) > 0 && x.ahead[0].idx < idx {
		x.ahead[0].dropped.Store(true)
		x.ahead = x.ahead[1:]
	}
	if len(x.ahead) == 0 {
		x.nextSeg = idx
	}
	x.dispatch()
	s := x.ahead[0]
	<-s.done
	return s, s.err
}

// dispatch queues segments for the finders until the window is full.
func (x *Parallel) dispatch() {
	x.mu.Lock()
	defer x.mu.Unlock()
	for len(x.ahead) < x.window && x.nextSeg < x.nseg {
		i := x.nextSeg
		s := &segment{idx: i, start: i * x.segSize, end: min((i+1)*x.segSize, x.size), done: make(chan struct{})}
		x.ahead = append(x.ahead, s)
		x.queue = append(x.queue, s)
		x.nextSeg++
	}
	x.wake.Broadcast()
}

// finder chunks queued segments until Close.
func (x *Parallel) finder() {
	defer x.wg.Done()
	buf := make([]byte, x.p.MaxSize)
	for {
		x.mu.Lock()
		for len(x.queue) == 0 && !x.closed {
			x.wake.Wait()
		}
		if x.closed {
			x.mu.Unlock()
			return
		}
		s := x.queue[0]
		x.queue = x.queue[1:]
		x.mu.Unlock()
		if !s.dropped.Load() {
			s.err = x.find(s, buf)
		}
		close(s.done)
	}
}

// find chunks s from its start over a volume that ends at s.end, so that it
// reads nothing past its segment; the last chunk, cut by that end unless it
// is the volume's, is left to the chain.
func (x *Parallel) find(s *segment, buf []byte) error {
	sp := splitterOver(x.src, s.end, clipHoles(x.holes, s.start, s.end), x.p, x.stride, x.bsize)
	sp.v.seen = x.seen
	defer func() { x.read.Add(sp.v.read) }()
	sp.seek(s.start)
	for !s.dropped.Load() {
		c, err := sp.Next(buf)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if c.Off+c.Len == s.end && s.end < x.size {
			sp.release()
			return nil
		}
		s.chunks = append(s.chunks, Chunk{Off: c.Off, Len: c.Len, Zero: c.Zero})
	}
	sp.release()
	return nil
}

// chunkAt returns the index of s's chunk that starts at off, if any.
func (s *segment) chunkAt(off int64) (int, bool) {
	i := sort.Search(len(s.chunks), func(i int) bool { return s.chunks[i].Off >= off })
	return i, i < len(s.chunks) && s.chunks[i].Off == off
}

// clipHoles returns the holes, which are normalized, that overlap
// [start,end), the last one cut at end: what a Splitter over a volume that
// ends at end needs to chunk from start. Holes the segment holds are copied
// once, not every hole of the volume for every segment.
func clipHoles(holes []Range, start, end int64) []Range {
	i := sort.Search(len(holes), func(i int) bool { return holes[i].End() > start })
	j := sort.Search(len(holes), func(j int) bool { return holes[j].Off >= end })
	if i >= j {
		return nil
	}
	out := slices.Clone(holes[i:j])
	if last := &out[len(out)-1]; last.End() > end {
		last.Len = end - last.Off
	}
	return out
}

func (x *Parallel) fail(err error) error {
	x.err = err
	x.Close()
	return err
}

// Close stops the finders and releases their buffers. It is safe to call
// more than once.
func (x *Parallel) Close() {
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return
	}
	x.closed = true
	for _, s := range x.ahead {
		s.dropped.Store(true)
	}
	x.wake.Broadcast()
	x.mu.Unlock()
	x.wg.Wait()
	x.releaseTail()
	x.list = nil
}

// BytesRead returns how many bytes were read from the source to place the
// cuts so far, each byte counted once though the finders and the chain
// around a segment boundary may read it twice; holes cost nothing. ReadData
// does not count. It is exact once Next has returned io.EOF.
func (x *Parallel) BytesRead() int64 {
	n := x.read.Load()
	if x.tail != nil {
		n += x.tail.v.read
	}
	return n
}

// ReadData reads the bytes of chunk c into buf, which must hold c.Len
// bytes, and returns them; declared holes read as zeros without touching
// the source. It is safe for concurrent use, also with Next.
func (x *Parallel) ReadData(buf []byte, c Chunk) ([]byte, error) {
	return readData(x.src, x.size, x.holes, buf, c)
}

// readData reads c's bytes from src into buf, with the ranges in zeros,
// which are sorted and disjoint, read as zeros.
func readData(src io.ReaderAt, size int64, zeros []Range, buf []byte, c Chunk) ([]byte, error) {
	if c.Off < 0 || c.Len < 0 || c.Off > size-c.Len {
		return nil, fmt.Errorf("chunk: read [%d,+%d) outside the volume of %d bytes", c.Off, c.Len, size)
	}
	if int64(cap(buf)) < c.Len {
		return nil, fmt.Errorf("chunk: buffer capacity %d below the chunk's %d bytes", cap(buf), c.Len)
	}
	buf = buf[:c.Len]
	off, end := c.Off, c.Off+c.Len
	for i := sort.Search(len(zeros), func(i int) bool { return zeros[i].End() > off }); off < end; i++ {
		dataEnd := end
		if i < len(zeros) && zeros[i].Off < end {
			dataEnd = max(zeros[i].Off, off)
		}
		if dataEnd > off {
			n, err := src.ReadAt(buf[off-c.Off:dataEnd-c.Off], off)
			if int64(n) != dataEnd-off {
				if err == nil || err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return nil, fmt.Errorf("read volume at offset %d: %w", off, err)
			}
		}
		if dataEnd == end {
			break
		}
		off = min(zeros[i].End(), end)
		clear(buf[dataEnd-c.Off : off-c.Off])
	}
	return buf, nil
}

// blockSet is a set of block indexes, safe for concurrent use.
type blockSet struct{ words []atomic.Uint64 }

func newBlockSet(n int64) *blockSet { return &blockSet{words: make([]atomic.Uint64, (n+63)/64)} }

// add adds block i and reports whether it was new.
func (b *blockSet) add(i int64) bool {
	bit := uint64(1) << (i % 64)
	return b.words[i/64].Or(bit)&bit == 0
}
