package verify_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	miniogo "github.com/minio/minio-go/v7"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/verify"
)

// put writes b as name (relative to the repository) on server i.
func (f *fixture) put(t *testing.T, i int, name string, b []byte) {
	t.Helper()
	if _, err := f.Servers[i].Client(t).PutObject(context.Background(), "ferry", "repo/"+name, bytes.NewReader(b), int64(len(b)), miniogo.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) remove(t *testing.T, i int, name string) {
	t.Helper()
	if err := f.Servers[i].Client(t).RemoveObject(context.Background(), "ferry", "repo/"+name, miniogo.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
}

// list returns the names (relative to the repository) under dir on server i.
func (f *fixture) list(t *testing.T, i int, dir string) []string {
	t.Helper()
	var out []string
	for o := range f.Servers[i].Client(t).ListObjects(context.Background(), "ferry", miniogo.ListObjectsOptions{Prefix: "repo/" + dir, Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		out = append(out, strings.TrimPrefix(o.Key, "repo/"))
	}
	return out
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestJunkUnderIndexAndSnapshots: objects that are not Ferry's, under
// index/ and snapshots/ on one target, neither stop backups' and restores'
// reads nor hide the snapshots; verify names them and says what to do. An
// index object damaged on every target costs nothing: restores find the
// chunks it indexed in the pack headers, and repair indexes them again.
func TestJunkUnderIndexAndSnapshots(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	junk := []byte("not an object of this repository, named by its SHA-256")
	junkIndex := "index/" + sha(junk)
	junkSnap := "snapshots/" + strings.Repeat("ab", 32) // a name its content does not match
	f.put(t, 1, junkIndex, junk)
	f.put(t, 1, junkSnap, junk)

	r := f.open(t)
	idx, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatalf("load index with junk under index/: %v", err)
	}
	if idx.Len() == 0 {
		t.Fatal("load index with junk under index/: no chunks")
	}
	snaps, err := r.Snapshots(ctx)
	if err != nil || len(snaps) != 2 {
		t.Fatalf("list snapshots with junk under snapshots/: %v (%d snapshots)", err, len(snaps))
	}
	if s, err := r.FindSnapshot(ctx, "latest", ""); err != nil || s.ID != f.logs.SnapshotID {
		t.Fatalf("latest: %v", err)
	}
	f.restoresAll(t)

	rep := f.run(t, verify.Options{})
	unreadable, lost := problems(rep, verify.KindIndexUnreadable), problems(rep, verify.KindSnapshotLost)
	if len(unreadable) != 1 || unreadable[0].Object != junkIndex || !strings.Contains(unreadable[0].Detail, "target 2:") ||
		!strings.Contains(unreadable[0].Detail, "delete it by hand") {
		t.Fatalf("junk index object: %v", unreadable)
	}
	if len(lost) != 1 || lost[0].Object != junkSnap || !strings.Contains(lost[0].Detail, "target 2:") {
		t.Fatalf("junk manifest: %v", lost)
	}
	if len(rep.Problems) != 2 {
		t.Fatalf("want the two junk objects reported, and only as such: %v", rep.Problems)
	}
	// Repair has nothing to copy: only a person can tell junk from lost data.
	if done, err := verify.Repair(ctx, f.open(t), rep); err != nil || len(done.Copied) > 0 {
		t.Fatalf("repair: %v (%+v)", err, done)
	}
	f.remove(t, 1, junkIndex)
	f.remove(t, 1, junkSnap)
	if rep := f.run(t, verify.Options{}); rep.Status != verify.OK {
		t.Fatalf("junk removed: %s: %v", rep.Status, rep.Problems)
	}

	// A real index object damaged on every target: the snapshot whose
	// chunks it indexed no longer restores, naming the chunks; verify
	// finds them in the pack headers, and repair indexes them again.
	var victim string
	first := f.packOf(t, f.db.SnapshotID)
	for _, name := range f.list(t, 0, "index/") {
		b := f.get(t, f.Servers[0].Client(t), "repo/"+name)
		batch, err := r.OpenIndexObject(strings.TrimPrefix(name, "index/"), b)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range batch.Packs {
			if p.ID == first {
				victim = name
			}
		}
	}
	if victim == "" {
		t.Fatal("no index object holds the db snapshot's first pack")
	}
	for i := range f.Servers {
		b := f.get(t, f.Servers[i].Client(t), "repo/"+victim)
		b[40] ^= 1
		f.put(t, i, victim, b)
	}
	// Restores find the chunks it indexed in the headers of the packs the
	// index does not know, without waiting for repair.
	f.restoresAll(t)
	rep = f.run(t, verify.Options{})
	if len(problems(rep, verify.KindIndexUnreadable)) != 1 || len(problems(rep, verify.KindIndexRebuildable)) == 0 || len(rep.Lost) != 0 {
		t.Fatalf("index object damaged everywhere: %s: %v", rep.Status, rep.Problems)
	}
	if done, err := verify.Repair(ctx, f.open(t), rep); err != nil || done.Indexed == 0 {
		t.Fatalf("repair: %v (%+v)", err, done)
	}
	f.restoresAll(t)
	for i := range f.Servers {
		f.remove(t, i, victim)
	}
	if rep := f.run(t, verify.Options{}); rep.Status != verify.OK {
		t.Fatalf("after repair and removing the damaged object: %s: %v", rep.Status, rep.Problems)
	}
}

// forgeShard returns obj (a shard object) with other data whose header,
// data CRC32C and whole-object CRC32C are all valid and the last equal to
// want: what a provider can make of a shard, since CRC32C is linear.
func forgeShard(t *testing.T, obj []byte, want uint32) []byte {
	t.Helper()
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	b := slices.Clone(obj)
	data := b[erasure.HeaderSize:]
	for i := range min(len(data), 4096) {
		data[i] ^= 0x5a
	}
	seal := func(o []byte) uint32 {
		binary.LittleEndian.PutUint32(o[56:], crc32.Checksum(o[erasure.HeaderSize:], castagnoli))
		binary.LittleEndian.PutUint32(o[60:], crc32.Checksum(o[:60], castagnoli))
		return crc32.Checksum(o, castagnoli)
	}
	// The object's CRC is an affine function of the data bits: find which
	// of the 32 bits at pos to flip to reach want (Gaussian elimination
	// over GF(2)).
	const pos = erasure.HeaderSize + 100
	base := seal(b)
	var rows [32]uint64 // low 32 bits: the CRC change; high: which bits
	for j := range 32 {
		b[pos+j/8] ^= 1 << (j % 8)
		rows[j] = uint64(seal(b)^base) | 1<<(32+j)
		b[pos+j/8] ^= 1 << (j % 8)
	}
	target := uint64(base ^ want)
	var sol uint64
	for bit := range 32 {
		p := -1
		for r := bit; r < 32; r++ {
			if rows[r]>>bit&1 != 0 {
				p = r
				break
			}
		}
		if p < 0 {
			t.Fatal("cannot forge: the bits chosen do not span the CRC")
		}
		rows[bit], rows[p] = rows[p], rows[bit]
		for r := range 32 {
			if r != bit && rows[r]>>bit&1 != 0 {
				rows[r] ^= rows[bit]
			}
		}
	}
	for bit := range 32 {
		if target>>bit&1 != 0 {
			sol ^= rows[bit] >> 32
		}
	}
	for j := range 32 {
		if sol>>j&1 != 0 {
			b[pos+j/8] ^= 1 << (j % 8)
		}
	}
	if got := seal(b); got != want || bytes.Equal(b, obj) {
		t.Fatalf("forged shard has CRC32C %08x, want %08x", got, want)
	}
	return b
}

// TestForgedShards: a data shard of one pack and a parity shard of another
// forged with valid header, data and object CRC32Cs, equal to what the
// index recorded, so that even the store's checksum matches. Restores
// leave the forged shard out; verify finds both only by reading the data,
// names them, and repair rewrites them from shards that make the
// authentic pack.
func TestForgedShards(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	a, b := f.packOf(t, f.db.SnapshotID), f.packOf(t, f.logs.SnapshotID)
	forge := func(id pack.ID, i int) {
		f.replace(t, id, i, func(obj []byte) []byte {
			forged := forgeShard(t, obj, repo.ShardCRC(obj))
			if err := erasure.Check(id, i, erasure.Scheme{K: 2, M: 1}, forged); err != nil {
				t.Fatalf("forged shard fails its checks: %v", err)
			}
			return forged
		})
	}
	forge(a, 0) // a data shard: decoding uses it
	forge(b, 2) // parity: decoding does not need it

	r := f.open(t)
	p, problems, err := r.ReadPack(ctx, a)
	if err != nil || pack.Sum(p) != a {
		t.Fatalf("read the pack with a forged data shard: %v", err)
	}
	if len(problems) != 1 || problems[0].Shard != 0 || problems[0].Reason != repo.ReasonNotAuthentic {
		t.Fatalf("read the pack with a forged data shard: problems %v", problems)
	}
	f.restoresAll(t)

	// By its checksums the shard is fine: only reading the data tells.
	if rep := f.run(t, verify.Options{}); rep.Status != verify.OK {
		t.Fatalf("structural verify: %s: %v", rep.Status, rep.Problems)
	}
	state := filepath.Join(t.TempDir(), "state.json")
	rep := f.run(t, verify.Options{ReadDataPercent: 100, StateFile: state})
	corrupt := shardProblems(rep, verify.KindShardCorrupt)
	slices.Sort(corrupt)
	want := []string{a.Short() + " 0 " + repo.ReasonNotAuthentic, b.Short() + " 2 " + repo.ReasonNotEncoded}
	slices.Sort(want)
	if rep.Status != verify.Degraded || !slices.Equal(corrupt, want) {
		t.Fatalf("read-data verify: %s: %v", rep.Status, rep.Problems)
	}
	done, err := verify.Repair(ctx, f.open(t), rep)
	if err != nil || len(done.Shards) != 2 {
		t.Fatalf("repair: %v (%+v)", err, done)
	}
	if rep := f.run(t, verify.Options{ReadDataPercent: 100, StateFile: state}); rep.Status != verify.OK {
		t.Fatalf("after repair: %s: %v", rep.Status, rep.Problems)
	}
	// The shards repair wrote are the ones first written: the pack reads
	// from any two.
	f.Servers[1].Stop()
	f.restoresAll(t)
}

// shardProblems lists the shard problems of a kind as "pack shard detail".
func shardProblems(rep *verify.Report, kind string) []string {
	var out []string
	for _, p := range problems(rep, kind) {
		shard := -1
		if p.Shard != nil {
			shard = *p.Shard
		}
		out = append(out, fmt.Sprintf("%s %d %s", p.Pack[:8], shard, p.Detail))
	}
	return out
}

// TestTamperedKeyAndManifestCopies: a key object changed on the last
// target, a manifest changed on the second (the first copy intact), and a
// key object of another repository with the same password added. Verify
// compares every copy, so it reports each; repair replaces the copies
// (the foreign key object is for a person to delete).
func TestTamperedKeyAndManifestCopies(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	keys := f.list(t, 2, "keys/")
	if len(keys) != 1 {
		t.Fatalf("key objects: %v", keys)
	}
	key := keys[0]
	k := f.get(t, f.Servers[2].Client(t), "repo/"+key)
	k[len(k)/2] ^= 1
	f.put(t, 2, key, k)
	manifest := "snapshots/" + f.db.SnapshotID
	m := f.get(t, f.Servers[1].Client(t), "repo/"+manifest)
	m[40] ^= 1
	f.put(t, 1, manifest, m)

	f.restoresAll(t)
	rep := f.run(t, verify.Options{Password: password})
	var got []string
	for _, p := range problems(rep, verify.KindObjectCorrupt) {
		got = append(got, fmt.Sprintf("%s %d", p.Object, p.Target))
	}
	slices.Sort(got)
	if want := []string{key + " 3", manifest + " 2"}; !slices.Equal(got, want) || rep.Status != verify.Degraded || len(rep.Problems) != 2 {
		t.Fatalf("verify: %s: want object-corrupt %v, got %v (%v)", rep.Status, want, got, rep.Problems)
	}
	done, err := verify.Repair(ctx, f.open(t), rep)
	if err != nil || !slices.Contains(done.Copied, "target 3: "+key) || !slices.Contains(done.Copied, "target 2: "+manifest) {
		t.Fatalf("repair: %v (%+v)", err, done)
	}
	if rep := f.run(t, verify.Options{Password: password}); rep.Status != verify.OK || len(rep.Problems) != 0 {
		t.Fatalf("after repair: %s: %v", rep.Status, rep.Problems)
	}

	// A key object that opens with the password to another master key
	// (another repository's) makes Open fail where it is met first: given
	// the password, verify names it, and repair does not spread it.
	mem := objstore.NewMem()
	if _, err := repo.Init(ctx, []objstore.Store{mem}, password, repo.Options{Erasure: erasure.Scheme{K: 1}, KDF: crypt.KDFParams{N: 1024, R: 8, P: 1}}); err != nil {
		t.Fatal(err)
	}
	var foreign string
	if err := mem.List(ctx, "keys/", func(i objstore.Info) error { foreign = i.Name; return nil }); err != nil {
		t.Fatal(err)
	}
	fb, err := mem.Get(ctx, foreign)
	if err != nil {
		t.Fatal(err)
	}
	f.put(t, 2, foreign, fb)
	rep = f.run(t, verify.Options{Password: password})
	if fp := problems(rep, verify.KindObjectForeign); len(fp) != 1 || fp[0].Object != foreign || !strings.Contains(fp[0].Detail, "another repository's master key") || len(rep.Problems) != 1 {
		t.Fatalf("foreign key object: %s: %v", rep.Status, rep.Problems)
	}
	if done, err := verify.Repair(ctx, f.open(t), rep); err != nil || len(done.Copied) != 0 {
		t.Fatalf("repair: %v (%+v)", err, done)
	}
	if keys := f.list(t, 0, "keys/"); !slices.Equal(keys, []string{key}) {
		t.Fatalf("repair spread the foreign key object: target 1 has %v", keys)
	}
	f.remove(t, 2, foreign)
	if rep := f.run(t, verify.Options{Password: password}); rep.Status != verify.OK || len(rep.Problems) != 0 {
		t.Fatalf("foreign key object removed: %s: %v", rep.Status, rep.Problems)
	}
}

// TestJunkUnderPlansLocksDeletions: an object of one provider's own under
// plans/, locks/ or deletions/ on one target stops neither backups nor
// prune (it is no object in force: a prune writes those to every target),
// and verify names each as a notice.
func TestJunkUnderPlansLocksDeletions(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	junk := []byte("not an object of this repository, named by its SHA-256")
	var names []string
	for _, dir := range []string{"plans/", "locks/", "deletions/"} {
		names = append(names, dir+sha(junk))
		f.put(t, 1, dir+sha(junk), junk)
	}
	r := f.open(t)
	img := filepath.Join(t.TempDir(), "new.img")
	if err := volume.Write(img, volume.Spec{Size: 8 << 20, DataFrac: 0.5, Seed: 77}); err != nil {
		t.Fatal(err)
	}
	s, err := backup.File(ctx, r, img, backup.Options{Name: "new"})
	if err != nil {
		t.Fatalf("backup with junk under plans/, locks/, deletions/: %v", err)
	}
	f.images[s.SnapshotID] = img
	if _, err := r.Prune(ctx, repo.PruneOptions{Grace: time.Hour}); err != nil {
		t.Fatalf("prune with junk under plans/, locks/, deletions/: %v", err)
	}
	rep := f.run(t, verify.Options{})
	foreign := problems(rep, verify.KindObjectForeign)
	var got []string
	for _, p := range foreign {
		if p.Severity != verify.Notice || !strings.Contains(p.Detail, "target 2:") || !strings.Contains(p.Detail, "delete it by hand") {
			t.Errorf("junk %s reported as %s: %s", p.Object, p.Severity, p.Detail)
		}
		got = append(got, p.Object)
	}
	slices.Sort(got)
	slices.Sort(names)
	if !slices.Equal(got, names) || len(rep.Problems) != len(names) || rep.Status != verify.OK {
		t.Fatalf("verify: %s, object-foreign %v, want %v; all: %v", rep.Status, got, names, rep.Problems)
	}
	f.restoresAll(t)
}
