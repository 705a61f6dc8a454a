package reflinkcsi

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/testenv/xfs/loopdev"
)

func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.cfg.NodeID}, nil
}

func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
	} {
		caps = append(caps, &csi.NodeServiceCapability{
			Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}},
		})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodeGetVolumeStats reports the volume's size for block access and the
// filesystem's usage for mount access, at its staging or a target path.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if id == "" {
		return nil, invalid("volume ID is required")
	}
	if path == "" {
		return nil, invalid("volume path is required")
	}
	// Not cleanPath: a relative path is not wrong here, just not one
	// where the volume is (NOT_FOUND, as csi-sanity expects).
	path = filepath.Clean(path)
	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.store.volume(id)
	if err != nil {
		return nil, err
	}
	st, err := d.store.staging(id)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, fmt.Errorf("volume %s is not staged: %w", id, errNotFound)
	}
	if _, published := st.Targets[path]; !published && st.Path != path {
		return nil, fmt.Errorf("volume %s at %s: %w", id, path, errNotFound)
	}
	if st.Block {
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: v.Size},
		}}, nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", path, err)
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{
		Unit:      csi.VolumeUsage_BYTES,
		Total:     int64(fs.Blocks) * fs.Bsize,
		Available: int64(fs.Bavail) * fs.Bsize,
		Used:      int64(fs.Blocks-fs.Bfree) * fs.Bsize,
	}, {
		Unit:      csi.VolumeUsage_INODES,
		Total:     int64(fs.Files),
		Available: int64(fs.Ffree),
		Used:      int64(fs.Files - fs.Ffree),
	}}}, nil
}

// NodeStageVolume attaches the volume's file to a loop device and, for
// mount access, formats the device (unless it already holds a filesystem)
// and mounts it at the staging path. Every step is skipped when already
// done, so a retry after a crash finishes the job.
func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume ID is required")
	}
	path, err := cleanPath("staging target path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	c := req.GetVolumeCapability()
	if err := checkCapability(c); err != nil {
		return nil, invalid("%v", err)
	}
	want := &staging{
		Volume:   req.GetVolumeId(),
		Path:     path,
		Block:    c.GetBlock() != nil,
		ReadOnly: readOnlyMode(c),
	}
	if m := c.GetMount(); m != nil {
		want.FsType = cmp.Or(m.GetFsType(), supportedFsTypes[0])
		want.MountFlags = m.GetMountFlags()
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	v, err := d.store.volume(want.Volume)
	if err != nil {
		return nil, err
	}
	if d.cfg.ControllerPublish {
		if _, ok := v.Published[d.cfg.NodeID]; !ok {
			return nil, fmt.Errorf("%w: volume %s is not published to node %s: call ControllerPublishVolume first",
				errPrecondition, v.ID, d.cfg.NodeID)
		}
	}
	st, err := d.store.staging(v.ID)
	if err != nil {
		return nil, err
	}
	if st != nil {
		if st.Path != want.Path {
			return nil, fmt.Errorf("%w: volume %s is already staged at %s", errPrecondition, v.ID, st.Path)
		}
		if st.Block != want.Block || st.FsType != want.FsType || st.ReadOnly != want.ReadOnly ||
			!slices.Equal(st.MountFlags, want.MountFlags) {
			return nil, fmt.Errorf("volume %s is staged at %s with another capability: %w", v.ID, st.Path, errExists)
		}
		want = st
	}
	if err := d.stage(ctx, want); err != nil {
		return nil, fmt.Errorf("stage volume %s: %w", v.ID, err)
	}
	if err := d.store.putStaging(want); err != nil {
		return nil, err
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

func (d *Driver) stage(ctx context.Context, st *staging) error {
	// Mount access needs a writable device to format it; the mount
	// itself is read-only then.
	dev, err := d.ensureDevice(ctx, st, st.ReadOnly && st.Block)
	if err != nil {
		return err
	}
	st.Device = dev
	if st.Block {
		return nil
	}
	fs, err := fsType(ctx, dev)
	if err != nil {
		return err
	}
	switch {
	case fs == "" && st.ReadOnly:
		return fmt.Errorf("%w: volume %s holds no filesystem and is staged read-only", errPrecondition, st.Volume)
	case fs == "":
		if _, err := run(ctx, "mkfs."+st.FsType, mkfsArgs(st.FsType, dev)...); err != nil {
			return err
		}
	case fs != st.FsType:
		return fmt.Errorf("%w: volume %s holds %s, not %s", errPrecondition, st.Volume, fs, st.FsType)
	}
	if err := os.MkdirAll(st.Path, 0o750); err != nil {
		return err
	}
	if ok, err := mountedFrom(st.Path, dev); err != nil || ok {
		return err
	}
	opts := slices.Clone(st.MountFlags)
	if st.ReadOnly {
		opts = append(opts, "ro")
	}
	args := []string{"-t", st.FsType}
	if len(opts) > 0 {
		args = append(args, "-o", strings.Join(opts, ","))
	}
	_, err = run(ctx, "mount", append(args, dev, st.Path)...)
	return err
}

// ensureDevice returns the loop device of the staging, attaching the
// volume's file when the recorded device is gone.
func (d *Driver) ensureDevice(ctx context.Context, st *staging, readOnly bool) (string, error) {
	file := d.store.volumeFile(st.Volume)
	devs, err := loopdev.Find(file)
	if err != nil {
		return "", err
	}
	owned := map[string]bool{}
	for _, p := range st.Targets {
		owned[p.Device] = true
	}
	for _, dv := range devs {
		if dv.Path == st.Device && dv.ReadOnly == readOnly {
			return dv.Path, nil
		}
	}
	// A device a crashed call attached but did not record.
	for _, dv := range devs {
		if dv.ReadOnly == readOnly && !owned[dv.Path] {
			return dv.Path, nil
		}
	}
	return loopdev.Attach(ctx, file, readOnly)
}

// mkfsArgs formats ext filesystems without lazy initialisation: the
// kernel would otherwise keep writing inode tables after the mount, and
// those writes would show up as changes between snapshots.
func mkfsArgs(fs, dev string) []string {
	if strings.HasPrefix(fs, "ext") {
		return []string{"-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev}
	}
	return []string{"-q", dev}
}

// fsType returns the filesystem type on dev, or "" if it holds none.
func fsType(ctx context.Context, dev string) (string, error) {
	out, err := run(ctx, "blkid", "-p", "-s", "TYPE", "-o", "value", dev)
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 2 { // nothing found
		return "", nil
	}
	return strings.TrimSpace(out), err
}

// mountedFrom reports whether path is a mount of dev (or of a directory
// on it); it fails if something else is mounted there.
func mountedFrom(path, dev string) (bool, error) {
	points, err := loopdev.MountsOf(dev)
	if err != nil {
		return false, err
	}
	if slices.Contains(points, path) {
		return true, nil
	}
	other, err := loopdev.MountPoint(path)
	if err == nil && other {
		err = fmt.Errorf("%w: something other than %s is mounted at %s", errPrecondition, dev, path)
	}
	return false, err
}

func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, invalid("volume ID is required")
	}
	path, err := cleanPath("staging target path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st, err := d.store.staging(id)
	if err != nil {
		return nil, err
	}
	if st == nil {
		if _, err := d.store.volume(id); err != nil {
			return nil, err
		}
	} else {
		if st.Path != path {
			return nil, fmt.Errorf("%w: volume %s is staged at %s, not %s", errPrecondition, id, st.Path, path)
		}
		if len(st.Targets) > 0 {
			return nil, fmt.Errorf("%w: volume %s is still published at %v", errPrecondition, id, slices.Sorted(maps.Keys(st.Targets)))
		}
	}
	// Whatever the record says, release every loop device of the file:
	// a crashed call may have attached one without recording it.
	devs, err := loopdev.Find(d.store.volumeFile(id))
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return nil, err
	}
	for _, dv := range devs {
		points, err := loopdev.MountsOf(dv.Path)
		if err != nil {
			return nil, err
		}
		for _, p := range points {
			if p != path {
				return nil, fmt.Errorf("%w: %s of volume %s is still mounted at %s", errPrecondition, dv.Path, id, p)
			}
			if err := unmount(p); err != nil {
				return nil, err
			}
		}
		if err := loopdev.Detach(ctx, dv.Path); err != nil {
			return nil, err
		}
	}
	if err := d.store.deleteStaging(id); err != nil {
		return nil, err
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume bind-mounts the staged loop device onto a file at the
// target path (block access), or the staged filesystem onto a directory
// (mount access).
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, invalid("volume ID is required")
	}
	target, err := cleanPath("target path", req.GetTargetPath())
	if err != nil {
		return nil, err
	}
	stagingPath, err := cleanPath("staging target path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	c := req.GetVolumeCapability()
	if err := checkCapability(c); err != nil {
		return nil, invalid("%v", err)
	}
	ro := req.GetReadonly() || readOnlyMode(c)

	d.mu.Lock()
	defer d.mu.Unlock()
	st, err := d.store.staging(id)
	if err != nil {
		return nil, err
	}
	if st == nil {
		if _, err := d.store.volume(id); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: volume %s is not staged", errPrecondition, id)
	}
	if st.Path != stagingPath {
		return nil, fmt.Errorf("%w: volume %s is staged at %s, not %s", errPrecondition, id, st.Path, stagingPath)
	}
	if block := c.GetBlock() != nil; block != st.Block {
		return nil, invalid("volume %s is staged for %s access", id, map[bool]string{true: "block", false: "mount"}[st.Block])
	}
	pub, ok := st.Targets[target]
	if ok && pub.ReadOnly != ro {
		return nil, fmt.Errorf("volume %s is published at %s with readonly=%v: %w", id, target, pub.ReadOnly, errExists)
	}
	pub.ReadOnly = ro
	if err := d.publish(ctx, st, target, &pub); err != nil {
		return nil, fmt.Errorf("publish volume %s at %s: %w", id, target, err)
	}
	if st.Targets == nil {
		st.Targets = map[string]publication{}
	}
	st.Targets[target] = pub
	if err := d.store.putStaging(st); err != nil {
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (d *Driver) publish(ctx context.Context, st *staging, target string, pub *publication) error {
	src, dev := st.Path, st.Device
	if st.Block {
		src = st.Device
		// A read-only bind mount does not stop writes to a device node,
		// so a read-only publication of a writable device gets a
		// read-only loop device of its own.
		if pub.ReadOnly && !st.ReadOnly {
			if pub.Device == "" {
				ro, err := loopdev.Attach(ctx, d.store.volumeFile(st.Volume), true)
				if err != nil {
					return err
				}
				pub.Device = ro
			}
			src, dev = pub.Device, pub.Device
		}
		f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o600)
		if err != nil {
			return err
		}
		f.Close()
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return err
	}
	if ok, err := mountedFrom(target, dev); err != nil || ok {
		return err
	}
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s on %s: %w", src, target, err)
	}
	if pub.ReadOnly {
		if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return errors.Join(fmt.Errorf("remount %s read-only: %w", target, err), unmount(target))
		}
	}
	return nil
}

func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, invalid("volume ID is required")
	}
	target, err := cleanPath("target path", req.GetTargetPath())
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st, err := d.store.staging(id)
	if err != nil {
		return nil, err
	}
	if st == nil {
		if _, err := d.store.volume(id); err != nil {
			return nil, err
		}
	}
	pub, recorded := publication{}, false
	if st != nil {
		pub, recorded = st.Targets[target]
	}
	// Unmount only a mount of this volume's devices, so a wrong volume ID
	// cannot unmount another volume.
	if ours, err := d.mountedHere(id, target); err != nil {
		return nil, err
	} else if ours {
		if err := unmount(target); err != nil {
			return nil, err
		}
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove target %s: %w", target, err)
	}
	if pub.Device != "" {
		if err := loopdev.Detach(ctx, pub.Device); err != nil {
			return nil, err
		}
	}
	if recorded {
		delete(st.Targets, target)
		if err := d.store.putStaging(st); err != nil {
			return nil, err
		}
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// mountedHere reports whether path is a mount of one of the volume's loop
// devices.
func (d *Driver) mountedHere(id, path string) (bool, error) {
	devs, err := loopdev.Find(d.store.volumeFile(id))
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, dv := range devs {
		points, err := loopdev.MountsOf(dv.Path)
		if err != nil {
			return false, err
		}
		if slices.Contains(points, path) {
			return true, nil
		}
	}
	return false, nil
}

// cleanPath checks that a path from a request is absolute and cleans it,
// so that it compares equal to the mount points the kernel reports.
func cleanPath(what, p string) (string, error) {
	if p == "" {
		return "", invalid("%s is required", what)
	}
	if !filepath.IsAbs(p) {
		return "", invalid("%s %q is not absolute", what, p)
	}
	return filepath.Clean(p), nil
}

func unmount(path string) error {
	if err := unix.Unmount(path, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	return nil
}

func run(ctx context.Context, name string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
