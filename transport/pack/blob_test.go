package pack

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/alloc"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/crypt"
)

// sampleData returns n bytes: random, text-like, or a mix (volume.Data).
func sampleData(kind string, n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 3))
	switch kind {
	case "random":
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	case "text":
		b := make([]byte, n)
		for i := range b {
			b[i] = "the quick brown fox\n"[(i*7+int(seed))%20]
		}
		return b
	}
	return volume.Data(r, n)
}

// TestSealerOpener: blobs the Sealer seals open with OpenBlob and the
// Opener, and the other way round, and both agree on compression.
func TestSealerOpener(t *testing.T) {
	c := testCodec(t)
	idk := chunk.NewIDKey(c.key.IDKey())
	const maxLen = 1 << 20
	s := c.NewSealer(maxLen)
	o := c.NewOpener(maxLen / 4) // grows
	for i, tc := range []struct {
		kind       string
		n          int
		compressed bool
	}{
		{"random", maxLen, false}, {"text", maxLen, true}, {"mixed", maxLen, true},
		{"random", 1, false}, {"text", 100, true}, {"random", 64<<10 - 1, false},
		{"mixed", 300 << 10, true}, {"random", 0, false},
	} {
		data := sampleData(tc.kind, tc.n, uint64(i))
		id := idk.Sum(data)
		copy(s.Plain(len(data)), data)
		sealed, comp := s.Seal(id, len(data))
		if comp != tc.compressed {
			t.Fatalf("%s, %d bytes: compressed %v, want %v", tc.kind, tc.n, comp, tc.compressed)
		}
		ref, _, refComp := c.SealBlob(nil, nil, id, data)
		if refComp != comp || len(ref) != len(sealed) {
			t.Fatalf("%s, %d bytes: Sealer gives %d bytes (compressed %v), SealBlob %d (%v)", tc.kind, tc.n, len(sealed), comp, len(ref), refComp)
		}
		w := c.NewWriterBuffer(make([]byte, 0, 10))
		w.Add(id, sealed, len(data), comp)
		w.Add(id, ref, len(data), refComp)
		p, _, entries := w.Finish()
		for j, e := range entries {
			got, err := c.OpenBlob(nil, p, e)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%s, %d bytes, blob %d: OpenBlob: %v", tc.kind, tc.n, j, err)
			}
			got, err = o.Open(p[e.Offset:e.Offset+e.Length], e)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%s, %d bytes, blob %d: Opener: %v", tc.kind, tc.n, j, err)
			}
		}
	}
}

func TestOpenerRejects(t *testing.T) {
	c := testCodec(t)
	idk := chunk.NewIDKey(c.key.IDKey())
	o := c.NewOpener(1 << 10)
	data := sampleData("text", 5000, 1)
	id := idk.Sum(data)
	sealed, _, comp := c.SealBlob(nil, nil, id, data)
	e := Entry{ID: id, Length: uint32(len(sealed)), RawLength: uint32(len(data)), Compressed: comp}
	if _, err := o.Open(sealed[:len(sealed)-1], e); !errors.Is(err, ErrFormat) {
		t.Errorf("short blob: %v", err)
	}
	bad := bytes.Clone(sealed)
	bad[30] ^= 1
	if _, err := o.Open(bad, e); !errors.Is(err, crypt.ErrAuth) {
		t.Errorf("tampered blob: %v", err)
	}
	other := e
	other.ID[0] ^= 1
	if _, err := o.Open(sealed, other); !errors.Is(err, crypt.ErrAuth) {
		t.Errorf("blob under another ID: %v", err)
	}
	wrongLen := e
	wrongLen.RawLength++
	if _, err := o.Open(sealed, wrongLen); !errors.Is(err, ErrFormat) {
		t.Errorf("wrong raw length: %v", err)
	}
}

// TestSealerOpenerDoNotAllocate: the point of both. zstd allocates a few
// small tables per call, which is all that is allowed.
func TestSealerOpenerDoNotAllocate(t *testing.T) {
	if alloc.RaceEnabled {
		t.Skip("the race detector makes sync.Pool drop what it holds")
	}
	c := testCodec(t)
	idk := chunk.NewIDKey(c.key.IDKey())
	s := c.NewSealer(1 << 20)
	o := c.NewOpener(1 << 20)
	for _, kind := range []string{"random", "mixed"} {
		data := sampleData(kind, 1<<20, 2)
		id := idk.Sum(data)
		var sealed []byte
		var comp bool
		seal := bytesPerRun(func() {
			copy(s.Plain(len(data)), data)
			sealed, comp = s.Seal(id, len(data))
		})
		blob := bytes.Clone(sealed)
		e := Entry{ID: id, Length: uint32(len(blob)), RawLength: uint32(len(data)), Compressed: comp}
		open := bytesPerRun(func() {
			if _, err := o.Open(blob, e); err != nil {
				t.Fatal(err)
			}
		})
		if seal > 1<<10 || open > 1<<10 {
			t.Errorf("%s: %d bytes allocated per Seal, %d per Open", kind, seal, open)
		}
	}
}

// bytesPerRun returns the bytes f allocates, on average over 20 calls after
// a few that warm up every zstd encoder of the Codec's pool.
func bytesPerRun(f func()) uint64 {
	const runs = 20
	for range 2 * runtime.GOMAXPROCS(0) {
		f()
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / runs
}

func TestIncompressible(t *testing.T) {
	for _, tc := range []struct {
		kind string
		n    int
		want bool
	}{
		{"random", 1 << 20, true}, {"random", 64 << 10, true}, {"random", 64<<10 - 1, false},
		{"text", 1 << 20, false}, {"mixed", 1 << 20, false},
	} {
		for seed := range uint64(20) {
			if got := incompressible(sampleData(tc.kind, tc.n, seed)); got != tc.want {
				t.Fatalf("%s, %d bytes, seed %d: incompressible %v", tc.kind, tc.n, seed, got)
			}
		}
	}
	// Random bytes with a quarter of them zero: order-0 coding saves 1/8.
	b := sampleData("random", 1<<20, 1)
	for i := 0; i < len(b); i += 4 {
		b[i] = 0
	}
	if incompressible(b) {
		t.Fatal("random data with every fourth byte zero counts as incompressible")
	}
}
