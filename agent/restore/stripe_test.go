package restore_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

// countingStore counts the bytes of shard data read from a real store.
type countingStore struct {
	objstore.Store
	n *atomic.Int64
}

func (s countingStore) Get(ctx context.Context, name string) ([]byte, error) {
	b, err := s.Store.Get(ctx, name)
	if strings.HasPrefix(name, "data/") {
		s.n.Add(int64(len(b)))
	}
	return b, err
}

func (s countingStore) GetRange(ctx context.Context, name string, off, n int64) ([]byte, error) {
	b, err := s.Store.GetRange(ctx, name, off, n)
	if strings.HasPrefix(name, "data/") {
		s.n.Add(int64(len(b)))
	}
	return b, err
}

// TestRestoreStripes stops the server of a data shard and restores: each
// pack is read as stripes, the same range of the two shards left, so the
// restore reads no more shard bytes than with every target up, and the
// data target left serves no more than its own share, where rebuilding
// range by range reads half again as much, all of it from that target.
// The windows are the default (a whole shard of these small packs) and
// 100 KiB, so that most blobs are read across two or more windows.
func TestRestoreStripes(t *testing.T) {
	c, img, sum := setup(t)
	ctx := context.Background()
	read := make([]atomic.Int64, 3)
	open := func() *repo.Repo {
		stores := c.Stores(t)
		for i := range stores {
			stores[i] = countingStore{stores[i], &read[i]}
		}
		r, err := repo.OpenForRestore(ctx, stores, password)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	counts := func() (all [3]int64) {
		for i := range read {
			all[i] = read[i].Swap(0)
		}
		return all
	}
	out, sum0, err := restoreImage(t, open(), sum.SnapshotID)
	if err != nil {
		t.Fatal(err)
	}
	assertSame(t, img, out)
	up := counts()
	t.Logf("every target up: shard bytes read per target %v", up)
	checkFetched := func(what string, sum *restore.Summary, got [3]int64) {
		t.Helper()
		if total := got[0] + got[1] + got[2]; sum.BytesFetched != total {
			t.Errorf("%s: the restore reports %d bytes fetched, the targets served %d", what, sum.BytesFetched, total)
		}
	}
	checkFetched("every target up", sum0, up)

	for _, down := range []int{0, 1} {
		c.Servers[down].Stop()
		left := 1 - down // the other data shard's target
		for _, window := range []int64{0, 100 << 10} {
			put := restore.SetStripeWindow(window)
			out, rs, err := restoreImage(t, open(), sum.SnapshotID)
			put()
			if err != nil {
				t.Fatalf("target %d down, window %d: %v", down+1, window, err)
			}
			assertSame(t, img, out)
			got := counts()
			t.Logf("target %d down, window %d: shard bytes read per target %v, %d shards done without", down+1, window, got, len(rs.Repaired))
			checkFetched(fmt.Sprintf("target %d down, window %d", down+1, window), rs, got)
			if got[down] != 0 {
				t.Errorf("target %d is down, yet %d bytes came from it", down+1, got[down])
			}
			if len(rs.Repaired) == 0 {
				t.Errorf("target %d down: no shard reported done without", down+1)
			}
			total, upTotal := got[0]+got[1]+got[2], up[0]+up[1]
			if total > upTotal*21/20 {
				t.Errorf("target %d down, window %d: read %d shard bytes, more than 5%% over the %d with every target up", down+1, window, total, upTotal)
			}
			if got[left] > up[left]*21/20 {
				t.Errorf("target %d down, window %d: target %d served %d bytes, more than 5%% over its %d with every target up", down+1, window, left+1, got[left], up[left])
			}
		}
		if err := c.Servers[down].Relaunch(); err != nil {
			t.Fatal(err)
		}
	}
}
