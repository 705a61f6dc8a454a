// Package expose makes a CSI snapshot readable on this node with CSI calls
// only: CreateVolume with the snapshot as content source, ControllerPublish
// when the driver needs it, NodeStage and NodePublish with block access.
// Release undoes it in reverse: NodeUnpublish, NodeUnstage,
// ControllerUnpublish, DeleteVolume.
//
// Every name is derived from the snapshot ID (volume name
// "ferry-read-<hash>", paths DIR/<hash>/...), and every step is idempotent
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

func newPlan(ctx context.Context, cfg Config, snapshotID string) (plan, error) {
	sum := sha256.Sum256([]byte(snapshotID))
	h := hex.EncodeToString(sum[:12])
	p := plan{
		name:    "ferry-read-" + h,
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
		return p, errors.New("the driver cannot create volumes (no CREATE_DELETE_VOLUME capability), so snapshots cannot be read through it")
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
	p, err := newPlan(ctx, cfg, snapshotID)
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
	volID := cv.GetVolume().GetVolumeId()
	v := &Volume{VolumeID: volID, cfg: cfg, plan: p}
	fail := func(step string, err error) (*Volume, error) {
		return nil, fmt.Errorf("%s volume %s (from snapshot %s): %w", step, volID, snapshotID, err)
	}
	var pubCtx map[string]string
	if p.publish {
		r, err := call(ctx, cfg, func(ctx context.Context) (*csi.ControllerPublishVolumeResponse, error) {
			return csi.NewControllerClient(cfg.Driver).ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{
				VolumeId: volID, NodeId: cfg.NodeID, VolumeCapability: p.capability, Readonly: true, VolumeContext: cv.GetVolume().GetVolumeContext(),
			})
		})
		if err != nil {
			return fail("controller-publish", err)
		}
		pubCtx = r.GetPublishContext()
	}
	if err := os.MkdirAll(p.staging, 0o700); err != nil {
		return fail("prepare", err)
	}
	if p.stage {
		_, err := call(ctx, cfg, func(ctx context.Context) (*csi.NodeStageVolumeResponse, error) {
			return csi.NewNodeClient(cfg.Driver).NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
				VolumeId: volID, PublishContext: pubCtx, StagingTargetPath: p.staging, VolumeCapability: p.capability, VolumeContext: cv.GetVolume().GetVolumeContext(),
			})
		})
		if err != nil {
			return fail("stage", err)
		}
	}
	pub := &csi.NodePublishVolumeRequest{
		VolumeId: volID, PublishContext: pubCtx, TargetPath: p.target, VolumeCapability: p.capability, Readonly: true, VolumeContext: cv.GetVolume().GetVolumeContext(),
	}
	if p.stage {
		pub.StagingTargetPath = p.staging
	}
	if _, err := call(ctx, cfg, func(ctx context.Context) (*csi.NodePublishVolumeResponse, error) {
		return csi.NewNodeClient(cfg.Driver).NodePublishVolume(ctx, pub)
	}); err != nil {
		return fail("publish", err)
	}
	f, err := os.Open(p.target)
	if err != nil {
		return fail("open", err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return fail("size of", err)
	}
	v.File, v.Size = f, size
	return v, nil
}

// Release closes the device and undoes Expose.
func (v *Volume) Release(ctx context.Context) error {
	if v.File != nil {
		v.File.Close()
	}
	return release(ctx, v.cfg, v.plan, v.VolumeID)
}

// Cleanup undoes an Expose of snapshotID whose Volume was lost (the agent
// died holding it). An agent that does not know the volume ID runs Expose
// again instead: CreateVolume is idempotent by name and returns the same
// volume, and Release then undoes it.
func Cleanup(ctx context.Context, cfg Config, snapshotID, volumeID string) error {
	if volumeID == "" {
		return errors.New("cleanup: no volume ID")
	}
	p, err := newPlan(ctx, cfg, snapshotID)
	if err != nil {
		return err
	}
	return release(ctx, cfg, p, volumeID)
}

func release(ctx context.Context, cfg Config, p plan, volID string) error {
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
	if _, err := call(ctx, cfg, func(ctx context.Context) (*csi.DeleteVolumeResponse, error) {
		return csi.NewControllerClient(cfg.Driver).DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: volID})
	}); !gone(err) {
		return fmt.Errorf("delete volume %s: %w", volID, err)
	}
	return os.RemoveAll(p.dir)
}
