package perf

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
)

// fileStores returns three fresh file:// targets under dir, as the command
// line uses them.
func fileStores(b *testing.B, dir string) []objstore.Store {
	var stores []objstore.Store
	for _, name := range []string{"a", "b", "c"} {
		d := filepath.Join(dir, name)
		if err := os.MkdirAll(d, 0o700); err != nil {
			b.Fatal(err)
		}
		s, err := objstore.NewFile(d)
		if err != nil {
			b.Fatal(err)
		}
		stores = append(stores, s)
	}
	return stores
}

// peaks are the highest memory figures seen while a run went on.
type peaks struct {
	heap uint64 // Go heap: objects, live or not yet swept
	rss  uint64 // resident set of the process, as /usr/bin/time reports it
}

// sampleEvery calls sample at once and then every interval until stop is
// called.
func sampleEvery(interval time.Duration, sample func()) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			sample()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// watchMemory samples the Go heap and the process's RSS every millisecond
// until stop is called.
func watchMemory() (stop func() peaks) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var p peaks
	end := sampleEvery(time.Millisecond, func() {
		metrics.Read(sample)
		p.heap = max(p.heap, sample[0].Value.Uint64())
		p.rss = max(p.rss, rss())
	})
	return func() peaks {
		end()
		return p
	}
}

func (p peaks) max(q peaks) peaks { return peaks{max(p.heap, q.heap), max(p.rss, q.rss)} }

func (p peaks) report(b *testing.B) {
	b.ReportMetric(float64(p.heap)/(1<<20), "peak-heap-MiB")
	b.ReportMetric(float64(p.rss)/(1<<20), "peak-RSS-MiB")
}

// rss returns the resident set size of this process.
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	var size, resident uint64
	fmt.Sscan(string(b), &size, &resident)
	return resident * uint64(os.Getpagesize())
}

// BenchmarkMemory backs up and restores a 256 MiB and a 2 GiB sample volume
// (half data, random and text, half holes) on three file:// targets, 2+1,
// and reports the peak heap of each run next to the bytes allocated: the
// peak must not grow with the volume, and steady state allocates little.
func BenchmarkMemory(b *testing.B) {
	p := chunk.DefaultParams(benchPol)
	for _, tc := range []struct {
		name string
		size int64
	}{{"256MiB", 256 << 20}, {"2GiB", 2 << 30}} {
		dir := tempDir(b)
		img := filepath.Join(dir, "vol.img")
		if err := volume.Write(img, volume.Spec{Size: tc.size, DataFrac: 0.5, Seed: 3}); err != nil {
			b.Fatal(err)
		}
		b.Run("backup/"+tc.name, func(b *testing.B) {
			b.SetBytes(tc.size)
			b.ReportAllocs()
			var peak peaks
			for b.Loop() {
				b.StopTimer()
				repoDir, err := os.MkdirTemp(dir, "repo")
				if err != nil {
					b.Fatal(err)
				}
				r := newRepo(b, fileStores(b, repoDir), p, erasure.Scheme{K: 2, M: 1})
				runtime.GC()
				debug.FreeOSMemory()
				b.StartTimer()
				stop := watchMemory()
				backupFile(b, r, img)
				peak = peak.max(stop())
			}
			peak.report(b)
		})
		b.Run("restore/"+tc.name, func(b *testing.B) {
			repoDir, err := os.MkdirTemp(dir, "repo")
			if err != nil {
				b.Fatal(err)
			}
			r := newRepo(b, fileStores(b, repoDir), p, erasure.Scheme{K: 2, M: 1})
			snap, err := r.FindSnapshot(context.Background(), backupFile(b, r, img).SnapshotID, "")
			if err != nil {
				b.Fatal(err)
			}
			out := filepath.Join(dir, "out.img")
			b.SetBytes(tc.size)
			b.ReportAllocs()
			var peak peaks
			for b.Loop() {
				os.Remove(out)
				runtime.GC()
				debug.FreeOSMemory()
				stop := watchMemory()
				if _, err := restore.Run(context.Background(), r, snap, out, restore.Options{}); err != nil {
					b.Fatal(err)
				}
				peak = peak.max(stop())
			}
			peak.report(b)
		})
	}
}

// watchLive samples the live heap (what the last garbage collection kept)
// after forcing a collection every 50 milliseconds, until stop is called.
// The forced collections cost the run time: the figure is for memory only.
func watchLive() (stop func() uint64) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	var peak uint64
	end := sampleEvery(50*time.Millisecond, func() {
		runtime.GC()
		metrics.Read(sample)
		peak = max(peak, sample[0].Value.Uint64())
	})
	return func() uint64 {
		end()
		return peak
	}
}

// BenchmarkMemoryPerChunk measures what a backup and a restore keep for each
// chunk of the volume (the manifest's extents, the index, the restore's
// plan), which the fixed-size buffers BenchmarkMemory sees hide at its
// sizes. Two sample volumes (all data, random and text), 1 GiB and 3 GiB,
// are chunked small (minimum 2 KiB, average bits 11: about 90,000 and
// 270,000 chunks, as many as 38 GB and 117 GB of real files have at the
// default size), backed up into a fresh repository on three file://
// targets, backed up again (compared with the first snapshot, its basis)
// and restored. The maximum chunk size stays large (512 KiB) so
// that a pack's header of a few thousand entries fits the pack buffer's
// slack. Reported: the peak live heap of each run, sampled
// after forced collections, and per-chunk, the slope between the two
// sizes. The restore opens the repository afresh, as `ferry restore` does.
// With cache=disk both keep the index on the local disk (Repo.IndexCache),
// with cache=none in memory; BenchmarkIndexMemory measures the index alone.
func BenchmarkMemoryPerChunk(b *testing.B) {
	for _, cache := range []string{"none", "disk"} {
		b.Run("cache="+cache, func(b *testing.B) { memoryPerChunk(b, cache == "disk") })
	}
}

func memoryPerChunk(b *testing.B, diskIndex bool) {
	p := chunk.DefaultParams(benchPol)
	p.MinSize, p.AverageBits, p.MaxSize = 2<<10, 11, 512<<10
	dir := tempDir(b)
	type run struct {
		chunks                             int64
		backupLive, againLive, restoreLive uint64
	}
	measure := func(size int64) run {
		img := filepath.Join(dir, "vol.img")
		if err := volume.Write(img, volume.Spec{Size: size, DataFrac: 1, Seed: 5}); err != nil {
			b.Fatal(err)
		}
		defer os.Remove(img)
		repoDir, err := os.MkdirTemp(dir, "repo")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(repoDir)
		r := newRepo(b, fileStores(b, repoDir), p, erasure.Scheme{K: 2, M: 1})
		if diskIndex {
			r.IndexCache = filepath.Join(repoDir, "cache")
		}
		runtime.GC()
		stop := watchLive()
		sum := backupFile(b, r, img)
		var out run
		out.chunks, out.backupLive = sum.Chunks, stop()
		// The same volume again: compared with the first snapshot, its
		// basis, through the parent's extents.
		runtime.GC()
		stop = watchLive()
		again := backupFile(b, r, img)
		out.againLive = stop()
		if again.NewChunks != 0 || again.Chunks != sum.Chunks {
			b.Fatalf("second backup: %d chunks, %d new; first %d", again.Chunks, again.NewChunks, sum.Chunks)
		}
		cache := r.IndexCache
		if r, err = repo.Open(context.Background(), fileStores(b, repoDir), []byte("bench")); err != nil {
			b.Fatal(err)
		}
		r.IndexCache = cache
		snap, err := r.FindSnapshot(context.Background(), sum.SnapshotID, "")
		if err != nil {
			b.Fatal(err)
		}
		dst := filepath.Join(dir, "out.img")
		defer os.Remove(dst)
		runtime.GC()
		stop = watchLive()
		if _, err := restore.Run(context.Background(), r, snap, dst, restore.Options{}); err != nil {
			b.Fatal(err)
		}
		out.restoreLive = stop()
		return out
	}
	for b.Loop() {
		small, large := measure(1<<30), measure(3<<30)
		dc := float64(large.chunks - small.chunks)
		b.ReportMetric(float64(small.chunks), "chunks-small")
		b.ReportMetric(float64(large.chunks), "chunks-large")
		b.ReportMetric(float64(small.backupLive)/(1<<20), "backup-live-small-MiB")
		b.ReportMetric(float64(large.backupLive)/(1<<20), "backup-live-large-MiB")
		b.ReportMetric((float64(large.backupLive)-float64(small.backupLive))/dc, "backup-B/chunk")
		b.ReportMetric(float64(small.againLive)/(1<<20), "again-live-small-MiB")
		b.ReportMetric(float64(large.againLive)/(1<<20), "again-live-large-MiB")
		b.ReportMetric((float64(large.againLive)-float64(small.againLive))/dc, "again-B/chunk")
		b.ReportMetric(float64(small.restoreLive)/(1<<20), "restore-live-small-MiB")
		b.ReportMetric(float64(large.restoreLive)/(1<<20), "restore-live-large-MiB")
		b.ReportMetric((float64(large.restoreLive)-float64(small.restoreLive))/dc, "restore-B/chunk")
	}
}

// BenchmarkIndexMemory measures what the index LoadIndex returns keeps
// on the heap, per chunk of the repository, for repositories of 0.5 and
// 1.5 million chunks (200 and 650 GB of real files at the default chunk
// size) in index objects of 64Ki entries and packs of 40 chunks, on three
// file:// targets: in memory (no Repo.IndexCache), and with the index in
// runs on the local disk (cache=disk; a fresh cache each time, so every
// index object is downloaded, as on a node's first backup), from the
// index the last load saved there (cache=saved: every backup after a
// node's first, with one index object more than that load saw, as a
// backup leaves), and from the copies of the index objects alone
// (cache=copies: the first load after a prune, which rebuilds the index
// without downloading). It also reports the peak live heap during the load,
// sampled every 50 ms after a forced GC, and the load's time (ns/op).
func BenchmarkIndexMemory(b *testing.B) {
	for _, cache := range []string{"none", "disk", "saved", "copies"} {
		for _, n := range []int{500_000, 1_500_000} {
			b.Run(fmt.Sprintf("cache=%s/chunks=%d", cache, n), func(b *testing.B) {
				dir := tempDir(b)
				w := newRepo(b, fileStores(b, dir), chunk.DefaultParams(benchPol), erasure.Scheme{K: 2, M: 1})
				writeIndexObjects(b, w, n, 0)
				saved := filepath.Join(dir, "saved")
				for i := uint64(1); b.Loop(); i++ {
					b.StopTimer()
					rr, err := repo.Open(context.Background(), fileStores(b, dir), []byte("bench"))
					if err != nil {
						b.Fatal(err)
					}
					switch cache {
					case "disk":
						rr.IndexCache, err = os.MkdirTemp(dir, "cache")
						if err != nil {
							b.Fatal(err)
						}
					case "saved", "copies":
						rr.IndexCache = saved
						if _, err := rr.LoadIndex(context.Background()); err != nil {
							b.Fatal(err)
						}
						writeIndexObjects(b, w, 1000, i) // what one backup adds
						if rr, err = repo.Open(context.Background(), fileStores(b, dir), []byte("bench")); err != nil {
							b.Fatal(err)
						}
						rr.IndexCache = saved
						if cache == "copies" {
							states, _ := filepath.Glob(filepath.Join(saved, "*", "index-state"))
							for _, s := range states {
								os.Remove(s)
							}
						}
					}
					runtime.GC()
					var before, after runtime.MemStats
					runtime.ReadMemStats(&before)
					b.StartTimer()
					stop := watchLive()
					x, err := rr.LoadIndex(context.Background())
					peak := stop()
					b.StopTimer()
					if err != nil {
						b.Fatal(err)
					}
					runtime.GC()
					runtime.ReadMemStats(&after)
					b.ReportMetric((float64(after.HeapAlloc)-float64(before.HeapAlloc))/float64(x.Len()), "B/chunk")
					b.ReportMetric(float64(peak)/(1<<20), "peak-live-MiB")
					runtime.KeepAlive(x)
					if cache == "disk" {
						os.RemoveAll(rr.IndexCache)
					}
					b.StartTimer()
				}
			})
		}
	}
}

// writeIndexObjects writes index objects for n random chunks in packs of
// 40 (the packs themselves are not written: LoadIndex does not read them),
// the same for the same seed, and returns their IDs.
func writeIndexObjects(b *testing.B, r *repo.Repo, n int, seed uint64) []chunk.ID {
	rng := rand.New(rand.NewPCG(1, 2+seed))
	batch := &repo.IndexBatch{}
	ids := make([]chunk.ID, 0, n)
	for i := 0; i < n; i += 40 {
		var pi repo.PackInfo
		fillRandom(rng, pi.ID[:])
		pi.Length = 16 << 20
		pi.ShardCRC = make([]uint32, 3)
		es := make([]pack.Entry, min(40, n-i))
		for j := range es {
			fillRandom(rng, es[j].ID[:])
			es[j].Offset, es[j].Length, es[j].RawLength = uint32(j)<<18, 1<<17, 1<<18
			ids = append(ids, es[j].ID)
		}
		batch.Add(pi, es)
		if batch.Len() >= 64<<10 || i+40 >= n {
			if _, err := r.WriteIndex(context.Background(), batch); err != nil {
				b.Fatal(err)
			}
			batch = &repo.IndexBatch{}
		}
	}
	return ids
}

// BenchmarkSegmentedExtents measures one pass over the extents of a
// segmented snapshot, as an incremental backup makes about five over its
// parent's: 262,144 and 1,048,576 extents (a 256 GiB and a 1 TiB volume at
// the default chunk size; 64 and 256 segments), on three MinIO servers at
// 2+1, read from the targets (cache=none) and from the copies in the local
// cache (cache=local, what the machine that wrote the parent has). The
// index is loaded before the timer starts.
func BenchmarkSegmentedExtents(b *testing.B) {
	ctx := context.Background()
	stores := minioStores(b, 3)
	for _, n := range []int{1 << 18, 1 << 20} {
		st := stores(b)
		w := newRepo(b, st, chunk.DefaultParams(benchPol), erasure.Scheme{K: 2, M: 1})
		ids := writeIndexObjects(b, w, n, 0)
		release, err := w.Lock(ctx)
		if err != nil {
			b.Fatal(err)
		}
		sw, err := w.NewSnapshotWriter()
		if err != nil {
			b.Fatal(err)
		}
		for i, id := range ids {
			if err := sw.Add(repo.Extent{Off: int64(i) << 20, Len: 1 << 20, ID: id}); err != nil {
				b.Fatal(err)
			}
		}
		snap, _, err := sw.Commit(ctx, repo.Meta{Name: "vol", Size: int64(n) << 20, Digest: "ab", Started: time.Now().UTC()})
		sw.Close()
		release()
		if err != nil {
			b.Fatal(err)
		}
		for _, cache := range []string{"none", "local"} {
			b.Run(fmt.Sprintf("extents=%d/cache=%s", n, cache), func(b *testing.B) {
				dir := b.TempDir()
				var segments int
				for b.Loop() {
					b.StopTimer()
					r, err := repo.Open(ctx, st, []byte("bench"))
					if err != nil {
						b.Fatal(err)
					}
					if cache == "local" {
						r.IndexCache = dir
					}
					s, err := r.FindSnapshot(ctx, snap, "")
					if err != nil {
						b.Fatal(err)
					}
					if _, err := r.LoadIndex(ctx); err != nil {
						b.Fatal(err)
					}
					if cache == "local" { // the copies, as the writer keeps them
						if err := r.Extents(ctx, s, func([]repo.Extent) error { return nil }); err != nil {
							b.Fatal(err)
						}
					}
					segments = len(s.Segments)
					got := 0
					b.StartTimer()
					err = r.Extents(ctx, s, func(exts []repo.Extent) error { got += len(exts); return nil })
					b.StopTimer()
					if err != nil || got != n {
						b.Fatalf("%d extents read (%v), want %d", got, err, n)
					}
					b.StartTimer()
				}
				b.ReportMetric(float64(segments), "segments")
			})
		}
	}
}

func fillRandom(r *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}

// BenchmarkSnapshotsMemory measures what a listing of the snapshots
// holds (the agent's verification loop keeps one between rounds, and a
// replication holds one while it looks for the parent) and what finding
// the newest snapshot allocates (`ferry restore latest`, a backup looking
// for its basis), in a repository with eight snapshots of a volume of
// about 90,000 chunks: a 1 GiB sample volume chunked small, as many chunks
// as 37 GB of real files have at the default size.
func BenchmarkSnapshotsMemory(b *testing.B) {
	p := chunk.DefaultParams(benchPol)
	p.MinSize, p.AverageBits, p.MaxSize = 2<<10, 11, 512<<10
	dir := tempDir(b)
	img := filepath.Join(dir, "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 1 << 30, DataFrac: 1, Seed: 5}); err != nil {
		b.Fatal(err)
	}
	r := newRepo(b, fileStores(b, dir), p, erasure.Scheme{K: 2, M: 1})
	var chunks int64
	for range 8 {
		chunks = backupFile(b, r, img).Chunks
	}
	ctx := context.Background()
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	for b.Loop() {
		base := heap()
		snaps, err := r.Snapshots(ctx)
		held := heap()
		if err != nil || len(snaps) != 8 {
			b.Fatalf("Snapshots: %d, %v", len(snaps), err)
		}
		runtime.KeepAlive(snaps)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		s, err := r.FindSnapshot(ctx, "latest", "")
		runtime.ReadMemStats(&after)
		if err != nil {
			b.Fatalf("latest: %v", err)
		}
		// A segmented manifest: FindSnapshot read its segment list, and
		// the extents are read as they are used.
		if s, err = r.WithExtents(ctx, s); err != nil || int64(len(s.Extents)) < chunks {
			b.Fatalf("latest's extents: %v", err)
		}
		b.ReportMetric(float64(held-min(held, base))/(1<<20), "listing-held-MiB")
		b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/(1<<20), "latest-alloc-MiB")
		b.ReportMetric(float64(chunks), "chunks")
	}
}
