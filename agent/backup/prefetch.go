package backup

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/ferrydr/ferry/chunk"
)

const (
	// prefetchWindow is how far past the chunker's position in the volume
	// the read-ahead of an incremental backup may read: enough to keep the device busy
	// while the chunker works, little enough not to push out of the page
	// cache what it still has to read.
	prefetchWindow = 256 << 20
	// prefetchStep is the size of one read-ahead read.
	prefetchStep = 1 << 20
	// prefetchReaders is how many read-ahead reads are in flight.
	prefetchReaders = 4
	// prefetchTail is how far past each expected range the read-ahead
	// goes: where the new chunking runs on past a changed chunk before it
	// meets an old cut, and the chunker's own read-ahead.
	prefetchTail = 256 << 10
)

// prefetch reads ranges of src ahead of the chunker of an incremental
// backup, prefetchReaders reads at a time, up to prefetchWindow bytes of the
// volume past at (the offset the chunker has reached), so that the chunker
// finds them in the page cache. The chunker reads scattered stretches
// around the changes one after another; from a cold device each of its
// reads waits in turn, while these keep several in flight. It reads the data
// into a scratch buffer and drops it: the page cache keeps it. Errors are
// ignored (the chunker meets them itself), and prefetch stops when ctx is
// done.
func prefetch(ctx context.Context, src io.ReaderAt, ranges []chunk.Range, size int64, at func() int64) {
	pieces := make(chan chunk.Range)
	var wg sync.WaitGroup
	for range prefetchReaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, prefetchStep)
			for p := range pieces {
				src.ReadAt(buf[:p.Len], p.Off) //nolint:errcheck // a hint
			}
		}()
	}
	defer wg.Wait()
	defer close(pieces)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	var done int64
	for _, r := range ranges {
		end := min(size, r.End()+prefetchTail)
		for off := max(r.Off, done); off < end; off += prefetchStep {
			n := min(prefetchStep, end-off)
			if off+n <= at() {
				continue // the chunker is past it
			}
			for off+n > at()+prefetchWindow {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
			select {
			case pieces <- chunk.Range{Off: off, Len: n}:
			case <-ctx.Done():
				return
			}
			done = off + n
		}
	}
}
