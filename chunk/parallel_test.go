package chunk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"

	sample "github.com/ferrydr/ferry/testenv/volume"
)

// parallelSetup is one way to cut a volume into segments.
type parallelSetup struct {
	workers    int
	seg, bsize int64
}

// parallelSetups range from segments far below MinSize (the chains rarely
// meet inside one) to segments holding many chunks.
func parallelSetups(p Params) []parallelSetup {
	return []parallelSetup{
		{1, 4096, 4096},
		{2, 3 * 4096, 4096},
		{3, int64(p.MaxSize), 4096},
		{2, 4 * int64(p.MaxSize), int64(p.MaxSize) / 2},
		{4, 16 * int64(p.MaxSize), blockSize},
	}
}

// parallelChunks returns all chunks of x with their data read by ReadData.
func parallelChunks(t testing.TB, x *Parallel, p Params) []Chunk {
	t.Helper()
	var out []Chunk
	for {
		c, err := x.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Next after %d chunks: %v", len(out), err)
		}
		if c.Data != nil {
			t.Fatalf("chunk %d [%d,+%d) comes with data", len(out), c.Off, c.Len)
		}
		if !c.Zero {
			if c.Data, err = x.ReadData(make([]byte, p.MaxSize), c); err != nil {
				t.Fatalf("ReadData of chunk %d: %v", len(out), err)
			}
		}
		out = append(out, c)
	}
	if _, err := x.Next(); err != io.EOF {
		t.Fatalf("Next after the last chunk: %v, want io.EOF", err)
	}
	return out
}

// checkParallel compares a Parallel's chunks, in every setup, with and
// without the holes declared, against the plain restic chunker's.
func checkParallel(t testing.TB, vol []byte, holes []Range, p Params, setups []parallelSetup) {
	t.Helper()
	stride, err := p.ZeroStride()
	if err != nil {
		t.Fatal(err)
	}
	want := reference(t, vol, p)
	size := int64(len(vol))
	for _, st := range setups {
		for _, declared := range [][]Range{nil, holes} {
			src := &holeChecker{t: t, r: bytes.NewReader(vol), holes: declared}
			x, err := newParallel(src, size, declared, p, st.workers, st.seg, st.bsize)
			if err != nil {
				t.Fatal(err)
			}
			got := parallelChunks(t, x, p)
			checkChunks(t, got, want, size, stride)
			if got, want := x.BytesRead(), size-holeBytes(declared); got != want {
				t.Errorf("%+v, %d holes declared: BytesRead %d, want %d", st, len(declared), got, want)
			}
		}
	}
}

// holeChecker fails the test when a read touches a declared hole.
type holeChecker struct {
	t     testing.TB
	r     io.ReaderAt
	holes []Range
}

func (h *holeChecker) ReadAt(p []byte, off int64) (int, error) {
	for _, r := range h.holes {
		if r.Off < off+int64(len(p)) && off < r.End() {
			h.t.Errorf("read [%d,+%d) touches hole [%d,+%d)", off, len(p), r.Off, r.Len)
		}
	}
	return h.r.ReadAt(p, off)
}

func TestParallelMatchesPlainChunker(t *testing.T) {
	stride, err := smallParams.ZeroStride()
	if err != nil {
		t.Fatal(err)
	}
	for seed := range uint64(60) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			b := &volumeBuilder{rng: rand.New(rand.NewPCG(seed, 11)), stride: int(stride)}
			vol, holes := b.build(b.rng.IntN(12), b.rng.IntN(400<<10)+1)
			checkParallel(t, vol, holes, smallParams, parallelSetups(smallParams))
		})
	}
}

// TestParallelRealLookingData: random data, text and short zero runs, as
// files are, with holes between extents, at the default chunk sizes.
func TestParallelRealLookingData(t *testing.T) {
	p := DefaultParams(testPol)
	rng := rand.New(rand.NewPCG(3, 3))
	vol := make([]byte, 48<<20)
	var holes []Range
	for off := 0; off < len(vol); {
		n := min(rng.IntN(3<<20)+4096, len(vol)-off)
		copy(vol[off:], sample.Data(rng, n))
		off += n
		gap := min(rng.IntN(2<<20)&^4095, len(vol)-off)
		holes = append(holes, Range{Off: int64(off), Len: int64(gap)})
		off += gap
	}
	checkParallel(t, vol, holes, p, []parallelSetup{{2, 4 << 20, blockSize}, {3, 8 << 20, blockSize}})
}

func TestParallelSmallVolumes(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	min := int(smallParams.MinSize)
	for _, size := range []int{0, 1, 63, 64, 65, min - 1, min, min + 1, 2*min - 1, int(smallParams.MaxSize) + 1, 3 * 4096, 3*4096 + 1} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32() | 1)
		}
		zero := make([]byte, size)
		whole := []Range{{Off: 0, Len: int64(size)}}
		setups := parallelSetups(smallParams)
		checkParallel(t, data, nil, smallParams, setups)
		checkParallel(t, zero, nil, smallParams, setups)
		checkParallel(t, zero, whole, smallParams, setups)
	}
}

// TestParallelChainsApart: in data whose cut candidates repeat with a
// period below MinSize, a segment's chunking can stay out of step with the
// canonical one to its end; Next then chunks on by itself.
func TestParallelChainsApart(t *testing.T) {
	p := smallParams
	e := &editor{rng: rand.New(rand.NewPCG(6, 6))}
	for try := range 20 {
		vol := slices.Concat(e.random(100<<10+try*777), bytes.Repeat(e.random(5000), 300), e.random(100<<10))
		checkParallel(t, vol, nil, p, parallelSetups(p))
	}
}

// TestParallelLongZeroRuns: zero runs, found by reading or declared, that
// span many segments, so that one merged Zero chunk passes over them.
func TestParallelLongZeroRuns(t *testing.T) {
	p := smallParams
	e := &editor{rng: rand.New(rand.NewPCG(8, 8))}
	zeros := make([]byte, 3<<20+123)
	vol := slices.Concat(e.random(200<<10), zeros, e.random(300<<10), zeros, e.random(5))
	holes := []Range{{Off: int64(200<<10 + 4096), Len: 1 << 20}}
	checkParallel(t, vol, holes, p, parallelSetups(p))
}

func TestParallelReadError(t *testing.T) {
	p := smallParams
	vol := (&editor{rng: rand.New(rand.NewPCG(1, 9))}).random(2 << 20)
	for _, at := range []int64{0, 100 << 10, 1<<20 + 5, 2<<20 - 1} {
		src := failingReader{vol: vol, failAt: at}
		x, err := newParallel(src, int64(len(vol)), nil, p, 3, 64<<10, 4096)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		for err == nil {
			_, err = x.Next()
			n++
		}
		if !errors.Is(err, errDisk) {
			t.Fatalf("read error at %d: Next returned %v after %d chunks", at, err, n)
		}
		if _, again := x.Next(); !errors.Is(again, errDisk) {
			t.Fatalf("Next after the error: %v", again)
		}
	}
}

// TestParallelCloseEarly: a consumer that stops early leaves no goroutine.
func TestParallelCloseEarly(t *testing.T) {
	before := runtime.NumGoroutine()
	vol := (&editor{rng: rand.New(rand.NewPCG(2, 9))}).random(4 << 20)
	for range 10 {
		x, err := newParallel(bytes.NewReader(vol), int64(len(vol)), nil, smallParams, 4, 64<<10, 4096)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := x.Next(); err != nil {
			t.Fatal(err)
		}
		x.Close()
		x.Close()
	}
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines before, %d after closing", before, runtime.NumGoroutine())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestParallelReadDataChecks(t *testing.T) {
	vol := make([]byte, 100)
	x, err := NewParallel(bytes.NewReader(vol), 100, nil, smallParams, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	if _, err := x.ReadData(make([]byte, 10), Chunk{Off: 95, Len: 10}); err == nil {
		t.Error("read past the end")
	}
	if _, err := x.ReadData(make([]byte, 5), Chunk{Off: 0, Len: 10}); err == nil {
		t.Error("read into a short buffer")
	}
	short := bytes.NewReader(vol[:50])
	y, err := NewParallel(short, 100, nil, smallParams, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer y.Close()
	if _, err := y.ReadData(make([]byte, 100), Chunk{Off: 0, Len: 100}); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short source: %v", err)
	}
}

func TestNewParallelRejectsBadInput(t *testing.T) {
	if _, err := NewParallel(bytes.NewReader(nil), -1, nil, smallParams, 2); err == nil {
		t.Error("negative size")
	}
	if _, err := NewParallel(bytes.NewReader(nil), 10, []Range{{Off: 5, Len: 10}}, smallParams, 2); err == nil {
		t.Error("hole past the end")
	}
	if _, err := newParallel(bytes.NewReader(nil), 10, nil, smallParams, 2, 5000, 4096); err == nil {
		t.Error("segment not a multiple of the read size")
	}
	bad := smallParams
	bad.MinSize = 10
	if _, err := NewParallel(bytes.NewReader(nil), 10, nil, bad, 2); err == nil {
		t.Error("bad params")
	}
}
