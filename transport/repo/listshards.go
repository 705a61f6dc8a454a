package repo

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/transport/objstore"
)

// How shards are listed. A listing request returns up to Repo.ListPage
// names, and the requests for one prefix go one after another: a target
// in another region holding a million shards, 60 ms away, takes over a
// minute to list data/ whole (1,000 requests). The 256 directories
// data/XX/ can be listed shardedLists at once instead (an S3 store sends
// at most 8 requests at once by default), which costs more requests than
// a small repository needs. BenchmarkShardListing (perf/README.md,
// "Listing the shards of a large repository") measured the two ways even
// at about 30,000 shards a target 60 ms away (2.2 and 2.6 s).
const shardedLists = 8

// ListByDirectory reports whether listing dirs of the data/XX/
// directories, shardedLists at once, takes fewer round trips than listing
// data/ whole, page after page, on a target of a repository of about
// packs packs (a target holds about one shard of each).
func (r *Repo) ListByDirectory(dirs, packs int) bool {
	page := r.ListPage
	if page <= 0 {
		page = 1000
	}
	whole := packs/page + 1
	perDir := packs/256/page + 1
	return (dirs+shardedLists-1)/shardedLists*perDir < whole
}

// ListPrefixes lists prefixes (shard directories data/XX/, or data/) on
// target t, shardedLists at once, and calls fn for every object under
// them, one call at a time.
func ListPrefixes(ctx context.Context, t *Target, prefixes []string, fn func(objstore.Info) error) error {
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(shardedLists)
	for _, prefix := range prefixes {
		g.Go(func() error {
			return t.Store.List(gctx, prefix, func(i objstore.Info) error {
				mu.Lock()
				defer mu.Unlock()
				return fn(i)
			})
		})
	}
	return g.Wait()
}

// ListShards calls fn, one call at a time, for every shard on target t.
// It lists data/00/ first: from how many shards that holds (a 256th of
// them all, pack IDs being hashes; counted one more, as an empty data/00/
// does not make an empty repository) it lists the rest either as data/
// whole, less data/00/, or as the other 255 directories, whichever takes
// fewer round trips (ListByDirectory). A small repository costs one
// request more than a listing of data/ whole; a large one, by directory,
// does not list objects under data/ outside the data/XX/ directories
// (none that a repository writes).
func (r *Repo) ListShards(ctx context.Context, t *Target, fn func(objstore.Info) error) error {
	first := 0
	err := t.Store.List(ctx, "data/00/", func(i objstore.Info) error {
		first++
		return fn(i)
	})
	if err != nil {
		return err
	}
	if r.ListByDirectory(255, (first+1)*256) {
		dirs := make([]string, 0, 255)
		for b := 1; b < 256; b++ {
			dirs = append(dirs, fmt.Sprintf("data/%02x/", b))
		}
		return ListPrefixes(ctx, t, dirs, fn)
	}
	return t.Store.List(ctx, "data/", func(i objstore.Info) error {
		if strings.HasPrefix(i.Name, "data/00/") {
			return nil
		}
		return fn(i)
	})
}

// ListOn lists prefix on target t as its Store does, and data/ as
// ListShards does: fn is called one call at a time.
func (r *Repo) ListOn(ctx context.Context, t *Target, prefix string, fn func(objstore.Info) error) error {
	if prefix == "data/" {
		return r.ListShards(ctx, t, fn)
	}
	return t.Store.List(ctx, prefix, fn)
}
