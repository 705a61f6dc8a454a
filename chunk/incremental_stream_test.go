package chunk

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
)

var errPrev = errors.New("previous list unreadable")

// countingPrev is a Prev over cs that counts the passes over it and fails
// pass failPass (from 1; 0: none) after failAfter chunks.
type countingPrev struct {
	cs                  []Chunk
	passes              int
	failPass, failAfter int
}

func (c *countingPrev) prev(yield func(Chunk) bool) error {
	c.passes++
	for i, ch := range c.cs {
		if c.passes == c.failPass && i == c.failAfter {
			return errPrev
		}
		if !yield(ch) {
			return nil
		}
	}
	return nil
}

// streamCase is a 48 MiB volume of some 2,000 chunks with five small
// writes, its old chunk list and the new reference chunking.
func streamCase(t *testing.T) (vol []byte, prev []Chunk, changed []Range, want []Chunk) {
	t.Helper()
	p := smallParams
	e := &editor{rng: rand.New(rand.NewPCG(4, 4))}
	old := e.random(48 << 20)
	prev = shape(reference(t, old, p))
	vol = bytes.Clone(old)
	for _, off := range []int{1 << 20, 7<<20 + 5, 20 << 20, 33<<20 + 77, 47 << 20} {
		copy(vol[off:], e.random(4096))
		changed = append(changed, Range{Off: int64(off), Len: 4096})
	}
	return vol, prev, changed, shape(reference(t, vol, p))
}

// TestIncrementalPrevStream: with the old list as a stream, the chunks are
// the reference's, the list is read in the passes documented, and no more
// than a window of it is held at any time.
func TestIncrementalPrevStream(t *testing.T) {
	p := smallParams
	vol, prev, changed, want := streamCase(t)
	if len(prev) < 2000 {
		t.Fatalf("%d old chunks, want thousands", len(prev))
	}
	cp := &countingPrev{cs: prev}
	x, err := NewIncrementalFrom(bytes.NewReader(vol), int64(len(vol)), nil, p, cp.prev, changed)
	if err != nil {
		t.Fatal(err)
	}
	if cp.passes != 2 {
		t.Fatalf("%d passes over the old list to start, want 2", cp.passes)
	}
	if exp := x.Expected(); len(exp) == 0 || cp.passes != 3 {
		t.Fatalf("Expected: %v after %d passes", exp, cp.passes)
	}
	buf := make([]byte, p.MaxSize)
	var got []Chunk
	held, reused := 0, 0
	for {
		c, i, err := x.Next(buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i >= 0 {
			reused++
			if !sameShape(c, prev[i]) {
				t.Fatalf("chunk %+v reused as old chunk %d %+v", c, i, prev[i])
			}
		}
		got = append(got, Chunk{Off: c.Off, Len: c.Len, Zero: c.Zero})
		held = max(held, len(x.cur.buf))
	}
	if !slices.EqualFunc(got, want, sameShape) {
		t.Fatalf("%d chunks, the reference %d, or they differ", len(got), len(want))
	}
	if cp.passes != 4 || reused < len(prev)-20 {
		t.Fatalf("%d passes, %d of %d chunks reused", cp.passes, reused, len(prev))
	}
	if held > 1024+4 {
		t.Fatalf("held %d old chunks at once", held)
	}
}

// TestIncrementalPrevFails: an old list that cannot be read fails the
// start, or Next once it needs what was not read, never with chunks that
// differ from the reference's before the error.
func TestIncrementalPrevFails(t *testing.T) {
	p := smallParams
	vol, prev, changed, want := streamCase(t)
	for pass := 1; pass <= 3; pass++ {
		cp := &countingPrev{cs: prev, failPass: pass, failAfter: len(prev) / 2}
		x, err := NewIncrementalFrom(bytes.NewReader(vol), int64(len(vol)), nil, p, cp.prev, changed)
		if pass <= 2 {
			if !errors.Is(err, errPrev) {
				t.Fatalf("pass %d failing: NewIncrementalFrom gave %v", pass, err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, p.MaxSize)
		var got []Chunk
		for {
			var c Chunk
			c, _, err = x.Next(buf)
			if err != nil {
				break
			}
			got = append(got, Chunk{Off: c.Off, Len: c.Len, Zero: c.Zero})
		}
		if !errors.Is(err, errPrev) {
			t.Fatalf("Next with the list failing half way: %v", err)
		}
		if len(got) < len(prev)/3 || !slices.EqualFunc(got, want[:len(got)], sameShape) {
			t.Fatalf("%d chunks before the error, or they differ from the reference", len(got))
		}
		if _, _, again := x.Next(buf); !errors.Is(again, errPrev) {
			t.Fatalf("Next after the failure: %v", again)
		}
		x.Close()
	}
	// Expected on a failing pass: nothing to read ahead; Next goes on.
	cp := &countingPrev{cs: prev, failPass: 3, failAfter: 10}
	x, err := NewIncrementalFrom(bytes.NewReader(vol), int64(len(vol)), nil, p, cp.prev, changed)
	if err != nil {
		t.Fatal(err)
	}
	if exp := x.Expected(); exp != nil {
		t.Fatalf("Expected over a failing list: %v", exp)
	}
	if run := runIncremental(t, x, p); !slices.EqualFunc(shape(run.chunks), want, sameShape) {
		t.Fatal("chunks differ after Expected failed")
	}
}
