package perf

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/testenv/faultproxy"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

// BenchmarkShardListing measures the two ways a restore can list one
// target's shards (agent/restore checkShards): data/ whole, one listing
// page after another, or each of the 256 directories data/XX/, 8 at once
// (as many requests as a store sends at once by default: objstore's
// MaxConns). The target is one MinIO server holding n empty objects named as
// shards, reached through a faultproxy with no delay or 60 ms away
// (Distant). It backs how a restore, verify and prune choose between the
// two (repo.ListByDirectory), and measures the choice ListShards makes
// from the size of data/00/ (chosen).
func BenchmarkShardListing(b *testing.B) {
	ctx := context.Background()
	s := minio.Start(b)
	s.CreateBucket(b, "bench")
	px := faultproxy.Start(b, s.Endpoint)
	rng := rand.New(rand.NewPCG(1, 2))
	have := 0
	for _, n := range []int{2000, 8000, 32000} {
		// The objects of the smaller sizes stay: each size adds to them.
		store := openOne(b, fmt.Sprintf("s3+http://%s/bench/repo", s.Endpoint), s)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(32)
		for ; have < n; have++ {
			name := fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64())
			g.Go(func() error { return store.Create(gctx, "data/"+name[:2]+"/"+name+".0", nil) })
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		for _, rtt := range []time.Duration{0, 60 * time.Millisecond} {
			f := faultproxy.Fault{Mode: faultproxy.Pass}
			if rtt > 0 {
				f = faultproxy.Fault{Mode: faultproxy.Distant, Latency: rtt / 2}
			}
			if err := px.Set(f); err != nil {
				b.Fatal(err)
			}
			far := openOne(b, fmt.Sprintf("s3+http://%s/bench/repo", px.Addr), s)
			for _, atOnce := range []int{0, 8, -1} {
				name := fmt.Sprintf("objects=%d/rtt=%v/directories-at-once=%d", n, rtt, atOnce)
				if atOnce < 0 {
					name = fmt.Sprintf("objects=%d/rtt=%v/chosen", n, rtt)
				}
				b.Run(name, func(b *testing.B) {
					for b.Loop() {
						if got := listShards(b, far, atOnce); got != n {
							b.Fatalf("listed %d objects, want %d", got, n)
						}
					}
				})
			}
		}
	}
}

// listShards lists data/ whole (atOnce 0), by directory, atOnce at once,
// or as verify and prune do (atOnce -1: repo.ListShards chooses), and
// counts the names.
func listShards(b *testing.B, s objstore.Store, atOnce int) int {
	ctx := context.Background()
	counts := make([]int, 256)
	switch {
	case atOnce < 0:
		err := (&repo.Repo{}).ListShards(ctx, &repo.Target{Store: s}, func(objstore.Info) error { counts[0]++; return nil })
		if err != nil {
			b.Fatal(err)
		}
	case atOnce == 0:
		if err := s.List(ctx, "data/", func(objstore.Info) error { counts[0]++; return nil }); err != nil {
			b.Fatal(err)
		}
	default:
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(atOnce)
		for d := range 256 {
			g.Go(func() error {
				return s.List(gctx, fmt.Sprintf("data/%02x/", d), func(objstore.Info) error { counts[d]++; return nil })
			})
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
	}
	total := 0
	for _, c := range counts {
		total += c
	}
	return total
}

// openOne opens the store at url with server s's credentials.
func openOne(b *testing.B, url string, s *minio.Server) objstore.Store {
	b.Helper()
	c := &minio.Cluster{Servers: []*minio.Server{s}, URLs: []string{url}}
	return c.Stores(b)[0]
}
