package perf

import (
	"bytes"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/ferrydr/ferry/chunk"
)

const (
	incrementalWrites    = 64
	incrementalWriteSize = 40 << 10
)

// incrementalVolume is the dense benchmark volume after 64 writes of
// 40 KiB at scattered 4 KiB-aligned offsets (1% of it), and the writes.
var incrementalVolume = sync.OnceValues(func() ([]byte, []chunk.Range) {
	dense, _ := chunkVolumes()
	vol := bytes.Clone(dense.data)
	r := rand.New(rand.NewPCG(3, 4))
	var changed []chunk.Range
	for range incrementalWrites {
		off := int64(r.IntN((len(vol)-incrementalWriteSize)>>12)) << 12
		for i := range int64(incrementalWriteSize) {
			vol[off+i] = byte(r.Uint32())
		}
		changed = append(changed, chunk.Range{Off: off, Len: incrementalWriteSize})
	}
	return vol, changed
})

// chunkList returns the chunk list of data, as a previous snapshot's
// manifest holds it.
func chunkList(b *testing.B, data []byte, p chunk.Params) []chunk.Chunk {
	s, err := chunk.NewSplitter(bytes.NewReader(data), int64(len(data)), nil, p)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, p.MaxSize)
	var out []chunk.Chunk
	for {
		c, err := s.Next(buf)
		if err == io.EOF {
			return out
		}
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, chunk.Chunk{Off: c.Off, Len: c.Len, Zero: c.Zero})
	}
}

// BenchmarkIncrementalChunk chunks the benchmark volume after 1% of it
// changed, in full and incrementally from the list before the change, for
// each candidate chunk size. Bytes per second are of the whole volume.
func BenchmarkIncrementalChunk(b *testing.B) {
	dense, _ := chunkVolumes()
	vol, changed := incrementalVolume()
	size := int64(len(vol))
	for _, cs := range chunkSizes {
		p := cs.p
		prev := chunkList(b, dense.data, p)
		b.Run(cs.name+"/full", func(b *testing.B) {
			buf := make([]byte, p.MaxSize)
			var read int64
			b.SetBytes(size)
			for b.Loop() {
				s, err := chunk.NewSplitter(bytes.NewReader(vol), size, nil, p)
				if err != nil {
					b.Fatal(err)
				}
				for {
					if _, err := s.Next(buf); err == io.EOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
				read += s.BytesRead()
			}
			b.ReportMetric(float64(read)/float64(b.N)/(1<<20), "read-MiB")
		})
		b.Run(cs.name+"/incremental", func(b *testing.B) {
			buf := make([]byte, p.MaxSize)
			var read, reused, chunks int64
			b.SetBytes(size)
			for b.Loop() {
				x, err := chunk.NewIncremental(bytes.NewReader(vol), size, nil, p, prev, slices.Clone(changed))
				if err != nil {
					b.Fatal(err)
				}
				for {
					_, i, err := x.Next(buf)
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					chunks++
					if i >= 0 {
						reused++
					}
				}
				read += x.BytesRead()
			}
			b.ReportMetric(float64(read)/float64(b.N)/(1<<20), "read-MiB")
			b.ReportMetric(float64(reused)/float64(chunks)*100, "%reused")
		})
	}
}
