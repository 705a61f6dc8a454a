package reflinkcsi

import (
	"context"
	"os"
	"slices"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// GetMetadataAllocated reports exactly a sparse file's data ranges, block
// rounded, and honours starting_offset and max_results.
func TestGetMetadataAllocated(t *testing.T) {
	d := StartTest(t, Config{})
	c := dial(t, d)
	const size = 64 * MiB
	vol := createVolume(t, c, "sparse", size, nil)
	volFile := d.store.volumeFile(vol.GetVolumeId())
	writes := []span{
		{0, 4096},
		{1*MiB + 100, 10000}, // unaligned: blocks 1 MiB .. 1 MiB+12 KiB
		{10 * MiB, 3 * MiB},
		{size - 4096, 4096},
	}
	for i, w := range writes {
		writeAt(t, volFile, w.off, randomBytes(uint64(i), int(w.len)))
	}
	snap := createSnapshot(t, c, "sparse-1", vol.GetVolumeId())
	id := snap.GetSnapshotId()

	var want []span
	for _, w := range writes {
		want = append(want, blockRound(w.off, w.len))
	}
	got, sizes, err := allocatedSpans(t, c, id, 0, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("allocated = %v, want %v", got, want)
	}
	if seek := dataSpans(t, d.store.snapshotFile(id)); !slices.Equal(got, seek) {
		t.Errorf("allocated = %v, SEEK_DATA/SEEK_HOLE say %v", got, seek)
	}
	if !slices.Equal(sizes, []int{len(want)}) {
		t.Errorf("messages held %v entries, want all in one", sizes)
	}

	// max_results splits the stream into messages of at most that many.
	got, sizes, err = allocatedSpans(t, c, id, 0, 1, size)
	if err != nil || !slices.Equal(got, want) || !slices.Equal(sizes, []int{1, 1, 1, 1}) {
		t.Errorf("with max_results 1: %v in messages of %v, %v", got, sizes, err)
	}
	got, sizes, _ = allocatedSpans(t, c, id, 0, 3, size)
	if !slices.Equal(sizes, []int{3, 1}) || !slices.Equal(got, want) {
		t.Errorf("with max_results 3: %v in messages of %v", got, sizes)
	}

	// starting_offset resumes: after a range, inside one (clipped), in a
	// hole, at the end.
	for _, tc := range []struct {
		from int64
		want []span
	}{
		{want[1].off + want[1].len, want[2:]},
		{want[2].off + 5000, append([]span{{want[2].off + 5000, want[2].len - 5000}}, want[3:]...)},
		{5 * MiB, want[2:]},
		{size, nil},
	} {
		got, sizes, err := allocatedSpans(t, c, id, tc.from, 0, size)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("from %d: %v, %v; want %v", tc.from, got, err, tc.want)
		}
		if len(sizes) == 0 {
			t.Errorf("from %d: no message, want one carrying the capacity", tc.from)
		}
	}

	_, _, err = allocatedSpans(t, c, id, size+1, 0, size)
	wantCode(t, err, codes.OutOfRange)
	_, _, err = allocatedSpans(t, c, id, -1, 0, size)
	wantCode(t, err, codes.OutOfRange)
	_, _, err = allocatedSpans(t, c, snapshotID("none"), 0, 0, size)
	wantCode(t, err, codes.NotFound)
	_, _, err = allocatedSpans(t, c, "", 0, 0, size)
	wantCode(t, err, codes.InvalidArgument)
}

// GetMetadataDelta reports exactly the blocks written between two
// snapshots (overwrites, new data in holes, punched holes) and nothing
// else.
func TestGetMetadataDelta(t *testing.T) {
	d := StartTest(t, Config{})
	c := dial(t, d)
	const size = 64 * MiB
	vol := createVolume(t, c, "busy", size, nil)
	volFile := d.store.volumeFile(vol.GetVolumeId())
	writeAt(t, volFile, 0, randomBytes(10, 32*MiB))
	base := createSnapshot(t, c, "busy-1", vol.GetVolumeId())

	writes := []span{
		{40960, 4096},           // one aligned block
		{1*MiB + 100, 50},       // inside one block
		{5*MiB - 10, 20},        // across a block boundary
		{8 * MiB, 2*MiB + 4096}, // a long run
		{40 * MiB, MiB},         // into what was a hole
		{size - 1, 1},           // the last byte
	}
	for i, w := range writes {
		writeAt(t, volFile, w.off, randomBytes(uint64(20+i), int(w.len)))
	}
	punched := span{20 * MiB, MiB}
	f, err := os.OpenFile(volFile, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, punched.off, punched.len); err != nil {
		t.Fatal(err)
	}
	f.Close()
	target := createSnapshot(t, c, "busy-2", vol.GetVolumeId())

	var want []span
	for _, w := range writes {
		want = append(want, blockRound(w.off, w.len))
	}
	want = append(want, punched)
	slices.SortFunc(want, func(a, b span) int { return int(a.off - b.off) })

	b, tg := base.GetSnapshotId(), target.GetSnapshotId()
	got, sizes, err := deltaSpans(t, c, b, tg, 0, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("delta = %v, want %v", got, want)
	}
	if len(sizes) != 1 {
		t.Errorf("delta came in %d messages, want 1", len(sizes))
	}

	got, sizes, err = deltaSpans(t, c, b, tg, 0, 2, size)
	if err != nil || !slices.Equal(got, want) || !slices.Equal(sizes, []int{2, 2, 2, 1}) {
		t.Errorf("with max_results 2: %v in messages of %v, %v", got, sizes, err)
	}

	// Resuming after each range gives the rest.
	for i := range want {
		from := want[i].off + want[i].len
		got, _, err := deltaSpans(t, c, b, tg, from, 0, size)
		if err != nil || !slices.Equal(got, want[i+1:]) {
			t.Errorf("from %d: %v, %v; want %v", from, got, err, want[i+1:])
		}
	}
	mid := want[3].off + 4096
	got, _, _ = deltaSpans(t, c, b, tg, mid, 0, size)
	if len(got) == 0 || got[0] != (span{mid, want[3].off + want[3].len - mid}) {
		t.Errorf("from inside a range: %v", got)
	}

	if got, _, err := deltaSpans(t, c, tg, tg, 0, 0, size); err != nil || len(got) != 0 {
		t.Errorf("delta of a snapshot with itself = %v, %v", got, err)
	}

	other := createVolume(t, c, "other", size, nil)
	otherSnap := createSnapshot(t, c, "other-1", other.GetVolumeId())
	_, _, err = deltaSpans(t, c, otherSnap.GetSnapshotId(), tg, 0, 0, size)
	wantCode(t, err, codes.InvalidArgument)
	_, _, err = deltaSpans(t, c, tg, b, 0, 0, size)
	wantCode(t, err, codes.InvalidArgument) // base taken after target
	_, _, err = deltaSpans(t, c, snapshotID("gone"), tg, 0, 0, size)
	wantCode(t, err, codes.NotFound)
	_, _, err = deltaSpans(t, c, b, snapshotID("gone"), 0, 0, size)
	wantCode(t, err, codes.NotFound)
	_, _, err = deltaSpans(t, c, b, tg, size+4096, 0, size)
	wantCode(t, err, codes.OutOfRange)
}

// The Identity service advertises the SnapshotMetadata service.
func TestPluginCapabilities(t *testing.T) {
	d := StartTest(t, Config{})
	c := dial(t, d)
	resp, err := c.GetPluginCapabilities(context.Background(), &csi.GetPluginCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var services []csi.PluginCapability_Service_Type
	for _, c := range resp.GetCapabilities() {
		services = append(services, c.GetService().GetType())
	}
	if !slices.Contains(services, csi.PluginCapability_Service_SNAPSHOT_METADATA_SERVICE) ||
		!slices.Contains(services, csi.PluginCapability_Service_CONTROLLER_SERVICE) {
		t.Errorf("plugin services = %v", services)
	}
	info, err := c.GetPluginInfo(context.Background(), &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != DriverName {
		t.Errorf("plugin info = %v, %v", info, err)
	}
}
