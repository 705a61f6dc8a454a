package chunk

import (
	"cmp"
	"fmt"
	"io"
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
type Incremental struct {
	s       *Splitter
	prev    []Chunk
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

// NewIncremental chunks the volume src[0:size), a later version of the
// volume whose canonical chunks, in order and covering it from offset 0,
// were prev; only Off, Len and Zero of prev are used. changed lists the
// ranges that may differ from the old volume, in any order, overlapping or
// not (see the contract on Incremental). holes are as for NewSplitter, for
// the new volume.
func NewIncremental(src io.ReaderAt, size int64, holes []Range, p Params, prev []Chunk, changed []Range) (*Incremental, error) {
	return newIncremental(src, size, holes, p, prev, changed, incrementalBlockSize)
}

// newIncremental is NewIncremental with another read size, for tests.
func newIncremental(src io.ReaderAt, size int64, holes []Range, p Params, prev []Chunk, changed []Range, bsize int64) (*Incremental, error) {
	stride, err := p.ZeroStride()
	if err != nil {
		return nil, err
	}
	if size < 0 {
		return nil, fmt.Errorf("chunk: negative volume size %d", size)
	}
	oldSize, err := checkPrev(prev, p, stride)
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
	s, err := newSplitter(src, size, knownZeros(holes, prev, changed, size), p, bsize)
	if err != nil {
		return nil, err
	}
	s.perChunk = true
	s.restart = true
	return &Incremental{
		s:       s,
		prev:    prev,
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
		return Chunk{}, -1, io.EOF
	}
	if uint(cap(buf)) < x.maxSize {
		return Chunk{}, -1, fmt.Errorf("chunk: buffer capacity %d below the max chunk size %d", cap(buf), x.maxSize)
	}
	if c, i, ok := x.reuse(); ok {
		x.pos = c.Off + c.Len
		return c, i, nil
	}
	x.s.seek(x.pos)
	x.s.firstCut = x.firstCut(x.pos)
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
	for x.i < len(x.prev) && x.prev[x.i].Off+x.prev[x.i].Len <= x.pos {
		x.i++
	}
	if x.i == len(x.prev) {
		return Chunk{}, -1, false
	}
	c := x.prev[x.i]
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
		next := x.prev[x.i+1]
		if !x.clean(next.Off, next.Off+next.Len) {
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
	k := sort.Search(len(x.prev), func(k int) bool { return x.prev[k].Off+x.prev[k].Len > p0 })
	if k == len(x.prev) || x.prev[k].Zero || p0 < x.prev[k].Off+int64(x.minSize) {
		return p0
	}
	end := x.prev[k].Off + x.prev[k].Len
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
// returns the size of its volume. It cannot check the cuts themselves
// without the old bytes.
func checkPrev(prev []Chunk, p Params, stride int64) (int64, error) {
	var off int64
	for i, c := range prev {
		last := i == len(prev)-1
		var bad string
		switch {
		case c.Off != off:
			bad = fmt.Sprintf("starts at %d, after the chunks before it end at %d", c.Off, off)
		case c.Len <= 0 || c.Len > math.MaxInt64-off:
			bad = "has a bad length"
		case c.Zero && i > 0 && prev[i-1].Zero:
			bad = "is a Zero chunk after a Zero chunk"
		case c.Zero && c.Len%stride != 0 && !last:
			bad = fmt.Sprintf("is a Zero chunk, not a multiple of the zero stride %d, before the end", stride)
		case !c.Zero && c.Len > int64(p.MaxSize):
			bad = fmt.Sprintf("is longer than the max size %d", p.MaxSize)
		case !c.Zero && c.Len < int64(p.MinSize) && !last:
			bad = fmt.Sprintf("is shorter than the min size %d before the end", p.MinSize)
		}
		if bad != "" {
			return 0, fmt.Errorf("chunk %d [%d,+%d) %s", i, c.Off, c.Len, bad)
		}
		off += c.Len
	}
	return off, nil
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
func knownZeros(holes []Range, prev []Chunk, changed []Range, size int64) []Range {
	out := slices.Clone(holes)
	j := 0
	for _, c := range prev {
		if !c.Zero {
			continue
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
	}
	slices.SortFunc(out, func(a, b Range) int { return cmp.Compare(a.Off, b.Off) })
	return mergeSorted(out)
}

// Expected returns the ranges Next can be expected to read, sorted and
// disjoint, for a caller that wants them read ahead: every old chunk
// holding a changed byte (for an old Zero chunk, the stride-long pieces
// holding one), the last old chunk when the size changed, and everything
// past the old volume's end, less the bytes known to be zeros, with their
// ends rounded to Next's read size. Next may read less, or more where the
// chunkings take longer to meet again than the changed chunks (on the
// perf/compare images, 168 of the 222 MiB it reads are expected).
func (x *Incremental) Expected() []Range {
	var out []Range
	i := 0
	for _, r := range x.changed {
		a, b := r.Off, r.End()
		for i < len(x.prev) && x.prev[i].Off+x.prev[i].Len <= a {
			i++
		}
		if i < len(x.prev) {
			c := x.prev[i]
			if c.Zero {
				a = c.Off + (a-c.Off)/x.stride*x.stride
			} else {
				a = c.Off
			}
		}
		j := i
		for j < len(x.prev) && x.prev[j].Off+x.prev[j].Len < b {
			j++
		}
		if j < len(x.prev) {
			c := x.prev[j]
			if c.Zero {
				b = min(c.Off+c.Len, c.Off+(b-c.Off+x.stride-1)/x.stride*x.stride)
			} else {
				b = c.Off + c.Len
			}
		}
		out = append(out, Range{Off: a, Len: b - a})
	}
	if x.oldSize != x.size && len(x.prev) > 0 {
		// The last old chunk was cut by the old end, which moved.
		last := x.prev[len(x.prev)-1]
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
