package chunk

import (
	"fmt"
	"io"
	"sort"
	"sync"
)

const (
	// blockSize is the size and alignment of reads from the source.
	blockSize = 1 << 20
	// chunkerReadAhead is how many bytes restic/chunker pulls from its
	// reader at a time (its unexported chunkerBufSize).
	chunkerReadAhead = 512 << 10
)

// Range is the byte range [Off, Off+Len) of a volume.
type Range struct{ Off, Len int64 }

// End returns Off+Len.
func (r Range) End() int64 { return r.Off + r.Len }

// volume serves the canonical bytes of a volume: declared holes and zero
// runs found earlier read as zeros without touching src, the rest is read in
// aligned blocks through a direct-mapped cache.
//
// The cache holds the newest ceil(chunkerReadAhead/bsize)+1 consecutive
// blocks. That is enough for each allocated byte to be read exactly once:
// the chunker restarts only after a zero run, whose zeros are known and
// served without the cache, and the data after the run lies either in the
// block where scanning the run stopped or in the chunker's last read-ahead,
// which is shorter than chunkerReadAhead.
type volume struct {
	src   io.ReaderAt
	size  int64
	holes []Range // sorted, disjoint, never adjacent, within [0,size)
	zero  Range   // the last zero run found by reading
	bsize int64
	cache []block
	read  int64 // bytes returned by src, from blocks counted
	// seen, when set, is shared by the volumes of one Parallel: read
	// counts only the blocks no other of them has read.
	seen *blockSet
}

type block struct {
	off  int64 // volume offset of data[0]; -1 while empty
	data []byte
}

func newVolume(src io.ReaderAt, size int64, holes []Range, bsize int64) volume {
	cache := make([]block, (chunkerReadAhead+bsize-1)/bsize+1)
	for i := range cache {
		cache[i].off = -1
	}
	return volume{src: src, size: size, holes: holes, bsize: bsize, cache: cache}
}

// normalizeHoles checks that holes are sorted, disjoint and within [0,size),
// and returns a copy with empty holes dropped and adjacent ones merged.
func normalizeHoles(holes []Range, size int64) ([]Range, error) {
	var out []Range
	var prevEnd int64
	for i, h := range holes {
		if h.Off < 0 || h.Len < 0 || h.Off > size || h.Len > size-h.Off {
			return nil, fmt.Errorf("hole %d [%d,+%d) outside the volume of %d bytes", i, h.Off, h.Len, size)
		}
		if h.Off < prevEnd {
			return nil, fmt.Errorf("hole %d at offset %d overlaps or precedes the hole before it", i, h.Off)
		}
		if h.Len == 0 {
			continue
		}
		prevEnd = h.End()
		if n := len(out); n > 0 && out[n-1].End() == h.Off {
			out[n-1].Len += h.Len
			continue
		}
		out = append(out, h)
	}
	return out, nil
}

// holeAfter returns the index of the first hole that ends after off.
func (v *volume) holeAfter(off int64) int {
	return sort.Search(len(v.holes), func(i int) bool { return v.holes[i].End() > off })
}

// zeroEnd returns the end of the known zeros starting at off: off itself
// when the byte at off is not known to be zero.
func (v *volume) zeroEnd(off int64) int64 {
	for {
		end := off
		if i := v.holeAfter(off); i < len(v.holes) && v.holes[i].Off <= off {
			end = v.holes[i].End()
		}
		if v.zero.Off <= end && end < v.zero.End() {
			end = v.zero.End()
		}
		if end == off {
			return off
		}
		off = end
	}
}

// zeroRunEnd returns the offset of the first non-zero byte at or after off,
// or size when there is none.
func (v *volume) zeroRunEnd(off int64) (int64, error) {
	for off < v.size {
		if end := v.zeroEnd(off); end > off {
			off = end
			continue
		}
		b, err := v.bytesAt(off)
		if err != nil {
			return 0, err
		}
		i := firstNonZero(b)
		if i < len(b) {
			return off + int64(i), nil
		}
		off += int64(len(b))
	}
	return v.size, nil
}

// bytesAt returns the bytes from off, which must be below size, to the end
// of its block.
func (v *volume) bytesAt(off int64) ([]byte, error) {
	idx := off / v.bsize
	b := &v.cache[idx%int64(len(v.cache))]
	start := idx * v.bsize
	if b.off != start {
		if err := v.fill(b, start); err != nil {
			return nil, err
		}
	}
	return b.data[off-start:], nil
}

// fill loads the block at start into b, reading what is not a hole.
func (v *volume) fill(b *block, start int64) error {
	end := min(start+v.bsize, v.size)
	b.off = -1
	if b.data == nil {
		b.data = getBlock(min(v.bsize, v.size))
	}
	b.data = b.data[:end-start]
	count := v.seen == nil || v.seen.add(start/v.bsize)
	off := start
	for i := v.holeAfter(start); off < end; i++ {
		dataEnd := end
		if i < len(v.holes) && v.holes[i].Off < end {
			dataEnd = max(v.holes[i].Off, off)
		}
		if dataEnd > off {
			if err := v.readAt(b.data[off-start:dataEnd-start], off, count); err != nil {
				return err
			}
		}
		if dataEnd == end {
			break
		}
		off = min(v.holes[i].End(), end)
		clear(b.data[dataEnd-start : off-start])
	}
	b.off = start
	return nil
}

// blocks recycles block buffers of short-lived Splitters.
var blocks sync.Pool // *[]byte

func getBlock(n int64) []byte {
	if p, ok := blocks.Get().(*[]byte); ok && int64(cap(*p)) >= n {
		return (*p)[:n]
	}
	return make([]byte, n)
}

// release gives the cache's buffers back for reuse; v must not read again.
func (v *volume) release() {
	for i := range v.cache {
		if b := v.cache[i].data; b != nil {
			blocks.Put(&b)
		}
		v.cache[i] = block{off: -1}
	}
}

func (v *volume) readAt(p []byte, off int64, count bool) error {
	n, err := v.src.ReadAt(p, off)
	if count {
		v.read += int64(n)
	}
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read volume at offset %d: %w", off, err)
}

// stream is the volume byte stream from pos to end (at most the volume's
// size), as the restic chunker reads it.
type stream struct {
	v        *volume
	pos, end int64
}

func (r *stream) Read(p []byte) (int, error) {
	v := r.v
	if r.pos >= r.end {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.end-r.pos)]
	n := 0
	for n < len(p) {
		var k int
		if end := v.zeroEnd(r.pos); end > r.pos {
			k = int(min(end-r.pos, int64(len(p)-n)))
			clear(p[n : n+k])
		} else {
			b, err := v.bytesAt(r.pos)
			if err != nil {
				return n, err
			}
			k = copy(p[n:], b)
		}
		n += k
		r.pos += int64(k)
	}
	return n, nil
}
