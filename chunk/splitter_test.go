package chunk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/restic/chunker"
)

const testPol = chunker.Pol(0x3DA3358B4DC173)

// smallParams keep volumes small and chunks many.
var smallParams = Params{Pol: testPol, MinSize: 8 << 10, MaxSize: 64 << 10, AverageBits: 14}

// referenceChunkers spares the fuzzer a 512 KiB allocation per input.
var referenceChunkers sync.Pool

// reference chunks vol with the plain restic chunker and merges consecutive
// all-zero chunks, which is what a Splitter must return.
func reference(t testing.TB, vol []byte, p Params) []Chunk {
	t.Helper()
	c, _ := referenceChunkers.Get().(*chunker.Chunker)
	if c == nil {
		c = chunker.New(nil, p.Pol)
	}
	defer referenceChunkers.Put(c)
	c.ResetWithBoundaries(bytes.NewReader(vol), p.Pol, p.MinSize, p.MaxSize)
	c.SetAverageBits(p.AverageBits)
	var out []Chunk
	for {
		ch, err := c.Next(nil)
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("reference chunker: %v", err)
		}
		zero := !slices.ContainsFunc(ch.Data, func(b byte) bool { return b != 0 })
		n := len(out)
		switch {
		case zero && n > 0 && out[n-1].Zero:
			out[n-1].Len += int64(ch.Length)
		case zero:
			out = append(out, Chunk{Off: int64(ch.Start), Len: int64(ch.Length), Zero: true})
		default:
			out = append(out, Chunk{Off: int64(ch.Start), Len: int64(ch.Length), Data: ch.Data})
		}
	}
}

// split returns all chunks of s, their data copied.
func split(t testing.TB, s *Splitter, p Params) []Chunk {
	t.Helper()
	buf := make([]byte, p.MaxSize)
	var out []Chunk
	for {
		c, err := s.Next(buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Next after %d chunks: %v", len(out), err)
		}
		if !c.Zero {
			c.Data = bytes.Clone(c.Data)
		}
		out = append(out, c)
	}
	if _, err := s.Next(buf); err != io.EOF {
		t.Fatalf("Next after the last chunk: %v, want io.EOF", err)
	}
	return out
}

// checkChunks compares got against want and checks the merged Zero chunks'
// shape: a multiple of the stride unless they end the volume.
func checkChunks(t testing.TB, got, want []Chunk, size, stride int64) {
	t.Helper()
	for i := 0; i < min(len(got), len(want)); i++ {
		g, w := got[i], want[i]
		if g.Off != w.Off || g.Len != w.Len || g.Zero != w.Zero || !bytes.Equal(g.Data, w.Data) {
			t.Fatalf("chunk %d: got [%d,+%d) zero=%v, want [%d,+%d) zero=%v (data equal: %v)",
				i, g.Off, g.Len, g.Zero, w.Off, w.Len, w.Zero, bytes.Equal(g.Data, w.Data))
		}
		if g.Zero && g.Data != nil {
			t.Fatalf("chunk %d: Zero chunk with data", i)
		}
		if !g.Zero && int64(len(g.Data)) != g.Len {
			t.Fatalf("chunk %d: %d bytes of data for length %d", i, len(g.Data), g.Len)
		}
		if g.Zero && g.Len%stride != 0 && g.Off+g.Len != size {
			t.Fatalf("chunk %d: Zero chunk [%d,+%d) is not a multiple of the stride %d", i, g.Off, g.Len, stride)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("got %d chunks, want %d", len(got), len(want))
	}
}

// recorder is a ReaderAt over vol that checks the Splitter's read pattern:
// no read touches a declared hole, crosses a block or repeats a byte.
type recorder struct {
	t     testing.TB
	vol   []byte
	holes []Range
	bsize int64
	reads []Range
}

func (r *recorder) ReadAt(p []byte, off int64) (int, error) {
	rg := Range{Off: off, Len: int64(len(p))}
	if off/r.bsize != (rg.End()-1)/r.bsize {
		r.t.Errorf("read [%d,+%d) crosses a %d-byte block", off, len(p), r.bsize)
	}
	for _, h := range r.holes {
		if h.Off < rg.End() && rg.Off < h.End() {
			r.t.Errorf("read [%d,+%d) touches hole [%d,+%d)", off, len(p), h.Off, h.Len)
		}
	}
	r.reads = append(r.reads, rg)
	if off >= int64(len(r.vol)) {
		return 0, io.EOF
	}
	n := copy(p, r.vol[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (r *recorder) checkDisjoint() {
	slices.SortFunc(r.reads, func(a, b Range) int { return int(a.Off - b.Off) })
	for i := 1; i < len(r.reads); i++ {
		if r.reads[i].Off < r.reads[i-1].End() {
			r.t.Errorf("bytes read twice: [%d,+%d) and [%d,+%d)", r.reads[i-1].Off, r.reads[i-1].Len, r.reads[i].Off, r.reads[i].Len)
		}
	}
}

func holeBytes(holes []Range) int64 {
	var n int64
	for _, h := range holes {
		n += h.Len
	}
	return n
}

// checkVolume chunks vol with and without its holes declared, and with
// several read sizes, and compares each against the reference.
func checkVolume(t testing.TB, vol []byte, holes []Range, p Params, bsizes ...int64) {
	t.Helper()
	stride, err := p.ZeroStride()
	if err != nil {
		t.Fatal(err)
	}
	want := reference(t, vol, p)
	size := int64(len(vol))
	for _, bsize := range bsizes {
		for _, declared := range [][]Range{nil, holes} {
			rec := &recorder{t: t, vol: vol, holes: declared, bsize: bsize}
			s, err := newSplitter(rec, size, declared, p, bsize)
			if err != nil {
				t.Fatal(err)
			}
			checkChunks(t, split(t, s, p), want, size, stride)
			rec.checkDisjoint()
			if got, want := s.BytesRead(), size-holeBytes(declared); got != want {
				t.Errorf("read size %d, %d holes declared: BytesRead %d, want %d", bsize, len(declared), got, want)
			}
		}
	}
}

// volumeBuilder makes volumes of random data and zero runs, some of them
// declared as holes, whole or in parts.
type volumeBuilder struct {
	rng    *rand.Rand
	stride int
	vol    []byte
	holes  []Range
}

func (b *volumeBuilder) data(n int) {
	start := len(b.vol)
	b.vol = append(b.vol, make([]byte, n)...)
	for i := start; i < len(b.vol); i++ {
		b.vol[i] = byte(b.rng.Uint32())
	}
	if n > 0 && b.rng.IntN(4) == 0 {
		// A stray zero or two inside data, next to where runs begin.
		b.vol[start+b.rng.IntN(n)] = 0
	}
}

func (b *volumeBuilder) zeros(n int) {
	off := int64(len(b.vol))
	b.vol = append(b.vol, make([]byte, n)...)
	switch b.rng.IntN(4) {
	case 0: // allocated zeros, found only by reading
	case 1:
		b.hole(off, int64(n))
	default: // declared in adjacent pieces, or only in parts
		for pos := off; pos < off+int64(n); {
			l := min(int64(b.rng.IntN(n)+1), off+int64(n)-pos)
			if b.rng.IntN(3) > 0 {
				b.hole(pos, l)
			}
			pos += l
		}
	}
}

func (b *volumeBuilder) hole(off, n int64) {
	if n > 0 {
		b.holes = append(b.holes, Range{Off: off, Len: n})
	}
}

// zeroLen picks run lengths around the interesting sizes: short, about one
// stride, and many strides.
func (b *volumeBuilder) zeroLen() int {
	s := b.stride
	switch b.rng.IntN(6) {
	case 0:
		return b.rng.IntN(100) + 1
	case 1:
		return s + b.rng.IntN(129) - 64
	case 2:
		return s*(b.rng.IntN(3)+1) + b.rng.IntN(3) - 1
	case 3:
		return s * (b.rng.IntN(40) + 2)
	case 4:
		return b.rng.IntN(8 * s)
	default:
		return s*(b.rng.IntN(20)+1) + b.rng.IntN(s)
	}
}

func (b *volumeBuilder) build(segments int, maxData int) ([]byte, []Range) {
	if b.rng.IntN(3) == 0 {
		b.zeros(b.zeroLen()) // starts with zeros
	}
	for range segments {
		b.data(b.rng.IntN(maxData))
		for range b.rng.IntN(3) + 1 { // adjacent runs, declared differently
			b.zeros(b.zeroLen())
		}
	}
	if b.rng.IntN(2) == 0 {
		b.data(b.rng.IntN(maxData))
	}
	return b.vol, b.holes
}

func TestSplitterMatchesPlainChunker(t *testing.T) {
	stride, err := smallParams.ZeroStride()
	if err != nil {
		t.Fatal(err)
	}
	for seed := range uint64(150) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			b := &volumeBuilder{rng: rand.New(rand.NewPCG(seed, 1)), stride: int(stride)}
			vol, holes := b.build(b.rng.IntN(12), b.rng.IntN(400<<10)+1)
			checkVolume(t, vol, holes, smallParams, blockSize, 4096, 24<<10+13)
		})
	}
}

func TestSplitterSmallVolumes(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	min := int(smallParams.MinSize)
	for _, size := range []int{0, 1, 63, 64, 65, min - 1, min, min + 1, 2*min - 1, int(smallParams.MaxSize) + 1} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32() | 1)
		}
		zero := make([]byte, size)
		whole := []Range{{Off: 0, Len: int64(size)}}
		checkVolume(t, data, nil, smallParams, blockSize, 4096)
		checkVolume(t, zero, nil, smallParams, blockSize, 4096)
		checkVolume(t, zero, whole, smallParams, blockSize, 4096)
	}
}

func TestSplitterDefaultParams(t *testing.T) {
	p := DefaultParams(testPol)
	stride, err := p.ZeroStride()
	if err != nil {
		t.Fatal(err)
	}
	for seed := range uint64(3) {
		b := &volumeBuilder{rng: rand.New(rand.NewPCG(seed, 2)), stride: int(stride)}
		vol, holes := b.build(6, 6<<20)
		checkVolume(t, vol, holes, p, blockSize)
	}
}

// TestSplitterLargeStride uses a stride larger than the read cache, so that
// after a zero run the bytes behind it must come from what is known of the
// run rather than from the cache.
func TestSplitterLargeStride(t *testing.T) {
	p := Params{Pol: testPol, MinSize: 1 << 20, MaxSize: 2 << 20, AverageBits: 20}
	for seed := range uint64(4) {
		b := &volumeBuilder{rng: rand.New(rand.NewPCG(seed, 3)), stride: int(p.MinSize)}
		vol, holes := b.build(5, 3<<20)
		checkVolume(t, vol, holes, p, blockSize, 4096)
	}
}

func TestZeroStride(t *testing.T) {
	for _, p := range []Params{
		smallParams,
		DefaultParams(testPol),
		{Pol: testPol, MinSize: 64, MaxSize: 512, AverageBits: 6},
		{Pol: testPol, MinSize: 512 << 10, MaxSize: 8 << 20, AverageBits: 21},
	} {
		s, err := p.ZeroStride()
		if err != nil {
			t.Fatal(err)
		}
		// The fingerprint of an all-zero window is zero, which always
		// matches the split mask, so the first allowed cut is taken.
		if s != int64(p.MinSize) {
			t.Errorf("%+v: zero stride %d, want MinSize %d", p, s, p.MinSize)
		}
	}
}

// TestSplitterSparseReadsLittle chunks a volume that is 95% declared holes.
func TestSplitterSparseReadsLittle(t *testing.T) {
	p := DefaultParams(testPol)
	const size = 256 << 20
	rng := rand.New(rand.NewPCG(3, 3))
	vol := make([]byte, size)
	var holes []Range
	var off int64
	for off < size {
		d := min(int64(rng.IntN(1<<20)+4096), size-off) // about 5% data
		for i := off; i < off+d; i++ {
			vol[i] = byte(rng.Uint32())
		}
		off += d
		h := min(int64(rng.IntN(20<<20)), size-off)
		if h > 0 {
			holes = append(holes, Range{Off: off, Len: h})
		}
		off += h
	}
	dataBytes := size - holeBytes(holes)
	if dataBytes > size/15 {
		t.Fatalf("test volume has %d data bytes, want about 5%%", dataBytes)
	}
	s, err := NewSplitter(bytes.NewReader(vol), size, holes, p)
	if err != nil {
		t.Fatal(err)
	}
	got := split(t, s, p)
	checkChunks(t, got, reference(t, vol, p), size, int64(p.MinSize))
	if s.BytesRead() > dataBytes+dataBytes/50 {
		t.Errorf("read %d bytes of a volume with %d data bytes", s.BytesRead(), dataBytes)
	}
	t.Logf("size %d, data %d, read %d, %d chunks", size, dataBytes, s.BytesRead(), len(got))
}

var errDisk = errors.New("disk on fire")

// failingReader is a fake: the real sources cannot be made to fail at a
// chosen offset.
type failingReader struct {
	vol    []byte
	failAt int64
}

func (r failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > r.failAt {
		return 0, errDisk
	}
	return copy(p, r.vol[off:]), nil
}

func TestSplitterReadError(t *testing.T) {
	p := smallParams
	vol := make([]byte, 3<<20)
	for i := range vol {
		vol[i] = byte(i*7 + i>>9)
	}
	s, err := NewSplitter(failingReader{vol: vol, failAt: 2 << 20}, int64(len(vol)), nil, p)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, p.MaxSize)
	var last Chunk
	for {
		c, err := s.Next(buf)
		if err == nil {
			last = c
			continue
		}
		if !errors.Is(err, errDisk) || !strings.Contains(err.Error(), "read volume at offset 2097152") {
			t.Fatalf("got %v, want %v with offset context", err, errDisk)
		}
		break
	}
	if last.Off+last.Len > 2<<20 {
		t.Errorf("chunk [%d,+%d) returned beyond the failing read", last.Off, last.Len)
	}
	if _, err := s.Next(buf); !errors.Is(err, errDisk) {
		t.Errorf("Next after a failure: %v, want the same error", err)
	}
}

// TestSplitterReadErrorInZeroRun fails a read while a zero run is being
// measured rather than chunked.
func TestSplitterReadErrorInZeroRun(t *testing.T) {
	vol := make([]byte, 4<<20)
	s, err := NewSplitter(failingReader{vol: vol, failAt: 3 << 20}, int64(len(vol)), nil, smallParams)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, smallParams.MaxSize)
	if _, err := s.Next(buf); !errors.Is(err, errDisk) || !strings.Contains(err.Error(), "read volume at offset 3145728") {
		t.Fatalf("got %v, want %v at offset 3145728", err, errDisk)
	}
	if _, err := s.Next(buf); !errors.Is(err, errDisk) {
		t.Errorf("Next after a failure: %v, want the same error", err)
	}
}

func TestSplitterShortSource(t *testing.T) {
	vol := make([]byte, 100<<10)
	for i := range vol {
		vol[i] = byte(i%251 + 1)
	}
	s, err := NewSplitter(bytes.NewReader(vol), 200<<10, nil, smallParams)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, smallParams.MaxSize)
	for {
		_, err := s.Next(buf)
		if err == nil {
			continue
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "offset 0") {
			t.Fatalf("got %v, want io.ErrUnexpectedEOF at offset 0", err)
		}
		return
	}
}

func TestSplitterSmallBuffer(t *testing.T) {
	s, err := NewSplitter(bytes.NewReader(make([]byte, 10)), 10, nil, smallParams)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Next(make([]byte, 1024)); err == nil {
		t.Fatal("Next accepted a buffer below MaxSize")
	}
	if _, err := s.Next(make([]byte, 0, smallParams.MaxSize)); err != nil {
		t.Fatalf("Next after a rejected buffer: %v", err)
	}
}

func TestNewSplitterRejectsBadHoles(t *testing.T) {
	for _, holes := range [][]Range{
		{{Off: -1, Len: 2}},
		{{Off: 0, Len: -1}},
		{{Off: 90, Len: 20}},
		{{Off: 0, Len: 10}, {Off: 5, Len: 10}},
		{{Off: 50, Len: 10}, {Off: 0, Len: 10}},
	} {
		if _, err := NewSplitter(bytes.NewReader(nil), 100, holes, smallParams); err == nil {
			t.Errorf("holes %v accepted", holes)
		}
	}
	if _, err := NewSplitter(bytes.NewReader(nil), -1, nil, smallParams); err == nil {
		t.Error("negative size accepted")
	}
}

func TestParamsValidate(t *testing.T) {
	if err := DefaultParams(testPol).Validate(); err != nil {
		t.Fatalf("default params: %v", err)
	}
	for _, p := range []Params{
		{},
		{Pol: testPol * 2, MinSize: 1024, MaxSize: 4096, AverageBits: 10},
		{Pol: 0x3, MinSize: 1024, MaxSize: 4096, AverageBits: 10},
		{Pol: testPol &^ 1, MinSize: 1024, MaxSize: 4096, AverageBits: 10}, // divisible by x
		{Pol: testPol, MinSize: 63, MaxSize: 4096, AverageBits: 10},
		{Pol: testPol, MinSize: 4096, MaxSize: 4095, AverageBits: 10},
		{Pol: testPol, MinSize: 4096, MaxSize: MaxChunkSize + 1, AverageBits: 10},
		{Pol: testPol, MinSize: 1024, MaxSize: 4096, AverageBits: 0},
		{Pol: testPol, MinSize: 1024, MaxSize: 4096, AverageBits: 54},
	} {
		if err := p.Validate(); err == nil {
			t.Errorf("%+v accepted", p)
		}
		if _, err := NewSplitter(bytes.NewReader(nil), 0, nil, p); err == nil {
			t.Errorf("NewSplitter accepted %+v", p)
		}
	}
}

func TestZeroHelpers(t *testing.T) {
	for _, n := range []int{0, 1, 7, 4095, 4096, 4097, 16 << 10, 40000} {
		b := make([]byte, n)
		if !IsZero(b) || firstNonZero(b) != n {
			t.Fatalf("%d zeros: isZero %v, firstNonZero %d", n, IsZero(b), firstNonZero(b))
		}
		for _, i := range []int{0, n / 2, n - 1} {
			if i < 0 || i >= n {
				continue
			}
			b[i] = 1
			if IsZero(b) || firstNonZero(b) != i {
				t.Fatalf("%d bytes, non-zero at %d: isZero %v, firstNonZero %d", n, i, IsZero(b), firstNonZero(b))
			}
			b[i] = 0
		}
	}
}

// TestZeroStrideConcurrent runs the memoized stride under the race detector.
func TestZeroStrideConcurrent(t *testing.T) {
	p := Params{Pol: testPol, MinSize: 4096, MaxSize: 16384, AverageBits: 12}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if s, err := p.ZeroStride(); err != nil || s != 4096 {
				t.Errorf("ZeroStride: %d, %v", s, err)
			}
		})
	}
	wg.Wait()
}
