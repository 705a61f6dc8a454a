package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/testenv/csitest"
	"github.com/ferrydr/ferry/testenv/reflinkcsi"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
)

// metricValue returns the value of the sample whose name and labels are
// exactly series, as /metrics prints them.
func metricValue(text, series string) (float64, bool) {
	for line := range strings.Lines(text) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), series+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(rest, 64)
		return v, err == nil
	}
	return 0, false
}

// waitMetrics polls /metrics until ok accepts it.
func waitMetrics(t *testing.T, e *env, what string, ok func(string) bool) string {
	t.Helper()
	var text string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if text = httpGet(t, "http://"+e.metrics+"/metrics"); ok(text) {
			return text
		}
	}
	t.Fatalf("/metrics never showed %s:\n%s", what, text)
	return ""
}

// TestVerifyLoop: after a replication the agent verifies the repository and
// drills the volume's snapshot on its own, proves it restorable in
// /metrics, and notices when a pack loses two of its three shards.
func TestVerifyLoop(t *testing.T) {
	e := start(t, reflinkcsi.Config{}, func(c *agent.Config) {
		c.VerifyInterval = 200 * time.Millisecond
		c.DrillInterval = 200 * time.Millisecond
		c.VerifyBytesPerSecond = 1 << 30
	})
	ctx := context.Background()
	ctrl := csi.NewControllerClient(e.hook)
	cv, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-verify", CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapabilities: []*csi.VolumeCapability{csitest.MountCap}})
	if err != nil {
		t.Fatal(err)
	}
	volID := cv.GetVolume().GetVolumeId()
	csitest.WithMounted(t, e.hook, volID, func(dir string) { writeFiles(t, dir, "v", 8, 256<<10, 7) })
	s, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: volID, Name: "snap-v", Parameters: snapshotParams(e.repoURL, "snap-v")})
	if err != nil {
		t.Fatal(err)
	}
	m := waitReplicated(t, e, s.GetSnapshot().GetSnapshotId())

	restorable := `ferry_restorable_snapshot_timestamp_seconds{namespace="db",volume="` + volID + `"}`
	drill := `ferry_drill_duration_seconds{volume="` + volID + `"}`
	text := waitMetrics(t, e, "the snapshot proven restorable and drilled", func(text string) bool {
		at, ok := metricValue(text, restorable)
		d, drilled := metricValue(text, drill)
		_, verified := metricValue(text, `ferry_verify_runs_total{result="ok"}`)
		return ok && at == float64(m.Started.Unix()) && drilled && d > 0 && verified
	})
	for _, want := range []string{`ferry_drill_runs_total{result="ok"}`, `ferry_verify_bytes_read_total`, `ferry_repair_shards_total 0`} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// The drill read the snapshot's packs: something, and less than the
	// 64 MiB volume (its files are runs of one byte, which compress).
	if got, ok := metricValue(text, "ferry_drill_bytes_fetched_total"); !ok || got <= 0 || got > 64<<20 {
		t.Errorf("ferry_drill_bytes_fetched_total %v (found %v): want the drill's downloads, above 0 and at most 64 MiB", got, ok)
	}
	if _, err := os.Stat(filepath.Join(e.state, "repos.json")); err != nil {
		t.Errorf("the repository was not remembered: %v", err)
	}

	// Remove shard 0 of one pack: the agent repairs it on its own.
	stores := e.stores()
	var repairable string
	err = stores[erasure.TargetFor(0, len(stores))].List(ctx, "data/", func(i objstore.Info) error {
		if repairable == "" && strings.HasSuffix(i.Name, ".0") {
			repairable = i.Name
		}
		return nil
	})
	if err != nil || repairable == "" {
		t.Fatalf("no shard 0 found: %v", err)
	}
	if err := stores[erasure.TargetFor(0, len(stores))].Delete(ctx, repairable); err != nil {
		t.Fatal(err)
	}
	waitMetrics(t, e, "the shard repaired", func(text string) bool {
		n, _ := metricValue(text, "ferry_repair_shards_total")
		return n >= 1
	})
	if _, err := stores[erasure.TargetFor(0, len(stores))].Stat(ctx, repairable); err != nil {
		t.Fatalf("the repaired shard %s: %v", repairable, err)
	}

	// Remove shards 0 and 1 of one pack, each from the target holding it:
	// only parity is left.
	var victim string
	err = stores[erasure.TargetFor(0, len(stores))].List(ctx, "data/", func(i objstore.Info) error {
		if victim == "" && strings.HasSuffix(i.Name, ".0") {
			victim = strings.TrimSuffix(i.Name, ".0")
		}
		return nil
	})
	if err != nil || victim == "" {
		t.Fatalf("no shard 0 found: %v", err)
	}
	for shard := range 2 {
		if err := stores[erasure.TargetFor(shard, len(stores))].Delete(ctx, victim+"."+strconv.Itoa(shard)); err != nil {
			t.Fatal(err)
		}
	}
	waitMetrics(t, e, "the damaged pack", func(text string) bool {
		var atRisk, missing float64
		for line := range strings.Lines(text) {
			f := strings.Fields(line)
			if len(f) != 2 {
				continue
			}
			v, _ := strconv.ParseFloat(f[1], 64)
			switch {
			case strings.HasPrefix(f[0], "ferry_verify_packs_at_risk{"):
				atRisk += v
			case strings.HasPrefix(f[0], "ferry_verify_shards_missing{"):
				missing += v
			}
		}
		at, _ := metricValue(text, restorable)
		return atRisk >= 1 && missing >= 2 && at == 0 && strings.Contains(text, `ferry_verify_runs_total{result="data_lost"}`)
	})
}
