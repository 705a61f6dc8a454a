package perf

import (
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/ferrydr/ferry/transport/erasure"
)

const erasurePackSize = 16 << 20

var erasureSchemes = []erasure.Scheme{{K: 2, M: 1}, {K: 4, M: 2}}

func erasurePack(b *testing.B) ([32]byte, []byte) {
	b.Helper()
	pack := make([]byte, erasurePackSize)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < len(pack); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			pack[i+j] = byte(v >> (8 * j))
		}
	}
	return sha256.Sum256(pack), pack
}

// BenchmarkErasureEncode measures splitting a 16 MiB pack into complete
// shard objects (copy, parity, CRCs, headers). Bytes are pack bytes.
func BenchmarkErasureEncode(b *testing.B) {
	id, pack := erasurePack(b)
	for _, s := range erasureSchemes {
		b.Run(s.String(), func(b *testing.B) {
			c, err := erasure.NewCoder(s)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(pack)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Encode(id, pack); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkErasureDecodeLostData measures getting a 16 MiB pack back when
// data shard 0 is lost: checking every shard's CRC and reconstructing the
// lost one from parity. Bytes are pack bytes.
func BenchmarkErasureDecodeLostData(b *testing.B) {
	id, pack := erasurePack(b)
	for _, s := range erasureSchemes {
		b.Run(s.String(), func(b *testing.B) {
			c, err := erasure.NewCoder(s)
			if err != nil {
				b.Fatal(err)
			}
			objs, err := c.Encode(id, pack)
			if err != nil {
				b.Fatal(err)
			}
			objs = slices.Clone(objs)
			objs[0] = nil
			b.SetBytes(int64(len(pack)))
			b.ReportAllocs()
			for b.Loop() {
				out, rep, err := c.Decode(id, objs)
				if err != nil || len(out) != len(pack) || !rep.Reconstructed {
					b.Fatal(fmt.Errorf("decode: %w (%d bytes, %+v)", err, len(out), rep))
				}
			}
		})
	}
}
