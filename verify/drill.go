package verify

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/transport/repo"
)

// Discard is an io.WriterAt that drops everything: a drill's destination
// when only the reading, decoding and checking are to be measured.
var Discard io.WriterAt = discard{}

type discard struct{}

func (discard) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }

// DrillOptions tune Drill.
type DrillOptions struct {
	Workers  int               // packs fetched at once; default 3, as restore
	Index    *repo.Index       // loaded when nil
	Progress *restore.Progress // Total: the volume's data bytes; Written: bytes written
}

// DrillResult is the evidence a drill leaves: that the snapshot restored
// with a matching digest, and how long it took.
type DrillResult struct {
	SnapshotID      string        `json:"snapshot_id"`
	Snapshot        SnapshotRef   `json:"snapshot"`
	Destination     string        `json:"destination"`
	BytesVolume     int64         `json:"bytes_volume"`
	BytesData       int64         `json:"bytes_data"` // non-zero extents written
	BytesFetched    int64         `json:"bytes_fetched"`
	Packs           int           `json:"packs"`
	Reconstructed   int           `json:"shards_reconstructed"`
	Digest          string        `json:"digest"`
	Duration        time.Duration `json:"-"`
	DurationSeconds float64       `json:"duration_seconds"`
	BytesPerSecond  float64       `json:"bytes_per_second"` // of the volume: what an RTO estimate scales by
}

// Drill restores snapshot s into w as a restore does (restore.NewPlan and
// WriteTo: every chunk decrypted and its keyed hash checked, then the
// whole-volume digest) and measures it. Zero extents are not written
// unless w is a restore.Zeroer (a restore.Device): w is assumed to read as
// zeros there, as a new file or Discard does. A snapshot
// that cannot be restored fails with an error wrapping restore.ErrDataLost
// or restore.ErrMismatch.
//
// Memory: Workers packs and their shards at once, as restore.
func Drill(ctx context.Context, r *repo.Repo, s *repo.Snapshot, w io.WriterAt, opts DrillOptions) (*DrillResult, error) {
	start := time.Now()
	ctx = repo.FromTargets(ctx) // not the local copies of its segments
	plan, err := restore.NewPlan(ctx, r, s, opts.Index)
	if err != nil {
		return nil, fmt.Errorf("drill %s: %w", s.ID[:12], err)
	}
	if opts.Progress != nil {
		opts.Progress.Total.Store(plan.Data)
	}
	written, err := plan.WriteTo(ctx, w, restore.Options{Workers: opts.Workers, Progress: opts.Progress})
	if err != nil {
		return nil, fmt.Errorf("drill %s: %w", s.ID[:12], err)
	}
	res := &DrillResult{
		SnapshotID: s.ID, Snapshot: refOf(s), BytesVolume: s.Size, BytesData: plan.Data, BytesFetched: written.BytesFetched,
		Packs: plan.Packs(), Reconstructed: len(written.Repaired), Digest: s.Digest,
	}
	res.Duration = time.Since(start)
	res.DurationSeconds = res.Duration.Seconds()
	if res.DurationSeconds > 0 {
		res.BytesPerSecond = float64(s.Size) / res.DurationSeconds
	}
	return res, nil
}
