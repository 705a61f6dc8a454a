package perf

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/verify"
)

// BenchmarkVerifyStructural times the structural verify of a 2+1
// repository of about 300 packs (1 MiB packs, so that a short backup makes
// many) on three MinIO servers on loopback: listing and metadata only
// (sizes-only), and with the checksum pass, one HEAD per shard, at several
// concurrencies per target.
func BenchmarkVerifyStructural(b *testing.B) {
	ctx := context.Background()
	img := filepath.Join(tempDir(b), "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 1280 << 20, DataFrac: 0.8, Seed: 12}); err != nil {
		b.Fatal(err)
	}
	p := chunk.DefaultParams(benchPol)
	r, err := repo.Init(ctx, minioStores(b, 3)(b), []byte("bench"), repo.Options{
		Erasure: erasure.Scheme{K: 2, M: 1}, PackSize: 1 << 20, Chunking: &p, KDF: fastKDF,
	})
	if err != nil {
		b.Fatal(err)
	}
	backupFile(b, r, img)
	for _, tc := range []struct {
		name string
		opts verify.Options
	}{
		{"sizes-only", verify.Options{SizesOnly: true}},
		{"checksums/stat-workers=1", verify.Options{StatWorkers: 1}},
		{"checksums/stat-workers=4", verify.Options{StatWorkers: 4}},
		{"checksums/stat-workers=16", verify.Options{StatWorkers: 16}},
		{"checksums/stat-workers=64", verify.Options{StatWorkers: 64}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var rep *verify.Report
			for b.Loop() {
				var err error
				if rep, err = verify.Run(ctx, r, tc.opts); err != nil {
					b.Fatal(err)
				}
				if rep.Status != verify.OK {
					b.Fatalf("status %s: %v", rep.Status, rep.Problems)
				}
			}
			b.ReportMetric(float64(rep.Packs), "packs")
			b.ReportMetric(float64(rep.HeadRequests), "HEAD/op")
			if n := rep.Shards.Checksum + rep.Shards.SizeOnly; n != 3*rep.Packs {
				b.Fatalf("%d shards counted, want %d", n, 3*rep.Packs)
			}
		})
	}
}
