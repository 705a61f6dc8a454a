package repo

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ferrydr/ferry/transport/pack"
)

// Forget deletes the manifests of snapshots ids (full IDs) from every
// target. It deletes no data: the packs only they referred to become
// garbage for Prune.
//
// Order: a deletion record naming the manifests is written to every target
// first; from then on every reader treats them as gone, whatever each
// target still holds. Then the manifests are deleted from every target,
// then the record. Interrupted anywhere, the repository reads the same:
// before the record, nothing happened; after it, the snapshots are
// forgotten; and the next Forget or Prune finishes the deletion. Forgetting
// a snapshot already gone is not an error.
func (r *Repo) Forget(ctx context.Context, ids []string) error {
	if err := r.RequireAll(); err != nil {
		return err
	}
	if err := r.finishForgets(ctx); err != nil {
		return err
	}
	if len(ids) == 0 {
		return nil
	}
	for _, id := range ids {
		if _, err := pack.ParseID(id); err != nil {
			return fmt.Errorf("forget: %q is not a full snapshot ID", id)
		}
	}
	d := &Deletion{Created: time.Now().UTC(), Snapshots: slices.Sorted(slices.Values(ids))}
	name, err := r.writeDeletion(ctx, d)
	if err != nil {
		return fmt.Errorf("forget: write the deletion record: %w", err)
	}
	if err := r.carryOut(ctx, d); err != nil {
		return fmt.Errorf("forget: %w (the snapshots are forgotten; the next forget or prune deletes what is left)", err)
	}
	if err := r.deleteEverywhere(ctx, name); err != nil {
		return fmt.Errorf("forget: remove the deletion record: %w", err)
	}
	return nil
}

// finishForgets finishes the deletion records that name only manifests
// (an interrupted Forget) and removes them. Records of prune runs are left
// to the next prune.
func (r *Repo) finishForgets(ctx context.Context) error {
	recs, err := r.deletions(ctx)
	if err != nil {
		return err
	}
	for name, d := range recs {
		if len(d.Index) > 0 || len(d.Packs) > 0 {
			continue
		}
		if err := r.carryOut(ctx, d); err != nil {
			return fmt.Errorf("finish an interrupted forget: %w", err)
		}
		if err := r.deleteEverywhere(ctx, name); err != nil {
			return fmt.Errorf("finish an interrupted forget: %w", err)
		}
	}
	return nil
}
