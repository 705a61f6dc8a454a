package perf

import (
	"context"
	"fmt"
	"os"
	"strings"
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
	var servers []*minio.Server
	for range n {
		s := minio.Start(b)
		s.CreateBucket(b, "bench")
		servers = append(servers, s)
	}
	b.Setenv("AWS_ACCESS_KEY_ID", servers[0].AccessKey)
	b.Setenv("AWS_SECRET_ACCESS_KEY", servers[0].SecretKey)
	calls := 0
	return func(t testing.TB) []objstore.Store {
		calls++
		var urls []string
		for _, s := range servers {
			urls = append(urls, s.URL("bench", fmt.Sprintf("r%03d", calls)))
		}
		locs, err := objstore.ParseRepo(strings.Join(urls, ","))
		if err != nil {
			t.Fatal(err)
		}
		return objstore.OpenAll(context.Background(), locs, os.Getenv)
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
