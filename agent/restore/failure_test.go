package restore_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	miniogo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/repo"
)

var password = []byte("test password")

// cluster is a 2+1 repository over three real MinIO servers.
type cluster struct{ *minio.Cluster }

func newCluster(t *testing.T) *cluster {
	t.Helper()
	return &cluster{minio.StartCluster(t, 3, "ferry", "repo")}
}

func (c *cluster) open(t *testing.T) *repo.Repo {
	t.Helper()
	r, err := repo.Open(context.Background(), c.Stores(t), password)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// raw returns a plain S3 client for server i, to damage objects behind
// Ferry's back (its own stores never overwrite).
func (c *cluster) raw(t *testing.T, i int) *miniogo.Client {
	s := c.Servers[i]
	cl, err := miniogo.New(s.Endpoint, &miniogo.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

var smallChunks = chunk.Params{Pol: 0x3DA3358B4DC173, MinSize: 64 << 10, MaxSize: 512 << 10, AverageBits: 17}

// newRepoCluster starts the MinIO servers and initialises a repository
// on them: 2+1, small chunks and packs.
func newRepoCluster(t *testing.T) *cluster {
	t.Helper()
	c := newCluster(t)
	_, err := repo.Init(context.Background(), c.Stores(t), password, repo.Options{
		Erasure: erasure.Scheme{K: 2, M: 1}, PackSize: 2 << 20, Chunking: &smallChunks,
		KDF: crypt.KDFParams{N: 1024, R: 8, P: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// setup initialises the repository and backs up a 48 MiB sample volume.
func setup(t *testing.T) (*cluster, string, *backup.Summary) {
	t.Helper()
	c := newRepoCluster(t)
	img := filepath.Join(t.TempDir(), "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 48 << 20, DataFrac: 0.4, Seed: 7}); err != nil {
		t.Fatal(err)
	}
	sum := backupImage(t, c.open(t), img)
	if sum.Packs < 4 {
		t.Fatalf("want several packs to damage, got %d", sum.Packs)
	}
	return c, img, sum
}

func backupImage(t testing.TB, r *repo.Repo, path string) *backup.Summary {
	t.Helper()
	s, err := backup.File(context.Background(), r, path, backup.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func restoreImage(t *testing.T, r *repo.Repo, id string) (string, *restore.Summary, error) {
	t.Helper()
	snap, err := r.FindSnapshot(context.Background(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "restored.img")
	sum, err := restore.Run(context.Background(), r, snap, out, restore.Options{})
	return out, sum, err
}

func assertSame(t *testing.T, want, got string) {
	t.Helper()
	a, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("%s differs from %s", got, want)
	}
}

// shardNames lists the shard objects on server i.
func shardNames(t *testing.T, c *cluster, i int) []string {
	var names []string
	for o := range c.raw(t, i).ListObjects(context.Background(), "ferry", miniogo.ListObjectsOptions{Prefix: "repo/data/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		names = append(names, o.Key)
	}
	if len(names) == 0 {
		t.Fatalf("no shards on server %d", i)
	}
	return names
}

func TestRestoreWithTargetServerStopped(t *testing.T) {
	c, img, sum := setup(t)
	c.Servers[1].Stop()
	out, rs, err := restoreImage(t, c.open(t), sum.SnapshotID)
	if err != nil {
		t.Fatalf("restore with one of three targets stopped: %v", err)
	}
	assertSame(t, img, out)
	if rs.BytesWritten == 0 {
		t.Fatal("nothing written")
	}
}

func TestRestoreWithBucketDeleted(t *testing.T) {
	c, img, sum := setup(t)
	c.Servers[0].DeleteBucket(t, "ferry")
	out, rs, err := restoreImage(t, c.open(t), sum.SnapshotID)
	if err != nil {
		t.Fatalf("restore with the first target's bucket deleted: %v", err)
	}
	assertSame(t, img, out)
	if len(rs.Repaired) == 0 {
		t.Fatal("restore did not report the shards it did without")
	}
}

func TestRestoreReconstructsCorruptShards(t *testing.T) {
	c, img, sum := setup(t)
	ctx := context.Background()
	cl := c.raw(t, 0)
	names := shardNames(t, c, 0)
	damaged := map[string]bool{}
	for i, name := range names {
		if i%2 == 1 {
			continue
		}
		b := getRaw(t, cl, name)
		if i%4 == 0 {
			b[len(b)/2] ^= 0xff // flipped bytes
		} else {
			b = b[:len(b)/3] // truncated
		}
		if _, err := cl.PutObject(ctx, "ferry", name, bytes.NewReader(b), int64(len(b)), miniogo.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		damaged[filepath.Base(name)] = true
	}
	out, rs, err := restoreImage(t, c.open(t), sum.SnapshotID)
	if err != nil {
		t.Fatalf("restore with corrupt shards: %v", err)
	}
	assertSame(t, img, out)
	seen := 0
	for _, p := range rs.Repaired {
		if p.Shard != 0 || p.Target != 1 {
			t.Fatalf("reported a shard that was not damaged: %s", p)
		}
		if !strings.Contains(p.Reason, "crc") && !strings.Contains(p.Reason, "trunc") && !strings.Contains(p.Reason, "length") {
			t.Errorf("reason does not say what was wrong: %s", p)
		}
		seen++
	}
	if seen != len(damaged) {
		t.Fatalf("restore reported %d reconstructed shards, %d were damaged", seen, len(damaged))
	}
}

func TestRestoreFailsWhenTooManyShardsLost(t *testing.T) {
	c, _, sum := setup(t)
	ctx := context.Background()
	// Remove shards 0 and 1 of one pack: only parity is left.
	victim := shardNames(t, c, 0)[0]
	pack := strings.TrimSuffix(filepath.Base(victim), ".0")
	for i := 0; i < 2; i++ {
		name := strings.TrimSuffix(victim, ".0") + "." + string(rune('0'+i))
		if err := c.raw(t, i).RemoveObject(ctx, "ferry", name, miniogo.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	out, _, err := restoreImage(t, c.open(t), sum.SnapshotID)
	if !errors.Is(err, restore.ErrDataLost) {
		t.Fatalf("want ErrDataLost, got %v", err)
	}
	if !strings.Contains(err.Error(), pack[:8]) {
		t.Fatalf("error does not name the lost pack %s: %v", pack[:8], err)
	}
	if _, serr := os.Stat(out); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("a failed restore left %s behind", out)
	}
	entries, _ := os.ReadDir(filepath.Dir(out))
	if len(entries) != 0 {
		t.Fatalf("a failed restore left files: %v", entries)
	}
}

// TestRestoreNeverWritesWrongData damages more than m shards of a pack in a
// way the listing cannot see (present but corrupt): the restore must fail
// during the read, and no file may appear.
func TestRestoreNeverWritesWrongData(t *testing.T) {
	c, _, sum := setup(t)
	ctx := context.Background()
	victim := shardNames(t, c, 0)[0]
	base := strings.TrimSuffix(victim, ".0")
	for i := 0; i < 2; i++ {
		name := base + "." + string(rune('0'+i))
		b := []byte("not a shard at all")
		if _, err := c.raw(t, i).PutObject(ctx, "ferry", name, bytes.NewReader(b), int64(len(b)), miniogo.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	out, _, err := restoreImage(t, c.open(t), sum.SnapshotID)
	if !errors.Is(err, restore.ErrDataLost) {
		t.Fatalf("want ErrDataLost, got %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
		t.Fatalf("a failed restore left files: %v", entries)
	}
}

// getRaw reads object name of the bucket "ferry" straight from MinIO.
func getRaw(t *testing.T, cl *miniogo.Client, name string) []byte {
	t.Helper()
	obj, err := cl.GetObject(context.Background(), "ferry", name, miniogo.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(obj); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
