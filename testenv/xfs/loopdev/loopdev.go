// Package loopdev attaches, finds and detaches Linux loop devices and finds
// the mounts that use them. A device is matched to its backing file by the
// path the kernel reports (sysfs backing_file), confirmed by device and
// inode number (LOOP_GET_STATUS64), so a file replaced at the same path is
// not mistaken for the one attached.
//
// Attaching and detaching run losetup(8), which handles the race for a free
// device with other processes; everything else reads /sys,
// /proc/self/mountinfo and the devices' status directly. All of it needs
// root.
package loopdev

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// loFlagsReadOnly is LO_FLAGS_READ_ONLY from <linux/loop.h>.
const loFlagsReadOnly = 1

// Device is an attached loop device.
type Device struct {
	Path        string // /dev/loopN
	BackingDev  uint64 // st_dev of the backing file
	BackingIno  uint64 // st_ino of the backing file
	BackingFile string // as the kernel reports it; " (deleted)" once unlinked
	ReadOnly    bool
}

// list returns the attached loop devices whose backing file, as the
// kernel names it, satisfies match. Only those are opened (to read their
// status): holding another process's device open, even briefly, would
// turn its detach into a deferred one.
func list(match func(backingFile string) bool) ([]Device, error) {
	names, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, err
	}
	var devs []Device
	for _, bf := range names {
		b, err := os.ReadFile(bf)
		if err != nil {
			continue // detached since the glob
		}
		backing := strings.TrimSuffix(string(b), "\n")
		if !match(backing) {
			continue
		}
		name := filepath.Base(filepath.Dir(filepath.Dir(bf)))
		d, err := status("/dev/" + name)
		if errors.Is(err, unix.ENXIO) || errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		d.BackingFile = backing
		devs = append(devs, d)
	}
	return devs, nil
}

func status(path string) (Device, error) {
	f, err := os.Open(path)
	if err != nil {
		return Device{}, err
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil {
		return Device{}, fmt.Errorf("loop status of %s: %w", path, err)
	}
	return Device{
		Path:       path,
		BackingDev: info.Device,
		BackingIno: info.Inode,
		ReadOnly:   info.Flags&loFlagsReadOnly != 0,
	}, nil
}

// Find returns the loop devices backed by file. The kernel names a
// backing file by the path it was opened through, so a device attached
// through another mount of the same filesystem is not found.
func Find(file string) ([]Device, error) {
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", file, err)
	}
	path, err := realPath(file)
	if err != nil {
		return nil, err
	}
	devs, err := list(func(b string) bool { return b == path })
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(devs, func(d Device) bool {
		return d.BackingDev != st.Dev || d.BackingIno != st.Ino
	}), nil
}

// OnFilesystem returns the loop devices backed by files on the filesystem
// mounted at dir.
func OnFilesystem(dir string) ([]Device, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", dir, err)
	}
	path, err := realPath(dir)
	if err != nil {
		return nil, err
	}
	devs, err := list(func(b string) bool { return strings.HasPrefix(b, path+"/") })
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(devs, func(d Device) bool { return d.BackingDev != st.Dev }), nil
}

func realPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}

// Attach attaches file to a free loop device and returns the device's path.
func Attach(ctx context.Context, file string, readOnly bool) (string, error) {
	args := []string{"--find", "--show"}
	if readOnly {
		args = append(args, "--read-only")
	}
	out, err := run(ctx, "losetup", append(args, file)...)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// Detach detaches the loop device at path. A device still held open (by a
// mount, say) is detached by the kernel when the last user closes it.
func Detach(ctx context.Context, path string) error {
	_, err := run(ctx, "losetup", "--detach", path)
	return err
}

// MountPoint reports whether path is the mount point of a mount.
func MountPoint(path string) (bool, error) {
	mounts, err := mountinfo()
	if err != nil {
		return false, err
	}
	for _, m := range mounts {
		if m.point == path {
			return true, nil
		}
	}
	return false, nil
}

// MountsOf returns the mount points that use the loop device at dev
// (/dev/loopN): mounts of the filesystem on it (including bind mounts of
// its directories) and bind mounts of the device node itself. Deeper mount
// points come first, the order to unmount them in.
func MountsOf(dev string) ([]string, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", dev, err)
	}
	mounts, err := mountinfo()
	if err != nil {
		return nil, err
	}
	node := "/" + filepath.Base(dev)
	var points []string
	for _, m := range mounts {
		if m.dev == st.Rdev || (m.fstype == "devtmpfs" && m.root == node) {
			points = append(points, m.point)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	return points, nil
}

type mount struct {
	dev    uint64
	root   string
	point  string
	fstype string
}

// mountinfo parses /proc/self/mountinfo (proc(5)).
func mountinfo() ([]mount, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var mounts []mount
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 5 || sep < 0 || sep+1 >= len(f) {
			return nil, fmt.Errorf("parse mountinfo line %q", sc.Text())
		}
		maj, min, ok := strings.Cut(f[2], ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("parse mountinfo device %q", f[2])
		}
		mounts = append(mounts, mount{
			dev:    unix.Mkdev(uint32(ma), uint32(mi)),
			root:   unescape(f[3]),
			point:  unescape(f[4]),
			fstype: f[sep+1],
		})
	}
	return mounts, sc.Err()
}

// unescape undoes the octal escapes (\040 for a space) of mountinfo paths.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func run(ctx context.Context, name string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
