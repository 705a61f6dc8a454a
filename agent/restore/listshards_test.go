package restore_test

import (
	"context"
	"errors"
	"maps"
	"path"
	"strings"
	"sync"
	"testing"

	miniogo "github.com/minio/minio-go/v7"

	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

// listings records the prefixes listed through the stores it wraps.
type listings struct {
	mu       sync.Mutex
	prefixes map[string]int
}

type listingStore struct {
	objstore.Store
	rec *listings
}

func (s listingStore) List(ctx context.Context, prefix string, fn func(objstore.Info) error) error {
	s.rec.mu.Lock()
	s.rec.prefixes[prefix]++
	s.rec.mu.Unlock()
	return s.Store.List(ctx, prefix, fn)
}

// openListed opens the repository through stores that record every List,
// taking a listing request to return one name.
func openListed(t *testing.T, c *cluster) (*repo.Repo, *listings) {
	t.Helper()
	rec := &listings{prefixes: map[string]int{}}
	var stores []objstore.Store
	for _, s := range c.Stores(t) {
		stores = append(stores, listingStore{s, rec})
	}
	r, err := repo.Open(context.Background(), stores, password)
	if err != nil {
		t.Fatal(err)
	}
	r.ListPage = 1 // list even this small repository by directory
	return r, rec
}

// TestShardsListedByDirectory: where listing by directory takes fewer
// requests (here: one name per listing request), a restore checks the shards it needs by listing only their
// directories (data/XX/), each once per target, never data/ whole; it
// restores bit-identical, and still fails before writing, naming the
// pack, when a pack has lost more than m shards.
func TestShardsListedByDirectory(t *testing.T) {
	c, img, sum := setup(t)

	// The directories of the repository's packs (one backup: it needs all).
	want := map[string]int{}
	for _, name := range shardNames(t, c, 0) {
		want[path.Dir(strings.TrimPrefix(name, "repo/"))+"/"] = len(c.Servers)
	}
	r, rec := openListed(t, c)
	out, _, err := restoreImage(t, r, sum.SnapshotID)
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, img, out)
	got := map[string]int{}
	for p, n := range rec.prefixes {
		if strings.HasPrefix(p, "data/") {
			got[p] = n
		}
	}
	if !maps.Equal(got, want) {
		t.Fatalf("listed under data/: %v; want each directory of the packs once per target: %v", got, want)
	}

	// Shards 0 and 1 of one pack gone: only parity is left.
	victim := shardNames(t, c, 0)[0]
	base := strings.TrimSuffix(victim, ".0")
	for i := range 2 {
		if err := c.raw(t, i).RemoveObject(context.Background(), "ferry", base+"."+string(rune('0'+i)), miniogo.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	r, _ = openListed(t, c)
	_, _, err = restoreImage(t, r, sum.SnapshotID)
	if pack := path.Base(base); !errors.Is(err, restore.ErrDataLost) || !strings.Contains(err.Error(), pack[:8]) {
		t.Fatalf("want ErrDataLost naming pack %s, got %v", pack[:8], err)
	}
}
