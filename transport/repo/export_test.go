package repo

import (
	"context"
	"time"

	"github.com/ferrydr/ferry/transport/pack"
)

// MarkForTest writes a prune plan marking packs as if a prune had marked
// them at the given time, with no grace: what an earlier prune run leaves.
func (r *Repo) MarkForTest(ctx context.Context, marked time.Time, packs ...pack.ID) error {
	p := &Plan{Created: marked, Marks: map[pack.ID]Mark{}}
	for _, id := range packs {
		p.Marks[id] = Mark{Marked: marked, Deletable: marked}
	}
	_, err := r.writePlan(ctx, p)
	return err
}
