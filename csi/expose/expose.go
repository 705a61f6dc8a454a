// Package expose makes a CSI snapshot readable on this node with CSI calls
// only: CreateVolume with the snapshot as content source, ControllerPublish
// when the driver needs it, NodeStage and NodePublish with block access.
// Release undoes it in reverse: NodeUnpublish, NodeUnstage,
// ControllerUnpublish, DeleteVolume. Provision does the same for a new,
// empty volume opened for writing (a restore's destination), and Detach
// undoes the attachment but keeps the volume.
//
// Every name is derived from the snapshot ID or the caller's key (volume
// names "ferry-read-<hash>" and "ferry-restore-<hash>", paths
// DIR/<hash>/...), and every step is idempotent
// (CSI requires it of the driver; NOT_FOUND on the way down counts as done),
// so an agent killed half-way simply runs Expose or Release again after a
// restart. Each call has its own timeout.
package expose

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Config says how to reach the driver on this node.
type Config struct {
	Driver      *grpc.ClientConn
	NodeID      string        // as the driver's NodeGetInfo reports it
	Dir         string        // for staging and target paths
	CallTimeout time.Duration // per CSI call; default 2 minutes
}

// Volume is a snapshot exposed as a block device.
type Volume struct {
	*os.File
	VolumeID string
	Size     int64 // of the device
	cfg      Config
	plan     plan
}

type plan struct {
	name       string // CreateVolume name
	dir        string
	staging    string
	target     string
	publish    bool
	stage      bool
	capability *csi.VolumeCapability
}

func newPlan(ctx context.Context, cfg Config, prefix, key string) (plan, error) {
	sum := sha256.Sum256([]byte(key))
	h := hex.EncodeToString(sum[:12])
	p := plan{
		name:    prefix + h,
		dir:     filepath.Join(cfg.Dir, h),
		staging: filepath.Join(cfg.Dir, h, "staging"),
		target:  filepath.Join(cfg.Dir, h, "device"),
		capability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
	}
	cc, err := call(ctx, cfg, func(ctx context.Context) (*csi.ControllerGetCapabilitiesResponse, error) {
		return csi.NewControllerClient(cfg.Driver).ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	})
	if err != nil {
		return p, fmt.Errorf("controller capabilities: %w", err)
	}
	canCreate := false
	for _, c := range cc.GetCapabilities() {
		switch c.GetRpc().GetType() {
		case csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME:
			canCreate = true
		case csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME:
			p.publish = true
		}
	}
	if !canCreate {
		return p, errors.New("the driver cannot create volumes (no CREATE_DELETE_VOLUME capability), so Ferry cannot read or restore volumes through it")
	}
	nc, err := call(ctx, cfg, func(ctx context.Context) (*csi.NodeGetCapabilitiesResponse, error) {
		return csi.NewNodeClient(cfg.Driver).NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	})
	if err != nil {
		return p, fmt.Errorf("node capabilities: %w", err)
	}
	for _, c := range nc.GetCapabilities() {
		if c.GetRpc().GetType() == csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME {
			p.stage = true
		}
	}
	return p, nil
}

func call[T any](ctx context.Context, cfg Config, f func(context.Context) (T, error)) (T, error) {
	d := cfg.CallTimeout
	if d <= 0 {
		d = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return f(ctx)
}

// Expose creates (or finds) the volume restored from snapshotID, attaches
// it to this node as a block device and opens it for reading. sizeBytes is
// the snapshot's size, 0 when unknown.
func Expose(ctx context.Context, cfg Config, snapshotID string, sizeBytes int64) (*Volume, error) {
	p, err := newPlan(ctx, cfg, "ferry-read-", snapshotID)
	if err != nil {
		return nil, err
	}
	req := &csi.CreateVolumeRequest{
		Name:               p.name,
		VolumeCapabilities: []*csi.VolumeCapability{p.capability},
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapshotID},
		}},
	}
	if sizeBytes > 0 {
		req.CapacityRange = &csi.CapacityRange{RequiredBytes: sizeBytes}
	}
	cv, err := call(ctx, cfg, func(ctx context.Context) (*csi.CreateVolumeResponse, error) {
		return csi.NewControllerClient(cfg.Driver).CreateVolume(ctx, req)
	})
	if err != nil {
		return nil, fmt.Errorf("create a volume from snapshot %s: %w", snapshotID, err)
	}
	v := &Volume{VolumeID: cv.GetVolume().GetVolumeId(), cfg: cfg, plan: p}
	if err := v.attach(ctx, cv.GetVolume().GetVolumeContext(), true); err != nil {
		return nil, fmt.Errorf("%w (volume %s, from snapshot %s)", err, v.VolumeID, snapshotID)
	}
	return v, nil
}

// ErrCapacity means the driver has no room for a volume of the size asked.
var ErrCapacity = errors.New("not enough capacity")

// Provisioned is a new volume Provision created.
type Provisioned struct {
	*Volume
	Capacity int64               // bytes, as the driver made it
	Context  map[string]string   // the driver's volume context, for the PersistentVolume
	Topology []map[string]string // where the volume is accessible; empty: anywhere
}

// Provision creates (or finds: the name derives from key) an empty volume
// of at least sizeBytes with the driver's parameters, attaches it to this
// node as a block device and opens it for writing. Detach undoes the
// attachment and keeps the volume; Release deletes it.
func Provision(ctx context.Context, cfg Config, key string, sizeBytes int64, parameters map[string]string) (*Provisioned, error) {
	p, err := newPlan(ctx, cfg, "ferry-restore-", key)
	if err != nil {
		return nil, err
	}
	p.capability.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	cv, err := call(ctx, cfg, func(ctx context.Context) (*csi.CreateVolumeResponse, error) {
		return csi.NewControllerClient(cfg.Driver).CreateVolume(ctx, &csi.CreateVolumeRequest{
			Name:               p.name,
			CapacityRange:      &csi.CapacityRange{RequiredBytes: sizeBytes},
			VolumeCapabilities: []*csi.VolumeCapability{p.capability},
			Parameters:         parameters,
		})
	})
	switch status.Code(err) {
	case codes.OK:
	case codes.ResourceExhausted, codes.OutOfRange:
		return nil, fmt.Errorf("%w: the driver cannot create a volume of %d bytes: %s", ErrCapacity, sizeBytes, status.Convert(err).Message())
	default:
		return nil, fmt.Errorf("create a volume of %d bytes: %w", sizeBytes, err)
	}
	v := &Volume{VolumeID: cv.GetVolume().GetVolumeId(), cfg: cfg, plan: p}
	if err := v.attach(ctx, cv.GetVolume().GetVolumeContext(), false); err != nil {
		return nil, fmt.Errorf("%w (new volume %s)", err, v.VolumeID)
	}
	out := &Provisioned{Volume: v, Capacity: cv.GetVolume().GetCapacityBytes(), Context: cv.GetVolume().GetVolumeContext()}
	for _, t := range cv.GetVolume().GetAccessibleTopology() {
		out.Topology = append(out.Topology, t.GetSegments())
	}
	return out, nil
}

// attach publishes the volume as a block device at the plan's target path
// and opens it.
func (v *Volume) attach(ctx context.Context, volCtx map[string]string, readonly bool) error {
	cfg, p, volID := v.cfg, v.plan, v.VolumeID
	var pubCtx map[string]string
	if p.publish {
		r, err := call(ctx, cfg, func(ctx context.Context) (*csi.ControllerPublishVolumeResponse, error) {
			return csi.NewControllerClient(cfg.Driver).ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{
				VolumeId: volID, NodeId: cfg.NodeID, VolumeCapability: p.capability, Readonly: readonly, VolumeContext: volCtx,
			})
		})
		if err != nil {
			return fmt.Errorf("controller-publish: %w", err)
		}
		pubCtx = r.GetPublishContext()
	}
	if err := os.MkdirAll(p.staging, 0o700); err != nil {
		return err
	}
	if p.stage {
		_, err := call(ctx, cfg, func(ctx context.Context) (*csi.NodeStageVolumeResponse, error) {
			return csi.NewNodeClient(cfg.Driver).NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
				VolumeId: volID, PublishContext: pubCtx, StagingTargetPath: p.staging, VolumeCapability: p.capability, VolumeContext: volCtx,
			})
		})
		if err != nil {
			return fmt.Errorf("stage: %w", err)
		}
	}
	pub := &csi.NodePublishVolumeRequest{
		VolumeId: volID, PublishContext: pubCtx, TargetPath: p.target, VolumeCapability: p.capability, Readonly: readonly, VolumeContext: volCtx,
	}
	if p.stage {
		pub.StagingTargetPath = p.staging
	}
	if _, err := call(ctx, cfg, func(ctx context.Context) (*csi.NodePublishVolumeResponse, error) {
		return csi.NewNodeClient(cfg.Driver).NodePublishVolume(ctx, pub)
	}); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	flag := os.O_RDONLY
	if !readonly {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(p.target, flag, 0)
	if err != nil {
		return err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return fmt.Errorf("size of the device: %w", err)
	}
	v.File, v.Size = f, size
	return nil
}

// Path is where the block device is published on this node.
func (v *Volume) Path() string { return v.plan.target }

// Release closes the device and undoes Expose (or Provision): the volume
// is detached and deleted.
func (v *Volume) Release(ctx context.Context) error {
	if v.File != nil {
		v.File.Close()
	}
	return release(ctx, v.cfg, v.plan, v.VolumeID, true)
}

// Detach closes the device and detaches the volume from this node, keeping
// it: the end of a Provision whose volume now holds a restore.
func (v *Volume) Detach(ctx context.Context) error {
	if v.File != nil {
		v.File.Close()
	}
	return release(ctx, v.cfg, v.plan, v.VolumeID, false)
}

// Cleanup undoes an Expose of snapshotID whose Volume was lost (the agent
// died holding it). An agent that does not know the volume ID runs Expose
// again instead: CreateVolume is idempotent by name and returns the same
// volume, and Release then undoes it.
func Cleanup(ctx context.Context, cfg Config, snapshotID, volumeID string) error {
	if volumeID == "" {
		return errors.New("cleanup: no volume ID")
	}
	p, err := newPlan(ctx, cfg, "ferry-read-", snapshotID)
	if err != nil {
		return err
	}
	return release(ctx, cfg, p, volumeID, true)
}

func release(ctx context.Context, cfg Config, p plan, volID string, deleteVolume bool) error {
	gone := func(err error) bool { return err == nil || status.Code(err) == codes.NotFound }
	if _, err := call(ctx, cfg, func(ctx context.Context) (*csi.NodeUnpublishVolumeResponse, error) {
		return csi.NewNodeClient(cfg.Driver).NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: p.target})
	}); !gone(err) {
		return fmt.Errorf("unpublish volume %s: %w", volID, err)
	}
	if p.stage {
		if _, err := call(ctx, cfg, func(ctx context.Context) (*csi.NodeUnstageVolumeResponse, error) {
			return csi.NewNodeClient(cfg.Driver).NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: p.staging})
		}); !gone(err) {
			return fmt.Errorf("unstage volume %s: %w", volID, err)
		}
	}
	if p.publish {
		if _, err := call(ctx, cfg, func(ctx context.Context) (*csi.ControllerUnpublishVolumeResponse, error) {
			return csi.NewControllerClient(cfg.Driver).ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: volID, NodeId: cfg.NodeID})
		}); !gone(err) {
			return fmt.Errorf("controller-unpublish volume %s: %w", volID, err)
		}
	}
	if !deleteVolume {
		return os.RemoveAll(p.dir)
	}
	if _, err := call(ctx, cfg, func(ctx context.Context) (*csi.DeleteVolumeResponse, error) {
		return csi.NewControllerClient(cfg.Driver).DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: volID})
	}); !gone(err) {
		return fmt.Errorf("delete volume %s: %w", volID, err)
	}
	return os.RemoveAll(p.dir)
}
