package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/replicate"
	"github.com/ferrydr/ferry/csi/hook"
)

// Replicator runs replication jobs with the agent's replicate.Runner.
type Replicator struct {
	Runner  *replicate.Runner
	Dynamic dynamic.Interface
	// Done, when set, is told of every finished replication (metrics, the
	// verification loop).
	Done func(s hook.Snapshot, res *replicate.Result, took time.Duration)
}

// Handle is the Handler for TypeReplicate.
func (rp *Replicator) Handle(ctx context.Context, j *Job, p *Progress) (*Outcome, error) {
	if j.Spec.Replicate == nil {
		return nil, Permanent(errors.New("spec.replicate is missing"))
	}
	s := j.Spec.Replicate.Snapshot
	pvc := rp.claimOf(ctx, s)
	bp := &backup.Progress{}
	p.Track(func() (int64, int64, int64) { return bp.Total.Load(), bp.Covered(), bp.Read.Load() })
	p.Say("replicating snapshot %s", s.SnapshotID)
	start := time.Now()
	res, err := rp.Runner.Run(ctx, s, replicate.Options{PVC: pvc, Progress: bp})
	if err != nil {
		return nil, err
	}
	took := time.Since(start)
	if rp.Done != nil {
		rp.Done(s, res, took)
	}
	of := "snapshot " + s.SnapshotID
	if pvc != "" {
		of += fmt.Sprintf(" of PVC %s/%s", s.Replication.SnapshotNamespace, pvc)
	}
	if res.Summary == nil {
		return &Outcome{Message: fmt.Sprintf("Ferry had already replicated %s to %s", of, j.Spec.Repository)}, nil
	}
	sum := res.Summary
	var degraded string
	if msg := sum.DegradedMessage(); msg != "" {
		degraded = ". " + msg
		rp.Runner.Log.Warn("replicated without a target that was down", "snapshot", s.SnapshotID, "manifest", sum.SnapshotID, "degraded", sum.Degraded)
	}
	return &Outcome{
		BytesRead: sum.BytesRead, BytesNew: sum.BytesNew, BytesStored: sum.BytesStored,
		Mode: res.Mode, Snapshot: sum.SnapshotID, Degraded: degraded != "",
		Message: fmt.Sprintf("Ferry replicated %s (%s) to %s as snapshot %s in %s: read %s (%s), stored %s new",
			of, humanize.IBytes(uint64(sum.BytesVolume)), j.Spec.Repository, sum.SnapshotID[:12], took.Round(time.Millisecond),
			humanize.IBytes(uint64(sum.BytesRead)), modeWords(res.Mode), humanize.IBytes(uint64(sum.BytesStored))) + degraded,
	}, nil
}

func modeWords(mode string) string {
	switch mode {
	case "delta":
		return "only the blocks changed since the previous snapshot"
	case "allocated":
		return "only the allocated blocks"
	default:
		return "the whole volume"
	}
}

// claimOf finds the PVC the snapshot's VolumeSnapshot was taken of, so the
// manifest names it and restore-to-cluster can select by it. "" when the
// VolumeSnapshot is unknown or gone.
func (rp *Replicator) claimOf(ctx context.Context, s hook.Snapshot) string {
	r := s.Replication
	if rp.Dynamic == nil || r.SnapshotNamespace == "" || r.SnapshotName == "" {
		return ""
	}
	u, err := rp.Dynamic.Resource(VolumeSnapshotResource).Namespace(r.SnapshotNamespace).Get(ctx, r.SnapshotName, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	var vs snapshotv1.VolumeSnapshot
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &vs); err != nil || vs.Spec.Source.PersistentVolumeClaimName == nil {
		return ""
	}
	return strings.TrimSpace(*vs.Spec.Source.PersistentVolumeClaimName)
}
