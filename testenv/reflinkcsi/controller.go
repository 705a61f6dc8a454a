package reflinkcsi

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydr/ferry/testenv/xfs/loopdev"
)

const (
	// defaultVolumeSize is the size of a volume created without a
	// capacity range or content source. Volumes are sparse.
	defaultVolumeSize = 1 << 30
	// blockSize is the XFS block size; volume sizes are rounded up to it
	// where the capacity range allows.
	blockSize = 4096
	// k8sParamPrefix marks the parameters Kubernetes sidecars add
	// (PVC and VolumeSnapshot names).
	k8sParamPrefix = "csi.storage.k8s.io/"
	// ParamLabel is the driver's one parameter of its own, a
	// StorageClass's for CreateVolume: a free-form label that the driver
	// keeps with the volume and returns in its volume context, where a
	// PersistentVolume shows it (volumeAttributes). It changes nothing
	// else; it lets tests see that a class's parameters reach the driver.
	ParamLabel = "label"
)

// supportedFsTypes are the filesystems mount access may ask for; the
// first is the default.
var supportedFsTypes = []string{"ext4", "ext3", "ext2", "xfs"}

// checkCapability returns why the driver cannot serve c, or nil.
func checkCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return errors.New("volume capability is required")
	}
	switch m := c.GetAccessMode().GetMode(); m {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:
	default:
		return fmt.Errorf("access mode %s is not supported (SINGLE_NODE_WRITER or SINGLE_NODE_READER_ONLY)", m)
	}
	switch t := c.GetAccessType().(type) {
	case *csi.VolumeCapability_Block:
	case *csi.VolumeCapability_Mount:
		if fs := t.Mount.GetFsType(); fs != "" && !slices.Contains(supportedFsTypes, fs) {
			return fmt.Errorf("fsType %q is not supported (%s)", fs, strings.Join(supportedFsTypes, ", "))
		}
	default:
		return errors.New("volume capability needs an access type, block or mount")
	}
	return nil
}

func readOnlyMode(c *csi.VolumeCapability) bool {
	return c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
}

// checkParams rejects parameters the driver does not know, naming them:
// all but Kubernetes' own and those of the call (own).
func checkParams(params map[string]string, own ...string) error {
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if !strings.HasPrefix(k, k8sParamPrefix) && !slices.Contains(own, k) {
			return invalid("unknown parameter %q: the driver takes only %s", k, strings.Join(slices.Concat(own, []string{k8sParamPrefix + "*"}), ", "))
		}
	}
	return nil
}

// volumeSize picks a new volume's size: the required bytes (or the
// source's size, or the default) rounded up to a block, within the limit.
func volumeSize(required, limit, srcSize int64) (int64, error) {
	want := required
	if want == 0 {
		want = srcSize
		if want == 0 {
			want = defaultVolumeSize
		}
		if limit > 0 {
			want = min(want, limit)
		}
	}
	size := (want + blockSize - 1) / blockSize * blockSize
	if limit > 0 && size > limit {
		size = limit
	}
	if size < srcSize {
		return 0, fmt.Errorf("%w: a volume of at most %d bytes cannot hold its %d-byte content source", errOutOfRange, size, srcSize)
	}
	return size, nil
}

func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	rpcs := []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	}
	if d.cfg.ControllerPublish {
		rpcs = append(rpcs,
			csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
			csi.ControllerServiceCapability_RPC_PUBLISH_READONLY)
	}
	caps := make([]*csi.ControllerServiceCapability, len(rpcs))
	for i, t := range rpcs {
		caps[i] = &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t},
		}}
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, invalid("name is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, invalid("volume capabilities are required")
	}
	for _, c := range req.GetVolumeCapabilities() {
		if err := checkCapability(c); err != nil {
			return nil, invalid("%v", err)
		}
	}
	if err := checkParams(req.GetParameters(), ParamLabel); err != nil {
		return nil, err
	}
	required, limit := req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes()
	if required < 0 || limit < 0 || (limit > 0 && required > limit) {
		return nil, invalid("capacity range: required %d, limit %d bytes", required, limit)
	}
	var src source
	if cs := req.GetVolumeContentSource(); cs != nil {
		switch {
		case cs.GetSnapshot() != nil:
			src.Snapshot = cs.GetSnapshot().GetSnapshotId()
		case cs.GetVolume() != nil:
			src.Volume = cs.GetVolume().GetVolumeId()
		}
		if src == (source{}) {
			return nil, invalid("volume content source needs a snapshot or volume ID")
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.createVolume(req.GetName(), required, limit, req.GetParameters(), src)
	if err != nil {
		return nil, err
	}
	return &csi.CreateVolumeResponse{Volume: v.csi()}, nil
}

func (d *Driver) createVolume(name string, required, limit int64, params map[string]string, src source) (*volume, error) {
	id := volumeID(name)
	if v, err := d.store.volume(id); err == nil {
		if v.Size < required || (limit > 0 && v.Size > limit) || v.Source != src || !maps.Equal(v.Params, params) {
			return nil, fmt.Errorf("volume %q (%s of %d bytes from %+v): %w", name, id, v.Size, v.Source, errExists)
		}
		return v, nil
	} else if !errors.Is(err, errNotFound) {
		return nil, err
	}

	var srcFile string
	var srcSize int64
	switch {
	case src.Snapshot != "":
		sn, err := d.store.snapshot(src.Snapshot)
		if err != nil {
			return nil, fmt.Errorf("content source: %w", err)
		}
		srcFile, srcSize = d.store.snapshotFile(sn.ID), sn.Size
	case src.Volume != "":
		sv, err := d.store.volume(src.Volume)
		if err != nil {
			return nil, fmt.Errorf("content source: %w", err)
		}
		srcFile, srcSize = d.store.volumeFile(sv.ID), sv.Size
	}
	size, err := volumeSize(required, limit, srcSize)
	if err != nil {
		return nil, err
	}
	if d.cfg.Capacity > 0 {
		vs, err := d.store.volumes()
		if err != nil {
			return nil, err
		}
		var used int64
		for _, v := range vs {
			used += v.Size
		}
		if used+size > d.cfg.Capacity {
			return nil, fmt.Errorf("%w: a volume of %d bytes does not fit: %d of %d bytes are taken", errExhausted, size, used, d.cfg.Capacity)
		}
	}
	if err := makeDataFile(d.store.volumeFile(id), srcFile, size); err != nil {
		return nil, fmt.Errorf("create volume %s: %w", id, err)
	}
	v := &volume{ID: id, Name: name, Size: size, Params: params, Source: src, Created: time.Now().UTC()}
	if err := d.store.putVolume(v); err != nil {
		return nil, err
	}
	return v, nil
}

func (v *volume) csi() *csi.Volume {
	cv := &csi.Volume{VolumeId: v.ID, CapacityBytes: v.Size}
	if l, ok := v.Params[ParamLabel]; ok {
		cv.VolumeContext = map[string]string{ParamLabel: l}
	}
	switch {
	case v.Source.Snapshot != "":
		cv.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.Source.Snapshot},
		}}
	case v.Source.Volume != "":
		cv.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.Source.Volume},
		}}
	}
	return cv
}

func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, invalid("volume ID is required")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.store.volume(id)
	if errors.Is(err, errNotFound) {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	if len(v.Published) > 0 {
		return nil, fmt.Errorf("%w: volume %s is published to nodes %v", errPrecondition, id, slices.Sorted(maps.Keys(v.Published)))
	}
	if st, err := d.store.staging(id); err != nil {
		return nil, err
	} else if st != nil {
		return nil, fmt.Errorf("%w: volume %s is staged at %s", errPrecondition, id, st.Path)
	}
	if devs, err := loopdev.Find(d.store.volumeFile(id)); err != nil && !errors.Is(err, unix.ENOENT) {
		return nil, err
	} else if len(devs) > 0 {
		return nil, fmt.Errorf("%w: volume %s is in use by loop device %s", errPrecondition, id, devs[0].Path)
	}
	if err := d.store.deleteVolume(id); err != nil {
		return nil, fmt.Errorf("delete volume %s: %w", id, err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume ID is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, invalid("volume capabilities are required")
	}
	d.mu.Lock()
	v, err := d.store.volume(req.GetVolumeId())
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	for _, c := range req.GetVolumeCapabilities() {
		if err := checkCapability(c); err != nil {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
		}
	}
	if len(req.GetParameters()) > 0 && !maps.Equal(req.GetParameters(), v.Params) {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: "parameters differ from the volume's"}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// GetCapacity reports the free space of the driver's filesystem. Volumes
// are sparse, so it may be smaller than the volumes it still holds.
func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if err := checkParams(req.GetParameters(), ParamLabel); err != nil {
		return nil, err
	}
	for _, c := range req.GetVolumeCapabilities() {
		if checkCapability(c) != nil {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(d.cfg.Dir, &fs); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", d.cfg.Dir, err)
	}
	return &csi.GetCapacityResponse{AvailableCapacity: int64(fs.Bavail) * fs.Bsize}, nil
}

// page returns the entries of a list sorted by ID that a ListVolumes or
// ListSnapshots call asks for, and the next token: the ID of the first
// entry not returned, so a token stays valid when entries come and go.
func page[T any](all []T, id func(T) string, prefix, token string, maxEntries int32) ([]T, string, error) {
	if maxEntries < 0 {
		return nil, "", invalid("max_entries must not be negative")
	}
	start := 0
	if token != "" {
		if !validID(prefix, token) {
			return nil, "", status.Errorf(codes.Aborted, "invalid starting token %q", token)
		}
		start = sort.Search(len(all), func(i int) bool { return id(all[i]) >= token })
	}
	end, next := len(all), ""
	if maxEntries > 0 && start+int(maxEntries) < len(all) {
		end = start + int(maxEntries)
		next = id(all[end])
	}
	return all[start:end], next, nil
}

func (d *Driver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	d.mu.Lock()
	vols, err := d.store.volumes()
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	vols, next, err := page(vols, func(v *volume) string { return v.ID }, volumePrefix, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, v := range vols {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: v.csi()})
	}
	return resp, nil
}

func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, invalid("name is required")
	}
	if req.GetSourceVolumeId() == "" {
		return nil, invalid("source volume ID is required")
	}
	if err := checkParams(req.GetParameters()); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	sn, err := d.createSnapshot(req.GetName(), req.GetSourceVolumeId(), req.GetParameters())
	if err != nil {
		return nil, err
	}
	return &csi.CreateSnapshotResponse{Snapshot: sn.csi()}, nil
}

func (d *Driver) createSnapshot(name, volID string, params map[string]string) (*snapshot, error) {
	id := snapshotID(name)
	if sn, err := d.store.snapshot(id); err == nil {
		if sn.Volume != volID || !maps.Equal(sn.Params, params) {
			return nil, fmt.Errorf("snapshot %q (%s of volume %s): %w", name, id, sn.Volume, errExists)
		}
		return sn, nil
	} else if !errors.Is(err, errNotFound) {
		return nil, err
	}
	v, err := d.store.volume(volID)
	if err != nil {
		return nil, fmt.Errorf("source volume: %w", err)
	}
	if err := makeDataFile(d.store.snapshotFile(id), d.store.volumeFile(v.ID), 0); err != nil {
		return nil, fmt.Errorf("create snapshot %s: %w", id, err)
	}
	sn := &snapshot{ID: id, Name: name, Volume: v.ID, Size: v.Size, Params: params, Created: time.Now().UTC(), Ready: true}
	if err := d.store.putSnapshot(sn); err != nil {
		return nil, err
	}
	return sn, nil
}

func (sn *snapshot) csi() *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     sn.ID,
		SourceVolumeId: sn.Volume,
		SizeBytes:      sn.Size,
		CreationTime:   timestamppb.New(sn.Created),
		ReadyToUse:     sn.Ready,
	}
}

func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, invalid("snapshot ID is required")
	}
	if !validID(snapshotPrefix, id) {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.store.deleteSnapshot(id); err != nil {
		return nil, fmt.Errorf("delete snapshot %s: %w", id, err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (d *Driver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	d.mu.Lock()
	var snaps []*snapshot
	var err error
	if id := req.GetSnapshotId(); id != "" {
		var sn *snapshot
		if sn, err = d.store.snapshot(id); err == nil {
			snaps = []*snapshot{sn}
		} else if errors.Is(err, errNotFound) {
			err = nil
		}
	} else {
		snaps, err = d.store.snapshots()
	}
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if vol := req.GetSourceVolumeId(); vol != "" {
		snaps = slices.DeleteFunc(snaps, func(sn *snapshot) bool { return sn.Volume != vol })
	}
	snaps, next, err := page(snaps, func(sn *snapshot) string { return sn.ID }, snapshotPrefix, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, sn := range snaps {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: sn.csi()})
	}
	return resp, nil
}

func (d *Driver) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, invalid("snapshot ID is required")
	}
	d.mu.Lock()
	sn, err := d.store.snapshot(req.GetSnapshotId())
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &csi.GetSnapshotResponse{Snapshot: sn.csi()}, nil
}

func (d *Driver) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	if !d.cfg.ControllerPublish {
		return nil, status.Error(codes.Unimplemented, "ControllerPublishVolume needs --controller-publish")
	}
	if req.GetVolumeId() == "" {
		return nil, invalid("volume ID is required")
	}
	if req.GetNodeId() == "" {
		return nil, invalid("node ID is required")
	}
	if err := checkCapability(req.GetVolumeCapability()); err != nil {
		return nil, invalid("%v", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.store.volume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if req.GetNodeId() != d.cfg.NodeID {
		return nil, fmt.Errorf("node %q: %w", req.GetNodeId(), errNotFound)
	}
	ro := req.GetReadonly()
	if was, ok := v.Published[req.GetNodeId()]; ok {
		if was != ro {
			return nil, fmt.Errorf("volume %s is published to node %s with readonly=%v: %w", v.ID, req.GetNodeId(), was, errExists)
		}
		return &csi.ControllerPublishVolumeResponse{}, nil
	}
	if v.Published == nil {
		v.Published = map[string]bool{}
	}
	v.Published[req.GetNodeId()] = ro
	if err := d.store.putVolume(v); err != nil {
		return nil, err
	}
	return &csi.ControllerPublishVolumeResponse{}, nil
}

func (d *Driver) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	if !d.cfg.ControllerPublish {
		return nil, status.Error(codes.Unimplemented, "ControllerUnpublishVolume needs --controller-publish")
	}
	if req.GetVolumeId() == "" {
		return nil, invalid("volume ID is required")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// An unknown volume or node is not published: the spec asks for OK.
	v, err := d.store.volume(req.GetVolumeId())
	if errors.Is(err, errNotFound) {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	if node := req.GetNodeId(); node != "" && node != d.cfg.NodeID {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	if _, ok := v.Published[d.cfg.NodeID]; !ok {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	delete(v.Published, d.cfg.NodeID)
	if err := d.store.putVolume(v); err != nil {
		return nil, err
	}
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}
