package perf

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/faultproxy"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/verify"
)

// BenchmarkDistant runs Ferry's main jobs against three MinIO servers in
// "another region": each reached through a faultproxy in Distant mode,
// which adds half the round-trip time each way and bounds every
// connection by a TCP window (faultproxy.DefaultWindow), with no limit on
// the bandwidth otherwise, or, in the last case, 500 Mbit/s to each target
// (all its connections together). Per round-trip time (0: the proxies
// only forward): a full backup of a 1 GiB sample volume (half of it data), a
// changed-block backup after 2% of its blocks changed, a structural
// verify, a restore from a repository opened afresh (its index read from
// the targets, as a DR restore on a new node does), and the same restore
// with the first target refusing connections, each timed.
func BenchmarkDistant(b *testing.B) {
	ctx := context.Background()
	dir := tempDir(b)
	base, changed := filepath.Join(dir, "base.img"), filepath.Join(dir, "changed.img")
	const size = 1 << 30
	if err := volume.Write(base, volume.Spec{Size: size, DataFrac: 0.5, Seed: 5}); err != nil {
		b.Fatal(err)
	}
	ranges := changeBlocks(b, base, changed, 0.02)
	c := minio.StartCluster(b, 3, "bench", "")
	var proxies []*faultproxy.Proxy
	for _, s := range c.Servers {
		proxies = append(proxies, faultproxy.Start(b, s.Endpoint))
	}
	p := chunk.DefaultParams(benchPol)
	for _, path := range []struct {
		rtt  time.Duration
		link int // bytes per second each way, for all connections to a target
	}{{0, 0}, {20 * time.Millisecond, 0}, {60 * time.Millisecond, 0}, {60 * time.Millisecond, 62.5e6}} {
		rtt := path.rtt
		name := fmt.Sprintf("rtt=%v", rtt)
		if path.link > 0 {
			name += fmt.Sprintf(",link=%dMbit", path.link*8/1e6)
		}
		b.Run(name, func(b *testing.B) {
			f := faultproxy.Fault{Mode: faultproxy.Pass}
			if rtt > 0 {
				f = faultproxy.Fault{Mode: faultproxy.Distant, Latency: rtt / 2, LinkBytesPerSecond: path.link}
			}
			for _, px := range proxies {
				if err := px.Set(f); err != nil {
					b.Fatal(err)
				}
			}
			var full, inc, ver, rest, open, find, degraded time.Duration
			var served [3]int64 // bytes each target sent during the degraded restore
			for i := 0; b.Loop(); i++ {
				var urls []string
				for _, px := range proxies {
					urls = append(urls, fmt.Sprintf("s3+http://%s/bench/rtt%d-link%d-%d", px.Addr, rtt.Milliseconds(), path.link, i))
				}
				stores := func() []objstore.Store {
					locs, err := objstore.ParseRepo(strings.Join(urls, ","))
					if err != nil {
						b.Fatal(err)
					}
					return objstore.OpenAll(ctx, locs, c.Env)
				}
				r := newRepo(b, stores(), p, erasure.Scheme{K: 2, M: 1})
				full = timed(func() { backupFile(b, r, base) })
				parent := latest(b, r)
				inc = timed(func() {
					if _, err := backup.File(ctx, r, changed, backup.Options{Parent: parent, Changed: ranges}); err != nil {
						b.Fatal(err)
					}
				})
				ver = timed(func() {
					rep, err := verify.Run(ctx, r, verify.Options{})
					if err != nil {
						b.Fatal(err)
					}
					if err := rep.Err(); err != nil {
						b.Fatalf("verify: %v", err)
					}
				})
				out := filepath.Join(dir, "out.img")
				os.Remove(out)
				rest = timed(func() {
					var r2 *repo.Repo
					open = timed(func() {
						var err error
						if r2, err = repo.Open(ctx, stores(), []byte("bench")); err != nil {
							b.Fatal(err)
						}
					})
					var s *repo.Snapshot
					find = timed(func() { s = latest(b, r2) })
					if _, err := restore.Run(ctx, r2, s, out, restore.Options{}); err != nil {
						b.Fatal(err)
					}
				})
				os.Remove(out)
				// The same with target 1, which holds data shard 0 of every
				// pack, refusing connections, opened as the command opens
				// a repository to restore from.
				if err := proxies[0].Set(faultproxy.Fault{Mode: faultproxy.Refuse}); err != nil {
					b.Fatal(err)
				}
				var before [3]int64
				for i, px := range proxies {
					_, before[i] = px.Bytes()
				}
				degraded = timed(func() {
					r2, err := repo.OpenForRestore(ctx, stores(), []byte("bench"))
					if err != nil {
						b.Fatal(err)
					}
					if _, err := restore.Run(ctx, r2, latest(b, r2), out, restore.Options{}); err != nil {
						b.Fatal(err)
					}
				})
				if err := proxies[0].Set(f); err != nil {
					b.Fatal(err)
				}
				for i, px := range proxies {
					_, d := px.Bytes()
					served[i] = d - before[i]
				}
				os.Remove(out)
			}
			b.Logf("%s: full backup %.2f s, changed-block backup %.2f s, verify %.2f s, restore %.2f s (of which open %.2f s, find the snapshot %.2f s), restore with target 1 down %.2f s (%d and %d MB from targets 2 and 3)",
				name, full.Seconds(), inc.Seconds(), ver.Seconds(), rest.Seconds(), open.Seconds(), find.Seconds(), degraded.Seconds(), served[1]/1e6, served[2]/1e6)
			b.ReportMetric(full.Seconds(), "full-s")
			b.ReportMetric(inc.Seconds(), "inc-s")
			b.ReportMetric(ver.Seconds(), "verify-s")
			b.ReportMetric(rest.Seconds(), "restore-s")
			b.ReportMetric(degraded.Seconds(), "degraded-s")
		})
	}
}

func timed(fn func()) time.Duration {
	start := time.Now()
	fn()
	return time.Since(start)
}

// latest is the newest snapshot in r.
func latest(b *testing.B, r *repo.Repo) *repo.Snapshot {
	b.Helper()
	s, err := r.FindSnapshot(context.Background(), "latest", "")
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// changeBlocks copies base to changed with share of its bytes rewritten
// with new data, in runs of 4 KiB to 256 KiB at random places (as a
// filesystem's writes land: some scattered blocks, some files), and
// returns those runs as the ranges a changed-block tracker would report.
func changeBlocks(b *testing.B, base, changed string, share float64) []chunk.Range {
	src, err := os.Open(base)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(changed)
	if err != nil {
		b.Fatal(err)
	}
	defer dst.Close()
	if _, err := io.Copy(dst, src); err != nil {
		b.Fatal(err)
	}
	fi, err := src.Stat()
	if err != nil {
		b.Fatal(err)
	}
	const block = 4096
	blocks := fi.Size() / block
	rng := rand.New(rand.NewPCG(7, 7))
	pick := make([]bool, blocks)
	for n, want := int64(0), int64(float64(blocks)*share); n < want; {
		run := int64(1) << rng.IntN(7) // 1 to 64 blocks
		at := rng.Int64N(blocks - run)
		for i := at; i < at+run; i++ {
			if !pick[i] {
				pick[i] = true
				n++
			}
		}
	}
	var ranges []chunk.Range
	for i := range blocks {
		if !pick[i] {
			continue
		}
		if _, err := dst.WriteAt(volume.Data(rng, block), i*block); err != nil {
			b.Fatal(err)
		}
		ranges = appendRange(ranges, chunk.Range{Off: i * block, Len: block})
	}
	return ranges
}
