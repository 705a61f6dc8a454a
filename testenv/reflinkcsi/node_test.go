package reflinkcsi

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydr/ferry/testenv/xfs/loopdev"
)

func stage(t testing.TB, c client, volID, path string, vc *csi.VolumeCapability) {
	t.Helper()
	_, err := c.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
		VolumeId: volID, StagingTargetPath: path, VolumeCapability: vc,
	})
	if err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
}

func publish(t testing.TB, c client, volID, staging, target string, vc *csi.VolumeCapability, ro bool) {
	t.Helper()
	_, err := c.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
		VolumeId: volID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc, Readonly: ro,
	})
	if err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
}

func unpublish(t testing.TB, c client, volID, target string) {
	t.Helper()
	if _, err := c.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target}); err != nil {
		t.Fatalf("NodeUnpublishVolume: %v", err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target %s still there after unpublish: %v", target, err)
	}
}

func unstage(t testing.TB, c client, volID, path string) {
	t.Helper()
	if _, err := c.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: path}); err != nil {
		t.Fatalf("NodeUnstageVolume: %v", err)
	}
}

// noLoopDevices fails the test if the file is still attached.
func noLoopDevices(t testing.TB, file string) {
	t.Helper()
	devs, err := loopdev.Find(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) > 0 {
		t.Errorf("%s still attached to %v", file, devs)
	}
}

// Block access publishes a device whose bytes are the volume's, in both
// directions; a read-only publication refuses writes.
func TestNodeBlock(t *testing.T) {
	d := StartTest(t, Config{})
	c := dial(t, d)
	vol := createVolume(t, c, "raw", 16*MiB, nil)
	id, volFile := vol.GetVolumeId(), d.store.volumeFile(vol.GetVolumeId())
	data := randomBytes(7, 16*MiB)
	writeAt(t, volFile, 0, data)

	dir := t.TempDir()
	staging, target, roTarget := filepath.Join(dir, "staging"), filepath.Join(dir, "pub", "dev"), filepath.Join(dir, "pub", "ro")
	for _, p := range []string{staging, filepath.Dir(target)} {
		if err := os.Mkdir(p, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	stage(t, c, id, staging, blockCap)
	stage(t, c, id, staging, blockCap) // idempotent
	publish(t, c, id, staging, target, blockCap, false)
	publish(t, c, id, staging, target, blockCap, false)

	equalBytes(t, "device", readFile(t, target), data)
	dev, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	patch := randomBytes(8, 8192)
	if _, err := dev.WriteAt(patch, 3*MiB); err != nil {
		t.Fatal(err)
	}
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	copy(data[3*MiB:], patch)
	equalBytes(t, "volume file after writing the device", readFile(t, volFile), data)

	publish(t, c, id, staging, roTarget, blockCap, true)
	if f, err := os.OpenFile(roTarget, os.O_WRONLY, 0); err == nil {
		if _, err := f.WriteAt(patch, 0); err == nil {
			t.Error("wrote to a read-only block publication")
		}
		f.Close()
	}
	ro, err := os.Open(roTarget)
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 4096)
	if _, err := io.ReadFull(ro, head); err != nil {
		t.Fatal(err)
	}
	ro.Close()
	equalBytes(t, "read-only device", head, data[:4096])
	_, err = c.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
		VolumeId: id, StagingTargetPath: staging, TargetPath: roTarget, VolumeCapability: blockCap,
	})
	wantCode(t, err, codes.AlreadyExists) // published read-only there
	_, err = c.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
		VolumeId: id, StagingTargetPath: staging, TargetPath: filepath.Join(dir, "pub", "m"), VolumeCapability: mountCap,
	})
	wantCode(t, err, codes.InvalidArgument) // staged for block access

	_, err = c.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	wantCode(t, err, codes.FailedPrecondition) // still published
	_, err = c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, err, codes.FailedPrecondition) // in use

	unpublish(t, c, id, target)
	unpublish(t, c, id, target)
	unpublish(t, c, id, roTarget)
	unstage(t, c, id, staging)
	unstage(t, c, id, staging)
	noLoopDevices(t, volFile)
	if _, err := c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
}

// Mount access formats the volume once, gives a filesystem to write files
// on, and leaves no loop device behind; the filesystem survives restaging
// and a snapshot and restore.
func TestNodeMount(t *testing.T) {
	d := StartTest(t, Config{})
	c := dial(t, d)
	vol := createVolume(t, c, "fs", 64*MiB, nil)
	id := vol.GetVolumeId()
	dir := t.TempDir()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")

	stage(t, c, id, staging, mountCap)
	publish(t, c, id, staging, target, mountCap, false)
	if err := os.WriteFile(filepath.Join(target, "hello.txt"), []byte("hello, ferry\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stats, err := c.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
	if err != nil || stats.GetUsage()[0].GetTotal() <= 0 || stats.GetUsage()[0].GetTotal() > 64*MiB {
		t.Errorf("volume stats = %v, %v", stats, err)
	}
	unpublish(t, c, id, target)
	unstage(t, c, id, staging)
	noLoopDevices(t, d.store.volumeFile(id))

	stage(t, c, id, staging, mountCap)
	publish(t, c, id, staging, target, mountCap, false)
	if b, err := os.ReadFile(filepath.Join(target, "hello.txt")); err != nil || string(b) != "hello, ferry\n" {
		t.Fatalf("file after restaging = %q, %v: the volume was formatted again?", b, err)
	}
	unpublish(t, c, id, target)
	unstage(t, c, id, staging)

	snap := createSnapshot(t, c, "fs-1", id)
	restored := createVolume(t, c, "fs-restored", 0, fromSnapshot(snap.GetSnapshotId()))
	rid := restored.GetVolumeId()
	ro := proto.Clone(mountCap).(*csi.VolumeCapability)
	ro.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	stage(t, c, rid, staging, ro)
	publish(t, c, rid, staging, target, ro, true)
	if b, err := os.ReadFile(filepath.Join(target, "hello.txt")); err != nil || string(b) != "hello, ferry\n" {
		t.Fatalf("file on the restored volume = %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(target, "new.txt"), nil, 0o644); err == nil {
		t.Error("wrote to a read-only publication")
	}
	unpublish(t, c, rid, target)
	unstage(t, c, rid, staging)
	noLoopDevices(t, d.store.volumeFile(rid))

	// A filesystem other than the one asked for is not reformatted.
	xfsCap := proto.Clone(mountCap).(*csi.VolumeCapability)
	xfsCap.GetMount().FsType = "xfs"
	_, err = c.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: xfsCap})
	wantCode(t, err, codes.FailedPrecondition)
	unstage(t, c, id, staging)
	noLoopDevices(t, d.store.volumeFile(id))
}

// With --controller-publish, a client that skips ControllerPublish cannot
// stage the volume.
func TestNodeStageNeedsControllerPublish(t *testing.T) {
	d := StartTest(t, Config{ControllerPublish: true})
	c := dial(t, d)
	ctx := context.Background()
	vol := createVolume(t, c, "attach", 8*MiB, nil)
	id := vol.GetVolumeId()
	staging := filepath.Join(t.TempDir(), "staging")

	_, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: blockCap})
	wantCode(t, err, codes.FailedPrecondition)

	_, err = c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "elsewhere", VolumeCapability: blockCap})
	wantCode(t, err, codes.NotFound)
	if _, err := c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: d.cfg.NodeID, VolumeCapability: blockCap}); err != nil {
		t.Fatal(err)
	}
	stage(t, c, id, staging, blockCap)
	_, err = c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, err, codes.FailedPrecondition)
	unstage(t, c, id, staging)
	if _, err := c.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: d.cfg.NodeID}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}

	// Without the flag, the driver neither advertises nor serves it.
	plain := dial(t, StartTest(t, Config{}))
	_, err = plain.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: d.cfg.NodeID, VolumeCapability: blockCap})
	wantCode(t, err, codes.Unimplemented)
}
