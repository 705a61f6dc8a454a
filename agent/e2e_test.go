package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	miniogo "github.com/minio/minio-go/v7"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/csi/expose"
	"github.com/ferrydr/ferry/csi/params"
	"github.com/ferrydr/ferry/testenv/csitest"
	"github.com/ferrydr/ferry/testenv/loop"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/testenv/reflinkcsi"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

const password = "e2e password"

type env struct {
	repoURL string
	stores  func() []objstore.Store
	hook    *grpc.ClientConn
	driver  *grpc.ClientConn
	secrets string
	state   string
	metrics string // host:port of /metrics and /healthz
	creds   map[string]string
	cluster *minio.Cluster
}

// scrambleShard replaces object name on target t by other bytes of its
// size, written straight to the bucket without a checksum: damage only
// reading finds.
func (e *env) scrambleShard(t *testing.T, target int, name string) {
	t.Helper()
	ctx := context.Background()
	srv := e.cluster.Servers[target]
	key := "dr/" + name
	obj, err := srv.Client(t).GetObject(ctx, "ferry", key, miniogo.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(obj)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = ^b[i]
	}
	if _, err := srv.Client(t).PutObject(ctx, "ferry", key, bytes.NewReader(b), int64(len(b)), miniogo.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
}

// start brings up three MinIO servers with a 2+1 repository, the test CSI
// driver, and the agent with its hook in front of the driver; tune, when
// given, adjusts the agent's configuration first.
func start(t *testing.T, drvCfg reflinkcsi.Config, tune ...func(*agent.Config)) *env {
	t.Helper()
	e := startRepo(t)
	drv := reflinkcsi.StartTest(t, drvCfg)
	sockDir, err := os.MkdirTemp("", "ferry-hook-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	e.state = t.TempDir()
	e.metrics = freeAddr(t)
	cfg := agent.Config{
		CSIListen: "unix://" + filepath.Join(sockDir, "csi.sock"), CSIDriver: drv.Config().Endpoint,
		StateDir: e.state, SecretsDir: e.secrets, MetricsListen: e.metrics,
	}
	for _, f := range tune {
		f(&cfg)
	}
	actx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Run(actx, cfg, slog.New(slog.NewTextHandler(testWriter{t}, nil))) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	e.hook = csitest.Dial(t, cfg.CSIListen)
	e.driver = csitest.Dial(t, drv.Config().Endpoint)
	waitProbe(t, e.hook)
	return e
}

// freeAddr returns a loopback host:port nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitProbe(t *testing.T, c *grpc.ClientConn) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := csi.NewIdentityClient(c).Probe(context.Background(), &csi.ProbeRequest{}); err == nil {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("hook did not come up: %v", err)
		}
	}
}

// startRepo brings up three MinIO servers with a 2+1 repository, and a
// secrets directory holding its password and credentials.
func startRepo(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	c := minio.StartCluster(t, 3, "ferry", "dr")
	e := &env{repoURL: c.Repo(), cluster: c}
	e.stores = func() []objstore.Store { return c.Stores(t) }
	e.creds = map[string]string{}
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
		e.creds[k] = c.Env(k)
	}
	if _, err := repo.Init(ctx, e.stores(), []byte(password), repo.Options{Erasure: erasure.Scheme{K: 2, M: 1}, KDF: crypt.KDFParams{N: 1024, R: 8, P: 1}}); err != nil {
		t.Fatal(err)
	}
	e.secrets = t.TempDir()
	sec := filepath.Join(e.secrets, "ferry-system", "dr-repo")
	os.MkdirAll(sec, 0o700)
	os.WriteFile(filepath.Join(sec, "password"), []byte(password+"\n"), 0o600)
	for k, v := range e.creds {
		os.WriteFile(filepath.Join(sec, k), []byte(v), 0o600)
	}

	return e
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func writeFiles(t *testing.T, dir string, prefix string, n, size int, seed byte) map[string][]byte {
	files := map[string][]byte{}
	for i := range n {
		b := bytes.Repeat([]byte{seed + byte(i)}, size)
		copy(b, fmt.Sprintf("%s-%d", prefix, i))
		name := filepath.Join(dir, fmt.Sprintf("%s-%d.dat", prefix, i))
		if err := os.WriteFile(name, b, 0o644); err != nil {
			t.Fatal(err)
		}
		files[filepath.Base(name)] = b
	}
	return files
}

func snapshotParams(repoURL, name string) map[string]string {
	return map[string]string{
		params.KeyRepository: repoURL, params.KeySecretName: "dr-repo", params.KeySecretNamespace: "ferry-system",
		params.KeySnapshotName: name, params.KeySnapshotNamespace: "db", params.KeySnapshotContentName: "snapcontent-" + name,
	}
}

// waitReplicated waits for the manifest of CSI snapshot id.
func waitReplicated(t *testing.T, e *env, id string) *repo.Snapshot {
	t.Helper()
	ctx := context.Background()
	r, err := repo.Open(ctx, e.stores(), []byte(password))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		snaps, err := r.Snapshots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range snaps {
			if s.Volume.CSISnapshotID == id {
				return s
			}
		}
	}
	t.Fatalf("snapshot %s was not replicated within 2 minutes", id)
	return nil
}

// snapshotBytes reads a CSI snapshot through the driver.
func snapshotBytes(t *testing.T, e *env, id string) []byte {
	t.Helper()
	ctx := context.Background()
	v, err := expose.Expose(ctx, expose.Config{Driver: e.driver, NodeID: "node-1", Dir: t.TempDir()}, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Release(ctx)
	b := make([]byte, v.Size)
	if _, err := v.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReplicateCSISnapshots(t *testing.T) {
	e := start(t, reflinkcsi.Config{})
	ctx := context.Background()
	ctrl := csi.NewControllerClient(e.hook)
	const size = 256 << 20
	cv, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-1", CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: []*csi.VolumeCapability{csitest.MountCap}})
	if err != nil {
		t.Fatal(err)
	}
	volID := cv.GetVolume().GetVolumeId()
	var first map[string][]byte
	csitest.WithMounted(t, e.hook, volID, func(dir string) { first = writeFiles(t, dir, "a", 40, 512<<10, 1) })

	// A bad Ferry parameter is refused before the driver sees the call.
	bad := snapshotParams(e.repoURL, "bad")
	bad[params.Prefix+"retention"] = "7d"
	_, err = ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: volID, Name: "snap-bad", Parameters: bad})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), params.Prefix+"retention") {
		t.Fatalf("bad parameter: %v", err)
	}
	if ls, err := csi.NewControllerClient(e.driver).ListSnapshots(ctx, &csi.ListSnapshotsRequest{}); err != nil || len(ls.GetEntries()) != 0 {
		t.Fatalf("a refused snapshot reached the driver: %v %v", ls, err)
	}

	s1, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: volID, Name: "snap-1", Parameters: snapshotParams(e.repoURL, "snap-1")})
	if err != nil {
		t.Fatal(err)
	}
	id1 := s1.GetSnapshot().GetSnapshotId()
	m1 := waitReplicated(t, e, id1)
	if m1.Volume.VolumeSnapshot != "snap-1" || m1.Volume.Namespace != "db" || m1.Volume.CSIVolumeID != volID {
		t.Fatalf("manifest does not name the VolumeSnapshot: %+v", m1.Volume)
	}

	var second map[string][]byte
	csitest.WithMounted(t, e.hook, volID, func(dir string) { second = writeFiles(t, dir, "b", 4, 512<<10, 100) })
	changed := int64(4 * 512 << 10)
	s2, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: volID, Name: "snap-2", Parameters: snapshotParams(e.repoURL, "snap-2")})
	if err != nil {
		t.Fatal(err)
	}
	id2 := s2.GetSnapshot().GetSnapshotId()
	m2 := waitReplicated(t, e, id2)
	t.Logf("first: read %d of %d; second: read %d, new %d, %d bytes of files changed", m1.Stats.BytesRead, m1.Size, m2.Stats.BytesRead, m2.Stats.BytesNew, changed)
	if m1.Stats.BytesRead >= size/2 {
		t.Errorf("first replication read %d bytes of a %d-byte volume holding 20 MiB: allocated ranges not used", m1.Stats.BytesRead, size)
	}
	if m2.Stats.BytesRead > 8*changed {
		t.Errorf("second replication read %d bytes for %d changed: not incremental", m2.Stats.BytesRead, changed)
	}

	// Each snapshot restores to exactly its bytes, and the filesystem mounts.
	r, err := repo.Open(ctx, e.stores(), []byte(password))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		m     *repo.Snapshot
		csiID string
		files []map[string][]byte
	}{{m1, id1, []map[string][]byte{first}}, {m2, id2, []map[string][]byte{first, second}}} {
		out := filepath.Join(t.TempDir(), "restored.img")
		if _, err := restore.Run(ctx, r, c.m, out, restore.Options{}); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, snapshotBytes(t, e, c.csiID)) {
			t.Fatalf("snapshot %s restored differently", c.csiID)
		}
		mnt := t.TempDir()
		dev := loop.Attach(t, out, true)
		if out, err := exec.Command("mount", "-o", "ro", dev, mnt).CombinedOutput(); err != nil {
			t.Fatalf("mount restored filesystem: %v %s", err, out)
		}
		for _, files := range c.files {
			for name, want := range files {
				b, err := os.ReadFile(filepath.Join(mnt, name))
				if err != nil || !bytes.Equal(b, want) {
					exec.Command("umount", mnt).Run()
					t.Fatalf("%s in the restored filesystem: %v", name, err)
				}
			}
		}
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Fatalf("umount: %v %s", err, out)
		}
	}
	// What an operator sees: metrics, health, and the snapshots by name.
	metrics := httpGet(t, "http://"+e.metrics+"/metrics")
	for _, want := range []string{
		`ferry_replication_jobs_total{result="success"} 2`,
		`ferry_replication_last_success_timestamp_seconds{namespace="db",volume="` + volID + `"}`,
		`ferry_replication_duration_seconds_count{mode="delta"} 1`,
		`ferry_replication_duration_seconds_count{mode="allocated"} 1`,
		`ferry_replication_bytes_total{kind="read"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if h := httpGet(t, "http://"+e.metrics+"/healthz"); strings.TrimSpace(h) != "ok" {
		t.Errorf("/healthz: %q", h)
	}
	cmd := exec.Command(buildFerry(t), "snapshots", "--repo", e.repoURL)
	cmd.Env = append(os.Environ(), "FERRY_PASSWORD="+password, "AWS_ACCESS_KEY_ID="+e.creds["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY="+e.creds["AWS_SECRET_ACCESS_KEY"])
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "volumesnapshot db/snap-1") || !strings.Contains(string(out), "volumesnapshot db/snap-2") {
		t.Errorf("ferry snapshots does not list the VolumeSnapshots: %v\n%s", err, out)
	}
	if jobs, _ := os.ReadDir(filepath.Join(e.state, "jobs")); len(jobs) != 0 {
		t.Fatalf("jobs left in the queue after both replications: %v", jobs)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

// TestReplicateWithoutSnapshotMetadata: a driver without changed-block
// tracking gets its snapshots read whole, and they restore exactly.
func TestReplicateWithoutSnapshotMetadata(t *testing.T) {
	e := start(t, reflinkcsi.Config{NoSnapshotMetadata: true})
	ctx := context.Background()
	ctrl := csi.NewControllerClient(e.hook)
	const size = 64 << 20
	cv, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-plain", CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: []*csi.VolumeCapability{csitest.MountCap}})
	if err != nil {
		t.Fatal(err)
	}
	volID := cv.GetVolume().GetVolumeId()
	csitest.WithMounted(t, e.hook, volID, func(dir string) { writeFiles(t, dir, "p", 8, 256<<10, 3) })
	s, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: volID, Name: "snap-plain", Parameters: snapshotParams(e.repoURL, "snap-plain")})
	if err != nil {
		t.Fatal(err)
	}
	id := s.GetSnapshot().GetSnapshotId()
	m := waitReplicated(t, e, id)
	if m.Params["mode"] != "full" || m.Stats.BytesRead != size {
		t.Fatalf("mode %q, read %d of %d: want a full read", m.Params["mode"], m.Stats.BytesRead, size)
	}
	r, err := repo.Open(ctx, e.stores(), []byte(password))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "restored.img")
	if _, err := restore.Run(ctx, r, m, out, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, snapshotBytes(t, e, id)) {
		t.Fatal("restored bytes differ from the snapshot")
	}

	// The next snapshot is compared with this one (backup.Options.Basis)
	// instead of chunked whole; it restores as exactly.
	csitest.WithMounted(t, e.hook, volID, func(dir string) { writeFiles(t, dir, "q", 2, 128<<10, 4) })
	s2, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: volID, Name: "snap-plain-2", Parameters: snapshotParams(e.repoURL, "snap-plain-2")})
	if err != nil {
		t.Fatal(err)
	}
	id2 := s2.GetSnapshot().GetSnapshotId()
	m2 := waitReplicated(t, e, id2)
	if m2.Params["mode"] != "full" || m2.Params["basis"] != m.ID {
		t.Fatalf("second snapshot: mode %q, basis %q: want full, compared with %s", m2.Params["mode"], m2.Params["basis"], m.ID[:12])
	}
	if m2.Stats.NewChunks == 0 || m2.Stats.NewChunks >= m.Stats.Chunks {
		t.Fatalf("second snapshot stored %d new chunks of %d", m2.Stats.NewChunks, m.Stats.Chunks)
	}
	out2 := filepath.Join(t.TempDir(), "restored2.img")
	if _, err := restore.Run(ctx, r, m2, out2, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out2); !bytes.Equal(got, snapshotBytes(t, e, id2)) {
		t.Fatal("second snapshot's restored bytes differ from it")
	}
}
