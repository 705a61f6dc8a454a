package expose_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ferrydr/ferry/csi/expose"
	"github.com/ferrydr/ferry/testenv/csitest"
	"github.com/ferrydr/ferry/testenv/reflinkcsi"
)

var blockCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

// TestExpose reads a snapshot through CSI from drivers with and without
// ControllerPublish, exposes it twice (idempotent, as after a crash), and
// checks Release leaves no volume behind.
func TestExpose(t *testing.T) {
	for _, publish := range []bool{false, true} {
		ctx := context.Background()
		drv := reflinkcsi.StartTest(t, reflinkcsi.Config{ControllerPublish: publish})
		conn := csitest.Dial(t, drv.Config().Endpoint)
		ctrl := csi.NewControllerClient(conn)
		const size = 8 << 20
		v, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "src", CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: []*csi.VolumeCapability{csitest.MountCap}})
		if err != nil {
			t.Fatal(err)
		}
		volID := v.GetVolume().GetVolumeId()
		if publish {
			if _, err := ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: volID, NodeId: drv.Config().NodeID, VolumeCapability: csitest.MountCap}); err != nil {
				t.Fatal(err)
			}
		}
		csitest.WithMounted(t, conn, volID, func(string) {})
		s, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: volID, Name: "snap"})
		if err != nil {
			t.Fatal(err)
		}
		cfg := expose.Config{Driver: conn, NodeID: drv.Config().NodeID, Dir: t.TempDir()}
		a, err := expose.Expose(ctx, cfg, s.GetSnapshot().GetSnapshotId(), size)
		if err != nil {
			t.Fatalf("publish=%v: %v", publish, err)
		}
		again, err := expose.Expose(ctx, cfg, s.GetSnapshot().GetSnapshotId(), size)
		if err != nil {
			t.Fatalf("publish=%v: exposing again: %v", publish, err)
		}
		if a.VolumeID != again.VolumeID || a.Size != size {
			t.Fatalf("publish=%v: %s (%d bytes) then %s", publish, a.VolumeID, a.Size, again.VolumeID)
		}
		x, y := make([]byte, size), make([]byte, size)
		if _, err := a.ReadAt(x, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := again.ReadAt(y, 0); err != nil || !bytes.Equal(x, y) || bytes.Count(x, []byte{0}) == size {
			t.Fatalf("publish=%v: the two exposures read differently, or nothing: %v", publish, err)
		}
		again.File.Close()
		if err := a.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if err := a.Release(ctx); err != nil {
			t.Fatalf("publish=%v: releasing twice: %v", publish, err)
		}
		lv, err := ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
		if err != nil || len(lv.GetEntries()) != 1 {
			t.Fatalf("publish=%v: volumes after release: %v %v", publish, lv.GetEntries(), err)
		}
	}
}

// TestProvision creates a volume to restore into, writes it through the
// block device, detaches it (the volume stays, with the bytes), finds the
// same volume again by key, and checks a driver without room answers
// ErrCapacity.
func TestProvision(t *testing.T) {
	ctx := context.Background()
	const size = 8 << 20
	drv := reflinkcsi.StartTest(t, reflinkcsi.Config{ControllerPublish: true, Capacity: 3 * size})
	conn := csitest.Dial(t, drv.Config().Endpoint)
	cfg := expose.Config{Driver: conn, NodeID: drv.Config().NodeID, Dir: t.TempDir()}
	v, err := expose.Provision(ctx, cfg, "job-1", size, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v.Capacity != size || v.Size != size {
		t.Fatalf("provisioned %d bytes, device %d, want %d", v.Capacity, v.Size, size)
	}
	data := bytes.Repeat([]byte("ferry"), 1000)
	if _, err := v.WriteAt(data, 4096); err != nil {
		t.Fatal(err)
	}
	if err := v.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := expose.Provision(ctx, cfg, "job-1", size, nil)
	if err != nil {
		t.Fatalf("provisioning the same key again: %v", err)
	}
	got := make([]byte, len(data))
	if _, err := again.ReadAt(got, 4096); err != nil || !bytes.Equal(got, data) || again.VolumeID != v.VolumeID {
		t.Fatalf("volume %s (was %s) read %q..., %v", again.VolumeID, v.VolumeID, got[:10], err)
	}
	if err := again.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	lv, err := csi.NewControllerClient(conn).ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(lv.GetEntries()) != 1 {
		t.Fatalf("volumes after detach: %v %v", lv.GetEntries(), err)
	}
	if _, err := expose.Provision(ctx, cfg, "job-2", 3*size, nil); !errors.Is(err, expose.ErrCapacity) {
		t.Fatalf("a volume beyond the driver's capacity: %v, want ErrCapacity", err)
	}
	if err := again.Release(ctx); err != nil {
		t.Fatal(err)
	}
}
