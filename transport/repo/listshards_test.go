package repo_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

// TestListByDirectoryChoice: the choice follows the round trips, one per
// 1,000 names listed and per 8 directories at once: whole for a small
// repository, by directory for a large one or a few packs of a mid-sized
// one.
func TestListByDirectoryChoice(t *testing.T) {
	r := &repo.Repo{}
	for _, c := range []struct {
		dirs, inRepo int
		want         bool
	}{
		{256, 2000, false},   // 32 round trips against 3
		{256, 31000, false},  // 32 against 32
		{256, 40000, true},   // 32 against 41
		{256, 1000000, true}, // 32*4 against 1001
		{4, 2000, true},      // 1 against 3
		{20, 10000, true},    // 3 against 11
		{1, 500, false},      // 1 against 1
	} {
		if got := r.ListByDirectory(c.dirs, c.inRepo); got != c.want {
			t.Errorf("%d directories of a %d-pack repository: by directory %v, want %v", c.dirs, c.inRepo, got, c.want)
		}
	}
}

// prefixCounter records the prefixes listed through the store it wraps.
type prefixCounter struct {
	objstore.Store
	mu       *sync.Mutex
	prefixes map[string]int
}

func (s prefixCounter) List(ctx context.Context, prefix string, fn func(objstore.Info) error) error {
	s.mu.Lock()
	s.prefixes[prefix]++
	s.mu.Unlock()
	return s.Store.List(ctx, prefix, fn)
}

// TestListShards lists a MinIO server holding 600 objects named as shards,
// two or three in each of the 256 directories: as a small repository
// (data/00/, then data/ whole) and, taking a listing request to return one
// name, as a large one (data/00/, then each other directory once). Either
// way every object is listed exactly once, and fn is never called by two
// goroutines at once.
func TestListShards(t *testing.T) {
	ctx := context.Background()
	c := minio.StartCluster(t, 1, "ferry", "")
	store := c.Stores(t)[0]
	rng := rand.New(rand.NewPCG(3, 4))
	want := map[string]bool{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range 600 {
		id := fmt.Sprintf("%02x%014x%016x", i%256, rng.Uint64()>>8, rng.Uint64())
		name := fmt.Sprintf("data/%s/%s.%d", id[:2], id, i%3)
		want[name] = true
		g.Go(func() error { return store.Create(gctx, name, nil) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	for _, page := range []int{0, 1} {
		t.Run(fmt.Sprintf("page=%d", page), func(t *testing.T) {
			rec := prefixCounter{store, &sync.Mutex{}, map[string]int{}}
			r := &repo.Repo{ListPage: page}
			got := map[string]int{}
			var busy sync.Mutex
			err := r.ListShards(ctx, &repo.Target{Store: rec}, func(i objstore.Info) error {
				if !busy.TryLock() {
					t.Error("fn called by two goroutines at once")
					return nil
				}
				defer busy.Unlock()
				got[i.Name]++
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for name, n := range got {
				if !want[name] || n != 1 {
					t.Errorf("%s listed %d times; want once, and only the shards stored", name, n)
				}
			}
			if len(got) != len(want) {
				t.Errorf("listed %d of the %d shards", len(got), len(want))
			}
			wantPrefixes := map[string]int{"data/00/": 1, "data/": 1}
			if page == 1 {
				wantPrefixes = map[string]int{}
				for b := range 256 {
					wantPrefixes[fmt.Sprintf("data/%02x/", b)] = 1
				}
			}
			if !maps.Equal(rec.prefixes, wantPrefixes) {
				keys := slices.Sorted(maps.Keys(rec.prefixes))
				t.Errorf("listed prefixes %s (%d); want %d prefixes, %s", strings.Join(keys[:min(len(keys), 6)], " "), len(keys), len(wantPrefixes), "each once")
			}
		})
	}
}
