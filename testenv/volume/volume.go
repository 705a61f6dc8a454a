// Package volume makes sample volume images for tests and benchmarks:
// sparse files with runs of random data, compressible text and zeros,
// reproducible from a seed.
package volume

import (
	"fmt"
	"math/rand/v2"
	"os"
)

// Spec describes a sample volume.
type Spec struct {
	Size     int64   // bytes
	DataFrac float64 // share of the volume written with data (the rest stays holes)
	Seed     uint64
}

// Write creates the image at path.
func Write(path string, s Spec) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(s.Size); err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(s.Seed, 0x5eed))
	want := int64(float64(s.Size) * s.DataFrac)
	const extent = 1 << 20
	var written int64
	for written < want {
		n := min(int64(extent/4+r.IntN(2*extent)), want-written)
		off := r.Int64N(max(1, s.Size-n)) &^ 4095
		buf := Data(r, int(n))
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("write sample volume: %w", err)
		}
		written += n
	}
	return f.Close()
}

// Data returns n bytes mixing random data, text-like compressible runs and
// a few short zero runs, as real files are.
func Data(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; {
		run := min(n-i, 4096+r.IntN(64<<10))
		switch r.IntN(4) {
		case 0, 1:
			for j := i; j < i+run; j++ {
				b[j] = byte(r.Uint32())
			}
		case 2:
			for j := i; j < i+run; j++ {
				b[j] = "abcdefgh ijklmnop\n"[(j*7+run)%18]
			}
		}
		i += run
	}
	return b
}

// Mutate overwrites count random ranges of about size bytes in the image,
// like a workload changing some blocks.
func Mutate(path string, count, size int, seed uint64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(seed, 0xc4a9e))
	for i := 0; i < count; i++ {
		off := r.Int64N(max(1, fi.Size()-int64(size))) &^ 4095
		if _, err := f.WriteAt(Data(r, size), off); err != nil {
			return err
		}
	}
	return f.Close()
}
