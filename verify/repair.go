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
// targets that lack them (a bucket recreated empty included) and over
// copies that differ from the good one, packs that
// hold chunks a snapshot needs but no index names get an index object
// rebuilt from their headers, and every pack with missing, truncated or
// corrupt shards is rebuilt from shards that make the authentic pack (one
// that matches its ID), each rewritten shard checked against the CRC32C
// the index recorded for it. Packs whose
// index was rebuilt have every shard checked and repaired too. Shards of
// packs no index knows are left alone: they may belong to a backup still
// running, which indexes them when its shards are written. Every step is
// idempotent and safe to interrupt, and safe while backups run. The error
// is non-nil when something could not be repaired.
func Repair(ctx context.Context, r *repo.Repo, rep *Report) (*Repaired, error) {
	out := &Repaired{}
	// Nothing is written to a target that cannot be reached: it must be
	// made reachable first (a bucket or directory recreated, empty).
	for _, t := range rep.Targets {
		if !t.Reachable {
			out.Failed = append(out.Failed, fmt.Sprintf("target %d (%s) unreachable (%s): make it reachable, recreated empty if it is gone, then run repair again", t.Target, t.Location, t.Error))
		}
	}
	var damaged, unindexed []pack.ID
	var corrupt []repo.CopyRef
	metadata := false
	for _, p := range rep.Problems {
		switch p.Kind {
		case KindObjectMissing, KindObjectCorrupt:
			metadata = true
			if p.Kind == KindObjectCorrupt && p.Target > 0 && p.Object != "config" {
				corrupt = append(corrupt, repo.CopyRef{Target: p.Target - 1, Name: p.Object})
			}
		case KindObjectForeign:
			corrupt = append(corrupt, repo.CopyRef{Target: -1, Name: p.Object}) // spread it nowhere
		case KindIndexRebuildable:
			if id, err := pack.ParseID(p.Pack); err == nil && !slices.Contains(unindexed, id) {
				unindexed = append(unindexed, id)
			}
		case KindIndexMismatch:
			out.Failed = append(out.Failed, fmt.Sprintf("pack %s: the index disagrees with its header; repair does not rewrite index entries: keep the repository as it is and report it", p.Pack))
		case KindShardMissing, KindShardSize, KindShardCorrupt:
			if id, err := pack.ParseID(p.Pack); err == nil && !slices.Contains(damaged, id) {
				damaged = append(damaged, id)
			}
		}
	}
	if metadata {
		copied, err := r.RepairMetadata(ctx, corrupt...)
		out.Copied = copied
		if err != nil {
			out.Failed = append(out.Failed, fmt.Sprintf("metadata: %v", err))
		}
	}
	if len(damaged)+len(unindexed) > 0 {
		if err := repairPacks(ctx, r, damaged, unindexed, out); err != nil {
			return out, err
		}
	}
	if len(out.Failed) > 0 {
		return out, fmt.Errorf("%d repair(s) failed: %w", len(out.Failed), errors.Join(toErrs(out.Failed)...))
	}
	return out, nil
}

// repairPacks rebuilds the index of the unindexed packs the index still
// lacks, then repairs the damaged packs and the reindexed ones. Only a
// cancelled context is returned; failures go into out.
func repairPacks(ctx context.Context, r *repo.Repo, damaged, unindexed []pack.ID, out *Repaired) error {
	// The index gives the shard CRCs repair checks against, and tells which
	// packs another repair has reindexed since the report was made.
	idx, err := r.LoadIndex(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		out.Failed = append(out.Failed, fmt.Sprintf("load index: %v", err))
		return nil
	}
	var rebuild []pack.ID
	for _, id := range unindexed {
		if _, ok := idx.Pack(id); !ok {
			rebuild = append(rebuild, id)
		}
	}
	if len(rebuild) > 0 {
		done, err := r.RebuildIndex(ctx, rebuild)
		out.Indexed = len(done)
		for _, p := range done {
			idx.AddPack(p, nil)
			if !slices.Contains(damaged, p.ID) {
				damaged = append(damaged, p.ID)
			}
		}
		if err != nil {
			out.Failed = append(out.Failed, fmt.Sprintf("index: %v", err))
		}
	}
	for _, id := range damaged {
		p, ok := idx.Pack(id)
		if !ok {
			p = repo.PackInfo{ID: id} // recovered from a pack header, not reindexed: no CRCs to check against
		}
		fixed, err := r.RepairPack(ctx, p)
		out.Shards = append(out.Shards, fixed...)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			out.Failed = append(out.Failed, err.Error())
		}
	}
	return nil
}

// Recheck verifies the repository again after a repair of what rep found:
// the structural level, checksums included, and, read again, the packs
// rep read and found damaged (ReadDamaged). Those are what the structural
// level may not see (a byte flipped where the store does not notice): a
// pack lost that way stays lost in the report Recheck returns, and a
// repaired one has been read back.
func Recheck(ctx context.Context, r *repo.Repo, rep *Report, password []byte) (*Report, error) {
	return Run(ctx, r, Options{Password: password, Packs: rep.ReadDamaged()})
}

func toErrs(ss []string) []error {
	out := make([]error, len(ss))
	for i, s := range ss {
		out[i] = errors.New(s)
	}
	return out
}
