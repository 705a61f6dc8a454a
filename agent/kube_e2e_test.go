package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/agent/cluster"
	"github.com/ferrydr/ferry/csi/params"
	"github.com/ferrydr/ferry/testenv/csitest"
	"github.com/ferrydr/ferry/testenv/kube"
	"github.com/ferrydr/ferry/testenv/reflinkcsi"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

const ferryNS = "ferry-system"

// Who deploy/'s RBAC grants rights to, and so whom the test's components
// run as: the agents' ServiceAccount, the placeholder subject of the
// hook's RoleBinding (rbac/hook.yaml), and the user that
// examples/restore-binding.yaml lets run restore-to-cluster.
const (
	agentServiceAccount               = "ferry-agent"
	hookNamespace, hookServiceAccount = "kube-system", "csi-controller"
	restoreUser                       = "dr-operator@example.com"
)

var (
	snapshotClasses = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotclasses"}
	volumeSnapshots = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshots"}
)

// installFerry installs deploy/ into c as `kubectl apply -k deploy/` does
// (its DaemonSet stays without pods: the clusters have no nodes, and the
// test runs the agents itself), binds the ferry-restore roles to
// restoreUser with examples/restore-binding.yaml, and adds the
// application's namespace and the repository Secret.
func installFerry(t *testing.T, c *kube.Cluster, e *env) {
	t.Helper()
	ctx := t.Context()
	dir, err := filepath.Abs("../deploy")
	if err != nil {
		t.Fatal(err)
	}
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	manifests, err := m.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Apply(ctx, manifests, kube.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitEstablished(ctx, "ferryjobs.ferry.dev"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ApplyFile(ctx, "../deploy/examples/restore-binding.yaml", kube.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	data := map[string][]byte{"password": []byte(password)}
	for k, v := range e.creds {
		data[k] = []byte(v)
	}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "ferry-repository", Namespace: ferryNS}, Data: data}
	if _, err := c.Client.CoreV1().Secrets(ferryNS).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// transcript keeps everything the test's agents, commands and API objects
// said, to be searched for secrets at the end.
type transcript struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (tr *transcript) Write(p []byte) (int, error) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.b.Write(p)
}

func (tr *transcript) add(what string, v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintf(tr, "%s: %s\n", what, b)
}

// runAgent runs agent.Run with cfg until the returned stop is called (or
// the test ends); its log goes to the test's and to tr.
func runAgent(t *testing.T, tr *transcript, cfg agent.Config) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log := slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, tr), nil)).With("node", cfg.NodeName)
	go func() { done <- agent.Run(ctx, cfg, log) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent %s: %v", cfg.NodeName, err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// staticClaim registers the driver's volume as a PersistentVolume and a
// claim bound to it, and waits until they are Bound.
func staticClaim(t *testing.T, c *kube.Cluster, volID, ns, name string, size int64) {
	t.Helper()
	ctx := t.Context()
	mode := corev1.PersistentVolumeFilesystem
	empty := ""
	q := *resource.NewQuantity(size, resource.BinarySI)
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-" + name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:    corev1.ResourceList{corev1.ResourceStorage: q},
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			VolumeMode:  &mode,
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: reflinkcsi.DriverName, VolumeHandle: volID, FSType: "ext4",
			}},
			ClaimRef: &corev1.ObjectReference{Namespace: ns, Name: name},
		},
	}
	if _, err := c.Client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: q}},
			StorageClassName: &empty, VolumeMode: &mode, VolumeName: pv.Name,
		},
	}
	if _, err := c.Client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "PVC "+ns+"/"+name+" Bound", func() bool {
		got, err := c.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && got.Status.Phase == corev1.ClaimBound
	})
}

func waitFor(t *testing.T, within time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !ok(); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, within)
		}
	}
}

// volumeBytes reads a volume of the driver as a block device.
func volumeBytes(t *testing.T, conn *grpc.ClientConn, volID string) []byte {
	t.Helper()
	var b []byte
	csitest.WithBlock(t, conn, volID, func(dev *os.File) {
		size, err := dev.Seek(0, 2)
		if err != nil {
			t.Fatal(err)
		}
		b = make([]byte, size)
		if _, err := dev.ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}
	})
	return b
}

// TestKubeDisasterRecovery is the DR story end to end, on two real API
// servers: in the primary, a VolumeSnapshot of a PVC through a Ferry
// VolumeSnapshotClass is replicated (seen in its FerryJob and Events);
// then the primary is stopped, and `ferry restore-to-cluster` brings the
// PVC back in the DR cluster, Bound, with exactly the snapshot's bytes, in
// the StorageClass asked for and with its parameters. The restore's
// failures are checked there too. The agents, the hook and
// restore-to-cluster run as the identities deploy/'s RBAC is for, with
// only the rights it grants them.
func TestKubeDisasterRecovery(t *testing.T) {
	e := startRepo(t)
	tr := &transcript{}
	ferry := buildFerry(t)
	primary := kube.Start(t, kube.Name("primary"))
	dr := kube.Start(t, kube.Name("dr"))
	installFerry(t, primary, e)
	installFerry(t, dr, e)
	ctx := t.Context()

	// The primary: the driver, the hook in front of it (the controller's
	// sidecar), a node agent, and the external-snapshotter.
	drvA, stopDrvA := reflinkcsi.StartStoppable(t, reflinkcsi.Config{NodeID: "primary-node"})
	sockDir, err := os.MkdirTemp("", "ferry-hook-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	hookSock := "unix://" + filepath.Join(sockDir, "csi.sock")
	kubeCfg := func(c *kube.Cluster, node string, drv *reflinkcsi.Driver) agent.Config {
		return agent.Config{
			Kube: true, Kubeconfig: c.ServiceAccountKubeconfig(ferryNS, agentServiceAccount), Namespace: ferryNS, NodeName: node, ClusterName: c.Name,
			CSIDriver: drv.Config().Endpoint, StateDir: t.TempDir(), Heartbeat: time.Second, VerifyInterval: -1,
		}
	}
	hc := kubeCfg(primary, "controller", drvA)
	hc.HookOnly, hc.CSIListen = true, hookSock
	hc.Kubeconfig = primary.ServiceAccountKubeconfig(hookNamespace, hookServiceAccount)
	stopHook := runAgent(t, tr, hc)
	ac := kubeCfg(primary, "primary-node", drvA)
	ac.MetricsListen = freeAddr(t)
	stopAgentA := runAgent(t, tr, ac)
	hook := csitest.Dial(t, hookSock)
	waitProbe(t, hook)
	kube.StartSnapshotter(t, primary, hookSock)

	// An application's PVC with files on ext4.
	const size = 64 << 20
	cv, err := csi.NewControllerClient(hook).CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-data", CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: []*csi.VolumeCapability{csitest.MountCap}})
	if err != nil {
		t.Fatal(err)
	}
	volID := cv.GetVolume().GetVolumeId()
	var files map[string][]byte
	csitest.WithMounted(t, hook, volID, func(dir string) { files = writeFiles(t, dir, "db", 12, 256<<10, 7) })
	staticClaim(t, primary, volID, "app", "data", size)

	class := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
		"metadata": map[string]any{"name": "ferry-dr"}, "driver": reflinkcsi.DriverName, "deletionPolicy": "Delete",
		"parameters": map[string]any{
			params.KeyRepository: e.repoURL, params.KeySecretName: "ferry-repository", params.KeySecretNamespace: ferryNS,
		},
	}}
	if _, err := primary.Dynamic.Resource(snapshotClasses).Create(ctx, class, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	vs := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
		"metadata": map[string]any{"name": "data-1", "namespace": "app"},
		"spec":     map[string]any{"volumeSnapshotClassName": "ferry-dr", "source": map[string]any{"persistentVolumeClaimName": "data"}},
	}}
	if _, err := primary.Dynamic.Resource(volumeSnapshots).Namespace("app").Create(ctx, vs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var snapHandle string
	waitFor(t, 2*time.Minute, "VolumeSnapshot ready", func() bool {
		got, err := primary.Dynamic.Resource(volumeSnapshots).Namespace("app").Get(ctx, "data-1", metav1.GetOptions{})
		ready, _, _ := unstructured.NestedBool(got.Object, "status", "readyToUse")
		return err == nil && ready
	})
	jobs := &cluster.Jobs{Client: primary.Dynamic, Namespace: ferryNS}
	var job *cluster.Job
	waitFor(t, 2*time.Minute, "replication job succeeded", func() bool {
		l, err := primary.Dynamic.Resource(cluster.JobResource).Namespace(ferryNS).List(ctx, metav1.ListOptions{})
		if err != nil || len(l.Items) != 1 {
			return false
		}
		job, err = jobs.Get(ctx, l.Items[0].GetName())
		if err == nil && job.Status.Phase == cluster.PhaseFailed {
			t.Fatalf("replication failed: %s", job.Status.Message)
		}
		return err == nil && job.Status.Phase == cluster.PhaseSucceeded
	})
	snapHandle = job.Spec.Replicate.Snapshot.SnapshotID
	st := job.Status
	t.Logf("replication: %s", st.Message)
	if st.Agent != "primary-node" || st.Snapshot == "" || st.BytesRead == 0 || st.BytesStored == 0 || st.Mode != "allocated" ||
		!strings.Contains(st.Message, "PVC app/data") {
		t.Errorf("replication job status: %+v", st)
	}
	waitFor(t, 30*time.Second, "Events on the VolumeSnapshot", func() bool {
		evs, err := primary.Client.CoreV1().Events("app").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=data-1"})
		reasons := map[string]string{}
		for _, ev := range evs.Items {
			reasons[ev.Reason] = ev.Message
		}
		return err == nil && strings.Contains(reasons["ReplicationStarted"], snapHandle) && strings.Contains(reasons["ReplicationSucceeded"], st.Snapshot[:12])
	})
	want := volumeBytes(t, hook, volID) // the volume did not change since the snapshot
	record(t, tr, primary)
	resp, err := http.Get("http://" + ac.MetricsListen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	tr.Write(metrics)

	// The disaster: everything of the primary stops.
	stopAgentA()
	stopHook()
	stopDrvA()
	primary.Stop()

	// The DR cluster: its own driver and agent, a StorageClass of the
	// driver, and nothing else. The driver has room for two restores.
	drvB := reflinkcsi.StartTest(t, reflinkcsi.Config{NodeID: "dr-node", Capacity: size * 5 / 2})
	const label = "restored-in-dr"
	sc := &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{Name: "reflink"}, Provisioner: reflinkcsi.DriverName,
		Parameters: map[string]string{reflinkcsi.ParamLabel: label},
	}
	if _, err := dr.Client.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	stopAgentB := runAgent(t, tr, kubeCfg(dr, "dr-node", drvB))
	connB := csitest.Dial(t, drvB.Config().Endpoint)
	waitFor(t, 30*time.Second, "the DR agent's Lease", func() bool {
		a, err := cluster.LiveAgents(ctx, dr.Client, ferryNS)
		return err == nil && len(a) == 1
	})
	userKubeconfig := dr.KubeconfigAs(restoreUser)
	run := func(args ...string) (string, int) {
		cmd := exec.Command(ferry, append([]string{"restore-to-cluster", "--repo", e.repoURL, "--kubeconfig", userKubeconfig}, args...)...)
		out, err := cmd.CombinedOutput()
		tr.Write(out)
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	// restore runs restore-to-cluster --wait into PVC app/<pvc>, checks
	// that it showed progress and that the claim is Bound with exactly the
	// snapshot's bytes, and returns the claim and its PersistentVolume.
	restore := func(pvc string, args ...string) (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume) {
		t.Helper()
		out, code := run(append(args, "--namespace", "app", "--pvc", pvc, "--wait", "--timeout", "5m")...)
		t.Logf("restore-to-cluster %s:\n%s", strings.Join(args, " "), out)
		bound := "PVC app/" + pvc + " is Bound"
		if code != 0 || !strings.Contains(out, bound) {
			t.Fatalf("restore-to-cluster exited %d", code)
		}
		if progress := progressLine.FindAllString(out[:strings.Index(out, bound)], -1); len(progress) == 0 {
			t.Errorf("restore-to-cluster --wait showed no progress before %q", bound)
		}
		claim, err := dr.Client.CoreV1().PersistentVolumeClaims("app").Get(ctx, pvc, metav1.GetOptions{})
		if err != nil || claim.Status.Phase != corev1.ClaimBound {
			t.Fatalf("DR PVC: %+v %v", claim.Status, err)
		}
		pv, err := dr.Client.CoreV1().PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got := volumeBytes(t, connB, pv.Spec.CSI.VolumeHandle)
		if !bytes.Equal(got[:len(want)], want) || bytes.Count(got[len(want):], []byte{0}) != len(got)-len(want) {
			t.Fatalf("the DR volume (%d bytes) differs from the snapshot (%d bytes)", len(got), len(want))
		}
		return claim, pv
	}
	pvc, pv := restore("data", "latest", "--from", "app/data", "--storage-class", "reflink")
	if pv.Spec.StorageClassName != "reflink" || pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName != "reflink" {
		t.Errorf("restored into class %q (PersistentVolume) and %v (PVC), want reflink", pv.Spec.StorageClassName, pvc.Spec.StorageClassName)
	}
	// The class's parameter reached CreateVolume: the driver keeps it
	// with the volume and hands it back in the volume context.
	if got := pv.Spec.CSI.VolumeAttributes[reflinkcsi.ParamLabel]; got != label {
		t.Errorf("restored PersistentVolume's %s: %q, want %q (the StorageClass's)", reflinkcsi.ParamLabel, got, label)
	}
	csitest.WithMounted(t, connB, pv.Spec.CSI.VolumeHandle, func(dir string) {
		for name, b := range files {
			if g, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(g, b) {
				t.Errorf("restored file %s: %v", name, err)
			}
		}
	})
	// The same snapshot by (a prefix of) its ID, without a class.
	if _, pv := restore("data-by-id", st.Snapshot[:12]); pv.Spec.StorageClassName != "" || pv.Annotations[cluster.AnnotationSnapshot] != st.Snapshot {
		t.Errorf("PersistentVolume restored by ID: class %q, snapshot %q", pv.Spec.StorageClassName, pv.Annotations[cluster.AnnotationSnapshot])
	}

	// Clear failures.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"latest", "--from", "app/data", "--namespace", "app", "--pvc", "data", "--wait"}, "PVC app/data already exists"},
		{[]string{"latest", "--from", "app/data", "--namespace", "nope", "--pvc", "data", "--wait"}, "namespace nope does not exist"},
		{[]string{"latest", "--from", "app/data", "--namespace", "app", "--pvc", "data-2", "--wait"}, "not enough capacity"},
		{[]string{"latest", "--from", "app/other", "--namespace", "app", "--pvc", "data-3", "--wait"}, "none of PVC app/other"},
		{[]string{"latest", "--from", "app/data", "--namespace", "app", "--pvc", "data-6", "--storage-class", "nope", "--wait"}, "StorageClass nope does not exist"},
	} {
		out, code := run(c.args...)
		t.Logf("restore-to-cluster %s:\n%s", strings.Join(c.args, " "), out)
		if code != 1 || !strings.Contains(out, c.want) || strings.Count(strings.TrimSpace(out), "\n") > 8 {
			t.Errorf("restore-to-cluster %v: exit %d, want 1 and %q:\n%s", c.args, code, c.want, out)
		}
	}
	// Lose two of the three targets' data: the snapshot is no longer
	// restorable, and the restore says so before creating anything.
	stores := e.stores()
	for _, s := range stores[:2] {
		var names []string
		if err := s.List(ctx, "data/", func(i objstore.Info) error { names = append(names, i.Name); return nil }); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if err := s.Delete(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
	}
	if out, code := run(st.Snapshot[:12], "--namespace", "app", "--pvc", "data-4", "--wait"); code != 1 || !strings.Contains(out, "not restorable") {
		t.Errorf("restore of a lost snapshot: exit %d:\n%s", code, out)
	}
	stopAgentB()
	record(t, tr, dr)
	if out, code := run("latest", "--from", "app/data", "--namespace", "app", "--pvc", "data-5"); code != 1 || !strings.Contains(out, "no Ferry agent is running") {
		t.Errorf("restore without agents: exit %d:\n%s", code, out)
	}
	noSecrets(t, e, tr)
}

// progressLine is a status line restore-to-cluster --wait prints: the time
// since it began waiting, then what the job does.
var progressLine = regexp.MustCompile(`(?m)^ *[0-9hms.]+s  \S.*$`)

// record adds the cluster's FerryJobs and Events to tr.
func record(t *testing.T, tr *transcript, c *kube.Cluster) {
	t.Helper()
	jobs, err := c.Dynamic.Resource(cluster.JobResource).Namespace(ferryNS).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr.add("ferryjobs", jobs)
	evs, err := c.Client.CoreV1().Events("").List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs.Items) == 0 {
		t.Error("no Events recorded")
	}
	tr.add("events", evs)
}

// noSecrets checks that no password or credential appears in what the run
// logged, printed, served as metrics, stored in FerryJobs and Events, or
// wrote in the repository's manifests.
func noSecrets(t *testing.T, e *env, tr *transcript) {
	t.Helper()
	r, err := repo.Open(t.Context(), e.stores(), []byte(password))
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := r.Snapshots(t.Context())
	if err != nil || len(snaps) == 0 {
		t.Fatalf("manifests: %d, %v", len(snaps), err)
	}
	tr.add("manifests", snaps)
	tr.mu.Lock()
	text := tr.b.String()
	tr.mu.Unlock()
	if len(text) < 10000 {
		t.Fatalf("the transcript holds only %d bytes: the scan would prove nothing", len(text))
	}
	for name, secret := range map[string]string{"password": password, "AWS_SECRET_ACCESS_KEY": e.creds["AWS_SECRET_ACCESS_KEY"], "AWS_ACCESS_KEY_ID": e.creds["AWS_ACCESS_KEY_ID"]} {
		if secret == "" {
			t.Fatalf("no %s to look for", name)
		}
		if i := strings.Index(text, secret); i >= 0 {
			t.Errorf("the %s appears in the run's output: ...%s...", name, text[max(0, i-200):i])
		}
	}
	t.Logf("scanned %d bytes of logs, command output, metrics, FerryJobs, Events and manifests for secrets", len(text))
}
