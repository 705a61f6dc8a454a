package chunk

import (
	"fmt"
	"io"

	"github.com/restic/chunker"
)

// Chunk is one chunk of the canonical chunking of a volume.
type Chunk struct {
	Off int64
	Len int64
	// Zero means every byte in [Off, Off+Len) is zero; Data is nil. A Zero
	// chunk may merge several canonical chunks: see the package doc.
	Zero bool
	// Data holds the chunk's bytes (len(Data) == Len) unless Zero. It is
	// backed by the buffer passed to Next and valid until the next call.
	Data []byte
}

// Splitter produces the canonical chunks of a volume in order.
//
// It drives the real restic chunker over the volume byte stream and steps in
// at cuts only: where a run of zeros at least the zero stride long starts at
// a cut, it reports the run's canonical chunks as one Zero chunk without
// scanning it and restarts the chunker after it. The chunker's reset at
// every cut makes that restart exact.
type Splitter struct {
	p      Params
	stride int64
	v      volume
	rd     stream
	ch     *chunker.Chunker
	base   int64 // volume offset where ch started
	pos    int64 // offset of the next chunk, always a canonical cut
	// restart means ch must start afresh at pos.
	restart bool
	// perChunk restarts ch at every cut on a stream that ends MaxSize
	// later, which the chunker never looks past: the cuts stay the same,
	// but the chunker's read-ahead past a cut shrinks from up to 512 KiB
	// to at most MaxSize-MinSize. Incremental, which stops at a cut it
	// cannot predict, relies on that.
	perChunk bool
	// firstCut, when past pos+MinSize, is where the next chunk may first be
	// cut: the caller knows the chunker's cut condition to be false at
	// every position before it (see Incremental.firstCut). Used once, and
	// only with perChunk, which restarts the chunker with MinSize after.
	firstCut int64
	err      error
}

// NewSplitter chunks the volume src[0:size). holes are sorted, disjoint
// ranges known to read as zeros (may be nil); their bytes are never read
// from src, whatever it holds there.
func NewSplitter(src io.ReaderAt, size int64, holes []Range, p Params) (*Splitter, error) {
	return newSplitter(src, size, holes, p, blockSize)
}

// newSplitter is NewSplitter with another read size, for tests that cross
// many block boundaries with small volumes.
func newSplitter(src io.ReaderAt, size int64, holes []Range, p Params, bsize int64) (*Splitter, error) {
	stride, err := p.ZeroStride()
	if err != nil {
		return nil, err
	}
	if size < 0 {
		return nil, fmt.Errorf("chunk: negative volume size %d", size)
	}
	holes, err = normalizeHoles(holes, size)
	if err != nil {
		return nil, fmt.Errorf("chunk: %w", err)
	}
	return splitterOver(src, size, holes, p, stride, bsize), nil
}

// splitterOver is newSplitter for holes that normalizeHoles returned (for
// this size or a larger one: a hole may start before the offsets the
// Splitter will chunk, but none may reach past size).
func splitterOver(src io.ReaderAt, size int64, holes []Range, p Params, stride, bsize int64) *Splitter {
	s := &Splitter{p: p, stride: stride, v: newVolume(src, size, holes, bsize)}
	s.rd = stream{v: &s.v, end: size}
	s.ch = p.newChunker(&s.rd)
	return s
}

// Next returns the next chunk, or io.EOF after the last one. buf must have a
// capacity of at least MaxSize; Data of the returned chunk is backed by it.
// After an error other than a too small buf, Next keeps returning it.
func (s *Splitter) Next(buf []byte) (Chunk, error) {
	if s.err != nil {
		return Chunk{}, s.err
	}
	if s.pos >= s.v.size {
		s.release()
		return Chunk{}, io.EOF
	}
	if uint(cap(buf)) < s.p.MaxSize {
		return Chunk{}, fmt.Errorf("chunk: buffer capacity %d below the max chunk size %d", cap(buf), s.p.MaxSize)
	}
	if end := s.v.zeroEnd(s.pos); end == s.v.size || end-s.pos >= s.stride {
		return s.zeroRun(s.pos, end)
	}
	if s.restart {
		s.rd.pos = s.pos
		s.rd.end = s.v.size
		if s.perChunk {
			s.rd.end = min(s.pos+int64(s.p.MaxSize), s.v.size)
		}
		s.base = s.pos
		// The chunker looks for a cut from MinSize on, so a larger first
		// MinSize skips positions known not to be cuts without hashing
		// them. Its state at a position depends only on the window
		// before it, so the cuts are the same.
		minSize := s.p.MinSize
		if s.perChunk {
			minSize = uint(min(max(s.firstCut-s.pos, int64(minSize)), int64(s.p.MaxSize)))
		}
		s.p.resetMin(s.ch, &s.rd, minSize)
		s.restart = false
	}
	s.firstCut = 0
	c, err := s.ch.Next(buf)
	if err != nil {
		return Chunk{}, s.fail(err)
	}
	off, n := s.base+int64(c.Start), int64(c.Length)
	if IsZero(c.Data) {
		// Either a stride-long chunk at the start of a zero run, or the
		// volume's last chunk.
		return s.zeroRun(off, off+n)
	}
	s.pos = off + n
	s.restart = s.perChunk
	return Chunk{Off: off, Len: n, Data: c.Data}, nil
}

// seek makes the next chunk start at pos, which must be a canonical cut.
// It is valid until Next has returned io.EOF.
func (s *Splitter) seek(pos int64) {
	if pos != s.pos {
		s.pos = pos
		s.restart = true
	}
}

// zeroRun returns the merged Zero chunk for the zero run that starts at the
// cut off, whose bytes up to known are zero, and where known-off is at least
// the stride unless known is the end of the volume.
func (s *Splitter) zeroRun(off, known int64) (Chunk, error) {
	e, err := s.v.zeroRunEnd(known)
	if err != nil {
		return Chunk{}, s.fail(err)
	}
	end := e
	if e < s.v.size {
		end = off + (e-off)/s.stride*s.stride
	}
	s.v.zero = Range{Off: off, Len: e - off}
	s.pos = end
	s.restart = true
	return Chunk{Off: off, Len: end - off, Zero: true}, nil
}

// fail makes err sticky: the chunker's state is undefined after it.
func (s *Splitter) fail(err error) error {
	s.err = err
	s.release()
	return err
}

// release returns the chunker and read buffers for reuse once the Splitter
// is done with them.
func (s *Splitter) release() {
	if s.ch != nil {
		s.p.recycle(s.ch)
		s.ch = nil
		s.v.release()
	}
}

// BytesRead returns how many bytes were read from the source so far. Holes
// cost nothing, and no byte is read twice.
func (s *Splitter) BytesRead() int64 { return s.v.read }
