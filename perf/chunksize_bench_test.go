package perf

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/agent/source"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/erasure"
)

// BenchmarkChunkSize chooses the default chunk size: for each candidate it
// backs up a 256 MiB volume, changes 0.5% of it in scattered 8 KiB writes
// (a database's pages), backs it up again, and reports
//
//	MB/s           first-backup throughput (in-memory targets)
//	new/changed    bytes stored anew per byte changed (lower: cheaper RPO)
//	meta-B/GiB     index + manifest bytes per GiB of unique data
func BenchmarkChunkSize(b *testing.B) {
	dir := tempDir(b)
	base := filepath.Join(dir, "base.img")
	const size = 256 << 20
	data := volume.Data(rand.New(rand.NewPCG(21, 21)), size)
	if err := os.WriteFile(base, data, 0o600); err != nil {
		b.Fatal(err)
	}
	changed := filepath.Join(dir, "changed.img")
	const writes, wsize = 160, 8 << 10
	r := rand.New(rand.NewPCG(22, 22))
	for range writes {
		off := r.IntN(size-wsize) &^ (wsize - 1)
		copy(data[off:], volume.Data(r, wsize))
	}
	if err := os.WriteFile(changed, data, 0o600); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct{ min, avgBits, max uint }{
		{64 << 10, 17, 1 << 20},  // 128 KiB average
		{128 << 10, 18, 2 << 20}, // 256 KiB
		{256 << 10, 19, 4 << 20}, // 512 KiB
		{256 << 10, 20, 4 << 20}, // 1 MiB
		{512 << 10, 21, 8 << 20}, // 2 MiB
	} {
		p := chunk.Params{Pol: benchPol, MinSize: c.min, MaxSize: c.max, AverageBits: int(c.avgBits)}
		b.Run(fmt.Sprintf("avg=%dKiB", (1<<c.avgBits)>>10), func(b *testing.B) {
			b.SetBytes(size)
			var ratio, meta float64
			for b.Loop() {
				b.StopTimer()
				rp := newRepo(b, memStores(3)(b), p, erasure.Scheme{K: 2, M: 1})
				b.StartTimer()
				s1 := backupFile(b, rp, base)
				b.StopTimer()
				s2 := backupFile(b, rp, changed)
				b.StartTimer()
				ratio = float64(s2.BytesNew) / float64(writes*wsize)
				// 37 bytes of index per chunk (per target copy) and 33 of manifest.
				meta = float64(s1.Chunks*(37*3+33)) / (float64(size) / (1 << 30))
			}
			b.ReportMetric(ratio, "new/changed")
			b.ReportMetric(meta, "meta-B/GiB")
		})
	}
}

// BenchmarkChunkSizeImages compares chunk sizes on perf/compare's images
// (FERRY_BENCH_CBT_IMAGES=BASE:CHANGED; skipped without): for each
// candidate, a full backup of BASE into three MinIO servers (2+1), then a
// backup of CHANGED given the 4 KiB blocks that differ, as changed-block
// tracking reports them, then a restore of the second snapshot. Reported:
// the median seconds of each, the bytes each backup stored, and the
// chunks of the first.
func BenchmarkChunkSizeImages(b *testing.B) {
	env := os.Getenv(cbtImagesEnv)
	base, changedImg, ok := strings.Cut(env, ":")
	if !ok {
		b.Skip("set " + cbtImagesEnv + "=BASE:CHANGED (perf/compare's images)")
	}
	changed := diffBlocks(b, base, changedImg, 4096)
	stores := minioStores(b, 3)
	ctx := context.Background()
	out := filepath.Join(tempDir(b), "restored.img")
	for _, c := range []struct{ min, avgBits, max uint }{
		{128 << 10, 18, 2 << 20},
		{64 << 10, 17, 1 << 20},
		{256 << 10, 20, 4 << 20}, // the default
		{128 << 10, 19, 2 << 20},
	} {
		p := chunk.Params{Pol: benchPol, MinSize: c.min, MaxSize: c.max, AverageBits: int(c.avgBits)}
		b.Run(fmt.Sprintf("min=%dKiB,avg=%dKiB", c.min>>10, (1<<c.avgBits)>>10), func(b *testing.B) {
			var full, incr, rest []float64
			var s1, s2 *backup.Summary
			for b.Loop() {
				r := newRepo(b, stores(b), p, erasure.Scheme{K: 2, M: 1})
				t0 := time.Now()
				s1 = backupFile(b, r, base)
				full = append(full, time.Since(t0).Seconds())
				parent, err := r.FindSnapshot(ctx, s1.SnapshotID, "")
				if err != nil {
					b.Fatal(err)
				}
				vol, err := source.Open(changedImg)
				if err != nil {
					b.Fatal(err)
				}
				holes, err := vol.Holes()
				if err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				s2, err = backup.Run(ctx, r, vol, vol.Size(), backup.Options{Name: "changed", Parent: parent, Changed: changed, Holes: holes})
				incr = append(incr, time.Since(t1).Seconds())
				vol.Close()
				if err != nil {
					b.Fatal(err)
				}
				snap, err := r.FindSnapshot(ctx, s2.SnapshotID, "")
				if err != nil {
					b.Fatal(err)
				}
				os.Remove(out)
				t2 := time.Now()
				stopTrace := startTrace(b)
				if _, err := restore.Run(ctx, r, snap, out, restore.Options{}); err != nil {
					b.Fatal(err)
				}
				stopTrace()
				rest = append(rest, time.Since(t2).Seconds())
				os.Remove(out)
			}
			slices.Sort(rest)
			b.ReportMetric(rest[len(rest)/2], "restore-s")
			slices.Sort(full)
			slices.Sort(incr)
			b.ReportMetric(full[len(full)/2], "full-s")
			b.ReportMetric(incr[len(incr)/2], "cbt-s")
			b.ReportMetric(float64(s1.BytesStored)/(1<<20), "full-stored-MiB")
			b.ReportMetric(float64(s2.BytesStored)/(1<<20), "cbt-stored-MiB")
			b.ReportMetric(float64(s1.Chunks), "chunks")
		})
	}
}

// diffBlocks returns the blocks of size bs where files a and b differ,
// adjacent ones merged.
func diffBlocks(b *testing.B, pa, pb string, bs int) []chunk.Range {
	fa, err := os.Open(pa)
	if err != nil {
		b.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(pb)
	if err != nil {
		b.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	var out []chunk.Range
	for off := int64(0); ; off += int64(len(ba)) {
		na, erra := io.ReadFull(fa, ba)
		nb, errb := io.ReadFull(fb, bb)
		for i := 0; i < max(na, nb); i += bs {
			ea, eb := min(i+bs, na), min(i+bs, nb)
			if bytes.Equal(ba[min(i, na):ea], bb[min(i, nb):eb]) {
				continue
			}
			out = appendRange(out, chunk.Range{Off: off + int64(i), Len: int64(bs)})
		}
		if erra != nil || errb != nil {
			return out
		}
	}
}
