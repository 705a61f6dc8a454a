package chunk

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// fuzzParams make many chunks of small inputs: stride 64, average 64.
var fuzzParams = Params{Pol: testPol, MinSize: 64, MaxSize: 512, AverageBits: 6}

// fuzzVolume turns fuzz input into a volume: data as is, with zero ranges
// described by spec. spec[0] picks the read size; then each pair of bytes
// (gap, length) is a zero range, in units of 4 bytes, after the previous
// one; an odd length is declared as a hole, an even one only zeroed.
func fuzzVolume(data, spec []byte) (vol []byte, holes []Range, bsize int64) {
	vol = bytes.Clone(data) // fuzz inputs must not be modified
	bsize = 256
	if len(spec) > 0 {
		bsize += int64(spec[0]) * 31
		spec = spec[1:]
	}
	var off int64
	for ; len(spec) >= 2; spec = spec[2:] {
		off += int64(spec[0]) * 4
		end := min(off+int64(spec[1])*4, int64(len(vol)))
		if off >= end {
			break
		}
		clear(vol[off:end])
		if spec[1]%2 == 1 {
			holes = append(holes, Range{Off: off, Len: end - off})
		}
		off = end
	}
	return vol, holes, bsize
}

func FuzzSplitter(f *testing.F) {
	rng := rand.New(rand.NewPCG(9, 9))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	f.Add([]byte{}, []byte{})
	f.Add([]byte{1}, []byte{0, 0, 1})
	f.Add(random(700), []byte{3, 10, 33, 0, 64, 2, 16, 5, 65})
	f.Add(random(900), []byte{200, 0, 255, 0, 3, 40, 81, 0, 16, 0, 17})
	f.Add(make([]byte, 800), []byte{1, 7, 33})
	f.Add(random(500), []byte{0, 0, 255, 0, 255})
	f.Fuzz(func(t *testing.T, data, spec []byte) {
		vol, holes, bsize := fuzzVolume(data, spec)
		checkVolume(t, vol, holes, fuzzParams, bsize, blockSize)
	})
}

// FuzzParallel checks Parallel against the plain chunker: the volume as in
// FuzzSplitter, setup picks the goroutines and a segment of one to eight
// read blocks, from far below the max chunk size to several of them.
func FuzzParallel(f *testing.F) {
	rng := rand.New(rand.NewPCG(10, 10))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	f.Add([]byte{}, []byte{}, byte(0))
	f.Add(random(700), []byte{3, 10, 33, 0, 64, 2, 16, 5, 65}, byte(9))
	f.Add(random(3000), []byte{0, 200, 0, 255, 0, 3, 40, 81, 0, 16, 0, 17}, byte(27))
	f.Add(make([]byte, 2000), []byte{1, 7, 33}, byte(3))
	f.Add(bytes.Repeat(random(50), 60), []byte{0}, byte(12))
	f.Fuzz(func(t *testing.T, data, spec []byte, setup byte) {
		vol, holes, bsize := fuzzVolume(data, spec)
		st := parallelSetup{workers: int(setup/8%4) + 1, seg: bsize * int64(setup%8+1), bsize: bsize}
		checkParallel(t, vol, holes, fuzzParams, []parallelSetup{st})
	})
}
