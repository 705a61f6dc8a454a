package xfs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/testenv/xfs/loopdev"
)

func TestMountIsReflinkXFS(t *testing.T) {
	dir := Mount(t, 0)
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type != unix.XFS_SUPER_MAGIC {
		t.Fatalf("filesystem type %#x, want XFS", fs.Type)
	}
	if got := int64(fs.Blocks) * fs.Bsize; got < MinSize*3/4 {
		t.Errorf("filesystem has %d bytes, want about %d", got, MinSize)
	}
	if err := CheckReflink(dir); err != nil {
		t.Fatal(err)
	}
	// The probe cleans up after itself.
	if left, _ := filepath.Glob(filepath.Join(dir, ".reflink-probe-*")); len(left) > 0 {
		t.Errorf("probe files left: %v", left)
	}
}

func TestCheckReflinkRejectsTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount tmpfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, 0) })
	err := CheckReflink(dir)
	if !errors.Is(err, ErrNoReflink) {
		t.Fatalf("CheckReflink on tmpfs = %v, want ErrNoReflink", err)
	}
	if !strings.Contains(err.Error(), "mkfs.xfs -m reflink=1") {
		t.Errorf("error does not say how to fix it: %v", err)
	}
}

// A loop device and mount the test leaves on the filesystem are removed
// and reported, so the filesystem can still be unmounted.
func TestReleaseRemovesLeaks(t *testing.T) {
	if os.Getenv(NoLoopEnv) == "1" || os.Geteuid() != 0 {
		t.Skip("needs root and loop devices")
	}
	ctx := context.Background()
	dir := t.TempDir()
	image, mnt := filepath.Join(dir, "img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	dev, err := create(ctx, image, mnt, MinSize)
	if err != nil {
		t.Fatal(err)
	}
	inner := filepath.Join(mnt, "vol")
	if err := os.WriteFile(inner, bytes.Repeat([]byte{1}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	leak, err := loopdev.Attach(ctx, inner, true)
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(leak, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}

	err = release(ctx, mnt, dev)
	if err == nil || !strings.Contains(err.Error(), "leaked loop device "+leak) {
		t.Fatalf("release = %v, want a report of the leaked %s", err, leak)
	}
	if mounted, _ := loopdev.MountPoint(target); mounted {
		t.Errorf("%s still mounted", target)
	}
	if mounted, _ := loopdev.MountPoint(mnt); mounted {
		t.Errorf("%s still mounted", mnt)
	}
	if left, _ := loopdev.Find(image); len(left) > 0 {
		t.Errorf("image still attached to %v", left)
	}
}

func TestEnsureToolsPresent(t *testing.T) {
	if err := EnsureTools(context.Background()); err != nil {
		t.Fatal(err)
	}
}
