package hook_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/csi/hook"
	"github.com/ferrydr/ferry/csi/params"
	"github.com/ferrydr/ferry/testenv/reflinkcsi"
	"github.com/ferrydr/ferry/testenv/reflinkcsi/csisanity"
)

// recorder keeps what the hook queued, like the agent's queue keyed by
// snapshot ID.
type recorder struct {
	mu   sync.Mutex
	jobs map[string]hook.Snapshot
	puts int
}

func (r *recorder) Enqueue(_ context.Context, s hook.Snapshot) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.puts++
	r.jobs[s.SnapshotID] = s
	return nil
}

// failingQueue is a fake: a queue whose disk refuses writes, a failure the
// real queue cannot be made to show as root.
type failingQueue struct{ fail bool }

func (f *failingQueue) Enqueue(context.Context, hook.Snapshot) error {
	if f.fail {
		return errors.New("disk full")
	}
	return nil
}

// agentsNamespace is the hooks' default namespace for repository Secrets.
const agentsNamespace = "ferry-system"

// serveHook starts the driver and the hook in front of it and returns the
// hook's endpoint and a connection to the driver itself.
func serveHook(t *testing.T, drvCfg reflinkcsi.Config, q hook.Enqueuer) (string, *grpc.ClientConn) {
	t.Helper()
	drv := reflinkcsi.StartTest(t, drvCfg)
	conn, err := grpc.NewClient(drv.Config().Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	dir, err := os.MkdirTemp("", "ferry-hook-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "csi.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := hook.New(conn, q, agentsNamespace, nil).Server()
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return "unix://" + sock, conn
}

func dial(t *testing.T, endpoint string) *grpc.ClientConn {
	c, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestSanityThroughHook runs csi-sanity against the hook in front of the
// test driver: the hook must be invisible. Ginkgo allows one Run per test
// binary, so every suite goes in this one call.
func TestSanityThroughHook(t *testing.T) {
	plain, _ := serveHook(t, reflinkcsi.Config{}, &recorder{jobs: map[string]hook.Snapshot{}})
	publish, _ := serveHook(t, reflinkcsi.Config{ControllerPublish: true}, &recorder{jobs: map[string]hook.Snapshot{}})
	res := csisanity.Run(t,
		csisanity.Suite{Name: "hook mount", Endpoint: plain},
		csisanity.Suite{Name: "hook block", Endpoint: plain, AccessType: "block"},
		csisanity.Suite{Name: "hook controller-publish mount", Endpoint: publish},
		csisanity.Suite{Name: "hook controller-publish block", Endpoint: publish, AccessType: "block"},
	)
	t.Logf("csi-sanity through the hook: %s", res)
	if res.Failed != 0 || res.Passed < 200 {
		t.Fatalf("csi-sanity through the hook: %s", res)
	}
}

func TestCreateSnapshot(t *testing.T) {
	ctx := context.Background()
	q := &recorder{jobs: map[string]hook.Snapshot{}}
	endpoint, driver := serveHook(t, reflinkcsi.Config{}, q)
	ctrl := csi.NewControllerClient(dial(t, endpoint))
	cap := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	v, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, VolumeCapabilities: []*csi.VolumeCapability{cap}})
	if err != nil {
		t.Fatal(err)
	}
	vol := v.GetVolume().GetVolumeId()
	good := map[string]string{
		params.KeyRepository: "s3://s3.example:443/dr-a,s3://s3.example:443/dr-b", params.KeySecretName: "dr",
		params.KeySnapshotName: "snap", params.KeySnapshotNamespace: "db", params.KeySnapshotContentName: "content-1",
	}

	for key, val := range map[string]string{params.Prefix + "bogus": "1", params.KeyRepository: "http://x", params.KeyReplicate: "maybe"} {
		bad := map[string]string{}
		for k, v := range good {
			bad[k] = v
		}
		bad[key] = val
		_, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: vol, Name: "bad", Parameters: bad})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), key) {
			t.Errorf("%s=%s: %v, want INVALID_ARGUMENT naming it", key, val, err)
		}
	}
	if ls, err := csi.NewControllerClient(driver).ListSnapshots(ctx, &csi.ListSnapshotsRequest{}); err != nil || len(ls.GetEntries()) != 0 {
		t.Fatalf("refused snapshots reached the driver: %v, %v", ls.GetEntries(), err)
	}

	// The driver refuses parameters it does not know, so success shows
	// Ferry's were stripped.
	s, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: vol, Name: "snap", Parameters: good})
	if err != nil {
		t.Fatal(err)
	}
	id := s.GetSnapshot().GetSnapshotId()
	job, ok := q.jobs[id]
	if !ok || job.SourceVolumeID != vol || job.Name != "snap" || !job.ReadyToUse ||
		job.Replication.SnapshotNamespace != "db" || job.Replication.SnapshotName != "snap" ||
		job.Replication.SecretNamespace != agentsNamespace || job.Replication.Repository != good[params.KeyRepository] {
		t.Fatalf("queued job %+v", job)
	}
	// The snapshotter retries: the same snapshot, queued under the same ID.
	if s2, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: vol, Name: "snap", Parameters: good}); err != nil || s2.GetSnapshot().GetSnapshotId() != id {
		t.Fatalf("retry: %v", err)
	}
	if len(q.jobs) != 1 {
		t.Fatalf("%d jobs after a retry", len(q.jobs))
	}
	// Without Ferry's parameters nothing is queued.
	if _, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: vol, Name: "plain"}); err != nil {
		t.Fatal(err)
	}
	if len(q.jobs) != 1 {
		t.Fatal("a snapshot without Ferry parameters was queued")
	}
}

func TestEnqueueFailureMakesTheSnapshotterRetry(t *testing.T) {
	ctx := context.Background()
	q := &failingQueue{fail: true}
	endpoint, _ := serveHook(t, reflinkcsi.Config{}, q)
	ctrl := csi.NewControllerClient(dial(t, endpoint))
	cap := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	v, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: []*csi.VolumeCapability{cap}})
	if err != nil {
		t.Fatal(err)
	}
	p := map[string]string{params.KeyRepository: "file:///repo", params.KeySecretName: "dr", params.KeySecretNamespace: "ns"}
	req := &csi.CreateSnapshotRequest{SourceVolumeId: v.GetVolume().GetVolumeId(), Name: "s", Parameters: p}
	if _, err := ctrl.CreateSnapshot(ctx, req); status.Code(err) != codes.Unavailable {
		t.Fatalf("queue down: %v, want UNAVAILABLE so the snapshotter retries", err)
	}
	q.fail = false
	if _, err := ctrl.CreateSnapshot(ctx, req); err != nil {
		t.Fatalf("retry once the queue works: %v", err)
	}
}
