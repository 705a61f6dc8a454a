package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ferrydr/ferry/agent/cluster"
	"github.com/ferrydr/ferry/csi/hook"
	"github.com/ferrydr/ferry/csi/params"
	"github.com/ferrydr/ferry/testenv/kube"
)

// Who the manifests grant rights to: the agent's ServiceAccount, the
// placeholder subject of the hook's RoleBinding, and the user of
// examples/restore-binding.yaml.
const (
	hookNamespace, hookServiceAccount = "kube-system", "csi-controller"
	restoreUser                       = "dr-operator@example.com"
	repository                        = "s3://s3.zone-a.example:443/ferry-dr"
	secretName                        = "ferry-dr" // examples/repository-secret.yaml
)

// client is one identity's view of the cluster.
type client struct {
	kube kubernetes.Interface
	dyn  dynamic.Interface
}

func clientFor(t *testing.T, cfg *rest.Config) client {
	t.Helper()
	return client{kubernetes.NewForConfigOrDie(cfg), dynamic.NewForConfigOrDie(cfg)}
}

// TestOnAPIServer applies the manifests to a real API server and proves,
// with the identities they grant rights to and Ferry's own code, that each
// can do what Ferry needs and nothing else that matters.
func TestOnAPIServer(t *testing.T) {
	c := kube.Start(t)
	ctx := t.Context()
	base := render(t, ".")

	// Server-side dry run of everything needs the namespace and the CRD
	// to exist, so those two go first, for real.
	var crdName string
	for _, o := range base.objs {
		if o.GetKind() != "Namespace" && o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		if _, err := c.Apply(ctx, toJSON(t, o), kube.ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		if o.GetKind() == "CustomResourceDefinition" {
			crdName = o.GetName()
		}
	}
	if err := c.WaitEstablished(ctx, crdName); err != nil {
		t.Fatal(err)
	}
	admin := client{c.Client, c.Dynamic}
	for _, ns := range []string{"app", "restored", "csi-example"} {
		if _, err := admin.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("DryRun", func(t *testing.T) {
		for name, r := range map[string]rendered{
			"deploy":                base,
			"examples/hook-sidecar": render(t, "examples/hook-sidecar"),
			"examples/overlay":      renderOverlay(t),
		} {
			objs, err := c.Apply(ctx, r.yaml, kube.ApplyOptions{DryRun: true})
			switch {
			case err != nil:
				t.Errorf("%s: %v", name, err)
			case len(objs) != len(r.objs):
				t.Errorf("%s: %d objects applied, %d rendered", name, len(objs), len(r.objs))
			}
		}
	})
	// Everything but the workload, which needs nodes and an image.
	for _, o := range base.objs {
		if o.GetKind() == "DaemonSet" {
			continue
		}
		if _, err := c.Apply(ctx, toJSON(t, o), kube.ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"examples/repository-secret.yaml", "examples/volumesnapshotclass.yaml", "examples/restore-binding.yaml"} {
		if _, err := c.ApplyFile(ctx, f, kube.ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	agent := clientFor(t, c.ServiceAccountConfig(namespace, "ferry-agent"))
	hookc := clientFor(t, c.ServiceAccountConfig(hookNamespace, hookServiceAccount))
	userCfg := rest.CopyConfig(c.Config)
	userCfg.Impersonate = rest.ImpersonationConfig{UserName: restoreUser}
	user := clientFor(t, userCfg)

	// The agents: a presence Lease, and a worker running FerryJobs with
	// handlers that make the API calls the real ones make.
	agentCtx, stopAgent := context.WithCancel(ctx)
	var wg sync.WaitGroup
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	wg.Go(func() {
		cluster.Announce(agentCtx, agent.kube, namespace, "node-1", driver, time.Second, log)
	})
	events := cluster.NewEvents(agent.kube, agent.dyn, "ferry-agent", "node-1")
	w := &cluster.Worker{
		Jobs: &cluster.Jobs{Client: agent.dyn, Namespace: namespace}, Node: "node-1", Driver: driver,
		Events: events, Heartbeat: time.Second, KeepFinished: time.Hour, Log: log,
		Handlers: map[string]cluster.Handler{
			cluster.TypeReplicate: func(ctx context.Context, j *cluster.Job, _ *cluster.Progress) (*cluster.Outcome, error) {
				return &cluster.Outcome{Message: "replicated " + j.Spec.Replicate.Snapshot.SnapshotID}, nil
			},
			cluster.TypeRestore: func(ctx context.Context, j *cluster.Job, _ *cluster.Progress) (*cluster.Outcome, error) {
				return restoreLikeTheAgent(ctx, agent.kube, j)
			},
		},
	}
	var serveErr error
	wg.Go(func() {
		defer events.Stop()
		serveErr = w.Serve(agentCtx)
	})
	defer func() {
		stopAgent()
		wg.Wait()
		if serveErr != nil {
			t.Errorf("agent worker: %v", serveErr)
		}
	}()

	t.Run("Replication", func(t *testing.T) {
		// The VolumeSnapshot the hook's CreateSnapshot was for, in the
		// application's namespace.
		vs := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
			"metadata": map[string]any{"name": "data-1", "namespace": "app"},
			"spec": map[string]any{
				"volumeSnapshotClassName": "ferry-dr",
				"source":                  map[string]any{"persistentVolumeClaimName": "data"},
			},
		}}
		if _, err := admin.dyn.Resource(cluster.VolumeSnapshotResource).Namespace("app").Create(ctx, vs, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		class, err := admin.dyn.Resource(snapshotClasses).Get(ctx, "ferry-dr", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ps, _, _ := unstructured.NestedStringMap(class.Object, "parameters")
		ps[params.KeySnapshotName], ps[params.KeySnapshotNamespace] = "data-1", "app"
		// The hook's --namespace (hook/sidecar.yaml) is the default for
		// the Secret's, which the class leaves out.
		rep, _, err := params.Parse(ps, namespace)
		if err != nil {
			t.Fatal(err)
		}
		snap := hook.Snapshot{SnapshotID: "snap-1", SourceVolumeID: "vol-1", SizeBytes: 1 << 30, CreatedAt: time.Now(), ReadyToUse: true, Replication: *rep}

		// The hook queues it, twice as a retried CreateSnapshot would.
		enq := &cluster.Enqueuer{Jobs: &cluster.Jobs{Client: hookc.dyn, Namespace: namespace}, Driver: driver}
		for range 2 {
			if err := enq.Enqueue(ctx, snap); err != nil {
				t.Fatalf("the hook queues a replication: %v", err)
			}
		}
		name := cluster.ReplicationJobName(driver, snap.SnapshotID)
		job := waitJob(t, admin, name, cluster.PhaseSucceeded)
		if job.Status.Agent != "node-1" {
			t.Errorf("job ran on %q", job.Status.Agent)
		}
		// The class's retention rules survive the CRD's schema.
		if k := job.Spec.Replicate.Snapshot.Replication.Keep; rep.Keep == nil || k == nil || *k != *rep.Keep {
			t.Errorf("retention rules in the job: %+v, the class has %+v", k, rep.Keep)
		}
		// Events on the job, and on the VolumeSnapshot in the
		// application's namespace (found through volumesnapshots get).
		waitEvent(t, admin, namespace, name, "ReplicationSucceeded")
		waitEvent(t, admin, "app", "data-1", "ReplicationSucceeded")

		// The repository Secret, as a replication reads it.
		sec, err := cluster.Secrets{Client: agent.kube, Dir: t.TempDir()}.Secret(ctx, rep.SecretNamespace, rep.SecretName)
		if err != nil {
			t.Fatalf("the agent reads the class's Secret: %v", err)
		}
		if len(sec.Password) == 0 || sec.Env("AWS_ACCESS_KEY_ID") == "" {
			t.Errorf("Secret read without password or access key")
		}
	})

	t.Run("RestoreToCluster", func(t *testing.T) {
		sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "reflink"}, Provisioner: driver}
		if _, err := admin.kube.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitLiveAgent(t, user)
		j, err := cluster.SubmitRestore(ctx, user.kube, user.dyn, cluster.RestoreRequest{
			Namespace: namespace, Repository: repository,
			Secret: cluster.SecretRef{Namespace: namespace, Name: secretName},
			Restore: cluster.Restore{
				Snapshot: "latest", Source: cluster.RestoreSource{Namespace: "app", PVC: "data"},
				Namespace: "restored", PVC: "data", StorageClassName: "reflink",
			},
		})
		if err != nil {
			t.Fatalf("restore-to-cluster as %s: %v", restoreUser, err)
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		done, err := cluster.WaitRestore(wctx, user.kube, user.dyn, j, func(s string) { t.Log(s) })
		if err != nil {
			t.Fatalf("wait for the restore as %s: %v", restoreUser, err)
		}
		waitEvent(t, admin, namespace, done.Name, "RestoreSucceeded")
	})

	t.Run("AgentLeases", func(t *testing.T) {
		// Work that must run on one node at a time takes a Lease, through
		// client-go's leader election, and releases it when done.
		lctx, release := context.WithCancel(ctx)
		held := make(chan struct{})
		done := make(chan struct{})
		timing := cluster.LeaseTiming{Duration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: time.Second}
		go func() {
			defer close(done)
			cluster.Exclusive(lctx, agent.kube, namespace, "ferry-work-test", "node-1", timing, log, func(context.Context) { close(held) })
		}()
		select {
		case <-held:
		case <-time.After(30 * time.Second):
			t.Error("the agent did not take the Lease")
		}
		release()
		<-done
		l, err := admin.kube.CoordinationV1().Leases(namespace).Get(ctx, "ferry-work-test", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if h := l.Spec.HolderIdentity; h != nil && *h != "" {
			t.Errorf("the Lease is still held by %s after the agent released it", *h)
		}
	})

	t.Run("FinishedJobDeleted", func(t *testing.T) {
		// Finished by another agent hours ago, past the worker's
		// KeepFinished. Of a driver no agent serves, so that the worker
		// does not claim it before the test marks it finished.
		jobs := &cluster.Jobs{Client: admin.dyn, Namespace: namespace}
		j, err := jobs.Create(ctx, &cluster.Job{
			ObjectMeta: metav1.ObjectMeta{Name: "finished-long-ago"},
			Spec: cluster.JobSpec{
				Type: cluster.TypeRestore, Repository: repository, Driver: "nobody.csi.example",
				Secret:  cluster.SecretRef{Namespace: namespace, Name: secretName},
				Restore: &cluster.Restore{Snapshot: "latest", Namespace: "restored", PVC: "old"},
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		ended := metav1.NewTime(time.Now().Add(-2 * time.Hour).Truncate(time.Second))
		j.Status = cluster.JobStatus{Phase: cluster.PhaseSucceeded, Agent: "node-2", CompletionTime: &ended}
		if _, err := jobs.UpdateStatus(ctx, j); err != nil {
			t.Fatal(err)
		}
		err = poll(t, 30*time.Second, func() (bool, error) {
			_, err := jobs.Get(t.Context(), j.Name)
			return apierrors.IsNotFound(err), err
		})
		if err != nil {
			t.Fatalf("the agent did not delete the finished job: %v", err)
		}
	})

	t.Run("LeastPrivilege", func(t *testing.T) {
		// A Secret elsewhere, so that Forbidden cannot hide NotFound.
		other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secretName, Namespace: "app"}, StringData: map[string]string{"password": "x"}}
		if _, err := admin.kube.CoreV1().Secrets("app").Create(ctx, other, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		jobs := func(cl client) dynamic.ResourceInterface {
			return cl.dyn.Resource(cluster.JobResource).Namespace(namespace)
		}
		anyJob := func(t *testing.T) *unstructured.Unstructured {
			l, err := jobs(admin).List(ctx, metav1.ListOptions{})
			if err != nil || len(l.Items) == 0 {
				t.Fatalf("no FerryJob to try on: %v", err)
			}
			return &l.Items[0]
		}
		// Of a driver no agent serves, so the running worker leaves it.
		newJob := func() *unstructured.Unstructured {
			return &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "ferry.dev/v1alpha1", "kind": "FerryJob",
				"metadata": map[string]any{"generateName": "rbac-"},
				"spec": map[string]any{
					"type": "Restore", "repository": repository, "driver": "nobody.csi.example",
					"secretRef": map[string]any{"namespace": namespace, "name": secretName},
					"restore":   map[string]any{"snapshot": "latest", "namespace": "restored", "pvc": "other"},
				},
			}}
		}
		pv := func(name string) *corev1.PersistentVolume { return persistentVolume(name, "restored", "other") }

		for _, tc := range []struct {
			who     string
			cl      client
			what    string
			allowed bool
			call    func(t *testing.T) error
		}{
			{"agent", agent, "list ferryjobs in ferry-system", true, func(t *testing.T) error {
				_, err := jobs(agent).List(ctx, metav1.ListOptions{})
				return err
			}},
			{"agent", agent, "update ferryjobs/status in ferry-system", true, func(t *testing.T) error {
				j := anyJob(t)
				_ = unstructured.SetNestedField(j.Object, "checked by the RBAC test", "status", "message")
				_, err := jobs(agent).UpdateStatus(ctx, j, metav1.UpdateOptions{})
				return err
			}},
			{"agent", agent, "get secrets in ferry-system", true, func(t *testing.T) error {
				_, err := agent.kube.CoreV1().Secrets(namespace).Get(ctx, secretName, metav1.GetOptions{})
				return err
			}},
			{"agent", agent, "get secrets in another namespace", false, func(t *testing.T) error {
				_, err := agent.kube.CoreV1().Secrets("app").Get(ctx, secretName, metav1.GetOptions{})
				return err
			}},
			{"agent", agent, "list secrets in ferry-system", false, func(t *testing.T) error {
				_, err := agent.kube.CoreV1().Secrets(namespace).List(ctx, metav1.ListOptions{})
				return err
			}},
			{"agent", agent, "create ferryjobs", false, func(t *testing.T) error {
				_, err := jobs(agent).Create(ctx, newJob(), metav1.CreateOptions{})
				return err
			}},
			{"agent", agent, "update a ferryjob's spec", false, func(t *testing.T) error {
				_, err := jobs(agent).Update(ctx, anyJob(t), metav1.UpdateOptions{})
				return err
			}},
			{"agent", agent, "patch ferryjobs/status", false, func(t *testing.T) error {
				_, err := jobs(agent).Patch(ctx, anyJob(t).GetName(), types.MergePatchType, []byte(`{"status":{"message":"patched"}}`), metav1.PatchOptions{}, "status")
				return err
			}},
			{"agent", agent, "get persistentvolumes", false, func(t *testing.T) error {
				_, err := agent.kube.CoreV1().PersistentVolumes().Get(ctx, "ferry-restored", metav1.GetOptions{})
				return err
			}},
			{"agent", agent, "delete persistentvolumes", false, func(t *testing.T) error {
				return agent.kube.CoreV1().PersistentVolumes().Delete(ctx, "ferry-restored", metav1.DeleteOptions{})
			}},
			{"agent", agent, "update persistentvolumes", false, func(t *testing.T) error {
				_, err := agent.kube.CoreV1().PersistentVolumes().Update(ctx, pv("ferry-restored"), metav1.UpdateOptions{})
				return err
			}},
			{"agent", agent, "delete persistentvolumeclaims", false, func(t *testing.T) error {
				return agent.kube.CoreV1().PersistentVolumeClaims("restored").Delete(ctx, "data", metav1.DeleteOptions{})
			}},
			{"agent", agent, "create pods in ferry-system", false, func(t *testing.T) error {
				p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "x", Image: "x"}}}}
				_, err := agent.kube.CoreV1().Pods(namespace).Create(ctx, p, metav1.CreateOptions{})
				return err
			}},
			{"agent", agent, "create leases in another namespace", false, func(t *testing.T) error {
				_, err := agent.kube.CoordinationV1().Leases("app").Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
				return err
			}},
			{"agent", agent, "list leases in ferry-system", false, func(t *testing.T) error {
				_, err := agent.kube.CoordinationV1().Leases(namespace).List(ctx, metav1.ListOptions{})
				return err
			}},
			{"agent", agent, "watch leases in ferry-system", false, func(t *testing.T) error {
				_, err := agent.kube.CoordinationV1().Leases(namespace).Watch(ctx, metav1.ListOptions{})
				return err
			}},
			{"agent", agent, "list volumesnapshots", false, func(t *testing.T) error {
				_, err := agent.dyn.Resource(cluster.VolumeSnapshotResource).Namespace("app").List(ctx, metav1.ListOptions{})
				return err
			}},

			{"hook", hookc, "create ferryjobs", true, func(t *testing.T) error {
				_, err := jobs(hookc).Create(ctx, newJob(), metav1.CreateOptions{})
				return err
			}},
			{"hook", hookc, "update ferryjobs/status", false, func(t *testing.T) error {
				_, err := jobs(hookc).UpdateStatus(ctx, anyJob(t), metav1.UpdateOptions{})
				return err
			}},
			{"hook", hookc, "list ferryjobs", false, func(t *testing.T) error {
				_, err := jobs(hookc).List(ctx, metav1.ListOptions{})
				return err
			}},
			{"hook", hookc, "get secrets in ferry-system", false, func(t *testing.T) error {
				_, err := hookc.kube.CoreV1().Secrets(namespace).Get(ctx, secretName, metav1.GetOptions{})
				return err
			}},

			{"restore user", user, "get secrets in ferry-system", false, func(t *testing.T) error {
				_, err := user.kube.CoreV1().Secrets(namespace).Get(ctx, secretName, metav1.GetOptions{})
				return err
			}},
			{"restore user", user, "update ferryjobs/status", false, func(t *testing.T) error {
				_, err := jobs(user).UpdateStatus(ctx, anyJob(t), metav1.UpdateOptions{})
				return err
			}},
			{"restore user", user, "create persistentvolumes", false, func(t *testing.T) error {
				_, err := user.kube.CoreV1().PersistentVolumes().Create(ctx, pv("by-user"), metav1.CreateOptions{})
				return err
			}},
			{"restore user", user, "create ferryjobs in another namespace", false, func(t *testing.T) error {
				_, err := user.dyn.Resource(cluster.JobResource).Namespace("app").Create(ctx, newJob(), metav1.CreateOptions{})
				return err
			}},
		} {
			err := tc.call(t)
			switch {
			case tc.allowed && err != nil:
				t.Errorf("%s may %s: got %v", tc.who, tc.what, err)
			case !tc.allowed && !apierrors.IsForbidden(err):
				t.Errorf("%s may not %s: got %v, want Forbidden", tc.who, tc.what, err)
			}
		}
	})

	// The agent deletes its presence Lease when it stops.
	stopAgent()
	wg.Wait()
	if l, err := admin.kube.CoordinationV1().Leases(namespace).Get(ctx, "ferry-agent-node-1", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the agent's Lease after it stopped: %v %v, want NotFound", l.GetName(), err)
	}
}

var snapshotClasses = cluster.VolumeSnapshotResource.GroupVersion().WithResource("volumesnapshotclasses")

// restoreLikeTheAgent makes the API calls of cluster.Restorer, which
// needs a CSI driver to write the data: it checks the namespace, the
// class and the claim, and registers a PersistentVolume bound to a new
// claim.
func restoreLikeTheAgent(ctx context.Context, cl kubernetes.Interface, j *cluster.Job) (*cluster.Outcome, error) {
	r := j.Spec.Restore
	if _, err := cl.CoreV1().Namespaces().Get(ctx, r.Namespace, metav1.GetOptions{}); err != nil {
		return nil, err
	}
	if _, err := cl.StorageV1().StorageClasses().Get(ctx, r.StorageClassName, metav1.GetOptions{}); err != nil {
		return nil, err
	}
	if _, err := cl.CoreV1().PersistentVolumeClaims(r.Namespace).Get(ctx, r.PVC, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("claim: %v, want NotFound", err)
	}
	pv := persistentVolume("ferry-restored", r.Namespace, r.PVC)
	pv.Spec.StorageClassName = r.StorageClassName
	if _, err := cl.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: r.PVC, Namespace: r.Namespace},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      pv.Spec.AccessModes,
			Resources:        corev1.VolumeResourceRequirements{Requests: pv.Spec.Capacity},
			StorageClassName: &r.StorageClassName,
			VolumeName:       pv.Name,
		},
	}
	if _, err := cl.CoreV1().PersistentVolumeClaims(r.Namespace).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	return &cluster.Outcome{Volume: pv.Name, Message: "restored into " + pv.Name}, nil
}

// persistentVolume is a CSI volume of the test driver, bound to a claim.
func persistentVolume(name, ns, claim string) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: name}},
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: ns, Name: claim},
		},
	}
}

// waitJob waits until the FerryJob reaches phase.
func waitJob(t *testing.T, cl client, name, phase string) *cluster.Job {
	t.Helper()
	var last *cluster.Job
	err := poll(t, 30*time.Second, func() (bool, error) {
		j, err := (&cluster.Jobs{Client: cl.dyn, Namespace: namespace}).Get(t.Context(), name)
		if err != nil {
			return false, err
		}
		last = j
		return j.Status.Phase == phase, nil
	})
	if err != nil {
		t.Fatalf("FerryJob %s: %v (last status %+v)", name, err, last)
	}
	return last
}

// waitEvent waits for an Event of reason on the object ns/name.
func waitEvent(t *testing.T, cl client, ns, name, reason string) {
	t.Helper()
	sel := fields.Set{"involvedObject.name": name, "reason": reason}.AsSelector().String()
	err := poll(t, 30*time.Second, func() (bool, error) {
		l, err := cl.kube.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{FieldSelector: sel})
		return err == nil && len(l.Items) > 0, err
	})
	if err != nil {
		t.Fatalf("Event %s on %s/%s: %v", reason, ns, name, err)
	}
}

// waitLiveAgent waits until cl sees a live agent of the driver, as
// restore-to-cluster looks for one.
func waitLiveAgent(t *testing.T, cl client) {
	t.Helper()
	err := poll(t, 30*time.Second, func() (bool, error) {
		as, err := cluster.LiveAgents(t.Context(), cl.kube, namespace)
		return len(as) > 0 && as[0].Driver == driver, err
	})
	if err != nil {
		t.Fatalf("no live agent: %v", err)
	}
}

func poll(t *testing.T, timeout time.Duration, done func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := done()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.Join(errors.New("timed out"), err)
		}
		select {
		case <-t.Context().Done():
			return t.Context().Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func toJSON(t *testing.T, o *unstructured.Unstructured) []byte {
	t.Helper()
	b, err := o.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
