package metadata_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ferrydr/ferry/csi/metadata"
	"github.com/ferrydr/ferry/testenv/csitest"
	"github.com/ferrydr/ferry/testenv/reflinkcsi"
)

func TestAllocatedAndDelta(t *testing.T) {
	ctx := context.Background()
	drv := reflinkcsi.StartTest(t, reflinkcsi.Config{})
	conn := csitest.Dial(t, drv.Config().Endpoint)
	if ok, err := metadata.Supported(ctx, conn); !ok || err != nil {
		t.Fatalf("supported: %v %v", ok, err)
	}
	ctrl := csi.NewControllerClient(conn)
	const size = 64 << 20
	v, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v", CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: []*csi.VolumeCapability{csitest.MountCap}})
	if err != nil {
		t.Fatal(err)
	}
	vol := v.GetVolume().GetVolumeId()
	csitest.WithMounted(t, conn, vol, func(dir string) {
		os.WriteFile(filepath.Join(dir, "a"), make([]byte, 1<<20), 0o644)
	})
	snap := func(name string) string {
		s, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: vol, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return s.GetSnapshot().GetSnapshotId()
	}
	s1 := snap("s1")
	alloc, err := metadata.Allocated(ctx, conn, s1)
	if err != nil {
		t.Fatal(err)
	}
	if alloc.Capacity != size || alloc.Bytes() == 0 || alloc.Bytes() >= size/2 {
		t.Fatalf("allocated: %d of %d bytes", alloc.Bytes(), alloc.Capacity)
	}
	for i := 1; i < len(alloc.Ranges); i++ {
		if alloc.Ranges[i].Off <= alloc.Ranges[i-1].Off+alloc.Ranges[i-1].Len {
			t.Fatalf("ranges not sorted and merged: %v", alloc.Ranges)
		}
	}
	csitest.WithMounted(t, conn, vol, func(dir string) {
		b := make([]byte, 3<<20)
		for i := range b {
			b[i] = byte(i*7 + 1)
		}
		os.WriteFile(filepath.Join(dir, "b"), b, 0o644)
	})
	s2 := snap("s2")
	delta, err := metadata.Delta(ctx, conn, s1, s2)
	if err != nil {
		t.Fatal(err)
	}
	// The new file's 3 MiB plus the filesystem's own metadata blocks.
	if delta.Bytes() < 3<<20 || delta.Bytes() > 8<<20 {
		t.Fatalf("delta: %d bytes for a 3 MiB file", delta.Bytes())
	}
	if same, err := metadata.Delta(ctx, conn, s2, s2); err != nil || same.Bytes() != 0 {
		t.Fatalf("delta of a snapshot against itself: %d bytes, %v", same.Bytes(), err)
	}
	if _, err := metadata.Allocated(ctx, conn, "no-such-snapshot"); err == nil {
		t.Fatal("unknown snapshot: no error")
	}
}

// TestResumeAndFallback breaks the first metadata stream after one message
// (a volume whose allocated ranges take several), and checks the client
// resumes to the same answer; and that a driver without the service says
// ErrUnsupported.
func TestResumeAndFallback(t *testing.T) {
	ctx := context.Background()
	drv := reflinkcsi.StartTest(t, reflinkcsi.Config{BreakMetadataStreams: 1})
	conn := csitest.Dial(t, drv.Config().Endpoint)
	ctrl := csi.NewControllerClient(conn)
	const size = 320 << 20
	v, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "frag", CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: []*csi.VolumeCapability{csitest.BlockCap}})
	if err != nil {
		t.Fatal(err)
	}
	vol := v.GetVolume().GetVolumeId()
	const blocks = 2500 // more ranges than the driver sends in one message (1024)
	csitest.WithBlock(t, conn, vol, func(dev *os.File) {
		b := []byte("x")
		for i := range blocks {
			if _, err := dev.WriteAt(b, int64(i)*128<<10); err != nil {
				t.Fatal(err)
			}
		}
	})
	s, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: vol, Name: "s"})
	if err != nil {
		t.Fatal(err)
	}
	resumed, err := metadata.Allocated(ctx, conn, s.GetSnapshot().GetSnapshotId())
	if err != nil {
		t.Fatalf("broken stream not resumed: %v", err)
	}
	whole, err := metadata.Allocated(ctx, conn, s.GetSnapshot().GetSnapshotId())
	if err != nil {
		t.Fatal(err)
	}
	if len(whole.Ranges) != blocks || !reflect.DeepEqual(resumed, whole) {
		t.Fatalf("resumed stream gave %d ranges, an unbroken one %d (want %d)", len(resumed.Ranges), len(whole.Ranges), blocks)
	}

	none := reflinkcsi.StartTest(t, reflinkcsi.Config{NoSnapshotMetadata: true})
	nc := csitest.Dial(t, none.Config().Endpoint)
	if ok, err := metadata.Supported(ctx, nc); ok || err != nil {
		t.Fatalf("supported on a driver without the service: %v %v", ok, err)
	}
	if _, err := metadata.Allocated(ctx, nc, "any"); !errors.Is(err, metadata.ErrUnsupported) {
		t.Fatalf("want ErrUnsupported, got %v", err)
	}
}
