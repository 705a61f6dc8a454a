package backup

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydr/ferry/chunk"
)

// readLog is an io.ReaderAt that records the reads asked of it and returns
// no data: prefetch drops it anyway, and a window's worth would not fit a
// test.
type readLog struct {
	mu      sync.Mutex
	reads   []chunk.Range
	started int64 // bytes of the reads so far
	// check, when set, is called at each read with started, that read
	// included.
	check   func(started int64)
	target  int64
	reached chan struct{} // closed once started reaches target
}

func (l *readLog) ReadAt(p []byte, off int64) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reads = append(l.reads, chunk.Range{Off: off, Len: int64(len(p))})
	l.started += int64(len(p))
	if l.check != nil {
		l.check(l.started)
	}
	if l.reached != nil && l.started >= l.target {
		close(l.reached)
		l.reached = nil
	}
	return len(p), nil
}

func (l *readLog) startedBytes() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.started
}

// reach returns a channel closed once reads of n bytes in all have started.
func (l *readLog) reach(n int64) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch := make(chan struct{})
	if l.started >= n {
		close(ch)
		return ch
	}
	l.target, l.reached = n, ch
	return ch
}

// wait fails the test if ch is not closed within a generous time: it
// catches a hang, it does not measure speed.
func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// startPrefetch runs prefetch in a goroutine and returns a channel closed
// when it returns.
func startPrefetch(ctx context.Context, l *readLog, ranges []chunk.Range, size int64, at func() int64) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		prefetch(ctx, l, ranges, size, at)
	}()
	return done
}

// union returns the bytes of rs as sorted ranges, neither overlapping nor
// adjacent.
func union(rs []chunk.Range) []chunk.Range {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b chunk.Range) int { return cmp.Compare(a.Off, b.Off) })
	var out []chunk.Range
	for _, r := range rs {
		if n := len(out); n > 0 && r.Off <= out[n-1].End() {
			out[n-1].Len = max(out[n-1].End(), r.End()) - out[n-1].Off
		} else if r.Len > 0 {
			out = append(out, r)
		}
	}
	return out
}

// checkReads checks that reads, each at most prefetchStep long, read every
// byte of ranges extended by prefetchTail within size once, and nothing
// else.
func checkReads(t *testing.T, reads, ranges []chunk.Range, size int64) {
	t.Helper()
	reads = slices.Clone(reads)
	slices.SortFunc(reads, func(a, b chunk.Range) int { return cmp.Compare(a.Off, b.Off) })
	for i, r := range reads {
		if r.Len <= 0 || r.Len > prefetchStep {
			t.Errorf("read [%d,+%d), want 1 to %d bytes", r.Off, r.Len, prefetchStep)
		}
		if i > 0 && r.Off < reads[i-1].End() {
			t.Errorf("read [%d,+%d) overlaps read [%d,+%d)", r.Off, r.Len, reads[i-1].Off, reads[i-1].Len)
		}
	}
	if got, want := union(reads), union(extents(ranges, size)); !slices.Equal(got, want) {
		t.Errorf("read %v, want %v", got, want)
	}
}

// extents returns ranges extended by prefetchTail within size.
func extents(ranges []chunk.Range, size int64) []chunk.Range {
	var out []chunk.Range
	for _, r := range ranges {
		out = append(out, chunk.Range{Off: r.Off, Len: min(size, r.End()+prefetchTail) - r.Off})
	}
	return out
}

// randomRanges returns n sorted ranges, neither overlapping nor adjacent,
// as Expected returns them, and a volume size past their end.
func randomRanges(rng *rand.Rand, n int, maxLen, maxGap int64) (rs []chunk.Range, size int64) {
	var off int64
	for i := range n {
		off += rng.Int64N(maxGap)
		if i > 0 {
			off++
		}
		l := rng.Int64N(maxLen) + 1
		rs = append(rs, chunk.Range{Off: off, Len: l})
		off += l
	}
	return rs, off + rng.Int64N(2*prefetchTail)
}

func TestPrefetchReadsRangesAndTails(t *testing.T) {
	const size = 10 << 20
	type tc struct {
		name   string
		ranges []chunk.Range
		size   int64
	}
	cases := []tc{
		{"none", nil, size},
		{"short, at the start", []chunk.Range{{Off: 0, Len: 100}}, size},
		{"several steps", []chunk.Range{{Off: 12345, Len: 3*prefetchStep + 7}}, size},
		{"tail into the next", []chunk.Range{{Off: 0, Len: 100}, {Off: 100 + prefetchTail/2, Len: 100}}, size},
		{"inside the tail", []chunk.Range{{Off: 0, Len: 100}, {Off: 1000, Len: 10}, {Off: 5000, Len: 1}}, size},
		{"at the end", []chunk.Range{{Off: size - 50, Len: 50}}, size},
		{"tail past the end", []chunk.Range{{Off: 5000, Len: 10}, {Off: size - prefetchTail/2, Len: 10}}, size},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 50 {
		// Well within the window: the chunker stays at 0.
		rs, size := randomRanges(rng, rng.IntN(30)+1, 3*prefetchStep, 2*prefetchTail)
		cases = append(cases, tc{fmt.Sprint("random", i), rs, size})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := &readLog{}
			wait(t, startPrefetch(context.Background(), l, c.ranges, c.size, func() int64 { return 0 }), "prefetch to return")
			checkReads(t, l.reads, c.ranges, c.size)
		})
	}
}

// TestPrefetchWindow plays the chunker: it lets prefetch read what lies
// within the window past the chunker's position, then moves the position on
// by a random amount, over ranges several windows long, and checks at every
// read that prefetch stays within the window.
func TestPrefetchWindow(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	ranges, size := randomRanges(rng, 40, 60<<20, 16<<20)
	all := union(extents(ranges, size))
	if end := all[len(all)-1].End(); end < 3*prefetchWindow {
		t.Fatalf("ranges end at %d, want several windows", end)
	}
	// below returns the bytes of all below off.
	below := func(off int64) (n int64) {
		for _, r := range all {
			n += max(0, min(r.End(), off)-r.Off)
		}
		return n
	}
	var at atomic.Int64
	l := &readLog{}
	l.check = func(int64) {
		r := l.reads[len(l.reads)-1]
		if limit := at.Load() + prefetchWindow; r.End() > limit {
			t.Errorf("read [%d,+%d) with the chunker at %d: past %d", r.Off, r.Len, at.Load(), limit)
		}
	}
	done := startPrefetch(context.Background(), l, ranges, size, at.Load)
	for {
		// Everything a piece's length short of the window's end is read
		// before prefetch waits.
		target := below(at.Load() + prefetchWindow - prefetchStep)
		wait(t, l.reach(target), "prefetch to fill its window")
		if target == below(size) {
			break
		}
		at.Add(rng.Int64N(prefetchWindow/4) + 1)
	}
	wait(t, done, "prefetch to return")
	checkReads(t, l.reads, ranges, size)
}

// TestPrefetchSkipsWhatTheChunkerPassed: pieces wholly before the chunker's
// position are not read.
func TestPrefetchSkipsWhatTheChunkerPassed(t *testing.T) {
	l := &readLog{}
	const pos = 5*prefetchStep + 100
	ranges := []chunk.Range{{Off: 0, Len: 8 * prefetchStep}}
	wait(t, startPrefetch(context.Background(), l, ranges, 16*prefetchStep, func() int64 { return pos }), "prefetch to return")
	for _, r := range l.reads {
		if r.End() <= pos {
			t.Errorf("read [%d,+%d), wholly before the chunker at %d", r.Off, r.Len, pos)
		}
	}
	if got, want := union(l.reads), []chunk.Range{{Off: 5 * prefetchStep, Len: 3*prefetchStep + prefetchTail}}; !slices.Equal(got, want) {
		t.Errorf("read %v, want %v", got, want)
	}
}

func TestPrefetchCancelWhileWaiting(t *testing.T) {
	l := &readLog{}
	const size = 2 * prefetchWindow
	waiting := make(chan struct{})
	var once sync.Once
	at := func() int64 {
		// The window read while the chunker stays at 0: prefetch hands
		// out nothing more, and asks again only while it waits on it.
		if l.startedBytes() >= prefetchWindow {
			once.Do(func() { close(waiting) })
		}
		return 0
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startPrefetch(ctx, l, []chunk.Range{{Off: 0, Len: size}}, size, at)
	wait(t, waiting, "prefetch to wait on the window")
	cancel()
	wait(t, done, "prefetch to return once cancelled")
	if n := l.startedBytes(); n != prefetchWindow {
		t.Errorf("read %d bytes with the chunker at 0, want the window, %d", n, prefetchWindow)
	}
}
