package perf

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

var (
	benchPol = chunk.DefaultParams(0x3DA3358B4DC173).Pol
	fastKDF  = crypt.KDFParams{N: 1024, R: 8, P: 1}
)

// benchParams returns the chunk sizes of the changed-block benchmark:
// Ferry's default, or those of FERRY_BENCH_CHUNK_SIZE (an average, as
// ferry init --chunk-size takes it; go run ./perf/compare -chunk-size).
func benchParams(b testing.TB) chunk.Params {
	s := os.Getenv("FERRY_BENCH_CHUNK_SIZE")
	if s == "" {
		return chunk.DefaultParams(benchPol)
	}
	bits, err := chunk.ParseAverage(s)
	if err != nil {
		b.Fatalf("FERRY_BENCH_CHUNK_SIZE: %v", err)
	}
	p, err := chunk.ParamsForAverage(benchPol, bits)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// memStores returns n in-memory targets.
func memStores(n int) func(testing.TB) []objstore.Store {
	return func(testing.TB) []objstore.Store {
		var s []objstore.Store
		for range n {
			s = append(s, objstore.NewMem())
		}
		return s
	}
}

// minioStores starts n MinIO servers once and returns a fresh prefix on
// each for every call, so every repository starts empty.
func minioStores(b *testing.B, n int) func(testing.TB) []objstore.Store {
	c := minio.StartCluster(b, n, "bench", "")
	calls := 0
	return func(t testing.TB) []objstore.Store {
		calls++
		fresh := &minio.Cluster{Servers: c.Servers}
		for _, s := range c.Servers {
			fresh.URLs = append(fresh.URLs, s.URL("bench", fmt.Sprintf("r%03d", calls)))
		}
		return fresh.Stores(t)
	}
}

func newRepo(t testing.TB, stores []objstore.Store, p chunk.Params, s erasure.Scheme) *repo.Repo {
	t.Helper()
	r, err := repo.Init(context.Background(), stores, []byte("bench"), repo.Options{Erasure: s, Chunking: &p, KDF: fastKDF})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func backupFile(t testing.TB, r *repo.Repo, path string) *backup.Summary {
	t.Helper()
	s, err := backup.File(context.Background(), r, path, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func tempDir(b *testing.B) string {
	d, err := os.MkdirTemp("", "ferry-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// appendRange appends r to rs, sorted and disjoint, merging it into the
// last range when it follows on.
func appendRange(rs []chunk.Range, r chunk.Range) []chunk.Range {
	if n := len(rs); n > 0 && rs[n-1].End() == r.Off {
		rs[n-1].Len += r.Len
		return rs
	}
	return append(rs, r)
}
