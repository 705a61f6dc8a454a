package restore_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/testenv/xfs"
)

// TestRestoreDirect: a restore into a new file on a filesystem that takes
// direct I/O writes nearly all of its data direct, from the workers'
// batches, and the file is the volume.
func TestRestoreDirect(t *testing.T) {
	c, img, sum := setup(t)
	r := c.open(t)
	snap, err := r.FindSnapshot(context.Background(), sum.SnapshotID, "")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(xfs.Mount(t, xfs.MinSize), "restored.img")
	rs, err := restore.Run(context.Background(), r, snap, out, restore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, img, out)
	direct := restore.DirectBytes(rs)
	t.Logf("%d of %d bytes written direct", direct, rs.BytesWritten)
	if direct < rs.BytesWritten*9/10 {
		t.Errorf("%d of %d bytes written direct, want at least 90%%", direct, rs.BytesWritten)
	}
}
