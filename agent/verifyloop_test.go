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
	"github.com/ferrydr/ferry/transport/repo"
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

// metricSum adds up the samples of metric name, whatever their labels.
func metricSum(text, name string) float64 {
	var sum float64
	for line := range strings.Lines(text) {
		f := strings.Fields(line)
		if len(f) != 2 || !strings.HasPrefix(f[0], name+"{") {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		sum += v
	}
	return sum
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

// replicatedVolume makes a 64 MiB volume through the hook, writes eight
// files into it, snapshots it with Ferry's parameters and waits for the
// replication; it returns the volume's ID and the snapshot's manifest.
func replicatedVolume(t *testing.T, e *env, name string, seed byte) (string, *repo.Snapshot) {
	t.Helper()
	ctx := context.Background()
	ctrl := csi.NewControllerClient(e.hook)
	cv, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-" + name, CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapabilities: []*csi.VolumeCapability{csitest.MountCap}})
	if err != nil {
		t.Fatal(err)
	}
	volID := cv.GetVolume().GetVolumeId()
	csitest.WithMounted(t, e.hook, volID, func(dir string) { writeFiles(t, dir, name, 8, 256<<10, seed) })
	s, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: volID, Name: "snap-" + name, Parameters: snapshotParams(e.repoURL, "snap-"+name)})
	if err != nil {
		t.Fatal(err)
	}
	return volID, waitReplicated(t, e, s.GetSnapshot().GetSnapshotId())
}

// somePack returns the object name of a pack's shards without the shard
// number ("data/xx/ID"): the first pack listed on the target of shard 0.
func somePack(t *testing.T, e *env) string {
	t.Helper()
	stores := e.stores()
	var name string
	err := stores[erasure.TargetFor(0, len(stores))].List(context.Background(), "data/", func(i objstore.Info) error {
		if name == "" && strings.HasSuffix(i.Name, ".0") {
			name = strings.TrimSuffix(i.Name, ".0")
		}
		return nil
	})
	if err != nil || name == "" {
		t.Fatalf("no shard 0 found: %v", err)
	}
	return name
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
	volID, m := replicatedVolume(t, e, "v", 7)

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
	repairable := somePack(t, e) + ".0"
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
	victim := somePack(t, e)
	for shard := range 2 {
		if err := stores[erasure.TargetFor(shard, len(stores))].Delete(ctx, victim+"."+strconv.Itoa(shard)); err != nil {
			t.Fatal(err)
		}
	}
	waitMetrics(t, e, "the damaged pack", func(text string) bool {
		at, _ := metricValue(text, restorable)
		return metricSum(text, "ferry_verify_packs_at_risk") >= 1 && metricSum(text, "ferry_verify_shards_missing") >= 2 &&
			at == 0 && strings.Contains(text, `ferry_verify_runs_total{result="data_lost"}`)
	})
}

// TestVerifyLoopKeepsWhatReadingFound: two shards of a pack replaced by
// other bytes of their size, with no checksum stored: only reading finds
// them. The agent's repair cannot rebuild the pack, and the check after it
// must not call the repository whole: the volume is not proven
// restorable, the run counts as data lost, and its reads are counted.
func TestVerifyLoopKeepsWhatReadingFound(t *testing.T) {
	e := start(t, reflinkcsi.Config{}, func(c *agent.Config) {
		c.VerifyInterval = 200 * time.Millisecond
		c.DrillInterval = -1 // a drill would find the loss on its own
		c.VerifyBytesPerSecond = 1 << 30
	})
	volID, _ := replicatedVolume(t, e, "r", 9)
	stores := e.stores()
	victim := somePack(t, e)
	for shard := range 2 {
		e.scrambleShard(t, erasure.TargetFor(shard, len(stores)), victim+"."+strconv.Itoa(shard))
	}
	restorable := `ferry_restorable_snapshot_timestamp_seconds{namespace="db",volume="` + volID + `"}`
	text := waitMetrics(t, e, "the pack lost to damage only reading finds", func(text string) bool {
		at, ok := metricValue(text, restorable)
		return ok && at == 0 && metricSum(text, "ferry_verify_packs_at_risk") >= 1 &&
			metricSum(text, "ferry_verify_shards_corrupt") >= 2 && strings.Contains(text, `ferry_verify_runs_total{result="data_lost"}`)
	})
	if read, _ := metricValue(text, "ferry_verify_bytes_read_total"); read <= 0 {
		t.Errorf("ferry_verify_bytes_read_total %v: the runs read the packs", read)
	}
}
