package repo

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/pack"
)

// ErrConflict means a snapshot was not committed because it refers to data
// that a prune may be deleting. Running the backup again succeeds: it
// stores that data anew instead of referring to the marked packs.
var ErrConflict = errors.New("the snapshot refers to data a prune is deleting; run the backup again")

// commitMargin bounds the time from checkCommit to the manifest being on
// every target, plus the skew between this clock and a prune's.
const commitMargin = 2 * ClockSkew

// checkCommit is SaveSnapshot's last check before the commit point. Every
// segment of the manifest (segs) and every data chunk (each calls its
// argument with every extent) must be in the index (as LoadIndex last read it, with
// what WriteIndex wrote since; read again once if that is not enough), and
// not only in a pack that a prune may delete before m is on every target:
//
//   - a pack a deletion record names is being deleted;
//   - a pack a prune plan marks may be deleted from its deletable time on,
//     unless this Repo holds a writer lock taken before the pack was
//     marked (less ClockSkew): prune does not delete it while that lock is
//     fresh.
//
// A backup that holds a lock and finds it lost (not refreshed in time)
// must not commit at all: a prune may have ignored it.
func (r *Repo) checkCommit(ctx context.Context, segs []Segment, each func(func(Extent) error) error) error {
	held := r.heldWriter()
	if held != nil {
		if err := held.check(); err != nil {
			return err
		}
	}
	recs, err := r.deletions(ctx)
	if err != nil {
		return err
	}
	deleting := deletingOf(recs).Packs
	plans, err := r.loadPlans(ctx)
	if err != nil {
		return fmt.Errorf("read prune plans: %w", err)
	}
	marks := mergeMarks(plans)
	x := r.loaded.Load()
	var first error
	if x != nil {
		if first = commitProblem(segs, each, x, held, deleting, marks, time.Now()); first == nil {
			return nil
		}
	}
	// The index read before may be stale: read it afresh.
	if x, err = r.LoadIndex(ctx); err != nil {
		return err
	}
	err = commitProblem(segs, each, x, held, deleting, marks, time.Now())
	if err != nil && errors.Is(first, ErrConflict) && !errors.Is(err, ErrConflict) {
		return first // the fresh index lacks the chunk: its pack is being deleted
	}
	return err
}

// commitProblem returns why the manifest of segments segs and the extents
// each gives must not be committed now, or nil.
func commitProblem(segs []Segment, each func(func(Extent) error) error, x *Index, held *heldLock, deleting map[pack.ID]bool, marks map[pack.ID]Mark, now time.Time) error {
	check := func(id chunk.ID, what func() string) error {
		p, _, ok := x.Lookup(id)
		if !ok {
			return fmt.Errorf("%s is in no index object: the snapshot would refer to missing data", what())
		}
		if deleting[p.ID] {
			return fmt.Errorf("%w: %s is in pack %s, which a prune is deleting", ErrConflict, what(), p.ID.Short())
		}
		mk, marked := marks[p.ID]
		if !marked {
			mk, marked = x.Marked(p.ID)
		}
		if marked && !safeFromPrune(mk, held, now) {
			return fmt.Errorf("%w: %s is in pack %s, which a prune may delete from %s", ErrConflict,
				what(), p.ID.Short(), mk.Deletable.Format(time.RFC3339))
		}
		return nil
	}
	for i, sg := range segs {
		if err := check(sg.ID, func() string { return fmt.Sprintf("segment %d of %d (%s)", i+1, len(segs), sg.ID.Short()) }); err != nil {
			return err
		}
	}
	return each(func(e Extent) error {
		if e.Zero {
			return nil
		}
		return check(e.ID, func() string { return fmt.Sprintf("chunk %s at offset %d", e.ID.Short(), e.Off) })
	})
}

// safeFromPrune reports whether a commit made now cannot lose a pack so
// marked: no prune may delete it until the commit is done (its deletable
// time is more than commitMargin away), or a writer lock taken before it
// was marked holds it back.
func safeFromPrune(mk Mark, held *heldLock, now time.Time) bool {
	if mk.Deletable.After(now.Add(commitMargin)) {
		return true
	}
	return held != nil && held.started().Before(mk.Marked.Add(ClockSkew))
}
