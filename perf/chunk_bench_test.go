package perf

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/restic/chunker"

	"github.com/ferrydr/ferry/chunk"
)

const (
	chunkVolumeSize = 256 << 20
	chunkPol        = chunker.Pol(0x3DA3358B4DC173)
)

// chunkSizes are the candidates for the repository default, min/avg/max.
var chunkSizes = []struct {
	name string
	p    chunk.Params
}{
	{"256K-1M-4M", chunk.DefaultParams(chunkPol)},
	{"512K-2M-8M", chunk.Params{Pol: chunkPol, MinSize: 512 << 10, MaxSize: 8 << 20, AverageBits: 21}},
	{"128K-512K-2M", chunk.Params{Pol: chunkPol, MinSize: 128 << 10, MaxSize: 2 << 20, AverageBits: 19}},
}

// chunkVolumes returns 256 MiB of pseudo-random data, and the same with 90%
// of it in 4 KiB-aligned holes (zeroed, as a filesystem would read them).
var chunkVolumes = sync.OnceValues(func() (dense, sparse *sparseVolume) {
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, chunkVolumeSize)
	for i := 0; i < len(data); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			data[i+j] = byte(v >> (8 * j))
		}
	}
	holey := bytes.Clone(data)
	var holes []chunk.Range
	for off := int64(0); off < chunkVolumeSize; {
		off += int64(r.IntN(512)+1) << 12 // about 1 MiB of data
		n := min(int64(r.IntN(4608)+1)<<12, chunkVolumeSize-off)
		if n <= 0 {
			break
		}
		clear(holey[off : off+n])
		holes = append(holes, chunk.Range{Off: off, Len: n})
		off += n
	}
	return &sparseVolume{data: data}, &sparseVolume{data: holey, holes: holes}
})

type sparseVolume struct {
	data  []byte
	holes []chunk.Range
}

// benchSplitter chunks v once per iteration; bytes are volume bytes.
func benchSplitter(b *testing.B, v *sparseVolume, p chunk.Params) {
	buf := make([]byte, p.MaxSize)
	var chunks, read int64
	b.SetBytes(int64(len(v.data)))
	b.ReportAllocs()
	for b.Loop() {
		s, err := chunk.NewSplitter(bytes.NewReader(v.data), int64(len(v.data)), v.holes, p)
		if err != nil {
			b.Fatal(err)
		}
		for {
			_, err := s.Next(buf)
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			chunks++
		}
		read += s.BytesRead()
	}
	b.ReportMetric(float64(chunks)/float64(b.N), "chunks/op")
	b.ReportMetric(float64(read)/float64(b.N)/float64(len(v.data))*100, "%read")
}

// BenchmarkChunk measures canonical chunking of a dense and a 90% sparse
// volume (holes declared) for each candidate chunk size.
func BenchmarkChunk(b *testing.B) {
	dense, sparse := chunkVolumes()
	for _, cs := range chunkSizes {
		b.Run(cs.name+"/dense", func(b *testing.B) { benchSplitter(b, dense, cs.p) })
		b.Run(cs.name+"/sparse90", func(b *testing.B) { benchSplitter(b, sparse, cs.p) })
	}
}

// BenchmarkChunkPlainRestic is the baseline: restic/chunker alone over the
// dense volume, which is what BenchmarkChunk must keep up with.
func BenchmarkChunkPlainRestic(b *testing.B) {
	dense, _ := chunkVolumes()
	for _, cs := range chunkSizes {
		b.Run(cs.name, func(b *testing.B) {
			p := cs.p
			buf := make([]byte, p.MaxSize)
			c := chunker.New(nil, p.Pol)
			b.SetBytes(int64(len(dense.data)))
			b.ReportAllocs()
			for b.Loop() {
				c.ResetWithBoundaries(bytes.NewReader(dense.data), p.Pol, p.MinSize, p.MaxSize)
				c.SetAverageBits(p.AverageBits)
				for {
					_, err := c.Next(buf)
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(fmt.Errorf("restic chunker: %w", err))
					}
				}
			}
		})
	}
}
