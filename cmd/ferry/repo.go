package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

// stores opens the targets of --repo. A target that cannot be opened stays
// in its position as an unavailable store: reads work around it, and
// writers fail with a message naming it. With create, missing file://
// roots are made (init).
func (g *globals) stores(ctx context.Context, create bool) ([]objstore.Store, error) {
	if g.repo == "" {
		return nil, usageError{errors.New("no repository: use --repo or set FERRY_REPO")}
	}
	locs, err := objstore.ParseRepo(g.repo)
	if err != nil {
		return nil, usageError{fmt.Errorf("--repo: %w", err)}
	}
	if create {
		for i, l := range locs {
			if l.Scheme == "file" {
				if err := os.MkdirAll(l.Path, 0o700); err != nil {
					return nil, fmt.Errorf("target %d: %w", i+1, err)
				}
			}
		}
	}
	return objstore.OpenAll(ctx, locs, os.Getenv), nil
}

func (g *globals) open(ctx context.Context) (*repo.Repo, error) {
	return g.openWith(ctx, repo.Open)
}

// openWith opens the repository of --repo with opener (repo.Open, or
// repo.OpenForRestore).
func (g *globals) openWith(ctx context.Context, opener func(context.Context, []objstore.Store, []byte) (*repo.Repo, error)) (*repo.Repo, error) {
	pw, err := g.password()
	if err != nil {
		return nil, err
	}
	stores, err := g.stores(ctx, false)
	if err != nil {
		return nil, err
	}
	r, err := opener(ctx, stores, pw)
	if err != nil {
		return nil, friendly(err)
	}
	r.IndexCache = g.cacheDir
	g.opened = r
	return r, nil
}

// findSnapshot is Repo.FindSnapshot with the repository's ID in the message
// when nothing matches: several repositories may share a password, and then
// a --repo that names the wrong one opens fine; the missing snapshot is the
// first sign of it.
func findSnapshot(ctx context.Context, r *repo.Repo, ref, name string) (*repo.Snapshot, error) {
	s, err := r.FindSnapshot(ctx, ref, name)
	if errors.Is(err, repo.ErrSnapshotNotFound) {
		return nil, fmt.Errorf("%w in repository %s", err, r.Config.ID)
	}
	return s, err
}
