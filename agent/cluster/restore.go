package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ferrydr/ferry/agent/replicate"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/csi/expose"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

// Annotations on the PersistentVolume and claim a restore creates.
const (
	AnnotationJob      = "ferry.dev/job"
	AnnotationSnapshot = "ferry.dev/snapshot"
)

// Restorer runs restore jobs: it creates a volume with the node's CSI
// driver, writes the snapshot into it as a block device, and registers it
// as a PersistentVolume bound to a new claim.
type Restorer struct {
	Client  kubernetes.Interface
	Secrets replicate.Secrets
	Expose  expose.Config
	Driver  string // the CSI driver's name
	// IndexCache is Repo.IndexCache of the repositories it opens.
	IndexCache string
	Log        *slog.Logger
}

// Handle is the Handler for TypeRestore.
func (rs *Restorer) Handle(ctx context.Context, j *Job, p *Progress) (*Outcome, error) {
	spec := j.Spec.Restore
	if spec == nil || spec.Namespace == "" || spec.PVC == "" {
		return nil, Permanent(errors.New("spec.restore needs the namespace and name of the claim to create"))
	}
	pvcs := rs.Client.CoreV1().PersistentVolumeClaims(spec.Namespace)
	if c, err := pvcs.Get(ctx, spec.PVC, metav1.GetOptions{}); err == nil && c.Annotations[AnnotationJob] != j.Name {
		return nil, Permanent(fmt.Errorf("PVC %s/%s already exists; Ferry restores only into a new claim", spec.Namespace, spec.PVC))
	} else if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("PVC %s/%s: %w", spec.Namespace, spec.PVC, err)
	}
	if _, err := rs.Client.CoreV1().Namespaces().Get(ctx, spec.Namespace, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return nil, Permanent(fmt.Errorf("namespace %s does not exist", spec.Namespace))
	} else if err != nil {
		return nil, fmt.Errorf("namespace %s: %w", spec.Namespace, err)
	}

	params, err := rs.classParameters(ctx, spec.StorageClassName)
	if err != nil {
		return nil, err
	}
	p.Say("opening the repository")
	sec, err := rs.Secrets.Secret(ctx, j.Spec.Secret.Namespace, j.Spec.Secret.Name)
	if err != nil {
		return nil, err
	}
	locs, err := objstore.ParseRepo(j.Spec.Repository)
	if err != nil {
		return nil, Permanent(err)
	}
	r, err := repo.OpenForRestore(ctx, objstore.OpenAll(ctx, locs, sec.Env), sec.Password)
	if err != nil {
		return nil, fmt.Errorf("open repository: %w", err)
	}
	r.IndexCache = rs.IndexCache
	snap, err := findSnapshot(ctx, r, spec)
	if err != nil {
		return nil, err
	}
	p.Say("checking that snapshot %s is restorable", snap.ID[:12])
	if _, err := restore.NewPlan(ctx, r, snap, nil); err != nil {
		if errors.Is(err, restore.ErrDataLost) {
			return nil, Permanent(fmt.Errorf("snapshot %s is not restorable: %w", snap.ID[:12], err))
		}
		return nil, err
	}

	p.Say("creating a volume of %s with driver %s", humanize.IBytes(uint64(snap.Size)), rs.Driver)
	vol, err := expose.Provision(ctx, rs.Expose, string(j.UID), snap.Size, params)
	if err != nil {
		if errors.Is(err, expose.ErrCapacity) {
			return nil, Permanent(err)
		}
		return nil, err
	}
	detached := false
	defer func() {
		if !detached {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
			defer cancel()
			if err := vol.Detach(dctx); err != nil {
				rs.Log.Error("detach the restored volume", "volume_id", vol.VolumeID, "error", err)
			}
		}
	}()
	vol.File.Close() // restore.Run opens the device itself
	prog := &restore.Progress{}
	p.Track(func() (int64, int64, int64) { return prog.Total.Load(), prog.Written.Load(), prog.Fetched.Load() })
	p.Say("writing snapshot %s into volume %s", snap.ID[:12], vol.VolumeID)
	sum, err := restore.Run(ctx, r, snap, vol.Path(), restore.Options{Progress: prog})
	if err != nil {
		if errors.Is(err, restore.ErrDataLost) {
			return nil, Permanent(err)
		}
		return nil, err
	}
	if err := vol.Detach(ctx); err != nil {
		return nil, err
	}
	detached = true

	pvName := "ferry-" + shortHash(string(j.UID))
	if err := rs.register(ctx, j, snap, vol, pvName, params); err != nil {
		return nil, err
	}
	return &Outcome{
		BytesRead: prog.Fetched.Load(), Snapshot: snap.ID, Volume: pvName, // shard bytes downloaded
		Message: fmt.Sprintf("Ferry restored snapshot %s (%s of %s) into PVC %s/%s, PersistentVolume %s, in %s",
			snap.ID[:12], humanize.IBytes(uint64(snap.Size)), seriesOf(snap), spec.Namespace, spec.PVC, pvName, sum.Duration.Round(time.Millisecond)),
	}, nil
}

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:8])
}

func seriesOf(s *repo.Snapshot) string {
	if s.Volume.Namespace != "" && s.Volume.PVC != "" {
		return "PVC " + s.Volume.Namespace + "/" + s.Volume.PVC
	}
	return s.Name
}

// findSnapshot picks the snapshot spec asks for.
func findSnapshot(ctx context.Context, r *repo.Repo, spec *Restore) (*repo.Snapshot, error) {
	src := spec.Source
	if src.Namespace == "" && src.PVC == "" {
		s, err := r.FindSnapshot(ctx, spec.Snapshot, src.Name)
		if errors.Is(err, repo.ErrSnapshotNotFound) {
			return nil, Permanent(err)
		}
		return s, err
	}
	all, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	var match *repo.Snapshot
	for _, s := range all { // oldest first
		v := s.Volume
		if v.Namespace != src.Namespace || v.PVC != src.PVC {
			continue
		}
		if spec.Snapshot == "latest" || spec.Snapshot == "" || strings.HasPrefix(s.ID, spec.Snapshot) {
			match = s
		}
	}
	if match == nil {
		return nil, Permanent(fmt.Errorf("%w: none of PVC %s/%s", repo.ErrSnapshotNotFound, src.Namespace, src.PVC))
	}
	return match, nil
}

// classParameters returns the StorageClass's parameters for CreateVolume
// (Kubernetes' own csi.storage.k8s.io/ keys removed), checking that it
// belongs to this agent's driver.
func (rs *Restorer) classParameters(ctx context.Context, class string) (map[string]string, error) {
	if class == "" {
		return nil, nil
	}
	sc, err := rs.Client.StorageV1().StorageClasses().Get(ctx, class, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, Permanent(fmt.Errorf("StorageClass %s does not exist", class))
	}
	if err != nil {
		return nil, fmt.Errorf("StorageClass %s: %w", class, err)
	}
	if sc.Provisioner != rs.Driver {
		return nil, Permanent(fmt.Errorf("StorageClass %s is for driver %s; this agent's driver is %s", class, sc.Provisioner, rs.Driver))
	}
	out := maps.Clone(sc.Parameters)
	for k := range out {
		if strings.HasPrefix(k, "csi.storage.k8s.io/") {
			delete(out, k)
		}
	}
	return out, nil
}

// register creates the PersistentVolume for the restored volume and the
// claim bound to it; the PV controller binds them. Both carry the job's
// name, so a retried job finds what it created.
func (rs *Restorer) register(ctx context.Context, j *Job, snap *repo.Snapshot, vol *expose.Provisioned, pvName string, params map[string]string) error {
	spec := j.Spec.Restore
	mode := corev1.PersistentVolumeFilesystem
	if spec.VolumeMode == string(corev1.PersistentVolumeBlock) {
		mode = corev1.PersistentVolumeBlock
	}
	fsType := spec.FSType
	if fsType == "" && mode == corev1.PersistentVolumeFilesystem {
		fsType = "ext4"
	}
	capacity := *resource.NewQuantity(max(vol.Capacity, vol.Size, snap.Size), resource.BinarySI)
	ann := map[string]string{AnnotationJob: j.Name, AnnotationSnapshot: snap.ID, "pv.kubernetes.io/provisioned-by": rs.Driver}
	modes := []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvName, Annotations: ann, Labels: map[string]string{"app.kubernetes.io/managed-by": "ferry"}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:    corev1.ResourceList{corev1.ResourceStorage: capacity},
			AccessModes: modes,
			// The restored data is what a disaster left: deleting the
			// claim must not delete it.
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              spec.StorageClassName,
			VolumeMode:                    &mode,
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: rs.Driver, VolumeHandle: vol.VolumeID, FSType: fsType, VolumeAttributes: vol.Context,
			}},
			ClaimRef:     &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: spec.Namespace, Name: spec.PVC},
			NodeAffinity: nodeAffinity(vol.Topology),
		},
	}
	if _, err := rs.Client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create PersistentVolume %s: %w", pvName, err)
	}
	class := spec.StorageClassName // "" as well: no default class may be put on it
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: spec.PVC, Namespace: spec.Namespace, Annotations: ann},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      modes,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: capacity}},
			StorageClassName: &class,
			VolumeMode:       &mode,
			VolumeName:       pvName,
		},
	}
	_, err := rs.Client.CoreV1().PersistentVolumeClaims(spec.Namespace).Create(ctx, pvc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		c, gerr := rs.Client.CoreV1().PersistentVolumeClaims(spec.Namespace).Get(ctx, spec.PVC, metav1.GetOptions{})
		if gerr == nil && c.Annotations[AnnotationJob] == j.Name {
			return nil
		}
		return Permanent(fmt.Errorf("PVC %s/%s was created by someone else while Ferry restored into PersistentVolume %s", spec.Namespace, spec.PVC, pvName))
	}
	if err != nil {
		return fmt.Errorf("create PVC %s/%s: %w", spec.Namespace, spec.PVC, err)
	}
	return nil
}

// nodeAffinity turns the driver's accessible topology into the PV's node
// affinity: any of the segments, all keys of one.
func nodeAffinity(top []map[string]string) *corev1.VolumeNodeAffinity {
	var terms []corev1.NodeSelectorTerm
	for _, seg := range top {
		var t corev1.NodeSelectorTerm
		for _, k := range slices.Sorted(maps.Keys(seg)) {
			v := seg[k]
			t.MatchExpressions = append(t.MatchExpressions, corev1.NodeSelectorRequirement{Key: k, Operator: corev1.NodeSelectorOpIn, Values: []string{v}})
		}
		if len(t.MatchExpressions) > 0 {
			terms = append(terms, t)
		}
	}
	if len(terms) == 0 {
		return nil
	}
	return &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: terms}}
}
