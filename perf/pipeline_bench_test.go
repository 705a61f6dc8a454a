package perf

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
)

// BenchmarkChunkParallel compares canonical chunking of the dense 256 MiB
// volume by one Splitter with a Parallel of 1, 2 and 4 goroutines (the
// output is the same, chunk for chunk). Run it with -cpu 1,2 to see what a
// second core buys.
func BenchmarkChunkParallel(b *testing.B) {
	dense, _ := chunkVolumes()
	p := chunk.DefaultParams(chunkPol)
	b.Run("splitter", func(b *testing.B) { benchSplitter(b, dense, p) })
	for _, workers := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("parallel-%d", workers), func(b *testing.B) {
			b.SetBytes(int64(len(dense.data)))
			b.ReportAllocs()
			var chunks int64
			for b.Loop() {
				x, err := chunk.NewParallel(bytes.NewReader(dense.data), int64(len(dense.data)), nil, p, workers)
				if err != nil {
					b.Fatal(err)
				}
				for {
					_, err := x.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					chunks++
				}
			}
			b.ReportMetric(float64(chunks)/float64(b.N), "chunks/op")
		})
	}
}

// BenchmarkSealer is BenchmarkPack's seal through the Sealer the backup
// uses (in place, nothing allocated), on 1 MiB chunks, one core. Random
// data skips zstd after the entropy check.
func BenchmarkSealer(b *testing.B) {
	k, err := crypt.NewRandomKey()
	if err != nil {
		b.Fatal(err)
	}
	codec, err := pack.NewCodec(k)
	if err != nil {
		b.Fatal(err)
	}
	idk := chunk.NewIDKey(k.IDKey())
	for name, data := range sampleChunks() {
		id := idk.Sum(data)
		b.Run(name, func(b *testing.B) {
			s := codec.NewSealer(len(data))
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				copy(s.Plain(len(data)), data)
				s.Seal(id, len(data))
			}
		})
	}
}

// BenchmarkUploads backs up the 512 MiB sample volume of
// BenchmarkBackupRestore to three file:// targets with 1, 2 and 4 packs
// uploading at once (each costs a set of shard buffers, 1.5 packs at 2+1).
func BenchmarkUploads(b *testing.B) {
	dir := tempDir(b)
	img := filepath.Join(dir, "vol.img")
	const size = 512 << 20
	if err := volume.Write(img, volume.Spec{Size: size, DataFrac: 0.5, Seed: 11}); err != nil {
		b.Fatal(err)
	}
	p := chunk.DefaultParams(benchPol)
	for _, uploads := range []int{1, 2, 4} {
		b.Run(fmt.Sprint(uploads), func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				b.StopTimer()
				repoDir, err := os.MkdirTemp(dir, "repo")
				if err != nil {
					b.Fatal(err)
				}
				r := newRepo(b, fileStores(b, repoDir), p, erasure.Scheme{K: 2, M: 1})
				b.StartTimer()
				if _, err := backup.File(context.Background(), r, img, backup.Options{Uploads: uploads}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRestoreWorkers restores that volume from three file:// targets
// with 2, 4 and 8 ranges read at once, all targets up and with the second
// one gone (its data shards rebuilt from parity, range by range).
func BenchmarkRestoreWorkers(b *testing.B) {
	dir := tempDir(b)
	img := filepath.Join(dir, "vol.img")
	const size = 512 << 20
	if err := volume.Write(img, volume.Spec{Size: size, DataFrac: 0.5, Seed: 11}); err != nil {
		b.Fatal(err)
	}
	p := chunk.DefaultParams(benchPol)
	stores := fileStores(b, filepath.Join(dir, "repo"))
	r := newRepo(b, stores, p, erasure.Scheme{K: 2, M: 1})
	id := backupFile(b, r, img).SnapshotID
	out := filepath.Join(dir, "out.img")
	for _, down := range []bool{false, true} {
		for _, workers := range []int{2, 4, 8} {
			name := fmt.Sprintf("workers-%d", workers)
			if down {
				name += "/target-2-down"
			}
			b.Run(name, func(b *testing.B) {
				stores := stores
				if down {
					stores = append([]objstore.Store(nil), stores...)
					stores[1] = objstore.Unavailable("gone", os.ErrNotExist)
				}
				r := openRepo(b, stores)
				snap, err := r.FindSnapshot(context.Background(), id, "")
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(size)
				for b.Loop() {
					os.Remove(out)
					if _, err := restore.Run(context.Background(), r, snap, out, restore.Options{Workers: workers}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func openRepo(b *testing.B, stores []objstore.Store) *repo.Repo {
	r, err := repo.Open(context.Background(), stores, []byte("bench"))
	if err != nil {
		b.Fatal(err)
	}
	return r
}

// BenchmarkRestoreMinioTargetDown restores the 512 MiB sample volume from
// three MinIO servers on loopback as the command does, opening the
// repository first: all servers up, then with the second one stopped
// (connections refused). The difference is what a dead target costs,
// mostly before the first byte is read.
func BenchmarkRestoreMinioTargetDown(b *testing.B) {
	dir := tempDir(b)
	img := filepath.Join(dir, "vol.img")
	const size = 512 << 20
	if err := volume.Write(img, volume.Spec{Size: size, DataFrac: 0.5, Seed: 11}); err != nil {
		b.Fatal(err)
	}
	c := minio.StartCluster(b, 3, "bench", "down")
	r := newRepo(b, c.Stores(b), chunk.DefaultParams(benchPol), erasure.Scheme{K: 2, M: 1})
	id := backupFile(b, r, img).SnapshotID
	out := filepath.Join(dir, "out.img")
	for _, down := range []bool{false, true} {
		name := "all-up"
		if down {
			name = "target-2-stopped"
			c.Servers[1].Stop()
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				os.Remove(out)
				r := openRepo(b, c.Stores(b))
				snap, err := r.FindSnapshot(context.Background(), id, "")
				if err != nil {
					b.Fatal(err)
				}
				if _, err := restore.Run(context.Background(), r, snap, out, restore.Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
