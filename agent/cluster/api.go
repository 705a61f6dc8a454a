// Package cluster is the agent's side of the Kubernetes API: replication
// and restore jobs as FerryJob objects (the CRD in deploy/crd), claimed by
// exactly one agent through optimistic concurrency and a heartbeat, taken
// over when that agent is lost; repository Secrets read from the API;
// Events an operator reads with kubectl describe; Leases for work that must
// not run on two nodes at once; and the agents' own presence, which
// restore-to-cluster checks before asking for a restore.
//
// FerryJob objects are handled with the dynamic client and converted to the
// Go types below, so there is no generated code.
package cluster

import (
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/ferrydr/ferry/csi/hook"
)

// The FerryJob resource.
var (
	JobResource = schema.GroupVersionResource{Group: "ferry.dev", Version: "v1alpha1", Resource: "ferryjobs"}
	JobKind     = schema.GroupVersionKind{Group: "ferry.dev", Version: "v1alpha1", Kind: "FerryJob"}
)

// Job types.
const (
	TypeReplicate = "Replicate"
	TypeRestore   = "Restore"
)

// Job phases. Pending jobs wait for an agent (or for RetryAfter); Running
// ones have an agent that renews Status.Heartbeat; Succeeded and Failed are
// final.
const (
	PhasePending   = "Pending"
	PhaseRunning   = "Running"
	PhaseSucceeded = "Succeeded"
	PhaseFailed    = "Failed"
)

// Job is a FerryJob: one replication of a CSI snapshot, or one restore of a
// repository snapshot into a new PersistentVolumeClaim.
type Job struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              JobSpec   `json:"spec"`
	Status            JobStatus `json:"status,omitempty"`
}

// JobSpec says what to do. It does not change once created.
type JobSpec struct {
	Type       string     `json:"type"`           // TypeReplicate or TypeRestore
	Repository string     `json:"repository"`     // REPO string, as for ferry --repo
	Secret     SecretRef  `json:"secretRef"`      // password and credentials
	Driver     string     `json:"driver"`         // the CSI driver of the agents that may run it
	Node       string     `json:"node,omitempty"` // only the agent on this node may run it
	Replicate  *Replicate `json:"replicate,omitempty"`
	Restore    *Restore   `json:"restore,omitempty"`
}

// SecretRef names a Secret with the repository password and the target
// credentials (keys: password, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
// AWS_SESSION_TOKEN, credentials).
type SecretRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// Replicate is a snapshot the hook saw the driver cut.
type Replicate struct {
	Snapshot hook.Snapshot `json:"snapshot"`
}

// Restore asks for a repository snapshot to be written into a new volume
// and registered as a PersistentVolume bound to a new claim.
type Restore struct {
	// Which snapshot: an ID (or unique prefix), or "latest" of the series
	// Source selects.
	Snapshot string `json:"snapshot"`
	// Source selects by what the snapshot was of: its original namespace
	// and PVC, or the series name (ferry.dev/name).
	Source RestoreSource `json:"source,omitempty"`
	// The claim to create.
	Namespace        string `json:"namespace"`
	PVC              string `json:"pvc"`
	StorageClassName string `json:"storageClassName,omitempty"`
	VolumeMode       string `json:"volumeMode,omitempty"` // Filesystem (default) or Block
	FSType           string `json:"fsType,omitempty"`     // for Filesystem; default ext4
}

// RestoreSource selects snapshots by origin.
type RestoreSource struct {
	Namespace string `json:"namespace,omitempty"`
	PVC       string `json:"pvc,omitempty"`
	Name      string `json:"name,omitempty"`
}

// JobStatus is what the agent running the job reports.
type JobStatus struct {
	Phase          string       `json:"phase,omitempty"`
	Agent          string       `json:"agent,omitempty"` // node of the agent that runs (ran) it
	Attempts       int          `json:"attempts,omitempty"`
	Heartbeat      *metav1.Time `json:"heartbeat,omitempty"`
	RetryAfter     *metav1.Time `json:"retryAfter,omitempty"`
	StartTime      *metav1.Time `json:"startTime,omitempty"`
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	Message        string       `json:"message,omitempty"` // what happens now, or why it failed

	// Progress of the running attempt, and the result.
	BytesTotal  int64   `json:"bytesTotal,omitempty"`
	BytesDone   int64   `json:"bytesDone,omitempty"`
	BytesRead   int64   `json:"bytesRead,omitempty"`
	BytesNew    int64   `json:"bytesNew,omitempty"`
	BytesStored int64   `json:"bytesStored,omitempty"`
	Mode        string  `json:"mode,omitempty"`     // replication: delta, allocated or full
	Snapshot    string  `json:"snapshot,omitempty"` // the repository snapshot written or restored
	Volume      string  `json:"volume,omitempty"`   // restore: the PersistentVolume created
	Seconds     float64 `json:"seconds,omitempty"`
}

// Final reports whether the job is over.
func (s *JobStatus) Final() bool { return s.Phase == PhaseSucceeded || s.Phase == PhaseFailed }

// toJob converts a FerryJob read with the dynamic client.
func toJob(u *unstructured.Unstructured) (*Job, error) {
	var j Job
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &j); err != nil {
		return nil, fmt.Errorf("FerryJob %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	return &j, nil
}

// toUnstructured converts a Job for the dynamic client.
func toUnstructured(j *Job) (*unstructured.Unstructured, error) {
	j.APIVersion, j.Kind = JobKind.GroupVersion().String(), JobKind.Kind
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(j)
	if err != nil {
		return nil, err
	}
	return &unstructured.Unstructured{Object: m}, nil
}

func now() *metav1.Time {
	t := metav1.NewTime(time.Now().Truncate(time.Second))
	return &t
}
