// Package csitest holds what tests do to CSI volumes as kubelet would:
// dial a socket, mount a volume with a filesystem, fill it with files.
package csitest

import (
	"context"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// MountCap asks for an ext4 filesystem on a single-node volume.
var MountCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

// BlockCap asks for a raw block volume on a single node.
var BlockCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

// Dial connects to a CSI endpoint (unix:///path) for the test's duration.
func Dial(t testing.TB, endpoint string) *grpc.ClientConn {
	t.Helper()
	c, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// WithMounted stages and publishes the volume with MountCap, runs fn on the
// mount point, syncs, and unpublishes and unstages it, so a snapshot taken
// afterwards holds everything fn wrote.
func WithMounted(t testing.TB, conn *grpc.ClientConn, volID string, fn func(dir string)) {
	t.Helper()
	attached(t, conn, volID, MountCap, fn)
}

// WithBlock publishes the volume as a raw block device and runs fn on it,
// open for writing; then syncs, closes, unpublishes and unstages.
func WithBlock(t testing.TB, conn *grpc.ClientConn, volID string, fn func(dev *os.File)) {
	t.Helper()
	attached(t, conn, volID, BlockCap, func(target string) {
		f, err := os.OpenFile(target, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		fn(f)
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		f.Close()
	})
}

func attached(t testing.TB, conn *grpc.ClientConn, volID string, vc *csi.VolumeCapability, fn func(target string)) {
	t.Helper()
	ctx := context.Background()
	node := csi.NewNodeClient(conn)
	base := t.TempDir()
	staging, target := filepath.Join(base, "staging"), filepath.Join(base, "target")
	if err := os.MkdirAll(staging, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volID, StagingTargetPath: staging, VolumeCapability: vc}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc}); err != nil {
		t.Fatal(err)
	}
	fn(target)
	if out, err := exec.Command("sync").CombinedOutput(); err != nil {
		t.Fatalf("sync: %v %s", err, out)
	}
	if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
}

// CopyFiles copies regular files from the source trees into dir, keeping
// their relative paths under a directory per tree, until limit bytes are
// copied. It returns the paths written (relative to dir) and their total size.
func CopyFiles(t testing.TB, dir string, limit int64, trees ...string) ([]string, int64) {
	t.Helper()
	var copied int64
	var paths []string
	for i, tree := range trees {
		err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
			if err != nil || copied >= limit {
				if copied >= limit {
					return filepath.SkipAll
				}
				return nil // unreadable parts of a system tree are skipped
			}
			if !d.Type().IsRegular() {
				return nil
			}
			rel, _ := filepath.Rel(tree, p)
			rel = filepath.Join(string(rune('a'+i)), rel)
			n, err := copyFile(p, filepath.Join(dir, rel))
			if err != nil {
				t.Fatal(err)
			}
			copied += n
			paths = append(paths, rel)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return paths, copied
}

func copyFile(from, to string) (int64, error) {
	in, err := os.Open(from)
	if err != nil {
		return 0, nil // vanished or unreadable: not ours to copy
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return 0, err
	}
	out, err := os.Create(to)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}
