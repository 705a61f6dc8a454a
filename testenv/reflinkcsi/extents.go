package reflinkcsi

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FIEMAP, from <linux/fiemap.h> and <linux/fs.h>; golang.org/x/sys does
// not wrap it.
const (
	fsIocFiemap           = 0xC020660B // _IOWR('f', 11, struct fiemap)
	fiemapFlagSync        = 0x1
	fiemapExtentLast      = 0x1
	fiemapExtentUnknown   = 0x2
	fiemapExtentDelalloc  = 0x4
	fiemapExtentUnwritten = 0x800
	fiemapHeaderSize      = 32
	fiemapExtentSize      = 56
	fiemapBatch           = 256 // extents per ioctl: bounds memory
)

// extent is a logical range of a file mapped to contiguous disk bytes.
type extent struct {
	logical, physical, length int64
	// unknown means the disk location is not known yet (delayed
	// allocation), so the extent cannot be shown to be shared.
	unknown bool
}

func (e extent) end() int64 { return e.logical + e.length }

// extentReader yields the extents holding data of a file, in logical
// order, within [from, size): unwritten (preallocated) extents read as
// zeros and are left out, and extents are clipped to the range. It asks
// the kernel for fiemapBatch extents at a time.
type extentReader struct {
	f     *os.File
	size  int64
	pos   int64 // next logical offset to ask the kernel about
	flags uint32
	buf   []extent
	done  bool
}

func newExtentReader(f *os.File, from, size int64) *extentReader {
	// Sync once, so no extent is still waiting for delayed allocation.
	return &extentReader{f: f, size: size, pos: from, flags: fiemapFlagSync}
}

// next returns the next extent, or false at the end.
func (r *extentReader) next() (extent, bool, error) {
	for len(r.buf) == 0 {
		if r.done || r.pos >= r.size {
			return extent{}, false, nil
		}
		raw, err := fiemap(r.f, r.pos, r.size-r.pos, r.flags, fiemapBatch)
		if err != nil {
			return extent{}, false, err
		}
		r.flags = 0
		if len(raw) == 0 {
			r.done = true
			break
		}
		for _, x := range raw {
			e := extent{
				logical:  int64(x.logical),
				physical: int64(x.physical),
				length:   int64(x.length),
				unknown:  x.flags&(fiemapExtentUnknown|fiemapExtentDelalloc) != 0,
			}
			if x.flags&fiemapExtentUnwritten != 0 {
				continue
			}
			if e.logical < r.pos { // the first extent may start before pos
				e.physical += r.pos - e.logical
				e.length -= r.pos - e.logical
				e.logical = r.pos
			}
			e.length = min(e.length, r.size-e.logical)
			if e.length > 0 {
				r.buf = append(r.buf, e)
			}
		}
		last := raw[len(raw)-1]
		r.pos = max(r.pos, int64(last.logical+last.length))
		r.done = last.flags&fiemapExtentLast != 0
	}
	if len(r.buf) == 0 {
		return extent{}, false, nil
	}
	e := r.buf[0]
	r.buf = r.buf[1:]
	return e, true, nil
}

type rawExtent struct {
	logical, physical, length uint64
	flags                     uint32
}

// fiemap asks the kernel for up to n extents of f overlapping
// [start, start+length).
func fiemap(f *os.File, start, length int64, flags uint32, n int) ([]rawExtent, error) {
	// uint64 words keep the buffer aligned for the kernel's structs.
	words := make([]uint64, (fiemapHeaderSize+fiemapExtentSize*n)/8)
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), len(words)*8)
	ne := binary.NativeEndian
	ne.PutUint64(buf[0:], uint64(start))
	ne.PutUint64(buf[8:], uint64(length))
	ne.PutUint32(buf[16:], flags)
	ne.PutUint32(buf[24:], uint32(n))
	conn, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var errno unix.Errno
	if err := conn.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, fsIocFiemap, uintptr(unsafe.Pointer(&words[0])))
	}); err != nil {
		return nil, err
	}
	runtime.KeepAlive(words)
	if errno != 0 {
		return nil, fmt.Errorf("FIEMAP %s: %w", f.Name(), errno)
	}
	mapped := int(ne.Uint32(buf[20:]))
	out := make([]rawExtent, min(mapped, n))
	for i := range out {
		x := buf[fiemapHeaderSize+i*fiemapExtentSize:]
		out[i] = rawExtent{
			logical:  ne.Uint64(x[0:]),
			physical: ne.Uint64(x[8:]),
			length:   ne.Uint64(x[16:]),
			flags:    ne.Uint32(x[40:]),
		}
	}
	return out, nil
}

// allocated calls emit with the file's data ranges within the reader's
// range, adjacent extents merged.
func allocated(r *extentReader, emit func(off, length int64) error) error {
	var cur extent
	for {
		e, ok, err := r.next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if cur.length > 0 && cur.end() == e.logical {
			cur.length += e.length
			continue
		}
		if cur.length > 0 {
			if err := emit(cur.logical, cur.length); err != nil {
				return err
			}
		}
		cur = e
	}
	if cur.length > 0 {
		return emit(cur.logical, cur.length)
	}
	return nil
}

// changed calls emit with the ranges of [from, size) where target's data
// may differ from base's: a range is unchanged if and only if both files
// map it to the same disk bytes, or both leave it a hole. Reflink copies
// share disk bytes until one is written, so this is exact for snapshots
// taken by reflink, whatever size each has (a range one file does not
// reach is a hole in it).
func changed(base, target *extentReader, from, size int64, emit func(off, length int64) error) error {
	var a, b extent
	var aok, bok bool
	var err error
	if a, aok, err = base.next(); err != nil {
		return err
	}
	if b, bok, err = target.next(); err != nil {
		return err
	}
	var pend extent // the changed range not yet emitted
	for pos := from; pos < size; {
		for aok && a.end() <= pos {
			if a, aok, err = base.next(); err != nil {
				return err
			}
		}
		for bok && b.end() <= pos {
			if b, bok, err = target.next(); err != nil {
				return err
			}
		}
		inA, endA, physA := segment(a, aok, pos, size)
		inB, endB, physB := segment(b, bok, pos, size)
		end := min(endA, endB, size)
		if inA != inB || (inA && (a.unknown || b.unknown || physA != physB)) {
			if pend.length > 0 && pend.end() == pos {
				pend.length += end - pos
			} else {
				if pend.length > 0 {
					if err := emit(pend.logical, pend.length); err != nil {
						return err
					}
				}
				pend = extent{logical: pos, length: end - pos}
			}
		}
		pos = end
	}
	if pend.length > 0 {
		return emit(pend.logical, pend.length)
	}
	return nil
}

// segment describes the file at pos given its next extent e: whether pos
// is mapped, where the mapped or unmapped stretch ends, and the disk
// offset of pos.
func segment(e extent, ok bool, pos, size int64) (mapped bool, end, phys int64) {
	switch {
	case !ok:
		return false, size, 0
	case e.logical > pos:
		return false, e.logical, 0
	default:
		return true, e.end(), e.physical + pos - e.logical
	}
}
