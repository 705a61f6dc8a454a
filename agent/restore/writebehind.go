package restore

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

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
//
// Where the file or device takes direct I/O, the whole pages of a large
// write go out through a second descriptor opened with O_DIRECT, and only
// its partial pages at either end through the page cache: a restore then
// costs a fraction of the system time (copying into the page cache,
// writing back, reclaiming) and needs neither the serialization nor the
// write-behind for most of its bytes (perf/README.md, "Restore with
// direct I/O"). A page is only ever written one way: whole pages of a
// chunk run direct, and a page a run only partly covers buffered, where
// the run next to it writes its part buffered too.
type writeBehind struct {
	f           *os.File
	direct      *os.File    // f opened with O_DIRECT, or nil
	align       int64       // offset and memory alignment of direct writes
	noDirect    atomic.Bool // a direct write was refused: buffered from then on
	serial      bool
	mu          sync.Mutex
	n           atomic.Int64 // bytes written buffered
	directBytes atomic.Int64 // bytes written direct
	kick        chan struct{}
	rounds      atomic.Int64 // rounds done, for tests
	done        chan struct{}
}

// directMin is the least a write must hold in whole pages to go out
// direct. Smaller writes (a repeated chunk, a short run of chunks) go
// through the page cache, where write-behind gathers them; the figure is
// a choice, not a measurement.
const directMin = 64 << 10

// newWriteBehind writes into f, and into direct, f opened with O_DIRECT
// (or nil), the whole pages of writes of at least directMin bytes.
func newWriteBehind(f *os.File, regular bool, direct *os.File) *writeBehind {
	w := &writeBehind{f: f, direct: direct, serial: regular, kick: make(chan struct{}, 1), done: make(chan struct{})}
	if direct != nil {
		if w.align = directAlign(direct); w.align == 0 {
			direct.Close()
			w.direct = nil
		}
	}
	go w.run()
	return w
}

// directAlign returns the alignment direct writes into f need, in file
// offset and in memory, and at least a page; 0 when f takes no direct I/O.
func directAlign(f *os.File) int64 {
	var st unix.Statx_t
	if unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &st) != nil ||
		st.Mask&unix.STATX_DIOALIGN == 0 || st.Dio_mem_align == 0 || st.Dio_offset_align == 0 {
		return 0
	}
	return max(int64(os.Getpagesize()), int64(st.Dio_mem_align), int64(st.Dio_offset_align))
}

// openDirect opens path for writing with O_DIRECT, or returns nil where
// that is refused.
func openDirect(path string) *os.File {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	return f
}

// WriteAt writes p at off: the whole pages of p direct when it can, the
// rest buffered.
func (w *writeBehind) WriteAt(p []byte, off int64) (int, error) {
	if w.direct == nil || w.noDirect.Load() || len(p) < directMin {
		return w.buffered(p, off)
	}
	end := off + int64(len(p))
	a := (off + w.align - 1) / w.align * w.align
	b := end / w.align * w.align
	if b-a < directMin || uintptr(unsafe.Pointer(&p[a-off]))%uintptr(w.align) != 0 {
		return w.buffered(p, off)
	}
	n, err := w.buffered(p[:a-off], off)
	if err != nil {
		return n, err
	}
	m, err := w.direct.WriteAt(p[a-off:b-off], a)
	if m == 0 && errors.Is(err, unix.EINVAL) {
		// Refused after all (a filesystem that takes O_DIRECT but not
		// these writes): buffered, from now on.
		w.noDirect.Store(true)
		m, err = w.buffered(p[a-off:b-off], a)
	} else {
		w.directBytes.Add(int64(m))
	}
	n += m
	if err != nil {
		return n, err
	}
	m, err = w.buffered(p[b-off:], b)
	return n + m, err
}

func (w *writeBehind) buffered(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
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

// close ends write-behind once no more writes come, and closes the direct
// descriptor. Direct writes are on the device once they return, but not
// the filesystem's record of them: the caller syncs f.
func (w *writeBehind) close() error {
	close(w.kick)
	<-w.done
	if w.direct != nil {
		return w.direct.Close()
	}
	return nil
}
