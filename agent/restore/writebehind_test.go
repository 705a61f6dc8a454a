package restore

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
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
		w := newWriteBehind(f, regular)
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
