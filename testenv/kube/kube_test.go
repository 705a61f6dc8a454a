package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ferrydr/ferry/testenv/csitest"
	"github.com/ferrydr/ferry/testenv/reflinkcsi"
)

// Two clusters, as the end-to-end tests will run them, shared by the
// subtests to keep the package quick.
func TestClusters(t *testing.T) {
	primary := Start(t, Name("primary"))
	dr := Start(t, Name("dr"))

	t.Run("Independent", func(t *testing.T) {
		t.Parallel()
		if primary.Config.Host == dr.Config.Host || primary.Kubeconfig == dr.Kubeconfig {
			t.Fatalf("clusters share an endpoint or a kubeconfig: %s, %s", primary.Config.Host, dr.Config.Host)
		}
		createNamespace(t, primary, "only-primary")
		_, err := dr.Client.CoreV1().Namespaces().Get(t.Context(), "only-primary", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			t.Fatalf("namespace of primary on dr: %v, want NotFound", err)
		}
		// Each cluster trusts only its own CA: primary's admin is nobody on dr.
		cross := rest.CopyConfig(primary.Config)
		cross.Host = dr.Config.Host
		cross.TLSClientConfig.CAData = dr.Config.TLSClientConfig.CAData
		client := kubernetes.NewForConfigOrDie(cross)
		if _, err := client.CoreV1().Namespaces().List(t.Context(), metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
			t.Fatalf("primary's admin certificate on dr: %v, want Unauthorized", err)
		}
	})

	t.Run("PersistentVolumeClaimBinds", func(t *testing.T) {
		t.Parallel()
		ns := createNamespace(t, primary, "pvc")
		pv := persistentVolume("static-pv", "made-up.csi.ferry.test", "vol-1")
		if _, err := primary.Client.CoreV1().PersistentVolumes().Create(t.Context(), pv, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pvc := claimFor(ns, "data", "") // matched by size and access mode, not by name
		if _, err := primary.Client.CoreV1().PersistentVolumeClaims(ns).Create(t.Context(), pvc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitClaimBound(t, primary, ns, "data", "static-pv")
	})

	t.Run("GarbageCollectionAndNamespaceDeletion", func(t *testing.T) {
		t.Parallel()
		ns := createNamespace(t, primary, "gc")
		cms := primary.Client.CoreV1().ConfigMaps(ns)
		owner, err := cms.Create(t.Context(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "owner"}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		dependent := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "dependent", OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "v1", Kind: "ConfigMap", Name: owner.Name, UID: owner.UID},
		}}}
		if _, err := cms.Create(t.Context(), dependent, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := cms.Delete(t.Context(), "owner", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitGone(t, "dependent config map", func(ctx context.Context) error {
			_, err := cms.Get(ctx, "dependent", metav1.GetOptions{})
			return err
		})
		if err := primary.Client.CoreV1().Namespaces().Delete(t.Context(), ns, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitGone(t, "namespace", func(ctx context.Context) error {
			_, err := primary.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			return err
		})
	})

	t.Run("SnapshotCRDs", func(t *testing.T) {
		t.Parallel()
		for _, c := range []*Cluster{primary, dr} {
			if err := c.WaitEstablished(t.Context(), "volumesnapshotclasses.snapshot.storage.k8s.io",
				"volumesnapshotcontents.snapshot.storage.k8s.io", "volumesnapshots.snapshot.storage.k8s.io"); err != nil {
				t.Fatal(err)
			}
		}
		objs := apply(t, dr, ApplyOptions{}, volumeSnapshotClass("made-up", "made-up.csi.ferry.test"))
		if got := objs[0].Object["driver"]; got != "made-up.csi.ferry.test" {
			t.Fatalf("VolumeSnapshotClass driver = %v", got)
		}
	})

	t.Run("ServiceAccountWithoutRBAC", func(t *testing.T) {
		t.Parallel()
		ns := createNamespace(t, primary, "rbac")
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "agent"}}
		if _, err := primary.Client.CoreV1().ServiceAccounts(ns).Create(t.Context(), sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		as := kubernetes.NewForConfigOrDie(primary.ServiceAccountConfig(ns, "agent"))
		if _, err := as.CoreV1().PersistentVolumes().List(t.Context(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Fatalf("list persistent volumes as %s/agent: %v, want Forbidden", ns, err)
		}
		if _, err := as.CoreV1().ConfigMaps(ns).List(t.Context(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Fatalf("list config maps as %s/agent: %v, want Forbidden", ns, err)
		}
		// Granted a Role, the same identity can do what it grants, and no more.
		role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "read-config"}, Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"list"}},
		}}
		binding := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "agent-read-config"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "agent", Namespace: ns}},
		}
		if _, err := primary.Client.RbacV1().Roles(ns).Create(t.Context(), role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := primary.Client.RbacV1().RoleBindings(ns).Create(t.Context(), binding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "list config maps with the Role", func(ctx context.Context) error {
			_, err := as.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
			return err
		})
		if _, err := as.CoreV1().ConfigMaps("default").List(t.Context(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Fatalf("list config maps in another namespace: %v, want Forbidden", err)
		}
	})

	t.Run("Apply", func(t *testing.T) {
		t.Parallel()
		manifests := []byte(`
apiVersion: v1
kind: Namespace
metadata:
  name: applied
---
# a comment-only document and an empty one are skipped
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: applied
data:
  k: v
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.ferry.dev
spec:
  group: test.ferry.dev
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
---
apiVersion: test.ferry.dev/v1
kind: Widget
metadata:
  name: w
  namespace: applied
spec:
  size: 3
`)
		// The Widget's kind is served only once its definition, applied
		// just before, is established: Apply waits for it.
		objs := apply(t, dr, ApplyOptions{}, string(manifests))
		if len(objs) != 4 || objs[3].GetKind() != "Widget" || objs[3].GetUID() == "" {
			t.Fatalf("applied %d objects: %v", len(objs), objs)
		}

		// A dry run returns what would be stored, and stores nothing.
		changed := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: applied\ndata:\n  k: changed\n"
		objs = apply(t, dr, ApplyOptions{DryRun: true}, changed, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: dry\n")
		if got, _, _ := unstructured.NestedString(objs[0].Object, "data", "k"); got != "changed" {
			t.Fatalf("dry run returned data.k = %q", got)
		}
		cm, err := dr.Client.CoreV1().ConfigMaps("applied").Get(t.Context(), "settings", metav1.GetOptions{})
		if err != nil || cm.Data["k"] != "v" {
			t.Fatalf("config map after a dry run: %v, %v", cm, err)
		}
		if _, err := dr.Client.CoreV1().Namespaces().Get(t.Context(), "dry", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("namespace after a dry run: %v, want NotFound", err)
		}
		// The server validates a dry run: an invalid object is refused.
		bad := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Not_A_Name\n"
		if _, err := dr.Apply(t.Context(), []byte(bad), ApplyOptions{DryRun: true}); !apierrors.IsInvalid(err) {
			t.Fatalf("dry run of an invalid config map: %v, want Invalid", err)
		}
	})

	t.Run("VolumeSnapshotReady", func(t *testing.T) {
		t.Parallel()
		volumeSnapshotReady(t, dr)
	})
}

// A VolumeSnapshot of a volume of the test CSI driver, taken through
// snapshot-controller and csi-snapshotter, becomes ReadyToUse; deleting it
// deletes the driver's snapshot.
func volumeSnapshotReady(t *testing.T, c *Cluster) {
	drv := reflinkcsi.StartTest(t, reflinkcsi.Config{})
	endpoint := drv.Config().Endpoint
	StartSnapshotter(t, c, endpoint)

	vol, err := csi.NewControllerClient(csitest.Dial(t, endpoint)).CreateVolume(t.Context(), &csi.CreateVolumeRequest{
		Name:               "static-volume",
		CapacityRange:      &csi.CapacityRange{RequiredBytes: 16 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{csitest.MountCap},
	})
	if err != nil {
		t.Fatal(err)
	}
	ns := createNamespace(t, c, "snap")
	pv := persistentVolume("reflink-pv", reflinkcsi.DriverName, vol.GetVolume().GetVolumeId())
	if _, err := c.Client.CoreV1().PersistentVolumes().Create(t.Context(), pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().PersistentVolumeClaims(ns).Create(t.Context(), claimFor(ns, "data", "reflink-pv"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitClaimBound(t, c, ns, "data", "reflink-pv")

	apply(t, c, ApplyOptions{}, volumeSnapshotClass("reflink", reflinkcsi.DriverName), fmt.Sprintf(`
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata:
  name: snap-1
  namespace: %s
spec:
  volumeSnapshotClassName: reflink
  source:
    persistentVolumeClaimName: data
`, ns))
	snapshots := c.Dynamic.Resource(schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshots"}).Namespace(ns)
	var vs *unstructured.Unstructured
	eventually(t, "VolumeSnapshot readyToUse", func(ctx context.Context) error {
		if vs, err = snapshots.Get(ctx, "snap-1", metav1.GetOptions{}); err != nil {
			return err
		}
		if ready, _, _ := unstructured.NestedBool(vs.Object, "status", "readyToUse"); !ready {
			return fmt.Errorf("status %v", vs.Object["status"])
		}
		return nil
	})
	contentName, _, _ := unstructured.NestedString(vs.Object, "status", "boundVolumeSnapshotContentName")
	content, err := c.Dynamic.Resource(schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotcontents"}).
		Get(t.Context(), contentName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	handle, _, _ := unstructured.NestedString(content.Object, "status", "snapshotHandle")

	// The driver's record of the snapshot (reflinkcsi's snapshots/<id>.json)
	// has the parameters csi-snapshotter sent: --extra-create-metadata.
	record := filepath.Join(drv.Config().Dir, "snapshots", handle+".json")
	b, err := os.ReadFile(record)
	if err != nil {
		t.Fatalf("the driver has no snapshot %q: %v", handle, err)
	}
	var sn struct{ Params map[string]string }
	if err := json.Unmarshal(b, &sn); err != nil {
		t.Fatal(err)
	}
	if sn.Params["csi.storage.k8s.io/volumesnapshot/name"] != "snap-1" || sn.Params["csi.storage.k8s.io/volumesnapshot/namespace"] != ns {
		t.Fatalf("CreateSnapshot parameters %v lack the VolumeSnapshot's name and namespace", sn.Params)
	}

	if err := snapshots.Delete(t.Context(), "snap-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, "the driver's snapshot", func(context.Context) error {
		_, err := os.Stat(record)
		if errors.Is(err, os.ErrNotExist) {
			return apierrors.NewNotFound(schema.GroupResource{}, handle)
		}
		return err
	})
}

func volumeSnapshotClass(name, driver string) string {
	return fmt.Sprintf(`
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata:
  name: %s
driver: %s
deletionPolicy: Delete
`, name, driver)
}

func apply(t *testing.T, c *Cluster, opts ApplyOptions, manifests ...string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := c.Apply(t.Context(), []byte(strings.Join(manifests, "\n---\n")), opts)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func createNamespace(t *testing.T, c *Cluster, name string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := c.Client.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return name
}

// persistentVolume is a statically provisioned 1Gi CSI volume without a
// storage class.
func persistentVolume(name, driver, handle string) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:    corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: driver, VolumeHandle: handle, FSType: "ext4",
			}},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
		},
	}
}

// claimFor is a claim of 1Gi without a storage class, for the named volume
// or, if volume is "", any volume that fits.
func claimFor(ns, name, volume string) *corev1.PersistentVolumeClaim {
	noClass := ""
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			StorageClassName: &noClass,
			VolumeName:       volume,
		},
	}
}

func waitClaimBound(t *testing.T, c *Cluster, ns, claim, volume string) {
	t.Helper()
	eventually(t, "claim "+claim+" bound", func(ctx context.Context) error {
		pvc, err := c.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pvc.Status.Phase != corev1.ClaimBound || pvc.Spec.VolumeName != volume {
			return fmt.Errorf("phase %s, volume %q", pvc.Status.Phase, pvc.Spec.VolumeName)
		}
		pv, err := c.Client.CoreV1().PersistentVolumes().Get(ctx, volume, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pv.Status.Phase != corev1.VolumeBound {
			return fmt.Errorf("volume phase %s", pv.Status.Phase)
		}
		return nil
	})
}

// eventually retries check until it returns nil, for up to 30s.
func eventually(t *testing.T, what string, check func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		err := check(ctx)
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within 30s: %v", what, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitGone waits until get returns a NotFound error.
func waitGone(t *testing.T, what string, get func(context.Context) error) {
	t.Helper()
	eventually(t, what+" gone", func(ctx context.Context) error {
		if err := get(ctx); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there (%v)", err)
		}
		return nil
	})
}

// The versions pinned here are the ones Ferry's own code is built with.
func TestVersionsMatchGoMod(t *testing.T) {
	for module, want := range map[string]string{
		SnapshotterClientModule: SnapshotterVersion,
		"k8s.io/client-go":      StagingVersion,
		"k8s.io/api":            StagingVersion,
		"k8s.io/apimachinery":   StagingVersion,
	} {
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", module).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -m %s: %v\n%s", module, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("go.mod requires %s %s, the test clusters run %s", module, got, want)
		}
	}
}
