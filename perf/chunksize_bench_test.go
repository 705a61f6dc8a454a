package perf

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

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
