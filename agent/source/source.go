package source

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/chunk"
)

// ErrNotVolume means the path is neither a regular file nor a block device.
var ErrNotVolume = errors.New("not a regular file or block device")

// Volume is an open volume image or block device, read-only. ReadAt is safe
// for concurrent use; Holes must not run concurrently with itself.
type Volume struct {
	f     *os.File
	path  string
	size  int64
	block bool
}

// Open opens the regular file or block device at path for reading.
func Open(path string) (*Volume, error) {
	// Check before opening: opening a FIFO would block until a writer came.
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open volume: %w", err)
	}
	if err := checkMode(path, fi.Mode()); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open volume: %w", err)
	}
	v, err := newVolume(f, path)
	if err != nil {
		f.Close()
		return nil, err
	}
	return v, nil
}

func newVolume(f *os.File, path string) (*Volume, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open volume: %w", err)
	}
	if err := checkMode(path, fi.Mode()); err != nil {
		return nil, err
	}
	v := &Volume{f: f, path: path, size: fi.Size(), block: !fi.Mode().IsRegular()}
	if v.block {
		if v.size, err = deviceSize(f); err != nil {
			return nil, fmt.Errorf("open volume %s: size of block device: %w", path, err)
		}
	}
	return v, nil
}

// checkMode accepts regular files and block devices.
func checkMode(path string, m fs.FileMode) error {
	var kind string
	switch {
	case m.IsRegular(), m&fs.ModeDevice != 0 && m&fs.ModeCharDevice == 0:
		return nil
	case m.IsDir():
		kind = "directory"
	case m&fs.ModeCharDevice != 0:
		kind = "character device"
	case m&fs.ModeNamedPipe != 0:
		kind = "named pipe"
	case m&fs.ModeSocket != 0:
		kind = "socket"
	default:
		kind = "file of mode " + m.Type().String()
	}
	return fmt.Errorf("open volume %s: %w: it is a %s", path, ErrNotVolume, kind)
}

// deviceSize asks the kernel for the size of a block device, falling back
// to seeking to its end.
func deviceSize(f *os.File) (int64, error) {
	var size uint64
	var ioctlErr error
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	err = rc.Control(func(fd uintptr) {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size)))
		if errno != 0 {
			ioctlErr = errno
		}
	})
	if err == nil && ioctlErr == nil {
		return int64(size), nil
	}
	end, seekErr := f.Seek(0, io.SeekEnd)
	if seekErr != nil {
		return 0, errors.Join(err, ioctlErr, seekErr)
	}
	return end, nil
}

// ReadAt reads len(p) bytes at off, like io.ReaderAt.
func (v *Volume) ReadAt(p []byte, off int64) (int, error) {
	return v.f.ReadAt(p, off)
}

// Size returns the volume's size in bytes.
func (v *Volume) Size() int64 { return v.size }

// IsBlockDevice reports whether the volume is a block device.
func (v *Volume) IsBlockDevice() bool { return v.block }

// Holes returns the unallocated ranges of a regular file, which read as
// zeros, sorted and disjoint, from the filesystem's SEEK_DATA/SEEK_HOLE map.
// Its granularity is the filesystem block; filesystems that cannot tell
// report no holes, as do block devices: nil then means "unknown", and every
// byte is read.
func (v *Volume) Holes() ([]chunk.Range, error) {
	if v.block {
		return nil, nil
	}
	rc, err := v.f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("holes of %s: %w", v.path, err)
	}
	var holes []chunk.Range
	var mapErr error
	if err := rc.Control(func(fd uintptr) { holes, mapErr = seekHoles(int(fd), v.size) }); err != nil {
		return nil, fmt.Errorf("holes of %s: %w", v.path, err)
	}
	if mapErr != nil {
		return nil, fmt.Errorf("holes of %s: %w", v.path, mapErr)
	}
	return holes, nil
}

// seekHoles maps the holes in [0,size) of the open file fd. It moves the
// file offset, which ReadAt (pread) does not use.
func seekHoles(fd int, size int64) ([]chunk.Range, error) {
	var holes []chunk.Range
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		switch {
		case err == unix.ENXIO: // no data from off to the end
			data = size
		case err == unix.EINVAL && off == 0, err == unix.EOPNOTSUPP:
			return nil, nil // no SEEK_DATA here: holes unknown
		case err != nil:
			return nil, fmt.Errorf("seek data from %d: %w", off, err)
		}
		data = min(data, size)
		if data > off {
			holes = append(holes, chunk.Range{Off: off, Len: data - off})
		}
		if data == size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole from %d: %w", data, err)
		}
		if hole <= data {
			return nil, fmt.Errorf("seek hole from %d: got %d", data, hole)
		}
		off = hole
	}
	return holes, nil
}

// Close closes the volume.
func (v *Volume) Close() error { return v.f.Close() }
