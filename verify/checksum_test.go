package verify_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	miniogo "github.com/minio/minio-go/v7"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/verify"
)

// TestReplacedShardOnFileStore: the file store keeps each object's CRC32C
// in an extended attribute. A shard replaced through the store by other
// bytes of the same length is found by the structural check, repaired, and
// the repository restores without the target holding the shard's sibling.
func TestReplacedShardOnFileStore(t *testing.T) {
	ctx := context.Background()
	var stores []objstore.Store
	for range 3 {
		s, err := objstore.NewFile(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		stores = append(stores, s)
	}
	r, err := repo.Init(ctx, stores, password, repo.Options{
		Erasure: erasure.Scheme{K: 2, M: 1}, PackSize: 1 << 20, Chunking: &smallChunks,
		KDF: crypt.KDFParams{N: 1024, R: 8, P: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 16 << 20, DataFrac: 0.5, Seed: 9}); err != nil {
		t.Fatal(err)
	}
	sum, err := backup.File(ctx, r, img, backup.Options{Name: "vol"})
	if err != nil {
		t.Fatal(err)
	}
	idx, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	victim := idx.Packs()[0].ID
	name := repo.ShardName(victim, 1)
	if info, err := stores[1].Stat(ctx, name); err != nil || !info.HasCRC32C {
		t.Skipf("the file system under the test's temporary directory keeps no user xattrs (%+v, %v)", info, err)
	}
	obj, err := stores[1].Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := stores[1].Delete(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := stores[1].Create(ctx, name, scramble(obj)); err != nil {
		t.Fatal(err)
	}

	rep, err := verify.Run(ctx, r, verify.Options{})
	if err != nil {
		t.Fatal(err)
	}
	bad := problems(rep, verify.KindShardCorrupt)
	if rep.Status != verify.Degraded || len(bad) != 1 || bad[0].Object != name || bad[0].Target != 2 {
		t.Fatalf("want %s on target 2 reported corrupt by its checksum, got %s: %v", name, rep.Status, rep.Problems)
	}
	if rep.Shards.Checksum != 3*rep.Packs || rep.Shards.SizeOnly != 0 {
		t.Fatalf("want every shard checked by checksum: %+v", rep.Shards)
	}
	if _, err := verify.Repair(ctx, r, rep); err != nil {
		t.Fatal(err)
	}
	if after, err := verify.Run(ctx, r, verify.Options{}); err != nil || after.Status != verify.OK {
		t.Fatalf("after repair: %v %v", err, after.Problems)
	}
	gone := []objstore.Store{objstore.Unavailable("gone", errors.New("gone")), stores[1], stores[2]}
	ro, err := repo.Open(ctx, gone, password)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ro.FindSnapshot(ctx, sum.SnapshotID, "")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "restored.img")
	if _, err := restore.Run(ctx, ro, s, out, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(img)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatal("restored bytes differ")
	}
}

// downgradeIndex rewrites every index object as index version 1, the
// format Ferry wrote before shard checksums (docs/repository-format.md):
// same content, without the shard CRCs, sealed as "ferry index v1".
func (f *fixture) downgradeIndex(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	cl := f.Servers[0].Client(t)
	key := f.masterKey(t)
	for o := range cl.ListObjects(ctx, "ferry", miniogo.ListObjectsOptions{Prefix: "repo/index/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		sealed := f.get(t, cl, o.Key)
		plain, err := key.Open(nil, sealed, []byte("ferry index v2"))
		if err != nil {
			t.Fatalf("%s: %v", o.Key, err)
		}
		batch, err := repo.ParseIndexBatch(plain)
		if err != nil {
			t.Fatal(err)
		}
		v1 := key.Seal(nil, marshalIndexV1(batch), []byte("ferry index v1"))
		sum := sha256.Sum256(v1)
		for _, s := range f.Servers {
			c := s.Client(t)
			if _, err := c.PutObject(ctx, "ferry", "repo/index/"+hex.EncodeToString(sum[:]), bytes.NewReader(v1), int64(len(v1)), miniogo.PutObjectOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := c.RemoveObject(ctx, "ferry", o.Key, miniogo.RemoveObjectOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func (f *fixture) masterKey(t *testing.T) *crypt.Key {
	t.Helper()
	cl := f.Servers[0].Client(t)
	for o := range cl.ListObjects(context.Background(), "ferry", miniogo.ListObjectsOptions{Prefix: "repo/keys/", Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		k, err := crypt.Unwrap(f.get(t, cl, o.Key), password)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	t.Fatal("no key object")
	return nil
}

func (f *fixture) get(t *testing.T, cl *miniogo.Client, key string) []byte {
	t.Helper()
	obj, err := cl.GetObject(context.Background(), "ferry", key, miniogo.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	b, err := io.ReadAll(obj)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// marshalIndexV1 encodes an index object's plaintext in version 1:
//
//	version (1) || packs (uvarint) || packs × (pack ID (32) || pack length (uvarint) || entries (uvarint) || entries × entry)
//	entry: flags (1: bit 0 = zstd) || chunk ID (32) || offset, length, raw length (uvarints)
func marshalIndexV1(b *repo.IndexBatch) []byte {
	out := []byte{1}
	out = binary.AppendUvarint(out, uint64(len(b.Packs)))
	for i, p := range b.Packs {
		out = append(out, p.ID[:]...)
		out = binary.AppendUvarint(out, uint64(p.Length))
		out = binary.AppendUvarint(out, uint64(len(b.Entries[i])))
		for _, e := range b.Entries[i] {
			var flags byte
			if e.Compressed {
				flags = 1
			}
			out = append(out, flags)
			out = append(out, e.ID[:]...)
			out = binary.AppendUvarint(out, uint64(e.Offset))
			out = binary.AppendUvarint(out, uint64(e.Length))
			out = binary.AppendUvarint(out, uint64(e.RawLength))
		}
	}
	return out
}

// TestIndexV1ChecksBySize: a repository whose index objects predate shard
// checksums verifies by listed sizes, says so, and makes no HEAD request;
// the packs of a later backup (index version 2) are checked by checksum.
func TestIndexV1ChecksBySize(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	f.downgradeIndex(t)

	rep := f.run(t, verify.Options{})
	old := 3 * rep.Packs
	if rep.Status != verify.OK || rep.Shards.NotRecorded != old || rep.Shards.SizeOnly != old || rep.Shards.Checksum != 0 || rep.HeadRequests != 0 {
		t.Fatalf("v1 index: status %s, %+v, %d HEAD: %v", rep.Status, rep.Shards, rep.HeadRequests, rep.Problems)
	}
	var text strings.Builder
	rep.WriteText(&text)
	if !strings.Contains(text.String(), "no checksum in the index, version 1") {
		t.Fatalf("the report does not say why shards were checked by size only:\n%s", text.String())
	}
	if rep := f.run(t, verify.Options{ReadDataPercent: 100, StateFile: filepath.Join(t.TempDir(), "state.json")}); rep.Status != verify.OK {
		t.Fatalf("read data of a v1 repository: %v", rep.Problems)
	}

	r := f.open(t)
	img := filepath.Join(t.TempDir(), "new.img")
	if err := volume.Write(img, volume.Spec{Size: 8 << 20, DataFrac: 0.5, Seed: 10}); err != nil {
		t.Fatal(err)
	}
	s, err := backup.File(ctx, r, img, backup.Options{Name: "new"})
	if err != nil {
		t.Fatal(err)
	}
	f.images[s.SnapshotID] = img
	rep = f.run(t, verify.Options{})
	added := 3 * int(s.Packs)
	if rep.Status != verify.OK || rep.Shards.NotRecorded != old || rep.Shards.Checksum != added || rep.HeadRequests != int64(added) {
		t.Fatalf("v1 and v2 index objects: want %d by size, %d by checksum; got %s, %+v, %d HEAD", old, added, rep.Status, rep.Shards, rep.HeadRequests)
	}

	// A replaced shard of a v1 pack goes unseen by sizes; reading finds
	// it, and repair (without recorded checksums) rebuilds it.
	victim := f.packOf(t, f.logs.SnapshotID)
	f.replace(t, victim, 2, scramble)
	if rep := f.run(t, verify.Options{}); rep.Status != verify.OK {
		t.Fatalf("v1: want the replaced shard unseen by the structural check, got %v", rep.Problems)
	}
	f.repairAndCheck(t, 0)
}
