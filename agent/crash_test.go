package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/testenv/csitest"
	"github.com/ferrydr/ferry/testenv/reflinkcsi"
	"github.com/ferrydr/ferry/transport/repo"
)

// buildFerry builds the ferry command once per test binary.
func buildFerry(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ferry")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/ferry").CombinedOutput(); err != nil {
		t.Fatalf("build ferry: %v\n%s", err, out)
	}
	return bin
}

// TestAgentSurvivesKill runs the agent as a process and kills it with
// SIGKILL at several points of a replication; each time a new agent on the
// same state directory finishes the job, and the snapshot restores
// bit-identically.
func TestAgentSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	bin := buildFerry(t)
	e := startRepo(t)
	ctx := context.Background()
	drvEndpoint := reflinkcsi.StartTest(t, reflinkcsi.Config{}).Config().Endpoint
	driver := csitest.Dial(t, drvEndpoint)
	ctrl := csi.NewControllerClient(driver)
	cv, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-crash", CapacityRange: &csi.CapacityRange{RequiredBytes: 128 << 20}, VolumeCapabilities: []*csi.VolumeCapability{csitest.MountCap}})
	if err != nil {
		t.Fatal(err)
	}
	volID := cv.GetVolume().GetVolumeId()
	csitest.WithMounted(t, driver, volID, func(dir string) { writeFiles(t, dir, "c", 48, 1<<20, 7) })

	sockDir, _ := os.MkdirTemp("", "ferry-crash-")
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	listen := "unix://" + filepath.Join(sockDir, "csi.sock")
	state := t.TempDir()
	startAgent := func() *exec.Cmd {
		cmd := exec.Command(bin, "agent", "--csi-listen", listen, "--csi-driver", drvEndpoint, "--state-dir", state,
			"--secrets-dir", e.secrets, "--metrics-listen", "")
		var logs bytes.Buffer
		cmd.Stderr = &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			if t.Failed() {
				t.Logf("agent log:\n%s", logs.String())
			}
		})
		return cmd
	}
	hookConn := csitest.Dial(t, listen)
	for i, delay := range []time.Duration{0, 150 * time.Millisecond, 400 * time.Millisecond, 900 * time.Millisecond} {
		agent := startAgent()
		waitProbe(t, hookConn)
		name := fmt.Sprintf("snap-crash-%d", i)
		s, err := csi.NewControllerClient(hookConn).CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: volID, Name: name, Parameters: snapshotParams(e.repoURL, name)})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		agent.Process.Kill()
		agent.Wait()
		startAgent()
		m := waitReplicated(t, e, s.GetSnapshot().GetSnapshotId())
		r, err := repo.Open(ctx, e.stores(), []byte(password))
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "restored.img")
		if _, err := restore.Run(ctx, r, m, out, restore.Options{}); err != nil {
			t.Fatalf("kill after %s: restore: %v", delay, err)
		}
		got, _ := os.ReadFile(out)
		if !bytes.Equal(got, snapshotBytes(t, &env{driver: driver}, s.GetSnapshot().GetSnapshotId())) {
			t.Fatalf("kill after %s: the snapshot restores differently", delay)
		}
		// The killed agent's exposed volume was cleaned up by the next one.
		lv, err := ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
		if err != nil || len(lv.GetEntries()) != 1 {
			t.Fatalf("kill after %s: volumes left on the driver: %v %v", delay, lv, err)
		}
	}
}
