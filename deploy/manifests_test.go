package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/ferrydr/ferry/csi/params"
)

const (
	namespace = "ferry-system"
	driver    = "reflink.csi.ferry.dev" // of the examples and the base's placeholders
	stateDir  = "/var/lib/kubelet/plugins/ferry.dev"
)

// rendered is the output of a kustomization.
type rendered struct {
	yaml []byte
	objs []*unstructured.Unstructured
}

// render builds the kustomization in dir as `kubectl apply -k` does.
func render(t *testing.T, dir string) rendered {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	return renderFS(t, filesys.MakeFsOnDisk(), abs)
}

func renderFS(t *testing.T, fs filesys.FileSystem, dir string) rendered {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fs, dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	y, err := m.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	// Decoded as the API machinery does (numbers as int64 or float64),
	// not as kustomize holds them.
	return rendered{yaml: y, objs: decode(t, dir, y)}
}

// renderOverlay builds examples/overlay as it would be in a user's
// repository: beside a copy of deploy/, its placeholder base replaced by
// that copy.
func renderOverlay(t *testing.T) rendered {
	t.Helper()
	fs := filesys.MakeFsInMemory()
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return fs.WriteFile(filepath.Join("/ferry/deploy", path), b)
	})
	if err != nil {
		t.Fatal(err)
	}
	k, err := os.ReadFile("examples/overlay/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const remote = "  - https://github.com/ferrydr/ferry//deploy?ref=main\n"
	if !bytes.Contains(k, []byte(remote)) {
		t.Fatalf("examples/overlay/kustomization.yaml: no %q to replace with a local copy", remote)
	}
	k = bytes.Replace(k, []byte(remote), []byte("  - ../ferry/deploy\n"), 1)
	if err := fs.WriteFile("/overlay/kustomization.yaml", k); err != nil {
		t.Fatal(err)
	}
	return renderFS(t, fs, "/overlay")
}

func (r rendered) find(t *testing.T, kind, ns, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range r.objs {
		if o.GetKind() == kind && o.GetNamespace() == ns && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s/%s in the rendered manifests", kind, ns, name)
	return nil
}

// typed converts a rendered object into its Go type.
func typed[T any](t *testing.T, o *unstructured.Unstructured) *T {
	t.Helper()
	var v T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &v, true); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
	return &v
}

func id(o *unstructured.Unstructured) string {
	return o.GetKind() + " " + strings.TrimPrefix(o.GetNamespace()+"/"+o.GetName(), "/")
}

// The base holds exactly what the README says it installs.
func TestBaseObjects(t *testing.T) {
	base := render(t, ".")
	var got []string
	for _, o := range base.objs {
		got = append(got, id(o))
		if o.GetLabels()["app.kubernetes.io/part-of"] != "ferry" {
			t.Errorf("%s: no label app.kubernetes.io/part-of=ferry", id(o))
		}
	}
	want := []string{
		"Namespace ferry-system",
		"CustomResourceDefinition ferryjobs.ferry.dev",
		"ServiceAccount ferry-system/ferry-agent",
		"Role ferry-system/ferry-agent",
		"Role ferry-system/ferry-hook",
		"Role ferry-system/ferry-restore",
		"ClusterRole ferry-agent",
		"ClusterRole ferry-restore",
		"RoleBinding ferry-system/ferry-agent",
		"RoleBinding ferry-system/ferry-hook",
		"ClusterRoleBinding ferry-agent",
		"DaemonSet ferry-system/ferry-agent",
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("base objects:\n got %q\nwant %q", got, want)
	}
}

// No wildcard, no built-in role, every binding to Ferry's own roles.
func TestRBACIsExplicit(t *testing.T) {
	var objs []*unstructured.Unstructured
	objs = append(objs, render(t, ".").objs...)
	objs = append(objs, renderOverlay(t).objs...)
	for _, f := range []string{"examples/restore-binding.yaml"} {
		objs = append(objs, decodeFile(t, f)...)
	}
	for _, o := range objs {
		switch o.GetKind() {
		case "Role", "ClusterRole":
			if _, ok := o.Object["aggregationRule"]; ok {
				t.Errorf("%s aggregates other roles", id(o))
			}
			for _, r := range typed[rbacv1.ClusterRole](t, o).Rules {
				for _, v := range slices.Concat(r.APIGroups, r.Resources, r.Verbs, r.ResourceNames, r.NonResourceURLs) {
					if strings.Contains(v, "*") {
						t.Errorf("%s: wildcard %q in rule %v", id(o), v, r)
					}
				}
				if len(r.NonResourceURLs) > 0 {
					t.Errorf("%s: non-resource URLs %v", id(o), r.NonResourceURLs)
				}
				for _, v := range r.Verbs {
					if slices.Contains([]string{"escalate", "bind", "impersonate", "deletecollection"}, v) {
						t.Errorf("%s: verb %s in rule %v", id(o), v, r)
					}
				}
			}
		case "RoleBinding", "ClusterRoleBinding":
			ref := typed[rbacv1.RoleBinding](t, o).RoleRef
			if !strings.HasPrefix(ref.Name, "ferry-") {
				t.Errorf("%s binds %s %s, not one of Ferry's roles", id(o), ref.Kind, ref.Name)
			}
		}
	}
}

// Every RBAC rule in the sources says why it is there: the comment lines
// right above it.
func TestRBACRulesAreCommented(t *testing.T) {
	files, err := filepath.Glob("rbac/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no rbac/*.yaml: %v", err)
	}
	rules := 0
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		prev := ""
		sc := bufio.NewScanner(fh)
		for n := 1; sc.Scan(); n++ {
			line := strings.TrimSpace(sc.Text())
			if strings.HasPrefix(line, "- apiGroups:") {
				rules++
				if !strings.HasPrefix(prev, "#") {
					t.Errorf("%s:%d: a rule without a comment saying why", f, n)
				}
			}
			prev = line
		}
		fh.Close()
	}
	if rules < 10 {
		t.Errorf("found %d rules in rbac/: the check reads the files wrongly", rules)
	}
}

// The DaemonSet runs the agent as the README describes, with paths that
// agree with each other.
func TestAgentDaemonSet(t *testing.T) {
	ds := typed[appsv1.DaemonSet](t, render(t, ".").find(t, "DaemonSet", namespace, "ferry-agent"))
	pod := ds.Spec.Template.Spec
	if pod.ServiceAccountName != "ferry-agent" {
		t.Errorf("serviceAccountName %q", pod.ServiceAccountName)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	wantArgs := []string{"agent", "--kube", "--namespace=$(POD_NAMESPACE)", "--node-name=$(NODE_NAME)",
		"--csi-driver=unix:///csi/csi.sock", "--state-dir=" + stateDir, "--metrics-listen=:9808"}
	if !slices.Equal(c.Args, wantArgs) {
		t.Errorf("args %q\nwant %q", c.Args, wantArgs)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	for name, path := range map[string]string{"POD_NAMESPACE": "metadata.namespace", "NODE_NAME": "spec.nodeName"} {
		if e := env[name]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != path {
			t.Errorf("env %s: want the downward API's %s, have %+v", name, path, e)
		}
	}
	soft, err := resource.ParseQuantity(strings.TrimSuffix(env["GOMEMLIMIT"].Value, "B"))
	if err != nil {
		t.Fatalf("GOMEMLIMIT %q: %v", env["GOMEMLIMIT"].Value, err)
	}
	res := c.Resources
	if req, lim := res.Requests.Memory(), res.Limits.Memory(); soft.Cmp(*req) >= 0 || req.Cmp(*lim) > 0 {
		t.Errorf("memory: GOMEMLIMIT %s, request %s, limit %s: want soft limit < request <= limit", &soft, req, lim)
	}
	if _, ok := res.Limits[corev1.ResourceCPU]; ok {
		t.Errorf("a CPU limit: %v", res.Limits)
	}
	if res.Requests.Cpu().IsZero() {
		t.Error("no CPU request")
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != 9808 {
		t.Errorf("ports %+v, want metrics 9808", c.Ports)
	}
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "metrics" {
			t.Errorf("%s probe %+v, want GET /healthz on metrics", name, p)
		}
	}
	ann := ds.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "9808" {
		t.Errorf("scrape annotations %v", ann)
	}
	if !slices.ContainsFunc(pod.Tolerations, func(t corev1.Toleration) bool {
		return t.Operator == corev1.TolerationOpExists && t.Key == "" && t.Effect == ""
	}) {
		t.Errorf("tolerations %+v: want to tolerate every taint", pod.Tolerations)
	}
	if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Error("not privileged: the agent could not open the block devices the driver publishes")
	}

	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	state := mounts["state-dir"]
	if hp := vols["state-dir"].HostPath; hp == nil || hp.Path != stateDir || state.MountPath != stateDir {
		t.Errorf("state dir: host path %+v mounted at %q; want %s at the same path, as the driver sees it", hp, state.MountPath, stateDir)
	}
	if state.MountPropagation == nil || *state.MountPropagation != corev1.MountPropagationHostToContainer {
		t.Errorf("state dir mount propagation %v, want HostToContainer", state.MountPropagation)
	}
	if m, v := mounts["secrets"], vols["secrets"]; m.MountPath != stateDir+"/secrets" || v.EmptyDir == nil || v.EmptyDir.Medium != corev1.StorageMediumMemory {
		t.Errorf("secrets: %+v at %q, want an emptyDir on memory at <state-dir>/secrets", v.VolumeSource, m.MountPath)
	}
	if m, v := mounts["csi-socket-dir"], vols["csi-socket-dir"]; m.MountPath != "/csi" || v.HostPath == nil || v.HostPath.Path != "/var/lib/kubelet/plugins/"+driver {
		t.Errorf("CSI socket dir: %+v at %q", v.VolumeSource, m.MountPath)
	}
}

// The hook component adds the hook to a driver's controller; the
// example's patch moves the driver to driver.sock and leaves the sidecars
// on csi.sock, now the hook's.
func TestHookSidecar(t *testing.T) {
	out := render(t, "examples/hook-sidecar")
	dep := typed[appsv1.Deployment](t, out.find(t, "Deployment", "csi-example", "csi-controller"))
	var hook *corev1.Container
	for i, c := range dep.Spec.Template.Spec.Containers {
		switch c.Name {
		case "ferry-hook":
			hook = &dep.Spec.Template.Spec.Containers[i]
		case "csi-driver":
			if !slices.Contains(c.Args, "--endpoint=unix:///csi/driver.sock") {
				t.Errorf("driver args %q: not moved to driver.sock", c.Args)
			}
		default:
			if !slices.Contains(c.Args, "--csi-address=/csi/csi.sock") {
				t.Errorf("sidecar %s args %q: want csi.sock", c.Name, c.Args)
			}
		}
	}
	if hook == nil {
		t.Fatal("no ferry-hook container")
	}
	want := []string{"hook", "--kube", "--namespace=ferry-system", "--csi-listen=unix:///csi/csi.sock",
		"--csi-driver=unix:///csi/driver.sock", "--state-dir=/var/lib/ferry", "--metrics-listen=:9809"}
	if !slices.Equal(hook.Args, want) {
		t.Errorf("hook args %q\nwant %q", hook.Args, want)
	}
	if !slices.ContainsFunc(hook.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "socket-dir" && m.MountPath == "/csi" }) {
		t.Errorf("hook mounts %+v: want socket-dir at /csi", hook.VolumeMounts)
	}
}

// The overlay example sets what the base leaves as placeholders.
func TestOverlay(t *testing.T) {
	out := renderOverlay(t)
	rb := typed[rbacv1.RoleBinding](t, out.find(t, "RoleBinding", namespace, "ferry-hook"))
	if s := rb.Subjects; len(s) != 1 || s[0].Name != "csi-example-controller" || s[0].Namespace != "csi-example" {
		t.Errorf("hook subject %+v", s)
	}
	ds := typed[appsv1.DaemonSet](t, out.find(t, "DaemonSet", namespace, "ferry-agent"))
	pod := ds.Spec.Template.Spec
	if img := pod.Containers[0].Image; img != "registry.example/ferry:v0.1.0" {
		t.Errorf("image %s", img)
	}
	for _, v := range pod.Volumes {
		if v.Name == "csi-socket-dir" && v.HostPath.Path != "/var/lib/kubelet/plugins/csi.example.com" {
			t.Errorf("socket dir %s", v.HostPath.Path)
		}
	}
}

// The example classes pass the hook's own parameter check, and name a
// Secret where the agents may read it.
func TestSnapshotClassParameters(t *testing.T) {
	classes := decodeFile(t, "examples/volumesnapshotclass.yaml")
	if len(classes) == 0 {
		t.Fatal("no classes")
	}
	for _, c := range classes {
		ps, _, _ := unstructured.NestedStringMap(c.Object, "parameters")
		ps[params.KeySnapshotNamespace] = "app"        // as the external-snapshotter adds it
		r, forward, err := params.Parse(ps, namespace) // the hook's --namespace (TestHookSidecar)
		if err != nil || r == nil {
			t.Errorf("class %s: %v (replication %v)", c.GetName(), err, r)
			continue
		}
		if r.SecretNamespace != namespace {
			t.Errorf("class %s: Secret in %q: the agents read Secrets only in %s", c.GetName(), r.SecretNamespace, namespace)
		}
		for k := range forward {
			if strings.HasPrefix(k, params.Prefix) {
				t.Errorf("class %s: %s would reach the driver", c.GetName(), k)
			}
		}
	}
}

var flagRE = regexp.MustCompile(`--([a-z][a-z0-9-]*)`)

// Every flag the manifests give `ferry agent` and `ferry hook` exists: a
// typo would only show as a crash-looping pod.
func TestFlagsExist(t *testing.T) {
	agent := render(t, ".").find(t, "DaemonSet", namespace, "ferry-agent")
	hook := render(t, "examples/hook-sidecar").find(t, "Deployment", "csi-example", "csi-controller")
	args := map[string][]string{}
	for _, o := range []*unstructured.Unstructured{agent, hook} {
		cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range cs {
			a, _, _ := unstructured.NestedStringSlice(c.(map[string]any), "args")
			if len(a) > 0 && (a[0] == "agent" || a[0] == "hook") {
				args[a[0]] = a
			}
		}
	}
	if len(args) != 2 {
		t.Fatalf("found the args of %d Ferry containers, want agent and hook: %q", len(args), args)
	}
	bin := filepath.Join(t.TempDir(), "ferry")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/ferry").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for sub, a := range args {
		help, err := exec.Command(bin, sub, "--help").CombinedOutput()
		if err != nil {
			t.Fatalf("ferry %s --help: %v\n%s", sub, err, help)
		}
		known := map[string]bool{}
		for _, m := range flagRE.FindAllStringSubmatch(string(help), -1) {
			known[m[1]] = true
		}
		for _, f := range a[1:] {
			name, _, _ := strings.Cut(strings.TrimPrefix(f, "--"), "=")
			if !strings.HasPrefix(f, "--") || !known[name] {
				t.Errorf("ferry %s has no flag %s", sub, f)
			}
		}
	}
}

// decodeFile reads the objects of a YAML file of manifests.
func decodeFile(t *testing.T, file string) []*unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, file, b)
}

// decode reads the objects of a YAML stream of manifests.
func decode(t *testing.T, name string, b []byte) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(obj.Object) > 0 {
			out = append(out, obj)
		}
	}
}
