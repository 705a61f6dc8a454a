package perf

import (
	"math/rand/v2"
	"testing"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/pack"
)

// sampleChunks returns 1 MiB chunks of random bytes and of mixed
// random-and-text bytes (see volume.Data).
func sampleChunks() map[string][]byte {
	r := rand.New(rand.NewPCG(5, 5))
	random := make([]byte, 1<<20)
	for i := range random {
		random[i] = byte(r.Uint32())
	}
	return map[string][]byte{"random": random, "mixed": volume.Data(r, 1<<20)}
}

// BenchmarkHash measures chunk IDs: HMAC-SHA256 under the repository key
// (SHA-NI where the CPU has it), on 1 MiB chunks, one core.
func BenchmarkHash(b *testing.B) {
	k, err := crypt.NewRandomKey()
	if err != nil {
		b.Fatal(err)
	}
	idk := chunk.NewIDKey(k.IDKey())
	data := sampleChunks()["random"]
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		idk.Sum(data)
	}
}

// BenchmarkPack measures what a new chunk costs before erasure coding:
// zstd (skipped when it does not pay) and AES-256-GCM into a pack, and the
// way back, on 1 MiB chunks, one core.
func BenchmarkPack(b *testing.B) {
	k, err := crypt.NewRandomKey()
	if err != nil {
		b.Fatal(err)
	}
	codec, err := pack.NewCodec(k)
	if err != nil {
		b.Fatal(err)
	}
	idk := chunk.NewIDKey(k.IDKey())
	for name, data := range sampleChunks() {
		id := idk.Sum(data)
		b.Run("seal/"+name, func(b *testing.B) {
			var sealed, scratch []byte
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				sealed, scratch, _ = codec.SealBlob(sealed[:0], scratch, id, data)
			}
			b.ReportMetric(float64(len(sealed))/float64(len(data)), "stored/raw")
		})
		b.Run("open/"+name, func(b *testing.B) {
			w := codec.NewWriter(2 << 20)
			sealed, _, comp := codec.SealBlob(nil, nil, id, data)
			w.Add(id, sealed, len(data), comp)
			p, _, entries := w.Finish()
			var out []byte
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if out, err = codec.OpenBlob(out[:0], p, entries[0]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
