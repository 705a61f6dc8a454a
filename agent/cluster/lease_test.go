package cluster_test

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydr/ferry/agent/cluster"
)

// TestExclusive: of three agents contending for one repository's Lease,
// one at a time does the work; when it stops, another takes over, only
// once the first one's work has returned.
func TestExclusive(t *testing.T) {
	c := startAPI(t)
	timing := cluster.LeaseTiming{Duration: 2 * time.Second, RenewDeadline: time.Second, RetryPeriod: 200 * time.Millisecond}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var holders, most atomic.Int32
	var mu sync.Mutex
	var order []string
	cancels := map[string]context.CancelFunc{}
	var wg sync.WaitGroup
	for _, node := range []string{"n1", "n2", "n3"} {
		ctx, cancel := context.WithCancel(context.Background())
		cancels[node] = cancel
		wg.Go(func() {
			cluster.Exclusive(ctx, c.Client, ns, "ferry-verify-test", node, timing, log, func(ctx context.Context) {
				n := holders.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				mu.Lock()
				order = append(order, node)
				mu.Unlock()
				<-ctx.Done()
				// Work stops a moment after it is told to (a request
				// in flight): the Lease must stay held until it has.
				time.Sleep(500 * time.Millisecond)
				holders.Add(-1)
			})
		})
	}
	defer func() {
		for _, c := range cancels {
			c()
		}
		wg.Wait()
	}()
	first := ""
	waitUntil(t, 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		if len(order) > 0 {
			first = order[0]
		}
		return first != ""
	})
	cancels[first]() // releases the Lease
	waitUntil(t, 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == 2 && order[1] != first
	})
	if most.Load() != 1 {
		t.Fatalf("%d agents held the Lease at once", most.Load())
	}
}

func waitUntil(t *testing.T, within time.Duration, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !ok(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
	}
}
