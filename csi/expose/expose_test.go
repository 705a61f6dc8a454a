package expose_test

import (
	"bytes"
	"context"
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
