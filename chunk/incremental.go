package chunk

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"iter"
	"math"
	"slices"
	"sort"
)

// incrementalBlockSize is the read size of an Incremental. Its reads are
// scattered around changes, where 1 MiB blocks would add up to 2 MiB per
// change; 64 KiB still makes requests large enough for block devices.
const incrementalBlockSize = 64 << 10

// Incremental produces the canonical chunks of a volume from the chunk list
// of a previous snapshot of it and the ranges that changed since, reading
// only around the changes (DESIGN.md, "Incremental CDC with
// resynchronisation"). Its output is identical to a Splitter's over the
// whole new volume.
//
// A cut depends only on the bytes since the previous cut, and the chunker
// never looks more than MaxSize past a cut. So wherever the new chunking
// has a cut that is also an old cut, and the old chunk there has no changed
// byte, that old chunk is also the new one; and so on. Incremental walks the
// volume in order: it takes old chunks without reading them while that
// holds, and otherwise runs a Splitter from the current cut, which is
// canonical, until the Splitter's cut meets such an old chunk again. The
// cuts inside a merged Zero chunk, every ZeroStride bytes from its start,
// count as old cuts, so a change inside a long zero run re-chunks only the
// stride-long chunks around it. Unchanged bytes of old Zero chunks are known
// to be zero and are never read, like holes.
//
// Contract: changed must cover every byte whose value in the new volume
// differs from the old one (a block rewritten with the same bytes may be
// listed; listing too much only costs reads). Bytes beyond the old size
// count as changed without being listed; bytes beyond the new size do not
// matter. An insertion or deletion shifts the bytes after it, so everything
// from it to the end has changed. A byte that differs and is not listed
// makes the output wrong, silently: Incremental cannot see it without
// reading it.
//
// Bytes read. Call a canonical chunk of the new volume (each stride-long
// chunk inside a merged Zero chunk counts as one) clean when the old
// chunking has the same chunk, none of its bytes changed, and it does not
// end at the old volume's end unless the size stayed the same; call the
// others dirty, and a maximal sequence of consecutive dirty chunks a run.
// Then
//
//	BytesRead <= D + R*(MaxSize + 2*B)
//
// where D counts the bytes of the dirty chunks that are neither holes nor
// unchanged bytes of old Zero chunks, R is the number of runs, and B the
// read size (64 KiB): the runs themselves, the chunker's read-ahead past
// each, and a partial block at either end. No byte is read twice. A run
// begins with the chunk that holds its first changed byte (or the end of
// the volume), and ends at the first cut after its last changed byte where
// both chunkings meet. How far that is depends on the data, not on the
// change: in random data mostly at the end of the changed chunk, and within
// MaxSize in 99% of the runs of the property test; but data whose cut
// candidates repeat with a period below MinSize can keep the chunkings out
// of step for as long as the pattern lasts
// (TestIncrementalResyncIsDataDependent).
//
// Memory: the previous chunk list is read as a stream (Prev), a few times
// through; Incremental holds the old chunks from the one at hand to the
// furthest it looked at, not the list.
type Incremental struct {
	s       *Splitter
	prev    Prev
	cur     *prevCursor
	last    Chunk   // the last old chunk
	changed []Range // sorted, disjoint, not adjacent, within [0,size)
	oldSize int64
	size    int64
	stride  int64
	minSize uint
	maxSize uint
	pos     int64 // offset of the next chunk, a canonical cut
	i       int   // index of the first prev chunk ending after pos
	err     error
}

// Prev is a previous snapshot's chunk list, as a stream that can be read
// more than once: each call yields the chunks in order from the first,
// until yield returns false, and returns the error that stopped it early,
// if any (reading the list from a repository, say).
type Prev func(yield func(Chunk) bool) error

// PrevSlice is the Prev of a list in memory.
func PrevSlice(cs []Chunk) Prev {
	return func(yield func(Chunk) bool) error {
		for _, c := range cs {
			if !yield(c) {
				break
			}
		}
		return nil
	}
}

// prevCursor reads a Prev once, keeping the chunks from the earliest one
// still needed (see forget) to the furthest asked for.
type prevCursor struct {
	next func() (Chunk, bool)
	stop func()
	err  error // the Prev's, once it returned
	buf  []Chunk
	base int // index of buf[0]
	done bool
}

func newPrevCursor(prev Prev) *prevCursor {
	c := &prevCursor{}
	c.next, c.stop = iter.Pull(func(yield func(Chunk) bool) { c.err = prev(yield) })
	return c
}

// at returns old chunk k, which must not be before one forgotten, and
// whether the list has it. A list that failed to read ends there (see
// failed).
func (c *prevCursor) at(k int) (Chunk, bool) {
	for k >= c.base+len(c.buf) {
		if c.done {
			return Chunk{}, false
		}
		ch, ok := c.next()
		if !ok {
			c.done = true
			return Chunk{}, false
		}
		c.buf = append(c.buf, ch)
	}
	return c.buf[k-c.base], true
}

// forget lets the chunks before k go.
func (c *prevCursor) forget(k int) {
	if n := k - c.base; n >= 1024 || n > 0 && n == len(c.buf) {
		c.buf = c.buf[:copy(c.buf, c.buf[n:])]
		c.base = k
	}
}

// failed returns the error that ended the list early, if any.
func (c *prevCursor) failed() error {
	if c.err != nil {
		return fmt.Errorf("chunk: previous chunk list: %w", c.err)
	}
	return nil
}

func (c *prevCursor) close() { c.stop() }

// NewIncremental chunks the volume src[0:size), a later version of the
// volume whose canonical chunks, in order and covering it from offset 0,
// were prev; only Off, Len and Zero of prev are used. changed lists the
// ranges that may differ from the old volume, in any order, overlapping or
// not (see the contract on Incremental). holes are as for NewSplitter, for
// the new volume.
func NewIncremental(src io.ReaderAt, size int64, holes []Range, p Params, prev []Chunk, changed []Range) (*Incremental, error) {
	return newIncremental(src, size, holes, p, PrevSlice(prev), changed, incrementalBlockSize)
}

// NewIncrementalFrom is NewIncremental with the previous chunk list as a
// stream, which it reads through twice while it starts, again (once) as
// Next goes, and once more for Expected. Close it.
func NewIncrementalFrom(src io.ReaderAt, size int64, holes []Range, p Params, prev Prev, changed []Range) (*Incremental, error) {
	return newIncremental(src, size, holes, p, prev, changed, incrementalBlockSize)
}

// newIncremental is NewIncrementalFrom with another read size, for tests.
func newIncremental(src io.ReaderAt, size int64, holes []Range, p Params, prev Prev, changed []Range, bsize int64) (*Incremental, error) {
	stride, err := p.ZeroStride()
	if err != nil {
		return nil, err
	}
	if size < 0 {
		return nil, fmt.Errorf("chunk: negative volume size %d", size)
	}
	oldSize, last, err := checkPrev(prev, p, stride)
	if err != nil {
		return nil, fmt.Errorf("chunk: previous chunk list: %w", err)
	}
	changed, err = normalizeChanged(changed, size)
	if err != nil {
		return nil, fmt.Errorf("chunk: changed ranges: %w", err)
	}
	holes, err = normalizeHoles(holes, size)
	if err != nil {
		return nil, fmt.Errorf("chunk: %w", err)
	}
	zeros, err := knownZeros(holes, prev, changed, size)
	if err != nil {
		return nil, fmt.Errorf("chunk: previous chunk list: %w", err)
	}
	s, err := newSplitter(src, size, zeros, p, bsize)
	if err != nil {
		return nil, err
	}
	s.perChunk = true
	s.restart = true
	return &Incremental{
		s:       s,
		prev:    prev,
		cur:     newPrevCursor(prev),
		last:    last,
		changed: changed,
		oldSize: oldSize,
		size:    size,
		stride:  stride,
		minSize: p.MinSize,
		maxSize: p.MaxSize,
	}, nil
}

// Next returns the next chunk, or io.EOF after the last one. reused is the
// index in prev of the chunk when it is exactly prev[reused] and unchanged:
// then nothing was read and Data is nil. Otherwise reused is -1 and Data is
// set unless the chunk is Zero (a Zero chunk made of unchanged old zeros is
// not read either). buf is as for Splitter.Next. After an error other than a
// too small buf, Next keeps returning it.
func (x *Incremental) Next(buf []byte) (c Chunk, reused int, err error) {
	if x.err != nil {
		return Chunk{}, -1, x.err
	}
	if x.pos >= x.size {
		x.s.release()
		x.Close()
		return Chunk{}, -1, io.EOF
	}
	if uint(cap(buf)) < x.maxSize {
		return Chunk{}, -1, fmt.Errorf("chunk: buffer capacity %d below the max chunk size %d", cap(buf), x.maxSize)
	}
	c, i, ok := x.reuse()
	if ok {
		x.pos = c.Off + c.Len
		return c, i, nil
	}
	x.s.seek(x.pos)
	x.s.firstCut = x.firstCut(x.pos)
	if err := x.cur.failed(); err != nil {
		x.err = err
		return Chunk{}, -1, err
	}
	c, err = x.s.Next(buf)
	if err != nil {
		x.err = err
		return Chunk{}, -1, err
	}
	x.pos = c.Off + c.Len
	return c, -1, nil
}

// BytesRead returns how many bytes were read from the source so far.
func (x *Incremental) BytesRead() int64 { return x.s.BytesRead() }

// Close stops reading the previous chunk list, when Next has not reached
// the end (which closes it).
func (x *Incremental) Close() { x.cur.close() }

// ReadData reads the bytes of chunk c, one that Next returned with data,
// into buf and returns them, as Parallel.ReadData does: for callers that
// read a chunk's data where they need it rather than where it was cut.
// Known zeros (holes, unchanged bytes of old Zero chunks) are not read. It
// is safe for concurrent use, also with Next.
func (x *Incremental) ReadData(buf []byte, c Chunk) ([]byte, error) {
	return readData(x.s.v.src, x.size, x.s.v.holes, buf, c)
}

// reuse returns the chunk at pos when it can be taken from prev unread.
//
// An unchanged stretch of an old Zero chunk is taken only when the chunk
// after it is taken too (or the volume ends): otherwise the Splitter starts
// at the stretch, which costs no read, so that the zeros it may find after
// the stretch merge with it into one Zero chunk, as a single pass would.
func (x *Incremental) reuse() (Chunk, int, bool) {
	c, ok := x.cur.at(x.i)
	for ok && c.Off+c.Len <= x.pos {
		x.i++
		c, ok = x.cur.at(x.i)
	}
	x.cur.forget(x.i)
	if !ok {
		return Chunk{}, -1, false
	}
	end := c.Off + c.Len
	if !c.Zero {
		if c.Off != x.pos || !x.clean(c.Off, end) {
			return Chunk{}, -1, false
		}
		return Chunk{Off: c.Off, Len: c.Len}, x.i, true
	}
	if (x.pos-c.Off)%x.stride != 0 || !x.clean(x.pos, end) {
		return Chunk{}, -1, false
	}
	if end < x.size {
		// Zero chunks are never adjacent: the next one holds data.
		next, ok := x.cur.at(x.i + 1)
		if !ok || !x.clean(next.Off, next.Off+next.Len) {
			return Chunk{}, -1, false
		}
	}
	i := -1
	if x.pos == c.Off {
		i = x.i
	}
	return Chunk{Off: x.pos, Len: end - x.pos, Zero: true}, i, true
}

// firstCut returns the first position where a chunk starting at the cut pos
// may end, as far as the old chunking tells, without reading: pos+MinSize,
// or further when that lies inside an old chunk (not Zero) past its own
// MinSize. The chunker found no cut there in the old bytes, and its cut
// condition at a position depends only on the 64-byte window before it;
// so up to the old chunk's end, or to the first changed byte that enters
// the window, there is no cut in the new bytes either. Skipping those
// positions, the chunker hashes from the change on rather than from
// MinSize: most run chunks hold a change late in them, or end at the old
// cut where the chunkings meet again.
func (x *Incremental) firstCut(pos int64) int64 {
	p0 := pos + int64(x.minSize)
	// The old chunk holding p0: at or after x.i, the first ending after
	// pos (reuse has just moved it there).
	k := x.i
	c, ok := x.cur.at(k)
	for ok && c.Off+c.Len <= p0 {
		k++
		c, ok = x.cur.at(k)
	}
	if !ok || c.Zero || p0 < c.Off+int64(x.minSize) {
		return p0
	}
	end := c.Off + c.Len
	j := sort.Search(len(x.changed), func(j int) bool { return x.changed[j].End() > p0-windowSize })
	if j < len(x.changed) {
		// The first position whose window holds a changed byte.
		end = min(end, x.changed[j].Off+1)
	}
	return max(p0, end)
}

// clean reports whether the old canonical chunks tiling [a,b), which start
// at a cut of both chunkings, are also chunks of the new volume: none of
// their bytes changed, and the last one ends where it did for a reason that
// still holds. An old chunk ending at the old volume's end was cut by the
// end, which moved if the size changed.
func (x *Incremental) clean(a, b int64) bool {
	if b > x.size || (b == x.oldSize && b != x.size) {
		return false
	}
	j := sort.Search(len(x.changed), func(j int) bool { return x.changed[j].End() > a })
	return j == len(x.changed) || x.changed[j].Off >= b
}

// checkPrev checks that prev has the shape of a canonical chunk list and
// returns the size of its volume and its last chunk. It cannot check the
// cuts themselves without the old bytes.
func checkPrev(prev Prev, p Params, stride int64) (int64, Chunk, error) {
	var (
		off  int64
		i    int // chunks checked
		last Chunk
		bad  string
	)
	// check checks c, the chunk after last; final says it is the list's
	// last.
	check := func(c Chunk, final bool) bool {
		switch {
		case c.Off != off:
			bad = fmt.Sprintf("starts at %d, after the chunks before it end at %d", c.Off, off)
		case c.Len <= 0 || c.Len > math.MaxInt64-off:
			bad = "has a bad length"
		case c.Zero && i > 0 && last.Zero:
			bad = "is a Zero chunk after a Zero chunk"
		case c.Zero && c.Len%stride != 0 && !final:
			bad = fmt.Sprintf("is a Zero chunk, not a multiple of the zero stride %d, before the end", stride)
		case !c.Zero && c.Len > int64(p.MaxSize):
			bad = fmt.Sprintf("is longer than the max size %d", p.MaxSize)
		case !c.Zero && c.Len < int64(p.MinSize) && !final:
			bad = fmt.Sprintf("is shorter than the min size %d before the end", p.MinSize)
		}
		if bad != "" {
			bad = fmt.Sprintf("chunk %d [%d,+%d) %s", i, c.Off, c.Len, bad)
			return false
		}
		off += c.Len
		i++
		last = c
		return true
	}
	// A chunk is checked once the next one shows it is not the last.
	var pending Chunk
	seen := false
	err := prev(func(c Chunk) bool {
		if seen && !check(pending, false) {
			return false
		}
		pending, seen = c, true
		return true
	})
	if err != nil {
		return 0, Chunk{}, err
	}
	if bad == "" && seen {
		check(pending, true)
	}
	if bad != "" {
		return 0, Chunk{}, errors.New(bad)
	}
	return off, last, nil
}

// normalizeChanged returns rs clipped to [0,size), sorted, with overlapping
// and adjacent ranges merged.
func normalizeChanged(rs []Range, size int64) ([]Range, error) {
	out := make([]Range, 0, len(rs))
	for i, r := range rs {
		if r.Off < 0 || r.Len < 0 || r.Len > math.MaxInt64-r.Off {
			return nil, fmt.Errorf("range %d [%d,+%d) is invalid", i, r.Off, r.Len)
		}
		if r.Off < size && r.Len > 0 {
			out = append(out, Range{Off: r.Off, Len: min(r.End(), size) - r.Off})
		}
	}
	slices.SortFunc(out, func(a, b Range) int { return cmp.Compare(a.Off, b.Off) })
	return mergeSorted(out), nil
}

// mergeSorted merges overlapping and adjacent ranges of rs, which is sorted
// by offset, in place.
func mergeSorted(rs []Range) []Range {
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && r.Off <= out[n-1].End() {
			out[n-1].Len = max(out[n-1].End(), r.End()) - out[n-1].Off
			continue
		}
		out = append(out, r)
	}
	return out
}

// knownZeros returns the ranges of the new volume known to read as zeros:
// its holes, and the unchanged bytes of the old Zero chunks.
func knownZeros(holes []Range, prev Prev, changed []Range, size int64) ([]Range, error) {
	out := slices.Clone(holes)
	j := 0
	err := prev(func(c Chunk) bool {
		if !c.Zero {
			return true
		}
		for a, b := c.Off, min(c.Off+c.Len, size); a < b; {
			for j < len(changed) && changed[j].End() <= a {
				j++
			}
			if j == len(changed) || changed[j].Off >= b {
				out = append(out, Range{Off: a, Len: b - a})
				break
			}
			if changed[j].Off > a {
				out = append(out, Range{Off: a, Len: changed[j].Off - a})
			}
			a = changed[j].End()
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Range) int { return cmp.Compare(a.Off, b.Off) })
	return mergeSorted(out), nil
}

// Expected returns the ranges Next can be expected to read, sorted and
// disjoint, for a caller that wants them read ahead: every old chunk
// holding a changed byte (for an old Zero chunk, the stride-long pieces
// holding one), the last old chunk when the size changed, and everything
// past the old volume's end, less the bytes known to be zeros, with their
// ends rounded to Next's read size. Next may read less, or more where the
// chunkings take longer to meet again than the changed chunks (on the
// perf/compare images, 168 of the 222 MiB it reads are expected). It
// reads the previous chunk list once; should that fail, it returns nil
// (Next meets the same error).
func (x *Incremental) Expected() []Range {
	var out []Range
	cur := newPrevCursor(x.prev)
	defer cur.close()
	i := 0
	for _, r := range x.changed {
		a, b := r.Off, r.End()
		c, ok := cur.at(i)
		for ok && c.Off+c.Len <= a {
			i++
			c, ok = cur.at(i)
		}
		cur.forget(i)
		if ok {
			if c.Zero {
				a = c.Off + (a-c.Off)/x.stride*x.stride
			} else {
				a = c.Off
			}
		}
		j := i
		c, ok = cur.at(j)
		for ok && c.Off+c.Len < b {
			j++
			c, ok = cur.at(j)
		}
		if ok {
			if c.Zero {
				b = min(c.Off+c.Len, c.Off+(b-c.Off+x.stride-1)/x.stride*x.stride)
			} else {
				b = c.Off + c.Len
			}
		}
		out = append(out, Range{Off: a, Len: b - a})
	}
	if cur.failed() != nil {
		return nil
	}
	if x.oldSize != x.size && x.oldSize > 0 {
		// The last old chunk was cut by the old end, which moved.
		last := x.last
		if last.Off < x.size {
			out = append(out, Range{Off: last.Off, Len: min(x.size, last.Off+last.Len) - last.Off})
		}
	}
	if x.oldSize < x.size {
		out = append(out, Range{Off: x.oldSize, Len: x.size - x.oldSize})
	}
	for k := range out {
		end := roundUp(out[k].End(), x.s.v.bsize)
		out[k].Off -= out[k].Off % x.s.v.bsize
		out[k].Len = min(x.size, end) - out[k].Off
	}
	slices.SortFunc(out, func(a, b Range) int { return cmp.Compare(a.Off, b.Off) })
	return subtract(mergeSorted(out), x.s.v.holes)
}

func roundUp(n, m int64) int64 { return (n + m - 1) / m * m }

// subtract returns rs less zs, both sorted and disjoint.
func subtract(rs, zs []Range) []Range {
	var out []Range
	j := 0
	for _, r := range rs {
		a, b := r.Off, r.End()
		for j < len(zs) && zs[j].End() <= a {
			j++
		}
		for k := j; k < len(zs) && zs[k].Off < b && a < b; k++ {
			if zs[k].Off > a {
				out = append(out, Range{Off: a, Len: zs[k].Off - a})
			}
			a = max(a, zs[k].End())
		}
		if a < b {
			out = append(out, Range{Off: a, Len: b - a})
		}
	}
	return out
}
