package perf

import (
	"context"
	"fmt"
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

// watchMemory samples the Go heap and the process's RSS every millisecond
// until stop is called.
func watchMemory() (stop func() peaks) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var p peaks
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			p.heap = max(p.heap, sample[0].Value.Uint64())
			p.rss = max(p.rss, rss())
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() peaks {
		close(done)
		wg.Wait()
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
