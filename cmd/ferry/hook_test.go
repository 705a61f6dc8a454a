package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ferrydr/ferry/agent/cluster"
	"github.com/ferrydr/ferry/csi/params"
	"github.com/ferrydr/ferry/testenv/csitest"
	"github.com/ferrydr/ferry/testenv/kube"
	"github.com/ferrydr/ferry/testenv/reflinkcsi"
)

// startHook runs `ferry hook` with args added in front of drv, and
// returns a client of the hook's Controller service and a volume created
// through it once it serves.
func startHook(t *testing.T, ctx context.Context, drv *reflinkcsi.Driver, args ...string) (csi.ControllerClient, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "ferry-hook-") // a socket path must stay under 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := "unix://" + filepath.Join(dir, "hook.sock")
	hook := exec.Command(ferryBin, append([]string{"hook", "--csi-listen", sock, "--csi-driver", drv.Config().Endpoint,
		"--state-dir", filepath.Join(dir, "state"), "--metrics-listen", ""}, args...)...)
	var hookLog bytes.Buffer
	hook.Stderr = &hookLog
	if err := hook.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		hook.Process.Kill()
		hook.Wait()
	})
	ctrl := csi.NewControllerClient(csitest.Dial(t, sock))
	// The hook serves once it has found the driver; wait for it.
	v, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{csitest.BlockCap}}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("CreateVolume through the hook: %v\n%s", err, hookLog.String())
	}
	return ctrl, v.GetVolume().GetVolumeId()
}

// TestHookKubeSecretNamespace: `ferry hook --kube` queues the snapshot of
// a class that names no Secret namespace with the Secret in its
// --namespace, the agents', not in the VolumeSnapshot's.
func TestHookKubeSecretNamespace(t *testing.T) {
	const agents = "ferry-system"
	c := kube.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := c.ApplyFile(ctx, "../../deploy/crd/ferry.dev_ferryjobs.yaml", kube.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitEstablished(ctx, "ferryjobs.ferry.dev"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: agents}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	drv := reflinkcsi.StartTest(t, reflinkcsi.Config{})
	ctrl, vol := startHook(t, ctx, drv, "--kube", "--kubeconfig", c.Kubeconfig, "--namespace", agents)
	s, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: vol, Name: "snap", Parameters: map[string]string{
		params.KeyRepository: "s3://s3.zone-a.example/ferry-dr", params.KeySecretName: "ferry-dr",
		params.KeySnapshotName: "data-1", params.KeySnapshotNamespace: "app",
	}})
	if err != nil {
		t.Fatal(err)
	}
	j, err := (&cluster.Jobs{Client: c.Dynamic, Namespace: agents}).Get(ctx, cluster.ReplicationJobName(reflinkcsi.DriverName, s.GetSnapshot().GetSnapshotId()))
	if err != nil {
		t.Fatalf("the replication job: %v", err)
	}
	if want := (cluster.SecretRef{Namespace: agents, Name: "ferry-dr"}); j.Spec.Secret != want {
		t.Errorf("the job's Secret is %+v, want %+v", j.Spec.Secret, want)
	}
}
