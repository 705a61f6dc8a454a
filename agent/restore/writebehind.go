package restore

import (
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// writeBehindStep is how many bytes a restore writes between two rounds
// of write-behind.
const writeBehindStep = 64 << 20

// writeBehind is the target of a restore as the workers write into it.
// Every writeBehindStep bytes it has the kernel start writing the dirty
// pages out (sync_file_range) and drop the pages already written
// (POSIX_FADV_DONTNEED), in the background. A restore writes the whole
// volume once and reads none of it back: left to itself the kernel would
// keep all of it in the page cache, pushing out what the node's other
// workloads use, and write it out only at the final fsync, or in direct
// reclaim when memory runs short, which costs the restore more system
// time than the writing itself (perf/README.md). With write-behind the
// writing overlaps the restore and the page cache holds about two steps
// of it. Both calls are hints: an error is ignored, and the final fsync
// reports any that matters.
//
// Writes into a regular file are serialized: ext4 and XFS take the inode
// lock for every buffered write, and writers that wait for it spin in the
// kernel, burning the CPU the other workers decode with. A block device
// takes no such lock.
type writeBehind struct {
	f      *os.File
	serial bool
	mu     sync.Mutex
	n      atomic.Int64 // bytes written
	kick   chan struct{}
	rounds atomic.Int64 // rounds done, for tests
	done   chan struct{}
}

func newWriteBehind(f *os.File, regular bool) *writeBehind {
	w := &writeBehind{f: f, serial: regular, kick: make(chan struct{}, 1), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *writeBehind) WriteAt(p []byte, off int64) (int, error) {
	if w.serial {
		w.mu.Lock()
		defer w.mu.Unlock()
	}
	n, err := w.f.WriteAt(p, off)
	if t := w.n.Add(int64(n)); t/writeBehindStep != (t-int64(n))/writeBehindStep {
		select {
		case w.kick <- struct{}{}:
		default: // a round is pending: it covers these bytes too
		}
	}
	return n, err
}

func (w *writeBehind) run() {
	defer close(w.done)
	fd := int(w.f.Fd())
	for range w.kick {
		unix.SyncFileRange(fd, 0, 0, unix.SYNC_FILE_RANGE_WRITE) //nolint:errcheck // a hint
		unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)               //nolint:errcheck // a hint
		w.rounds.Add(1)
	}
}

// close ends write-behind once no more writes come.
func (w *writeBehind) close() {
	close(w.kick)
	<-w.done
}
