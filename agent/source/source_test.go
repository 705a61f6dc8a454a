package source

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/restic/chunker"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/loop"
)

// write describes data written into a sparse test file.
type write struct{ off, n int64 }

// sparseFile creates a file of size bytes with random data at writes and
// holes elsewhere, and returns its path and content.
func sparseFile(t *testing.T, size int64, writes []write) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "volume.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	content := make([]byte, size)
	rng := rand.New(rand.NewPCG(uint64(size), 1))
	for _, w := range writes {
		p := content[w.off : w.off+w.n]
		for i := range p {
			p[i] = byte(rng.Uint32() | 1)
		}
		if _, err := f.WriteAt(p, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return path, content
}

// fsBlock returns the block size of the filesystem holding path, the
// granularity of SEEK_HOLE.
func fsBlock(t *testing.T, path string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Bsize
}

// expectedHoles is the complement of the writes rounded out to whole
// filesystem blocks.
func expectedHoles(size, bs int64, writes []write) []chunk.Range {
	var holes []chunk.Range
	var off int64
	for _, w := range writes {
		start := w.off / bs * bs
		if start > off {
			holes = append(holes, chunk.Range{Off: off, Len: start - off})
		}
		off = max(off, min((w.off+w.n+bs-1)/bs*bs, size))
	}
	if off < size {
		holes = append(holes, chunk.Range{Off: off, Len: size - off})
	}
	return holes
}

func TestHoles(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name   string
		size   int64
		writes []write
	}{
		{"empty", 0, nil},
		{"all hole", 10*mib + 123, nil},
		{"dense", 3*mib + 5, []write{{0, 3*mib + 5}}},
		{"sparse", 10*mib + 123, []write{
			{0, 4096}, {mib + 100, 5000}, {5 * mib, 64 << 10}, {5*mib + 64<<10, 1}, {10*mib + 100, 23},
		}},
		{"data at both ends", 8 * mib, []write{{0, 1}, {8*mib - 1, 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, content := sparseFile(t, tc.size, tc.writes)
			v, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			if v.Size() != tc.size || v.IsBlockDevice() {
				t.Fatalf("size %d, block device %v; want %d, false", v.Size(), v.IsBlockDevice(), tc.size)
			}
			holes, err := v.Holes()
			if err != nil {
				t.Fatal(err)
			}
			want := expectedHoles(tc.size, fsBlock(t, path), tc.writes)
			if !slices.Equal(holes, want) {
				t.Errorf("holes %v, want %v (filesystem block %d)", holes, want, fsBlock(t, path))
			}
			got := make([]byte, tc.size)
			if n, err := v.ReadAt(got, 0); n != len(got) || (err != nil && err != io.EOF) {
				t.Fatalf("ReadAt: %d, %v", n, err)
			}
			if !bytes.Equal(got, content) {
				t.Fatal("content differs")
			}
		})
	}
}

// TestHolesChunkLikeData chunks a sparse file with and without its holes:
// the chunks must be the same, and the holes must not be read.
func TestHolesChunkLikeData(t *testing.T) {
	const mib = 1 << 20
	writes := []write{{0, 3 * mib}, {20 * mib, 100 << 10}, {21*mib + 7, 2 * mib}, {40 * mib, 1}}
	path, _ := sparseFile(t, 48*mib, writes)
	v, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	holes, err := v.Holes()
	if err != nil {
		t.Fatal(err)
	}
	p := chunk.DefaultParams(chunker.Pol(0x3DA3358B4DC173))
	var runs [2][]chunk.Chunk
	var read [2]int64
	for i, hs := range [][]chunk.Range{nil, holes} {
		s, err := chunk.NewSplitter(v, v.Size(), hs, p)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, p.MaxSize)
		for {
			c, err := s.Next(buf)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			c.Data = bytes.Clone(c.Data)
			runs[i] = append(runs[i], c)
		}
		read[i] = s.BytesRead()
	}
	if !slices.EqualFunc(runs[0], runs[1], func(a, b chunk.Chunk) bool {
		return a.Off == b.Off && a.Len == b.Len && a.Zero == b.Zero && bytes.Equal(a.Data, b.Data)
	}) {
		t.Fatal("chunks differ with holes declared")
	}
	if read[0] != v.Size() || read[1] > 6*mib {
		t.Errorf("read %d bytes without holes, %d with; want %d and at most %d", read[0], read[1], v.Size(), 6*mib)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
	for path, kind := range map[string]string{dir: "directory", "/dev/null": "character device", fifo: "named pipe"} {
		_, err := Open(path)
		if !errors.Is(err, ErrNotVolume) || !strings.Contains(err.Error(), kind) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v, want ErrNotVolume naming the path and %q", path, err, kind)
		}
	}
}

// TestLoopDevice reads a file through a loop device: a real block device.
func TestLoopDevice(t *testing.T) {
	const size = 6 << 20
	path, content := sparseFile(t, size, []write{{0, 8192}, {3 << 20, 1 << 20}})
	dev := loop.Attach(t, path, true)
	v, err := Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if !v.IsBlockDevice() || v.Size() != size {
		t.Fatalf("%s: block device %v, size %d; want true, %d", dev, v.IsBlockDevice(), v.Size(), size)
	}
	if holes, err := v.Holes(); holes != nil || err != nil {
		t.Errorf("holes of a block device: %v, %v; want nil, nil", holes, err)
	}
	got := make([]byte, size)
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, content) {
		t.Fatal("content read through the loop device differs")
	}
	if n, err := v.ReadAt(make([]byte, 10), size-5); n != 5 || err != io.EOF {
		t.Errorf("read across the end: %d, %v; want 5, io.EOF", n, err)
	}
}
