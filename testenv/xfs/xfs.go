// Package xfs gives tests a real XFS filesystem with reflink: a sparse image
// file formatted with `mkfs.xfs -m reflink=1` and loop-mounted on a
// temporary directory, removed again when the test ends. It also probes a
// directory for reflink support (FICLONE) and installs the tools it needs
// (EnsureTools).
//
// Mount needs root (loop devices, mount). Developers without root may set
// FERRY_TEST_NO_LOOP=1 to skip the tests that need it; CI never does.
package xfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/testenv/xfs/loopdev"
)

// MinSize is the smallest filesystem mkfs.xfs makes (xfsprogs 5.19 and
// later refuse smaller ones); Mount raises smaller sizes to it. The image
// is sparse, so a large size costs only what is written.
const MinSize = 300 << 20

// NoLoopEnv names the environment variable that, set to 1, makes Mount skip
// the test instead of failing it. For developers without root only.
const NoLoopEnv = "FERRY_TEST_NO_LOOP"

// Mount creates a reflink-enabled XFS of size bytes on a loop device,
// mounts it on a new temporary directory and returns that directory. When
// the test ends it unmounts the filesystem and detaches the loop device; a
// loop device or mount that the test left on the filesystem is removed too
// and fails the test, so leaks are caught rather than left on the machine.
func Mount(t testing.TB, size int64) string {
	t.Helper()
	if os.Getenv(NoLoopEnv) == "1" {
		t.Skipf("%s=1: skipping a test that needs a loop-mounted XFS", NoLoopEnv)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("xfs.Mount needs root for loop devices and mount(2); run the tests as root (developers without root may set %s=1 to skip them)", NoLoopEnv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := EnsureTools(ctx); err != nil {
		t.Fatalf("xfs.Mount: %v", err)
	}
	dir := t.TempDir()
	image := filepath.Join(dir, "xfs.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	dev, err := create(ctx, image, mnt, max(size, MinSize))
	if err != nil {
		t.Fatalf("xfs.Mount: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := release(ctx, mnt, dev); err != nil {
			t.Errorf("xfs.Mount cleanup: %v", err)
		}
	})
	return mnt
}

// create formats image and mounts it on mnt through a loop device.
func create(ctx context.Context, image, mnt string, size int64) (dev string, err error) {
	f, err := os.Create(image)
	if err != nil {
		return "", err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("create image: %w", err)
	}
	if err := run(ctx, "mkfs.xfs", "-q", "-m", "reflink=1", image); err != nil {
		return "", err
	}
	dev, err = loopdev.Attach(ctx, image, false)
	if err != nil {
		return "", err
	}
	if err := run(ctx, "mount", "-t", "xfs", dev, mnt); err != nil {
		return "", errors.Join(err, loopdev.Detach(ctx, dev))
	}
	return dev, nil
}

// release undoes create. Loop devices backed by files on the filesystem,
// and their mounts, are leaks of the test: they are removed so the
// filesystem can be unmounted, and reported.
func release(ctx context.Context, mnt, dev string) error {
	var errs []error
	leaked, err := loopdev.OnFilesystem(mnt)
	if err != nil {
		errs = append(errs, err)
	}
	for _, d := range leaked {
		points, err := loopdev.MountsOf(d.Path)
		if err != nil {
			errs = append(errs, err)
		}
		for _, p := range points {
			errs = append(errs, unmount(p))
		}
		errs = append(errs, fmt.Errorf("leaked loop device %s of %s (mounted on %v)", d.Path, d.BackingFile, points),
			loopdev.Detach(ctx, d.Path))
	}
	// A loop device detached while something else has it open (udev
	// probing it, say) lets go of its backing file, on mnt, only when that
	// closes: until then mnt is busy.
	errs = append(errs, unmountWaiting(mnt, 5*time.Second), loopdev.Detach(ctx, dev))
	return errors.Join(errs...)
}

// unmountWaiting is unmount, retried while the filesystem is busy, up to wait.
func unmountWaiting(path string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := unmount(path)
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func unmount(path string) error {
	if err := unix.Unmount(path, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	return nil
}

// ErrNoReflink means a directory's filesystem cannot clone files.
var ErrNoReflink = errors.New("filesystem does not support reflink (FICLONE)")

// CheckReflink reports whether files in dir can be cloned with FICLONE, by
// cloning a small probe file. The error wraps ErrNoReflink when the
// filesystem cannot.
func CheckReflink(dir string) error {
	src, err := os.CreateTemp(dir, ".reflink-probe-")
	if err != nil {
		return fmt.Errorf("reflink probe in %s: %w", dir, err)
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return fmt.Errorf("reflink probe in %s: %w", dir, err)
	}
	dst, err := os.CreateTemp(dir, ".reflink-probe-")
	if err != nil {
		return fmt.Errorf("reflink probe in %s: %w", dir, err)
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		var fs unix.Statfs_t
		kind := "unknown filesystem"
		if unix.Statfs(dir, &fs) == nil {
			kind = fmt.Sprintf("filesystem type %#x", fs.Type)
			if fs.Type == unix.XFS_SUPER_MAGIC {
				kind = "XFS made without -m reflink=1"
			}
		}
		return fmt.Errorf("%s (%s): %w: %v; use an XFS made with mkfs.xfs -m reflink=1", dir, kind, ErrNoReflink, err)
	}
	return nil
}

func run(ctx context.Context, name string, args ...string) error {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
