package retention

import (
	"context"

	"github.com/ferrydr/ferry/transport/repo"
)

// Items returns the snapshots as the rules see them: each in the series of
// its name, at the time its backup started.
func Items(snaps []*repo.Snapshot) []Item {
	out := make([]Item, len(snaps))
	for i, s := range snaps {
		out[i] = Item{ID: s.ID, Series: s.Name, Time: s.Started}
	}
	return out
}

// Forget applies p to snaps and forgets in r the snapshots no rule keeps
// (none with dryRun). It returns every decision.
func Forget(ctx context.Context, r *repo.Repo, snaps []*repo.Snapshot, p Policy, dryRun bool) ([]Decision, error) {
	ds, err := Apply(Items(snaps), p)
	if err != nil {
		return nil, err
	}
	var gone []string
	for _, d := range ds {
		if !d.Keep {
			gone = append(gone, d.ID)
		}
	}
	if dryRun || len(gone) == 0 {
		return ds, nil
	}
	return ds, r.Forget(ctx, gone)
}
