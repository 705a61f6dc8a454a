package chunk

import (
	"fmt"
	"io"
	"math/bits"
	"strconv"
	"strings"
	"sync"

	"github.com/restic/chunker"
)

// windowSize is restic/chunker's Rabin window. A MinSize below it would make
// the chunker's skip count underflow.
const windowSize = 64

// MaxChunkSize bounds Params.MaxSize, and with it the buffer every caller of
// Splitter.Next must provide.
const MaxChunkSize = 64 << 20

// Params are the canonical chunking parameters of a repository. Changing any
// of them changes every cut, so they are fixed when a repository is created.
type Params struct {
	Pol         chunker.Pol
	MinSize     uint
	MaxSize     uint
	AverageBits int // chunker.SetAverageBits; average chunk size 2^AverageBits
}

// DefaultParams returns the default chunk sizes (min 256 KiB, average 1 MiB,
// max 4 MiB) with the repository's polynomial.
func DefaultParams(pol chunker.Pol) Params {
	return Params{Pol: pol, MinSize: 256 << 10, MaxSize: 4 << 20, AverageBits: 20}
}

// ParseAverage parses an average chunk size for ParamsForAverage: a power
// of two from 4K to 8M ("128K", "1M", or bytes). It returns its log2.
func ParseAverage(s string) (int, error) {
	n, unit := s, int64(1)
	switch {
	case strings.HasSuffix(strings.ToUpper(s), "K"):
		n, unit = s[:len(s)-1], 1<<10
	case strings.HasSuffix(strings.ToUpper(s), "M"):
		n, unit = s[:len(s)-1], 1<<20
	}
	v, err := strconv.ParseInt(n, 10, 64)
	if err != nil || v <= 0 || v > 1<<30 {
		return 0, fmt.Errorf("%q is not a size such as 128K or 1M", s)
	}
	v *= unit
	if v&(v-1) != 0 || v < 4<<10 || v > 8<<20 {
		return 0, fmt.Errorf("%s: want a power of two from 4K to 8M", s)
	}
	return bits.TrailingZeros64(uint64(v)), nil
}

// ParamsForAverage returns chunk sizes around an average of 2^bits bytes
// beyond the minimum: min half of it, max eight times it. bits must be 12
// to 23 (4 KiB to 8 MiB).
func ParamsForAverage(pol chunker.Pol, bits int) (Params, error) {
	if bits < 12 || bits > 23 {
		return Params{}, fmt.Errorf("chunk size 2^%d bytes: want 4 KiB to 8 MiB", bits)
	}
	avg := uint(1) << bits
	return Params{Pol: pol, MinSize: avg / 2, MaxSize: avg * 8, AverageBits: bits}, nil
}

// Validate reports whether restic/chunker can run with p and produce
// well-distributed cuts.
func (p Params) Validate() error {
	if d := p.Pol.Deg(); d < 9 || d > 53 {
		return fmt.Errorf("chunk params: polynomial %v has degree %d, want 9..53", p.Pol, d)
	}
	if !p.Pol.Irreducible() {
		return fmt.Errorf("chunk params: polynomial %v is not irreducible", p.Pol)
	}
	if p.MinSize < windowSize {
		return fmt.Errorf("chunk params: min size %d below the %d-byte window", p.MinSize, windowSize)
	}
	if p.MaxSize < p.MinSize || p.MaxSize > MaxChunkSize {
		return fmt.Errorf("chunk params: max size %d not within min size %d..%d", p.MaxSize, p.MinSize, MaxChunkSize)
	}
	if p.AverageBits < 1 || p.AverageBits > 53 {
		return fmt.Errorf("chunk params: average bits %d not within 1..53", p.AverageBits)
	}
	return nil
}

// chunkers recycles restic chunkers and their 512 KiB buffers, so that
// short-lived Splitters (one per changed range, or per parallel segment)
// cost no allocation.
var chunkers sync.Pool

// newChunker returns a restic chunker configured with p reading from rd.
func (p Params) newChunker(rd io.Reader) *chunker.Chunker {
	c, ok := chunkers.Get().(*chunker.Chunker)
	if !ok {
		c = chunker.New(nil, p.Pol)
	}
	p.reset(c, rd)
	return c
}

// reset restarts c on rd with p, reusing its buffer.
func (p Params) reset(c *chunker.Chunker, rd io.Reader) { p.resetMin(c, rd, p.MinSize) }

// resetMin is reset with another minimum size, from MinSize to MaxSize.
// restic/chunker hashes nothing before the minimum size less its window
// and keeps it for every chunk after the first until reset again.
func (p Params) resetMin(c *chunker.Chunker, rd io.Reader, minSize uint) {
	c.ResetWithBoundaries(rd, p.Pol, minSize, p.MaxSize)
	c.SetAverageBits(p.AverageBits)
}

// recycle puts c back into the pool, without the reader it would pin.
func (p Params) recycle(c *chunker.Chunker) {
	p.reset(c, nil)
	chunkers.Put(c)
}

var strides sync.Map // Params -> int64

// ZeroStride returns S, the length of every chunk that starts inside a run of
// at least S zero bytes. Cuts inside a merged Zero chunk lie at multiples of
// S from its start.
//
// S is measured once per Params by chunking zeros with a freshly reset
// restic chunker, rather than derived, so that it follows the chunker it
// describes.
func (p Params) ZeroStride() (int64, error) {
	if s, ok := strides.Load(p); ok {
		return s.(int64), nil
	}
	// Only valid Params are memoized, which spares the costly
	// irreducibility test on every NewSplitter.
	if err := p.Validate(); err != nil {
		return 0, err
	}
	c := p.newChunker(io.LimitReader(zeroReader{}, int64(p.MaxSize)))
	ch, err := c.Next(nil)
	p.recycle(c)
	if err != nil {
		return 0, fmt.Errorf("chunk params: measure zero stride: %w", err)
	}
	s := int64(ch.Length)
	strides.Store(p, s)
	return s, nil
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
