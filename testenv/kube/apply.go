package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
)

// fieldManager is the field manager of the objects Apply applies.
const fieldManager = "ferry-test"

// ApplyOptions change what Apply does.
type ApplyOptions struct {
	// DryRun has the server validate and admit each object, defaults and
	// all, without storing it (server-side dry run).
	DryRun bool
}

// Apply applies each object of a YAML or JSON stream of manifests
// ("---" between documents) with server-side apply, in order, and returns
// them as the server returned them. An object of a kind the server does
// not know yet, such as a custom resource whose definition came earlier in
// the same stream, is retried for a few seconds while the server's
// discovery catches up. A namespaced object without a namespace goes to
// "default". It stops at the first error.
func (c *Cluster) Apply(ctx context.Context, manifests []byte, opts ApplyOptions) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifests), 4096)
	for i := 0; ; i++ {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return out, fmt.Errorf("manifest %d: %w", i, err)
		}
		if len(obj.Object) == 0 {
			continue // an empty document
		}
		applied, err := c.applyOne(ctx, obj, opts)
		if err != nil {
			return out, fmt.Errorf("apply %s %s: %w", obj.GetKind(), objectName(obj), err)
		}
		out = append(out, applied)
	}
}

// ApplyFile is Apply of the manifests in a file.
func (c *Cluster) ApplyFile(ctx context.Context, file string, opts ApplyOptions) ([]*unstructured.Unstructured, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	objs, err := c.Apply(ctx, b, opts)
	if err != nil {
		return objs, fmt.Errorf("%s: %w", file, err)
	}
	return objs, nil
}

func (c *Cluster) applyOne(ctx context.Context, obj *unstructured.Unstructured, opts ApplyOptions) (*unstructured.Unstructured, error) {
	mapping, err := c.mapping(ctx, obj.GroupVersionKind())
	if err != nil {
		return nil, err
	}
	ri := c.Dynamic.Resource(mapping.Resource)
	var res dynamic.ResourceInterface = ri
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		if obj.GetNamespace() == "" {
			obj.SetNamespace(metav1.NamespaceDefault)
		}
		res = ri.Namespace(obj.GetNamespace())
	}
	ao := metav1.ApplyOptions{FieldManager: fieldManager}
	if opts.DryRun {
		ao.DryRun = []string{metav1.DryRunAll}
	}
	return res.Apply(ctx, obj.GetName(), obj, ao)
}

// mapping finds the resource of a kind, waiting up to 10s for a kind the
// server does not serve yet.
func (c *Cluster) mapping(ctx context.Context, gvk schema.GroupVersionKind) (*meta.RESTMapping, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err == nil || !meta.IsNoMatchError(err) || time.Now().After(deadline) {
			return m, err
		}
		c.mapper.Reset()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func objectName(obj *unstructured.Unstructured) string {
	if ns := obj.GetNamespace(); ns != "" {
		return ns + "/" + obj.GetName()
	}
	return obj.GetName()
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installSnapshotCRDs applies the snapshot.storage.k8s.io CRDs from the
// config/crd directory of SnapshotterClientModule at SnapshotterVersion, the
// release of the snapshot sidecars, and waits until they are served.
func (c *Cluster) installSnapshotCRDs(ctx context.Context) error {
	dir, err := snapshotCRDDir()
	if err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(dir, "snapshot.storage.k8s.io_*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no snapshot CRDs in %s: %v", dir, err)
	}
	var names []string
	for _, f := range files {
		objs, err := c.ApplyFile(ctx, f, ApplyOptions{})
		if err != nil {
			return err
		}
		for _, o := range objs {
			names = append(names, o.GetName())
		}
	}
	return c.WaitEstablished(ctx, names...)
}

// WaitEstablished waits until the named CustomResourceDefinitions are
// Established: their resources are served.
func (c *Cluster) WaitEstablished(ctx context.Context, names ...string) error {
	for _, name := range names {
		for {
			crd, err := c.Dynamic.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("CRD %s: %w", name, err)
			}
			if hasCondition(crd, "Established") {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("CRD %s not established: %w", name, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// hasCondition reports whether obj's status has condition typ with status
// True.
func hasCondition(obj *unstructured.Unstructured, typ string) bool {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, cond := range conds {
		m, _ := cond.(map[string]any)
		if m["type"] == typ && m["status"] == "True" {
			return true
		}
	}
	return false
}

// snapshotCRDDir returns the config/crd directory of
// SnapshotterClientModule@SnapshotterVersion in the module cache,
// downloading the module if needed.
var snapshotCRDDir = sync.OnceValues(func() (string, error) {
	gt, err := goTool()
	if err != nil {
		return "", err
	}
	var dl struct{ Dir string }
	// Outside any module: the pinned version counts, not a go.mod's.
	if err := goJSON(context.Background(), gt, os.TempDir(), &dl, "mod", "download", "-json", SnapshotterClientModule+"@"+SnapshotterVersion); err != nil {
		return "", fmt.Errorf("snapshot CRDs: %w", err)
	}
	return filepath.Join(dl.Dir, "config", "crd"), nil
})
