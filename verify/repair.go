package verify

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
)

// Repaired reports what Repair did.
type Repaired struct {
	Copied  []string            `json:"copied,omitempty"`  // replicated objects written, "target N: name"
	Indexed int                 `json:"indexed,omitempty"` // packs whose index was rebuilt from their headers
	Shards  []repo.ShardProblem `json:"shards,omitempty"`  // shards rebuilt from the survivors
	Failed  []string            `json:"failed,omitempty"`  // what could not be repaired (yet)
}

// Repair fixes what a verify report found: replicated objects are copied to
// targets that lack them (a bucket recreated empty included), packs no
// index knows get an index object rebuilt from their headers, and every
// pack with missing, truncated or corrupt shards is rebuilt from at least k
// intact ones. Corrupt shards are known only to a report that read the
// data (ReadDataPercent). Every step is idempotent and safe to interrupt.
// The error is non-nil when something could not be repaired.
func Repair(ctx context.Context, r *repo.Repo, rep *Report) (*Repaired, error) {
	out := &Repaired{}
	var packs []pack.ID
	metadata, index := false, false
	for _, p := range rep.Problems {
		switch p.Kind {
		case KindObjectMissing, KindObjectCorrupt:
			metadata = true
		case KindIndexRebuildable, KindUnreferencedPack, KindChunkUnindexed:
			index = true
		case KindShardMissing, KindShardSize, KindShardCorrupt:
			if id, err := pack.ParseID(p.Pack); err == nil && !slices.Contains(packs, id) {
				packs = append(packs, id)
			}
		}
	}
	if metadata {
		copied, err := r.RepairMetadata(ctx)
		out.Copied = copied
		if err != nil {
			out.Failed = append(out.Failed, fmt.Sprintf("metadata: %v", err))
		}
	}
	if index {
		done, err := r.RebuildIndex(ctx)
		out.Indexed = len(done)
		if err != nil {
			out.Failed = append(out.Failed, fmt.Sprintf("index: %v", err))
		}
	}
	for _, id := range packs {
		fixed, err := r.RepairPack(ctx, id)
		out.Shards = append(out.Shards, fixed...)
		if err != nil {
			out.Failed = append(out.Failed, err.Error())
		}
	}
	if len(out.Failed) > 0 {
		return out, fmt.Errorf("%d repair(s) failed: %w", len(out.Failed), errors.Join(toErrs(out.Failed)...))
	}
	return out, nil
}

func toErrs(ss []string) []error {
	out := make([]error, len(ss))
	for i, s := range ss {
		out[i] = errors.New(s)
	}
	return out
}
