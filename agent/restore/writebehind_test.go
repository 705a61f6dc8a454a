package restore

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ferrydr/ferry/testenv/xfs"
)

// TestWriteBehindRounds: concurrent writes of 3.5 steps land where they
// were written, and write-behind runs a round at each step crossed, not
// more (a round pending when the next step is crossed covers both).
func TestWriteBehindRounds(t *testing.T) {
	for _, regular := range []bool{true, false} {
		f, err := os.Create(filepath.Join(t.TempDir(), "out"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		const piece = 1 << 20
		const pieces = 7 * writeBehindStep / 2 / piece
		w := newWriteBehind(f, regular, nil)
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b := make([]byte, piece)
				for i := g; i < pieces; i += 4 {
					b[0], b[piece-1] = byte(i), byte(i>>8)
					if _, err := w.WriteAt(b, int64(i)*piece); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		w.close()
		if got := w.rounds.Load(); got < 1 || got > 3 {
			t.Errorf("serial %v: %d rounds of write-behind for 3.5 steps, want 1 to 3", regular, got)
		}
		got, err := os.ReadFile(f.Name())
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != pieces*piece {
			t.Fatalf("serial %v: %d bytes written, want %d", regular, len(got), pieces*piece)
		}
		zero := make([]byte, piece-2)
		for i := range pieces {
			p := got[i*piece : (i+1)*piece]
			if p[0] != byte(i) || p[piece-1] != byte(i>>8) || !bytes.Equal(p[1:piece-1], zero) {
				t.Fatalf("serial %v: piece %d holds other bytes", regular, i)
			}
		}
	}
}

// TestWriteBehindDirect: from concurrent writers, the whole pages of a
// write held in phase with its offset (as a restore's batches are) go out
// direct, exactly those; the partial pages at its ends, writes out of
// phase and writes too small go through the page cache; every byte lands
// where it was written. On XFS, which takes direct I/O.
func TestWriteBehindDirect(t *testing.T) {
	const size = 24 << 20
	path, w := directTarget(t, size)
	if w.align != int64(batchAlign) {
		t.Fatalf("direct writes aligned to %d, batches to %d", w.align, batchAlign)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	// Pieces 1 byte to 1.5 MiB long cover the file; every fourth is held
	// out of phase, by one byte.
	type piece struct {
		off, n  int64
		inPhase bool
	}
	var pieces []piece
	var wantDirect int64
	for off := int64(0); off < size; {
		n := min(size-off, 1+rng.Int64N(3<<19))
		p := piece{off, n, len(pieces)%4 != 3}
		if a, b := (off+w.align-1)/w.align*w.align, (off+n)/w.align*w.align; p.inPhase && n >= directMin && b-a >= directMin {
			wantDirect += b - a
		}
		pieces = append(pieces, p)
		off += n
	}
	if wantDirect == 0 || wantDirect > size*9/10 {
		t.Fatalf("%d of %d bytes to go direct: not a test of both ways", wantDirect, size)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := pageAligned(2<<20 + batchAlign)
			for i := g; i < len(pieces); i += 4 {
				p := pieces[i]
				ph := int(p.off % int64(batchAlign))
				if !p.inPhase {
					ph = (ph + 1) % batchAlign
				}
				b := append(buf[ph:ph], want[p.off:p.off+p.n]...)
				if n, err := w.WriteAt(b, p.off); err != nil || n != len(b) {
					t.Errorf("write %d bytes at %d: %d, %v", len(b), p.off, n, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	if got := w.directBytes.Load(); got != wantDirect {
		t.Errorf("%d bytes written direct, want %d", got, wantDirect)
	}
	if got := w.n.Load(); got != size-wantDirect {
		t.Errorf("%d bytes written through the page cache, want %d", got, size-wantDirect)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the file holds other bytes than were written")
	}
}

// TestWriteBehindDirectRefused: a direct write the kernel refuses (here
// misaligned, XFS needs 512-byte alignment and is told 1) is written
// through the page cache instead, and so is every write after it.
func TestWriteBehindDirectRefused(t *testing.T) {
	path, w := directTarget(t, 0)
	w.align = 1
	want := bytes.Repeat([]byte("refused "), 48<<10)
	if n, err := w.WriteAt(want[:len(want)/2], 1001); err != nil || n != len(want)/2 {
		t.Fatalf("misaligned write: %d, %v", n, err)
	}
	if !w.noDirect.Load() {
		t.Fatal("a refused direct write left direct writes on")
	}
	w.align = int64(batchAlign)
	buf := pageAligned(len(want))
	copy(buf, want[len(want)/2:])
	if n, err := w.WriteAt(buf[:len(want)/2], 1001+int64(len(want)/2)); err != nil || n != len(want)/2 {
		t.Fatalf("aligned write: %d, %v", n, err)
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	if got := w.directBytes.Load(); got != 0 {
		t.Errorf("%d bytes written direct after a refusal", got)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[1001:], want) || !bytes.Equal(got[:1001], make([]byte, 1001)) {
		t.Fatal("the file holds other bytes than were written")
	}
}

// directTarget makes a file of size bytes on XFS, which takes direct I/O,
// and a writeBehind into it with direct writes on, serialized as for a
// regular file.
func directTarget(t *testing.T, size int64) (string, *writeBehind) {
	t.Helper()
	path := filepath.Join(xfs.Mount(t, xfs.MinSize), "out")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	w := newWriteBehind(f, true, openDirect(path))
	if w.direct == nil {
		t.Fatal("XFS took no direct I/O")
	}
	return path, w
}
