package pack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/alloc"
	"github.com/ferrydr/ferry/transport/crypt"
)

func testCodec(t testing.TB) *Codec {
	k, err := crypt.NewRandomKey()
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCodec(k)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func samplePack(t testing.TB, c *Codec) ([]byte, [][]byte, []Entry) {
	r := rand.New(rand.NewPCG(1, 2))
	idk := chunk.NewIDKey(c.key.IDKey())
	w := c.NewWriter(1 << 20)
	var plains [][]byte
	for i := 0; i < 20; i++ {
		p := make([]byte, 1+r.IntN(50000))
		if i%2 == 0 { // compressible
			for j := range p {
				p[j] = byte(j / 100)
			}
		} else {
			for j := range p {
				p[j] = byte(r.Uint32())
			}
		}
		id := idk.Sum(p)
		sealed, _, comp := c.SealBlob(nil, nil, id, p)
		w.Add(id, sealed, len(p), comp)
		plains = append(plains, p)
	}
	p, id, entries := w.Finish()
	if Sum(p) != id {
		t.Fatal("pack id is not the hash of its bytes")
	}
	return p, plains, entries
}

func TestRoundTrip(t *testing.T) {
	c := testCodec(t)
	p, plains, entries := samplePack(t, c)
	got, err := c.ParseHeader(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(entries) {
		t.Fatalf("%d entries, want %d", len(got), len(entries))
	}
	compressed := 0
	for i, e := range got {
		if e != entries[i] {
			t.Fatalf("entry %d: %+v want %+v", i, e, entries[i])
		}
		if e.Compressed {
			compressed++
		}
		b, err := c.OpenBlob(nil, p, e)
		if err != nil || !bytes.Equal(b, plains[i]) {
			t.Fatalf("blob %d: %v", i, err)
		}
	}
	if compressed != 10 {
		t.Fatalf("%d blobs compressed, want the 10 compressible ones", compressed)
	}
}

func TestTamper(t *testing.T) {
	c := testCodec(t)
	p, _, entries := samplePack(t, c)
	bad := append([]byte(nil), p...)
	bad[len(bad)-20] ^= 1 // inside the sealed header
	if _, err := c.ParseHeader(bad); !errors.Is(err, crypt.ErrAuth) {
		t.Fatalf("tampered header: %v", err)
	}
	bad = append([]byte(nil), p...)
	bad[entries[3].Offset+20] ^= 1
	if _, err := c.OpenBlob(nil, bad, entries[3]); !errors.Is(err, crypt.ErrAuth) {
		t.Fatalf("tampered blob: %v", err)
	}
	swapped := entries[3]
	swapped.ID = entries[4].ID
	if _, err := c.OpenBlob(nil, p, swapped); !errors.Is(err, crypt.ErrAuth) {
		t.Fatalf("blob under another id: %v", err)
	}
	if _, err := c.ParseHeader(p[:len(p)-1]); !errors.Is(err, ErrFormat) {
		t.Fatalf("truncated: %v", err)
	}
	other := testCodec(t)
	if _, err := other.ParseHeader(p); !errors.Is(err, crypt.ErrAuth) {
		t.Fatalf("other key: %v", err)
	}
}

// fuzzCodec returns a Codec under the key of testdata/key.json (password
// "fuzz") and the pack testdata/pack sealed with it: three compressible and
// three random blobs. Fixed files, so that seeds can be whole packs that
// authenticate and header plaintexts that match the pack's blobs.
func fuzzCodec(f *testing.F) (*Codec, []byte) {
	obj, err := os.ReadFile("testdata/key.json")
	if err != nil {
		f.Fatal(err)
	}
	k, err := crypt.Unwrap(obj, []byte("fuzz"))
	if err != nil {
		f.Fatal(err)
	}
	c, err := NewCodec(k)
	if err != nil {
		f.Fatal(err)
	}
	p, err := os.ReadFile("testdata/pack")
	if err != nil {
		f.Fatal(err)
	}
	if _, err := c.ParseHeader(p); err != nil {
		f.Fatalf("testdata/pack: %v", err)
	}
	return c, p
}

// FuzzParseHeader feeds packs to ParseHeader and opens every blob of a
// header it accepts. With sealHeader, the input is a header's plaintext,
// sealed with the right key behind the blobs of testdata/pack, so that the
// parser's checks after authentication get fuzzed too. Seeds in
// testdata/fuzz/FuzzParseHeader: whole packs, intact and damaged, and
// header plaintexts, valid and not.
//
// A parse allocates in proportion to the input, whatever its counts say,
// and, in a pack whose header the key did not seal anew, an opened blob is
// always the chunk its entry names: entries that point at the wrong bytes
// fail. A header sealed with the key can mislabel a blob's compression
// (the flag is not in the blob's associated data), so there the callers'
// check of the keyed hash is what catches it (see OpenBlob).
func FuzzParseHeader(f *testing.F) {
	c, p := fuzzCodec(f)
	idk := chunk.NewIDKey(c.key.IDKey())
	blobsEnd := len(p) - trailerLen - int(binary.LittleEndian.Uint32(p[len(p)-trailerLen:]))
	blobs := p[:blobsEnd:blobsEnd] // Seal appends to a copy
	f.Fuzz(func(t *testing.T, b []byte, sealHeader bool) {
		if sealHeader {
			sealed := c.key.Seal(blobs, b, headerAD)
			b = binary.LittleEndian.AppendUint32(sealed, uint32(len(sealed)-blobsEnd))
			b = append(b, magic...)
		}
		var entries []Entry
		var err error
		n := alloc.Bytes(func() { entries, err = c.ParseHeader(b) })
		// 64 KiB of slack, as the other parsers' fuzz targets have: the
		// fuzzing engine's own goroutines allocate meanwhile (alloc.Bytes
		// counts them; with 4 KiB a 2-byte input once measured 5648).
		if limit := uint64(4*len(b) + 64<<10); n > limit {
			t.Fatalf("ParseHeader of %d bytes allocated %d (limit %d)", len(b), n, limit)
		}
		if err != nil {
			return
		}
		for i, e := range entries {
			plain, err := c.OpenBlob(nil, b, e)
			if err == nil && !sealHeader && idk.Sum(plain) != e.ID {
				t.Fatalf("entry %d %+v opened to other bytes than chunk %s", i, e, e.ID.Short())
			}
		}
	})
}
