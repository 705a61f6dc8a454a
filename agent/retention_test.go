package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/csi/params"
	"github.com/ferrydr/ferry/testenv/csitest"
	"github.com/ferrydr/ferry/testenv/reflinkcsi"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/verify"
)

// TestRetentionAndPrune: a class with ferry.dev/keep-last 2 keeps the two
// newest replicated snapshots of the volume; the agent's prune loop then
// deletes the data only the forgotten one had, and what stays verifies and
// restores.
func TestRetentionAndPrune(t *testing.T) {
	e := start(t, reflinkcsi.Config{}, func(c *agent.Config) {
		c.VerifyInterval = -1
		c.PruneInterval = 300 * time.Millisecond
		c.PruneGrace = time.Millisecond
	})
	ctx := context.Background()
	ctrl := csi.NewControllerClient(e.hook)
	cv, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-keep", CapacityRange: &csi.CapacityRange{RequiredBytes: 128 << 20}, VolumeCapabilities: []*csi.VolumeCapability{csitest.BlockCap}})
	if err != nil {
		t.Fatal(err)
	}
	volID := cv.GetVolume().GetVolumeId()
	r, err := repo.Open(ctx, e.stores(), []byte(password))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string // CSI snapshot IDs, oldest first
	for i := range 3 {
		// Each snapshot overwrites the volume's first 40 MiB, a raw block
		// volume, with other random data, which does not compress: the
		// packs holding it (16, 16 and 8 MiB) hold nothing else, and only
		// this snapshot refers to them. (A file in a file system did not
		// do: ext4 interleaves blocks no snapshot changes, so every pack
		// of a snapshot kept a chunk the later ones share, and whether one
		// did not was luck.)
		csitest.WithBlock(t, e.hook, volID, func(dev *os.File) {
			data := make([]byte, 40<<20)
			rand.NewChaCha8([32]byte{byte(i), 7}).Read(data)
			if _, err := dev.WriteAt(data, 0); err != nil {
				t.Fatal(err)
			}
			if err := dev.Sync(); err != nil {
				t.Fatal(err)
			}
		})
		name := fmt.Sprintf("snap-keep-%d", i)
		p := snapshotParams(e.repoURL, name)
		p[params.KeyKeepLast] = "2"
		s, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: volID, Name: name, Parameters: p})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.GetSnapshot().GetSnapshotId())
		waitReplicated(t, e, ids[i])
	}

	// The oldest is forgotten once the third is replicated, and the
	// packs only it referred to are pruned.
	var snaps []*repo.Snapshot
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if snaps, err = r.Snapshots(ctx); err != nil {
			t.Fatal(err)
		}
		if len(snaps) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d snapshots after three replications with keep-last 2", len(snaps))
		}
	}
	for i, s := range snaps {
		if s.Volume.CSISnapshotID != ids[i+1] {
			t.Fatalf("kept snapshot %d is CSI snapshot %s, want %s", i, s.Volume.CSISnapshotID, ids[i+1])
		}
	}
	waitMetrics(t, e, "the forgotten snapshot's three packs pruned", func(text string) bool {
		n, _ := metricValue(text, "ferry_prune_deleted_packs_total")
		f, _ := metricValue(text, "ferry_retention_forgotten_snapshots_total")
		return n == 3 && f == 1
	})
	rep, err := verify.Run(ctx, r, verify.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rep.Problems {
		if p.Severity > verify.Notice {
			t.Errorf("verify after prune: %s", p)
		}
	}
	for i, s := range snaps {
		out := filepath.Join(t.TempDir(), "restored")
		if _, err := restore.Run(ctx, r, s, out, restore.Options{}); err != nil {
			t.Fatalf("restore the kept snapshot %d: %v", i, err)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, snapshotBytes(t, e, ids[i+1])) {
			t.Fatalf("kept snapshot %d restores other bytes than the CSI snapshot", i)
		}
	}
}
