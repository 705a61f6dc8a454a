// Package replicate runs one replication job: a CSI snapshot the hook saw
// is read through the driver and backed up into the repository its
// VolumeSnapshotClass names.
//
// The steps, each idempotent so a restarted agent simply runs the job again:
//
//	open the repository (Secret -> password and S3 credentials)
//	skip if a manifest for this CSI snapshot exists already (the job ended after its commit)
//	wait until the driver says the snapshot is ready to use
//	ask SnapshotMetadata which ranges to read: changed since the last replicated
//	  snapshot of the same volume, else allocated, else everything
//	expose the snapshot as a block device (csi/expose), back it up, release it
//	apply the class's retention (ferry.dev/keep-*) to the series: forget only
package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/csi/expose"
	"github.com/ferrydr/ferry/csi/hook"
	"github.com/ferrydr/ferry/csi/metadata"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/transport/repo/retention"
)

// ErrNotReady means the driver has not finished cutting the snapshot; the
// job should be tried again later.
var ErrNotReady = errors.New("snapshot not ready to use yet")

// Runner runs replication jobs against one CSI driver.
type Runner struct {
	Driver     *grpc.ClientConn
	DriverName string // from GetPluginInfo, recorded in manifests
	Host       string
	Expose     expose.Config
	Secrets    Secrets
	Cluster    string // recorded in manifests; may be empty
	IndexCache string // Repo.IndexCache of the repositories it opens
	Log        *slog.Logger
}

// Options add what the hook cannot know to a job.
type Options struct {
	PVC      string           // the claim the snapshot is of, when known (from the VolumeSnapshot)
	Progress *backup.Progress // updated as the backup runs; may be nil
}

// Result reports a finished job.
type Result struct {
	Summary   *backup.Summary // nil when the snapshot was replicated before
	Mode      string          // "delta", "allocated" or "full"
	RangeRead int64           // bytes the metadata asked to read
	Forgotten int             // snapshots of the series the retention rules forgot
}

// Run replicates snapshot s.
func (r *Runner) Run(ctx context.Context, s hook.Snapshot, o Options) (*Result, error) {
	log := r.Log.With("snapshot", s.SnapshotID, "volume", s.SourceVolumeID)
	sec, err := r.Secrets.Secret(ctx, s.Replication.SecretNamespace, s.Replication.SecretName)
	if err != nil {
		return nil, err
	}
	locs, err := objstore.ParseRepo(s.Replication.Repository)
	if err != nil {
		return nil, err
	}
	rp, err := repo.Open(ctx, objstore.OpenAll(ctx, locs, sec.Env), sec.Password)
	if err != nil {
		return nil, fmt.Errorf("open repository: %w", err)
	}
	rp.IndexCache = r.IndexCache
	snaps, err := rp.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	name := s.Replication.SeriesName(s.Replication.SnapshotNamespace, o.PVC, s.SourceVolumeID)
	var parent *repo.Snapshot
	for _, x := range snaps {
		if x.Volume.Driver != r.DriverName || x.Volume.CSIVolumeID != s.SourceVolumeID {
			continue
		}
		if x.Volume.CSISnapshotID == s.SnapshotID {
			log.Info("already replicated", "manifest", x.ID)
			return &Result{Forgotten: r.retain(ctx, rp, s, name, log)}, nil
		}
		parent = x // oldest first: the last match is the newest
	}
	size, err := r.ready(ctx, s.SnapshotID)
	if err != nil {
		return nil, err
	}

	res := &Result{Mode: "full"}
	var holes, changed []chunk.Range
	if ok, err := metadata.Supported(ctx, r.Driver); err != nil {
		return nil, err
	} else if ok {
		var md metadata.Result
		if parent != nil {
			md, err = metadata.Delta(ctx, r.Driver, parent.Volume.CSISnapshotID, s.SnapshotID)
			if err == nil {
				res.Mode, changed = "delta", md.Ranges
			} else {
				log.Info("no changed-block list against the previous snapshot, reading allocated ranges", "parent", parent.Volume.CSISnapshotID, "error", err)
			}
		}
		if res.Mode != "delta" {
			md, err = metadata.Allocated(ctx, r.Driver, s.SnapshotID)
			switch {
			case err == nil:
				res.Mode = "allocated"
			case errors.Is(err, metadata.ErrUnsupported):
				log.Info("no snapshot metadata, reading the whole volume", "error", err)
			default:
				return nil, err
			}
		}
		res.RangeRead = md.Bytes()
		if res.Mode == "allocated" {
			holes = complement(md.Ranges, size)
		}
	}

	vol, err := expose.Expose(ctx, r.Expose, s.SnapshotID, size)
	if err != nil {
		return nil, err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		if err := vol.Release(rctx); err != nil {
			log.Error("release the snapshot's volume", "volume_id", vol.VolumeID, "error", err)
		}
	}()
	if size == 0 || size > vol.Size {
		size = vol.Size
	}
	opts := backup.Options{
		Name:     name,
		Holes:    holes,
		Progress: o.Progress,
		Volume: repo.Volume{
			Host: r.Host, Cluster: r.Cluster, Namespace: s.Replication.SnapshotNamespace, PVC: o.PVC, Driver: r.DriverName,
			CSIVolumeID: s.SourceVolumeID, CSISnapshotID: s.SnapshotID,
			VolumeSnapshot: s.Replication.SnapshotName, VolumeSnapshotContent: s.Replication.SnapshotContentName,
		},
		Params: map[string]string{"mode": res.Mode},
	}
	switch {
	case res.Mode == "delta":
		opts.Parent, opts.Changed = parent, changed
		opts.Params["parent"] = parent.ID
	case parent != nil:
		// No list of changes: compare with the previous snapshot instead
		// of chunking the whole volume (backup.Options.Basis).
		opts.Basis = parent
		opts.Params["basis"] = parent.ID
	}
	// The lock tells prune that a backup is running (see repo.Prune): the
	// packs it marks meanwhile wait until the backup has committed.
	release, err := rp.Lock(ctx)
	if err != nil {
		return nil, err
	}
	sum, err := backup.Run(ctx, rp, vol, size, opts)
	release()
	if err != nil {
		return nil, err
	}
	res.Summary = sum
	log.Info("replicated", "manifest", sum.SnapshotID, "mode", res.Mode, "bytes_read", sum.BytesRead, "bytes_new", sum.BytesNew, "seconds", sum.DurationSeconds)
	res.Forgotten = r.retain(ctx, rp, s, name, log)
	return res, nil
}

// retain applies the class's keep rules to the series name: the snapshots
// of that name this cluster replicated (another cluster sharing the
// repository keeps its own). It returns how many it forgot. A failure is
// logged, not returned: the replication succeeded, and the next one of the
// series applies the rules again.
func (r *Runner) retain(ctx context.Context, rp *repo.Repo, s hook.Snapshot, name string, log *slog.Logger) int {
	keep := s.Replication.Keep
	if keep == nil {
		return 0
	}
	snaps, err := rp.Snapshots(ctx)
	if err == nil {
		snaps = slices.DeleteFunc(snaps, func(x *repo.Snapshot) bool { return x.Name != name || x.Volume.Cluster != r.Cluster })
		var ds []retention.Decision
		if ds, err = retention.Forget(ctx, rp, snaps, *keep, false); err == nil {
			n := 0
			for _, d := range ds {
				if !d.Keep {
					n++
					log.Info("forgot a snapshot by the retention rules", "series", name, "manifest", d.ID, "started", d.Time, "rules", keep.String())
				}
			}
			return n
		}
	}
	log.Warn("retention not applied; the next replication of the series tries again", "series", name, "rules", keep.String(), "error", err)
	return 0
}

// ready returns the snapshot's size once the driver says it is ready.
func (r *Runner) ready(ctx context.Context, id string) (int64, error) {
	resp, err := csi.NewControllerClient(r.Driver).ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: id})
	if err != nil {
		return 0, fmt.Errorf("look up snapshot %s: %w", id, err)
	}
	for _, e := range resp.GetEntries() {
		if e.GetSnapshot().GetSnapshotId() != id {
			continue
		}
		if !e.GetSnapshot().GetReadyToUse() {
			return 0, ErrNotReady
		}
		return e.GetSnapshot().GetSizeBytes(), nil
	}
	return 0, fmt.Errorf("snapshot %s: the driver does not know it (deleted before replication?)", id)
}

// complement returns the ranges of [0, size) not in rs (sorted, merged).
func complement(rs []chunk.Range, size int64) []chunk.Range {
	var out []chunk.Range
	var at int64
	for _, r := range rs {
		if r.Off >= size {
			break
		}
		if r.Off > at {
			out = append(out, chunk.Range{Off: at, Len: r.Off - at})
		}
		at = max(at, r.Off+r.Len)
	}
	if at < size {
		out = append(out, chunk.Range{Off: at, Len: size - at})
	}
	return out
}
