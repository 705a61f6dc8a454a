package perf

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
)

// BenchmarkBackupRestore backs up and restores a 512 MiB sample volume (half
// data, half holes) with erasure 2+1 over three targets: in-memory stores,
// and three real MinIO servers on loopback. Throughput is volume bytes per
// second.
func BenchmarkBackupRestore(b *testing.B) {
	img := filepath.Join(tempDir(b), "vol.img")
	const size = 512 << 20
	if err := volume.Write(img, volume.Spec{Size: size, DataFrac: 0.5, Seed: 11}); err != nil {
		b.Fatal(err)
	}
	p := chunk.DefaultParams(benchPol)
	scheme := erasure.Scheme{K: 2, M: 1}
	for _, tc := range []struct {
		name   string
		stores func(*testing.B) func(testing.TB) []objstore.Store
	}{
		{"mem", func(*testing.B) func(testing.TB) []objstore.Store { return memStores(3) }},
		{"minio", func(b *testing.B) func(testing.TB) []objstore.Store { return minioStores(b, 3) }},
	} {
		b.Run("backup/"+tc.name, func(b *testing.B) {
			stores := tc.stores(b)
			b.SetBytes(size)
			for b.Loop() {
				b.StopTimer()
				r := newRepo(b, stores(b), p, scheme)
				b.StartTimer()
				backupFile(b, r, img)
			}
		})
		b.Run("restore/"+tc.name, func(b *testing.B) {
			stores := tc.stores(b)
			r := newRepo(b, stores(b), p, scheme)
			id := backupFile(b, r, img).SnapshotID
			snap, err := r.FindSnapshot(context.Background(), id, "")
			if err != nil {
				b.Fatal(err)
			}
			out := filepath.Join(tempDir(b), "out.img")
			b.SetBytes(size)
			for b.Loop() {
				os.Remove(out)
				if _, err := restore.Run(context.Background(), r, snap, out, restore.Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
