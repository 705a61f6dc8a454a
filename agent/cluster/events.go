package cluster

import (
	"context"
	"fmt"
	"strings"

	"github.com/dustin/go-humanize"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
)

// VolumeSnapshotResource is the external-snapshotter's VolumeSnapshot.
var VolumeSnapshotResource = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshots"}

// Events records what happens to jobs as Kubernetes Events, on the FerryJob
// and, for replications, on the VolumeSnapshot it replicates, in words an
// operator reads in kubectl describe.
type Events struct {
	rec  record.EventRecorder
	dyn  dynamic.Interface
	stop func()
}

// NewEvents starts an event broadcaster; Stop flushes and ends it.
func NewEvents(client kubernetes.Interface, dyn dynamic.Interface, component, node string) *Events {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &Events{
		rec:  b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component, Host: node}),
		dyn:  dyn,
		stop: b.Shutdown,
	}
}

// Stop ends the broadcaster.
func (e *Events) Stop() {
	if e != nil {
		e.stop()
	}
}

// refs are the objects a job's Events go to.
func (e *Events) refs(ctx context.Context, j *Job) []*corev1.ObjectReference {
	out := []*corev1.ObjectReference{{
		APIVersion: JobKind.GroupVersion().String(), Kind: JobKind.Kind,
		Namespace: j.Namespace, Name: j.Name, UID: j.UID,
	}}
	ns, name, ok := strings.Cut(j.Annotations[AnnotationVolumeSnapshot], "/")
	if !ok {
		return out
	}
	vs, err := e.dyn.Resource(VolumeSnapshotResource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return out // gone, or no permission: the job's own Events remain
	}
	return append(out, &corev1.ObjectReference{
		APIVersion: "snapshot.storage.k8s.io/v1", Kind: "VolumeSnapshot",
		Namespace: ns, Name: name, UID: vs.GetUID(),
	})
}

func (e *Events) emit(ctx context.Context, j *Job, typ, reason, msg string) {
	if e == nil {
		return
	}
	for _, r := range e.refs(ctx, j) {
		e.rec.Event(r, typ, reason, msg)
	}
}

func (e *Events) started(ctx context.Context, j *Job) {
	switch j.Spec.Type {
	case TypeReplicate:
		s := j.Spec.Replicate.Snapshot
		e.emit(ctx, j, corev1.EventTypeNormal, "ReplicationStarted",
			fmt.Sprintf("Ferry started replicating snapshot %s (%s) to %s on node %s, attempt %d",
				s.SnapshotID, humanize.IBytes(uint64(max(s.SizeBytes, 0))), j.Spec.Repository, j.Status.Agent, j.Status.Attempts))
	case TypeRestore:
		r := j.Spec.Restore
		e.emit(ctx, j, corev1.EventTypeNormal, "RestoreStarted",
			fmt.Sprintf("Ferry started restoring snapshot %s from %s into PVC %s/%s on node %s, attempt %d",
				r.Snapshot, j.Spec.Repository, r.Namespace, r.PVC, j.Status.Agent, j.Status.Attempts))
	}
}

func (e *Events) finished(ctx context.Context, j *Job, out *Outcome, err error) {
	what := map[string]string{TypeReplicate: "Replication", TypeRestore: "Restore"}[j.Spec.Type]
	st := j.Status
	switch {
	case err == nil && out != nil && out.Degraded:
		e.emit(ctx, j, corev1.EventTypeWarning, what+"Degraded", st.Message)
	case err == nil:
		e.emit(ctx, j, corev1.EventTypeNormal, what+"Succeeded", st.Message)
	case st.Phase == PhaseFailed:
		e.emit(ctx, j, corev1.EventTypeWarning, what+"Failed", "Ferry gave up: "+st.Message)
	default:
		e.emit(ctx, j, corev1.EventTypeWarning, what+"Retrying", "Ferry will retry: "+st.Message)
	}
}
