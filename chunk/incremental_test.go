package chunk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// shape returns the chunks' Off, Len and Zero, as a manifest keeps them.
func shape(cs []Chunk) []Chunk {
	out := make([]Chunk, len(cs))
	for i, c := range cs {
		out[i] = Chunk{Off: c.Off, Len: c.Len, Zero: c.Zero}
	}
	return out
}

func sameShape(a, b Chunk) bool { return a.Off == b.Off && a.Len == b.Len && a.Zero == b.Zero }

// incrementalRun is one incremental chunking, its data copied.
type incrementalRun struct {
	chunks []Chunk
	reused []int
	read   int64
}

func runIncremental(t testing.TB, x *Incremental, p Params) incrementalRun {
	t.Helper()
	buf := make([]byte, p.MaxSize)
	var r incrementalRun
	for {
		c, i, err := x.Next(buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Next after %d chunks: %v", len(r.chunks), err)
		}
		if !c.Zero && c.Data != nil {
			c.Data = bytes.Clone(c.Data)
		}
		r.chunks = append(r.chunks, c)
		r.reused = append(r.reused, i)
	}
	if _, _, err := x.Next(buf); err != io.EOF {
		t.Fatalf("Next after the last chunk: %v, want io.EOF", err)
	}
	r.read = x.BytesRead()
	return r
}

// generation is an old volume, its chunk list, and a new version of it with
// the changes a changed block tracker would report.
type generation struct {
	old, vol []byte
	prev     []Chunk
	holes    []Range // of vol
	changed  []Range // as declared: any order, overlapping
}

// A mask has a byte per volume byte, 1 where a property holds. The tests
// use bytes functions on masks, which stay fast under the race detector.

// fill sets m[a:b] to v.
func fill(m []byte, a, b int64, v byte) {
	if a < b {
		m[a] = v
		for n := int64(1); a+n < b; n *= 2 {
			copy(m[a+n:b], m[a:a+n])
		}
	}
}

// changedMask marks the bytes of vol that the generation declares changed,
// including those beyond the old size.
func (g *generation) changedMask() []byte {
	m := make([]byte, len(g.vol))
	size := int64(len(m))
	for _, r := range g.changed {
		fill(m, min(max(r.Off, 0), size), min(r.End(), size), 1)
	}
	fill(m, min(int64(len(g.old)), size), size, 1)
	return m
}

// knownZero marks the bytes Incremental must not read: the declared holes
// and the unchanged bytes of old Zero chunks.
func (g *generation) knownZero(changed []byte) []byte {
	known := make([]byte, len(g.vol))
	size := int64(len(known))
	for _, c := range g.prev {
		if c.Zero && c.Off < size {
			fill(known, c.Off, min(c.Off+c.Len, size), 1)
		}
	}
	for _, r := range ranges(changed) {
		fill(known, r.Off, r.End(), 0)
	}
	for _, h := range g.holes {
		fill(known, h.Off, h.End(), 1)
	}
	return known
}

// ranges returns the runs of 1 in m.
func ranges(m []byte) []Range {
	var out []Range
	for i := 0; i < len(m); {
		a := bytes.IndexByte(m[i:], 1)
		if a < 0 {
			break
		}
		a += i
		b := bytes.IndexByte(m[a:], 0)
		if b < 0 {
			b = len(m) - a
		}
		out = append(out, Range{Off: int64(a), Len: int64(b)})
		i = a + b
	}
	return out
}

// pieces expands merged Zero chunks into their stride-long canonical chunks.
func pieces(cs []Chunk, stride int64) []Range {
	var out []Range
	for _, c := range cs {
		if !c.Zero {
			out = append(out, Range{Off: c.Off, Len: c.Len})
			continue
		}
		for off := c.Off; off < c.Off+c.Len; off += stride {
			out = append(out, Range{Off: off, Len: min(stride, c.Off+c.Len-off)})
		}
	}
	return out
}

// readBound computes, from the old and new canonical chunkings alone, the
// bound on BytesRead documented on Incremental. after has, for each run,
// the bytes that may be read in the run after its last changed chunk:
// how far resynchronisation took, in the currency that costs.
func readBound(g *generation, want []Chunk, changed, known []byte, p Params, bsize int64) (bound int64, after []int64) {
	stride, _ := p.ZeroStride()
	old := map[Range]bool{}
	for _, r := range pieces(g.prev, stride) {
		old[r] = true
	}
	oldSize, size := int64(len(g.old)), int64(len(g.vol))
	var inRun bool
	var sinceChange int64 = -1 // -1 until the run has a changed chunk
	endRun := func() {
		if inRun {
			bound += int64(p.MaxSize) + 2*bsize
			if sinceChange >= 0 {
				after = append(after, sinceChange)
			}
		}
		inRun, sinceChange = false, -1
	}
	for _, r := range pieces(want, stride) {
		touched := bytes.IndexByte(changed[r.Off:r.End()], 1) >= 0
		if old[r] && !touched && (r.End() != oldSize || oldSize == size) {
			endRun()
			continue
		}
		inRun = true
		readable := int64(bytes.Count(known[r.Off:r.End()], []byte{0}))
		bound += readable
		switch {
		case touched:
			sinceChange = 0
		case sinceChange >= 0:
			sinceChange += readable
		}
	}
	endRun()
	return bound, after
}

// checkGeneration chunks g.vol incrementally with the given read size and
// checks the result against want, the reference chunking of g.vol (nil to
// compute it), every reused chunk against both volumes' bytes, and the
// bytes read against readBound. It returns the run and readBound's resync
// costs.
func checkGeneration(t testing.TB, g *generation, want []Chunk, p Params, bsize int64) (incrementalRun, []int64) {
	t.Helper()
	stride, err := p.ZeroStride()
	if err != nil {
		t.Fatal(err)
	}
	changed := g.changedMask()
	known := g.knownZero(changed)
	// The recorder checks holes read one by one, too slowly for many.
	rec := &recorder{t: t, vol: g.vol, bsize: bsize}
	x, err := newIncremental(rec, int64(len(g.vol)), g.holes, p, PrevSlice(g.prev), g.changed, bsize)
	if err != nil {
		t.Fatal(err)
	}
	got := runIncremental(t, x, p)
	for _, r := range rec.reads {
		if bytes.IndexByte(known[r.Off:min(r.End(), int64(len(known)))], 1) >= 0 {
			t.Errorf("read [%d,+%d) touches a hole or an unchanged old Zero chunk", r.Off, r.Len)
		}
	}
	rec.checkDisjoint()
	withData := slices.Clone(got.chunks)
	for k, i := range got.reused {
		if i < 0 {
			continue
		}
		c, o := got.chunks[k], g.prev[i]
		if !sameShape(c, o) || c.Data != nil {
			t.Fatalf("chunk %d [%d,+%d) reported as old chunk %d [%d,+%d)", k, c.Off, c.Len, i, o.Off, o.Len)
		}
		if !bytes.Equal(g.old[c.Off:c.Off+c.Len], g.vol[c.Off:c.Off+c.Len]) {
			t.Fatalf("reused chunk %d [%d,+%d) differs between the volumes", k, c.Off, c.Len)
		}
		if !c.Zero {
			withData[k].Data = g.vol[c.Off : c.Off+c.Len]
		}
	}
	if want == nil {
		want = reference(t, g.vol, p)
	}
	checkChunks(t, withData, want, int64(len(g.vol)), stride)
	bound, after := readBound(g, want, changed, known, p, bsize)
	if got.read > bound {
		t.Errorf("read %d bytes, bound %d", got.read, bound)
	}
	return got, after
}

// editor edits a volume the way a filesystem on it would, and records the
// changed ranges a changed block tracker would report.
type editor struct {
	rng     *rand.Rand
	stride  int
	g       *generation
	oldSize int
}

func (e *editor) random(n int) []byte {
	b := make([]byte, n+7)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], e.rng.Uint64())
	}
	return b[:n]
}

// declare records [off,off+n) as changed, sometimes rounded out to 4 KiB
// blocks, as block-based trackers report it.
func (e *editor) declare(off, n int) {
	if e.rng.IntN(3) == 0 {
		end := (off + n + 4095) &^ 4095
		off &^= 4095
		n = end - off
	}
	e.g.changed = append(e.g.changed, Range{Off: int64(off), Len: int64(n)})
}

// length picks edit lengths around the interesting sizes.
func (e *editor) length() int {
	switch e.rng.IntN(5) {
	case 0:
		return e.rng.IntN(16) + 1
	case 1:
		return e.rng.IntN(8192) + 1
	case 2:
		return e.stride + e.rng.IntN(129) - 64
	case 3:
		return e.rng.IntN(4*e.stride) + 1
	default:
		return e.rng.IntN(200<<10) + 1
	}
}

// position picks an offset in the volume, often inside a zero run or right
// after the last change.
func (e *editor) position() int {
	vol := e.g.vol
	if len(vol) == 0 {
		return 0
	}
	if n := len(e.g.changed); n > 0 && e.rng.IntN(5) == 0 {
		if end := e.g.changed[n-1].End(); end < int64(len(vol)) {
			return int(end)
		}
	}
	if e.rng.IntN(3) == 0 {
		if runs := zeroRuns(vol, 64); len(runs) > 0 {
			r := runs[e.rng.IntN(len(runs))]
			return int(r.Off) + e.rng.IntN(int(r.Len))
		}
	}
	return e.rng.IntN(len(vol))
}

func (e *editor) edit() {
	pos := e.position()
	n := e.length()
	switch k := e.rng.IntN(20); {
	case k < 8: // overwrite
		end := min(pos+n, len(e.g.vol))
		copy(e.g.vol[pos:end], e.random(end-pos))
		e.declare(pos, end-pos)
	case k < 10: // zero a range, as a discard or a zeroed file would
		end := min(pos+n, len(e.g.vol))
		clear(e.g.vol[pos:end])
		e.declare(pos, end-pos)
	case k < 11: // rewrite with the same bytes
		e.declare(pos, min(n, len(e.g.vol)-pos))
	case k < 13: // insert, shifting the tail
		e.g.vol = slices.Insert(e.g.vol, pos, e.random(n)...)
		e.declare(pos, len(e.g.vol)-pos)
	case k < 15: // delete, shifting the tail back
		end := min(pos+n, len(e.g.vol))
		e.g.vol = slices.Delete(e.g.vol, pos, end)
		e.declare(pos, len(e.g.vol)-pos)
	case k < 18: // grow, with data or zeros
		start := len(e.g.vol)
		if e.rng.IntN(2) == 0 {
			e.g.vol = append(e.g.vol, e.random(n)...)
		} else {
			e.g.vol = append(e.g.vol, make([]byte, n*e.rng.IntN(8))...)
		}
		// Bytes beyond the old size need not be declared.
		if start < e.oldSize || e.rng.IntN(2) == 0 {
			e.declare(start, len(e.g.vol)-start)
		}
	default: // truncate
		e.g.vol = e.g.vol[:max(len(e.g.vol)-n, 0)]
	}
}

// finish shuffles the declared ranges and adds overlapping duplicates, and
// declares random parts of the new volume's zero runs as holes.
func (e *editor) finish() {
	g := e.g
	for range e.rng.IntN(3) {
		if len(g.changed) > 0 {
			r := g.changed[e.rng.IntN(len(g.changed))]
			g.changed = append(g.changed, Range{Off: r.Off + r.Len/3, Len: r.Len / 2})
		}
	}
	e.rng.Shuffle(len(g.changed), func(i, j int) { g.changed[i], g.changed[j] = g.changed[j], g.changed[i] })
	g.holes = nil
	for _, r := range zeroRuns(g.vol, 1) {
		switch e.rng.IntN(4) {
		case 0: // allocated zeros
		case 1:
			g.holes = append(g.holes, r)
		default:
			for pos := r.Off; pos < r.End(); {
				l := min(int64(e.rng.IntN(int(r.Len))+1), r.End()-pos)
				if e.rng.IntN(2) == 0 {
					g.holes = append(g.holes, Range{Off: pos, Len: l})
				}
				pos += l
			}
		}
	}
}

// zeroRuns returns the runs of at least min zero bytes in vol.
func zeroRuns(vol []byte, min int) []Range {
	var out []Range
	for i := 0; i < len(vol); {
		a := bytes.IndexByte(vol[i:], 0)
		if a < 0 {
			break
		}
		a += i
		n := firstNonZero(vol[a:])
		if n >= min {
			out = append(out, Range{Off: int64(a), Len: int64(n)})
		}
		i = a + n
	}
	return out
}

// nextGeneration makes a new version of vol, whose chunk list is prev,
// with edits random edits.
func nextGeneration(rng *rand.Rand, stride int64, vol []byte, prev []Chunk, edits int) *generation {
	g := &generation{old: vol, vol: bytes.Clone(vol), prev: prev}
	e := &editor{rng: rng, stride: int(stride), g: g, oldSize: len(vol)}
	for range edits {
		e.edit()
	}
	e.finish()
	return g
}

// TestIncrementalMatchesSplitter chains generations of random edits on
// random volumes, each chunked incrementally from the list of the one
// before, and compares every list with the reference chunking of the whole
// volume.
func TestIncrementalMatchesSplitter(t *testing.T) {
	p := smallParams
	stride, err := p.ZeroStride()
	if err != nil {
		t.Fatal(err)
	}
	var after []int64
	for seed := range uint64(60) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 11))
			b := &volumeBuilder{rng: rng, stride: int(stride)}
			vol, _ := b.build(rng.IntN(10)+1, rng.IntN(400<<10)+1)
			prev := shape(reference(t, vol, p))
			for gen := range 6 {
				g := nextGeneration(rng, stride, vol, prev, rng.IntN(6)+1)
				want := reference(t, g.vol, p)
				var lists [][]Chunk
				for _, bsize := range []int64{incrementalBlockSize, 4096, 24<<10 + 13} {
					run, a := checkGeneration(t, g, want, p, bsize)
					lists = append(lists, shape(run.chunks))
					if bsize == incrementalBlockSize {
						after = append(after, a...)
					}
				}
				if t.Failed() {
					t.Fatalf("generation %d: %d bytes, %d declared changes", gen, len(g.vol), len(g.changed))
				}
				vol, prev = g.vol, lists[rng.IntN(len(lists))]
			}
		})
	}
	slices.Sort(after)
	if n := len(after); n > 0 {
		t.Logf("bytes to read after the last changed chunk of %d runs: median %d, 90%% %d, 99%% %d, max %d (max size %d)",
			n, after[n/2], after[n*9/10], after[n*99/100], after[n-1], p.MaxSize)
	}
}

// TestIncrementalSmallEdits checks that a few small writes to a large
// volume read a small multiple of the chunks they touch.
func TestIncrementalSmallEdits(t *testing.T) {
	for _, tc := range []struct {
		name  string
		p     Params
		size  int
		edits int
	}{
		{"small", smallParams, 32 << 20, 20},
		{"default", DefaultParams(testPol), 64 << 20, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(5, 5))
			stride, _ := tc.p.ZeroStride()
			vol := (&editor{rng: rng}).random(tc.size)
			clear(vol[tc.size/3 : tc.size/2]) // a long run of allocated zeros
			prev := shape(reference(t, vol, tc.p))
			for gen := range 3 {
				g := &generation{old: vol, vol: bytes.Clone(vol), prev: prev}
				e := &editor{rng: rng, stride: int(stride), g: g, oldSize: len(vol)}
				var changedBytes int64
				for range tc.edits {
					pos, n := rng.IntN(tc.size-4096), rng.IntN(4096)+1
					copy(g.vol[pos:], e.random(n))
					e.declare(pos, n)
					changedBytes += int64(n)
				}
				run, _ := checkGeneration(t, g, nil, tc.p, incrementalBlockSize)
				read := run.read
				// Far below the volume: a write usually dirties the chunk
				// it falls in, on average two average chunks long (a
				// random byte falls in long chunks more often), plus the
				// read-ahead and the blocks around it.
				avg := int64(tc.p.MinSize) + 1<<tc.p.AverageBits
				limit := int64(tc.edits) * (4*avg + 2*incrementalBlockSize)
				if read > limit || read > int64(tc.size)/4 {
					t.Errorf("generation %d: read %d bytes of %d for %d bytes in %d writes, want at most %d",
						gen, read, tc.size, changedBytes, tc.edits, limit)
				}
				t.Logf("generation %d: read %d of %d bytes (%.2f%%) for %d writes", gen, read, tc.size, 100*float64(read)/float64(tc.size), tc.edits)
				vol, prev = g.vol, shape(run.chunks)
			}
		})
	}
}

// TestIncrementalDefaultParams chains random generations with the default
// chunk sizes over a bigger volume, and with a zero stride larger than the
// read cache.
func TestIncrementalDefaultParams(t *testing.T) {
	for _, p := range []Params{
		DefaultParams(testPol),
		{Pol: testPol, MinSize: 1 << 20, MaxSize: 2 << 20, AverageBits: 20},
	} {
		stride, _ := p.ZeroStride()
		for seed := range uint64(2) {
			rng := rand.New(rand.NewPCG(seed, 12))
			b := &volumeBuilder{rng: rng, stride: int(stride)}
			vol, _ := b.build(5, 6<<20)
			prev := shape(reference(t, vol, p))
			for range 3 {
				g := nextGeneration(rng, stride, vol, prev, rng.IntN(4)+1)
				run, _ := checkGeneration(t, g, nil, p, incrementalBlockSize)
				vol, prev = g.vol, shape(run.chunks)
			}
		}
	}
}

// TestIncrementalEdges covers empty volumes, no change at all, and changes
// at the very start and end.
func TestIncrementalEdges(t *testing.T) {
	p := smallParams
	rng := rand.New(rand.NewPCG(8, 8))
	e := &editor{rng: rng}
	data := e.random(1 << 20)
	zeros := make([]byte, 300<<10+5)
	mixed := slices.Concat(data[:100<<10], zeros, data[:200<<10])
	for _, tc := range []struct {
		name     string
		old, vol []byte
		changed  []Range
		maxRead  int64
	}{
		{"empty to empty", nil, nil, nil, 0},
		{"empty to data", nil, data, nil, int64(len(data))},
		{"data to empty", data, nil, nil, 0},
		{"unchanged", data, data, nil, 0},
		{"unchanged zeros", zeros, zeros, nil, 0},
		{"declared but equal", mixed, mixed, []Range{{0, int64(len(mixed))}}, int64(len(mixed))},
		{"first byte", data, slices.Concat([]byte{^data[0]}, data[1:]), []Range{{0, 1}}, -1},
		{"last byte", data, slices.Concat(data[:len(data)-1], []byte{^data[len(data)-1]}), []Range{{int64(len(data) - 1), 1}}, -1},
		{"zeros grow", zeros, slices.Concat(zeros, zeros), nil, int64(len(zeros)) + incrementalBlockSize},
		{"zeros shrink", zeros, zeros[:len(zeros)-70000], nil, 0},
		{"zero run grows into data", mixed, slices.Concat(data[:100<<10], zeros, zeros[:8192], data[8192:200<<10]), []Range{{int64(100<<10 + len(zeros)), 8192}}, -1},
		{"changes beyond the end", data, data, []Range{{int64(len(data)), 100}, {5 << 20, 1}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &generation{old: tc.old, vol: tc.vol, prev: shape(reference(t, tc.old, p)), changed: tc.changed}
			run, _ := checkGeneration(t, g, nil, p, incrementalBlockSize)
			if read := run.read; tc.maxRead >= 0 && read > tc.maxRead {
				t.Errorf("read %d bytes, want at most %d", read, tc.maxRead)
			}
		})
	}
}

// TestIncrementalZeroRunEdit writes into the middle of a long zero run: only
// the data chunk around the write is re-chunked, and the zeros around it are
// not read.
func TestIncrementalZeroRunEdit(t *testing.T) {
	p := smallParams
	stride, _ := p.ZeroStride()
	e := &editor{rng: rand.New(rand.NewPCG(4, 4))}
	vol := slices.Concat(e.random(1<<20), make([]byte, 8<<20), e.random(1<<20))
	for _, allocated := range []bool{true, false} {
		const at = 5<<20 + 1234
		var holes []Range
		if !allocated {
			holes = []Range{{Off: 1 << 20, Len: at - 1<<20}, {Off: at + 100, Len: 9<<20 - at - 100}}
		}
		newVol := bytes.Clone(vol)
		copy(newVol[at:], e.random(100))
		g := &generation{old: vol, vol: newVol, prev: shape(reference(t, vol, p)), holes: holes, changed: []Range{{Off: at, Len: 100}}}
		r, _ := checkGeneration(t, g, nil, p, incrementalBlockSize)
		if r.read > incrementalBlockSize {
			t.Errorf("allocated zeros %v: read %d bytes for a 100-byte write into zeros", allocated, r.read)
		}
		var rechunked int64
		for k, c := range r.chunks {
			if r.reused[k] < 0 && !c.Zero {
				rechunked += c.Len
			}
		}
		if rechunked > 2*stride {
			t.Errorf("allocated zeros %v: re-chunked %d bytes of data, want at most 2 strides", allocated, rechunked)
		}
	}
}

// TestIncrementalResyncIsDataDependent shows why the bound on bytes read
// cannot be a constant per change: in a volume that repeats a block shorter
// than MinSize with one cut candidate in it, the chunker cuts at every
// other candidate, and a write that removes the candidate at a cut moves
// every later cut by one period, up to the end of the pattern. The output
// is still exact; the read covers the rest of the pattern, within the bound.
func TestIncrementalResyncIsDataDependent(t *testing.T) {
	p := smallParams
	const (
		period  = 5000 // below MinSize, above MinSize/2
		start   = 200 << 10
		repeats = 200
		end     = start + repeats*period
	)
	e := &editor{rng: rand.New(rand.NewPCG(6, 6))}
	for try := range 1000 {
		vol := slices.Concat(e.random(start), bytes.Repeat(e.random(period), repeats), e.random(200<<10))
		prev := shape(reference(t, vol, p))
		// Remove the candidate at a cut a third into the pattern.
		i := slices.IndexFunc(prev, func(c Chunk) bool { return c.Off > start+repeats/3*period })
		at := prev[i].Off
		newVol := bytes.Clone(vol)
		for j := at - 64; j < at; j++ {
			newVol[j] ^= 0x5a
		}
		want := reference(t, newVol, p)
		// Out of step: no cut after the write is an old cut before the
		// pattern ends.
		old := map[int64]bool{}
		for _, c := range prev {
			old[c.Off] = true
		}
		if slices.ContainsFunc(want, func(c Chunk) bool { return c.Off >= at && c.Off < end-int64(p.MaxSize) && old[c.Off] }) {
			continue
		}
		g := &generation{old: vol, vol: newVol, prev: prev, changed: []Range{{Off: at - 64, Len: 64}}}
		run, after := checkGeneration(t, g, want, p, incrementalBlockSize)
		if run.read < end-at-int64(p.MaxSize) || len(after) != 1 {
			t.Fatalf("read %d bytes (%v after the change) for a write %d bytes before the end of the pattern", run.read, after, end-at)
		}
		t.Logf("try %d: a 64-byte write re-chunked %d bytes after it, read %d", try, after[0], run.read)
		return
	}
	t.Fatal("no block found that keeps the chunkings out of step")
}

// TestIncrementalUndeclaredChange shows the caller's contract: a change
// missing from the changed ranges goes unseen, and the old chunk is reused
// for bytes that differ.
func TestIncrementalUndeclaredChange(t *testing.T) {
	p := smallParams
	e := &editor{rng: rand.New(rand.NewPCG(2, 2))}
	vol := e.random(2 << 20)
	prev := shape(reference(t, vol, p))
	newVol := bytes.Clone(vol)
	newVol[1<<20] ^= 1
	x, err := NewIncremental(bytes.NewReader(newVol), int64(len(newVol)), nil, p, prev, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := runIncremental(t, x, p)
	if got.read != 0 || !slices.EqualFunc(got.chunks, prev, sameShape) {
		t.Fatalf("with no change declared, got %d chunks after reading %d bytes, want prev unread", len(got.chunks), got.read)
	}
	g := &generation{old: vol, vol: newVol, prev: prev, changed: []Range{{Off: 1 << 20, Len: 1}}}
	checkGeneration(t, g, nil, p, incrementalBlockSize)
}

func TestNewIncrementalRejectsBadInput(t *testing.T) {
	p := smallParams
	stride, _ := p.ZeroStride()
	src := bytes.NewReader(nil)
	good := []Chunk{{Off: 0, Len: 10000}, {Off: 10000, Len: 2 * stride, Zero: true}, {Off: 10000 + 2*stride, Len: 9000}}
	if _, err := NewIncremental(src, 100, nil, p, good, nil); err != nil {
		t.Fatalf("good list rejected: %v", err)
	}
	for _, prev := range [][]Chunk{
		{{Off: 1, Len: 10000}},
		{{Off: 0, Len: 10000}, {Off: 10001, Len: 10000}},
		{{Off: 0, Len: 0}},
		{{Off: 0, Len: -5}},
		{{Off: 0, Len: stride, Zero: true}, {Off: stride, Len: stride, Zero: true}},
		{{Off: 0, Len: stride + 1, Zero: true}, {Off: stride + 1, Len: 10000}},
		{{Off: 0, Len: int64(p.MaxSize) + 1}},
		{{Off: 0, Len: 100}, {Off: 100, Len: 10000}},
		{{Off: 0, Len: 1 << 62}, {Off: 1 << 62, Len: 1 << 62}},
	} {
		if _, err := NewIncremental(src, 100, nil, p, prev, nil); err == nil {
			t.Errorf("prev %v accepted", prev)
		}
	}
	for _, changed := range [][]Range{
		{{Off: -1, Len: 5}},
		{{Off: 0, Len: -1}},
		{{Off: 1, Len: 1<<63 - 1}},
	} {
		if _, err := NewIncremental(src, 100, nil, p, good, changed); err == nil {
			t.Errorf("changed %v accepted", changed)
		}
	}
	if _, err := NewIncremental(src, 100, []Range{{Off: 50, Len: 60}}, p, good, nil); err == nil {
		t.Error("hole beyond the volume accepted")
	}
	if _, err := NewIncremental(src, -1, nil, p, good, nil); err == nil {
		t.Error("negative size accepted")
	}
	if _, err := NewIncremental(src, 100, nil, Params{}, good, nil); err == nil {
		t.Error("bad params accepted")
	}
}

func TestIncrementalReadError(t *testing.T) {
	p := smallParams
	e := &editor{rng: rand.New(rand.NewPCG(3, 1))}
	vol := e.random(3 << 20)
	prev := shape(reference(t, vol, p))
	x, err := NewIncremental(failingReader{vol: vol, failAt: 2 << 20}, int64(len(vol)), nil, p, prev, []Range{{Off: 2<<20 + 100, Len: 10}})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, p.MaxSize)
	if _, _, err := x.Next(buf[:0:100]); err == nil {
		t.Fatal("Next accepted a buffer below MaxSize")
	}
	for {
		_, _, err := x.Next(buf)
		if err == nil {
			continue
		}
		if !errors.Is(err, errDisk) || !strings.Contains(err.Error(), "read volume at offset") {
			t.Fatalf("got %v, want %v with offset context", err, errDisk)
		}
		break
	}
	if _, _, err := x.Next(buf); !errors.Is(err, errDisk) {
		t.Errorf("Next after a failure: %v, want the same error", err)
	}
}

// TestIncrementalExpected checks Expected on random generations against
// what it promises and against what Next then reads.
func TestIncrementalExpected(t *testing.T) {
	p := smallParams
	stride, err := p.ZeroStride()
	if err != nil {
		t.Fatal(err)
	}
	var inside, outside int64
	for seed := range uint64(30) {
		rng := rand.New(rand.NewPCG(seed, 14))
		b := &volumeBuilder{rng: rng, stride: int(stride)}
		vol, _ := b.build(rng.IntN(8)+1, rng.IntN(300<<10)+1)
		prev := shape(reference(t, vol, p))
		for gen := range 4 {
			g := nextGeneration(rng, stride, vol, prev, rng.IntN(6)+1)
			// Rewrites with the same bytes from or up to an old cut, where
			// widening to the old chunks has nothing to add.
			for range rng.IntN(3) {
				if len(prev) > 0 {
					c := prev[rng.IntN(len(prev))]
					n := rng.Int64N(c.Len) + 1
					g.changed = append(g.changed, Range{Off: c.Off, Len: n}, Range{Off: c.Off + c.Len - n, Len: n})
				}
			}
			want := reference(t, g.vol, p)
			for _, bsize := range []int64{incrementalBlockSize, 4096, 24<<10 + 13} {
				in, out := checkExpected(t, g, want, p, bsize)
				inside += in
				outside += out
			}
			if t.Failed() {
				t.Fatalf("seed %d, generation %d: %d bytes, was %d, changed %v", seed, gen, len(g.vol), len(g.old), g.changed)
			}
			vol, prev = g.vol, shape(want)
		}
	}
	t.Logf("Next read %d bytes inside Expected and %d outside", inside, outside)
}

// checkExpected checks x.Expected for the generation g, whose reference
// chunking is want, and returns how many bytes Next then read inside and
// outside it.
func checkExpected(t *testing.T, g *generation, want []Chunk, p Params, bsize int64) (inside, outside int64) {
	t.Helper()
	stride, _ := p.ZeroStride()
	size := int64(len(g.vol))
	changed := g.changedMask()
	known := g.knownZero(changed)
	rec := &recorder{t: t, vol: g.vol, bsize: bsize}
	x, err := newIncremental(rec, size, g.holes, p, PrevSlice(g.prev), g.changed, bsize)
	if err != nil {
		t.Fatal(err)
	}
	exp := x.Expected()

	// The old pieces (stride-long in Zero chunks) holding a changed byte,
	// the last old chunk when the size changed, and everything past the
	// old end: what Expected covers, block
	// rounding and known zeros aside.
	due := make([]byte, size)
	for _, r := range pieces(g.prev, stride) {
		if end := min(r.End(), size); r.Off < end && bytes.IndexByte(changed[r.Off:end], 1) >= 0 {
			fill(due, r.Off, end, 1)
		}
	}
	if oldSize := int64(len(g.old)); oldSize != size && len(g.prev) > 0 {
		// The last old chunk, cut by the old end, which moved.
		last := g.prev[len(g.prev)-1]
		fill(due, min(last.Off, size), min(last.Off+last.Len, size), 1)
	}
	fill(due, min(int64(len(g.old)), size), size, 1)
	dueBlock := make([]bool, (size+bsize-1)/bsize)
	for _, r := range ranges(due) {
		for k := r.Off / bsize; k <= (r.End()-1)/bsize; k++ {
			dueBlock[k] = true
		}
	}

	expected := make([]byte, size)
	var end int64
	for _, r := range exp {
		if r.Len <= 0 || r.Off < end || r.End() > size {
			t.Fatalf("read size %d: Expected %v is not sorted, disjoint, non-empty ranges within [0,%d)", bsize, exp, size)
		}
		end = r.End()
		if i := bytes.IndexByte(known[r.Off:r.End()], 1); i >= 0 {
			t.Errorf("read size %d: expected range [%d,+%d) holds byte %d, a hole or an unchanged old zero", bsize, r.Off, r.Len, r.Off+int64(i))
		}
		for k := r.Off / bsize; k <= (r.End()-1)/bsize; k++ {
			if !dueBlock[k] {
				t.Errorf("read size %d: expected range [%d,+%d) holds block %d, which holds no byte of a changed old chunk or past the old end", bsize, r.Off, r.Len, k)
				break
			}
		}
		fill(expected, r.Off, r.End(), 1)
	}
	missed := bytes.Clone(due)
	for _, r := range ranges(known) {
		fill(missed, r.Off, r.End(), 0)
	}
	for _, r := range exp {
		fill(missed, r.Off, r.End(), 0)
	}
	for _, r := range ranges(missed) {
		t.Errorf("read size %d: [%d,+%d) of a changed old chunk or past the old end is not expected", bsize, r.Off, r.Len)
	}

	got := runIncremental(t, x, p)
	for _, r := range rec.reads {
		n := int64(bytes.Count(expected[r.Off:min(r.End(), size)], []byte{1}))
		inside += n
		outside += min(r.End(), size) - r.Off - n
	}
	// By the doc of Incremental, Next reads the readable bytes of the
	// dirty chunks of the new chunking, and per run of them at most
	// MaxSize + 2*bsize more. Expected covers the changed old chunks and
	// the bytes past the old end (checked above), so what Next reads
	// outside it is at most the rest of the dirty chunks, which is mostly
	// nothing but can be long where the chunkings take long to meet again
	// (TestIncrementalResyncIsDataDependent), plus that allowance per run.
	// That is readBound counting the bytes due as known.
	notCounted := bytes.Clone(known)
	for _, r := range ranges(due) {
		fill(notCounted, r.Off, r.End(), 1)
	}
	bound, _ := readBound(g, want, changed, notCounted, p, bsize)
	if outside > bound {
		t.Errorf("read size %d: Next read %d bytes, %d of them outside Expected, bound %d", bsize, got.read, outside, bound)
	}
	return inside, outside
}

// TestIncrementalFirstCut checks where Incremental lets the chunker start
// looking for a cut: past the positions the old chunking proves are not
// cuts, and not one byte further (TestIncrementalMatchesSplitter checks
// that the chunks stay the same).
func TestIncrementalFirstCut(t *testing.T) {
	p := smallParams
	rng := rand.New(rand.NewPCG(3, 3))
	vol := make([]byte, 1<<20)
	for i := range vol {
		vol[i] = byte(rng.Uint32())
	}
	prev := shape(reference(t, vol, p))
	min := int64(p.MinSize)
	// An old chunk long enough to have positions past its MinSize.
	k := 1 + slices.IndexFunc(prev[1:], func(c Chunk) bool { return c.Len > min+1000 })
	if k < 1 || k+1 >= len(prev) {
		t.Fatalf("no old chunk longer than %d in %v", min+1000, prev)
	}
	a, b := prev[k].Off, prev[k].Off+prev[k].Len
	firstCut := func(pos int64, changed ...Range) int64 {
		x, err := NewIncremental(bytes.NewReader(vol), int64(len(vol)), nil, p, prev, changed)
		if err != nil {
			t.Fatal(err)
		}
		return x.firstCut(pos)
	}
	for _, tc := range []struct {
		name    string
		pos     int64
		changed []Range
		want    int64
	}{
		{"change past MinSize: up to the first position whose window holds it", a, []Range{{Off: b - 500, Len: 10}}, b - 499},
		{"change in the window of pos+MinSize: nothing known", a, []Range{{Off: a + min - 10, Len: 1}}, a + min},
		{"change just before that window: up to the old cut", a, []Range{{Off: a + min - windowSize - 1, Len: 1}}, b},
		{"change long before: up to the old cut", a, []Range{{Off: a, Len: 100}}, b},
		{"change after the old chunk: up to the old cut", a, []Range{{Off: b + 10, Len: 1}}, b},
		{"start inside the old chunk: up to the old cut", a + 100, []Range{{Off: a + 50, Len: 1}}, b},
		{"pos+MinSize before the old chunk's MinSize: nothing known", a - 100, []Range{{Off: a - 200, Len: 1}}, a - 100 + min},
	} {
		if got := firstCut(tc.pos, tc.changed...); got != tc.want {
			t.Errorf("%s: firstCut(%d) = %d, want %d (old chunk [%d,%d), min %d)", tc.name, tc.pos, got, tc.want, a, b, min)
		}
	}

	// A Zero old chunk tells nothing about cuts.
	zvol := slices.Clone(vol)
	clear(zvol[a : a+4*int64(p.MaxSize)])
	zprev := shape(reference(t, zvol, p))
	z := slices.IndexFunc(zprev, func(c Chunk) bool { return c.Zero })
	if z < 0 {
		t.Fatal("no Zero chunk")
	}
	x, err := NewIncremental(bytes.NewReader(zvol), int64(len(zvol)), nil, p, zprev, []Range{{Off: 0, Len: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if pos := zprev[z].Off; x.firstCut(pos) != pos+min {
		t.Errorf("in a Zero chunk: firstCut(%d) = %d, want %d", pos, x.firstCut(pos), pos+min)
	}
}
