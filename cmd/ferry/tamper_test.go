package main

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	miniogo "github.com/minio/minio-go/v7"

	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/testenv/volume"
)

// tamperRepo is what a case tampers with: a repository with two snapshots
// of two different volumes, so that each has its own manifest, index object
// and packs.
type tamperRepo struct {
	t      *testing.T
	c      *minio.Cluster
	m      multiRepo
	prefix string // of the repository on every server
	key    string // keys/<sha256>
	// Per snapshot: the manifest's ID, and the index objects and packs
	// its backup wrote.
	snap  [2]string
	index [2][]string
	packs [2][]string
}

// otherPrefix holds the repository of another cluster, with the same
// password, whose objects the cases put in place of ours.
const otherPrefix = "other"

// newTamperRepo creates a repository under prefix with two snapshots named
// db, of images[0] and then images[1], and records what each backup wrote.
func newTamperRepo(t *testing.T, c *minio.Cluster, prefix, password string, images [2]string) *tamperRepo {
	t.Helper()
	r := &tamperRepo{t: t, c: c, m: initRepo(t, c, prefix, password), prefix: prefix}
	keys := r.names(1, "keys/")
	if len(keys) != 1 {
		t.Fatalf("%d key objects", len(keys))
	}
	r.key = keys[0]
	env := s3Env(c, r.m.repo(), password)
	for i, img := range images {
		idx, packs := r.names(1, "index/"), r.packIDs()
		r.snap[i] = strings.TrimSpace(mustFerry(t, env, "backup", "--name", "db", img))
		r.index[i] = without(r.names(1, "index/"), idx)
		r.packs[i] = without(r.packIDs(), packs)
		if len(r.index[i]) == 0 || len(r.packs[i]) < 2 {
			t.Fatalf("backup %d wrote index objects %v and packs %v: want at least 1 and 2", i+1, r.index[i], r.packs[i])
		}
	}
	return r
}

// expand replaces the placeholders of an expected message with this
// repository's names: {snap0}, {index0}, {pack0} (and its first 8 hex
// digits, {pack0short}), {key}.
func (r *tamperRepo) expand(s string) string {
	return strings.NewReplacer("{snap0}", r.snap[0], "{index0}", r.index[0][0], "{pack0}", r.packs[0][0],
		"{pack0short}", r.packs[0][0][:8], "{key}", r.key).Replace(s)
}

func (r *tamperRepo) server(target int) *minio.Server { return r.c.Servers[target-1] }

func (r *tamperRepo) get(target int, name string) []byte {
	return getObject(r.t, r.server(target), r.prefix+"/"+name)
}

func (r *tamperRepo) put(target int, name string, b []byte) {
	putObject(r.t, r.server(target), r.prefix+"/"+name, b)
}

func (r *tamperRepo) remove(target int, name string) {
	removeObject(r.t, r.server(target), r.prefix+"/"+name)
}

// names lists the objects under dir (such as "index/") on a target, named
// relative to the repository.
func (r *tamperRepo) names(target int, dir string) []string {
	return listNames(r.t, r.server(target), r.prefix+"/", dir)
}

func (r *tamperRepo) packIDs() []string {
	var ids []string
	for _, n := range r.names(1, "data/") {
		ids = append(ids, strings.TrimSuffix(path.Base(n), ".0"))
	}
	return ids
}

// otherName is the first object under dir of the other cluster's
// repository on a target, and otherObj its content.
func (r *tamperRepo) otherName(target int, dir string) string {
	names := listNames(r.t, r.server(target), otherPrefix+"/", dir)
	if len(names) == 0 {
		r.t.Fatalf("the other repository has nothing under %s", dir)
	}
	return names[0]
}

func (r *tamperRepo) otherObj(target int, name string) []byte {
	return getObject(r.t, r.server(target), otherPrefix+"/"+name)
}

func (r *tamperRepo) everywhere(fn func(target int)) {
	for t := 1; t <= len(r.c.Servers); t++ {
		fn(t)
	}
}

// flip flips one bit of the object at off (from the end when negative).
func (r *tamperRepo) flip(target int, name string, off int) {
	b := r.get(target, name)
	if off < 0 {
		off += len(b)
	}
	b[off] ^= 0x10
	r.put(target, name, b)
}

// flipSealedKey changes a byte of the sealed master key in the key object
// on a target, keeping the JSON well formed.
func (r *tamperRepo) flipSealedKey(target int) {
	obj := r.get(target, r.key)
	var kf struct{ Data []byte }
	if err := json.Unmarshal(obj, &kf); err != nil {
		r.t.Fatal(err)
	}
	old := base64.StdEncoding.EncodeToString(kf.Data)
	kf.Data[20] ^= 0x10
	r.put(target, r.key, bytes.Replace(obj, []byte(old), []byte(base64.StdEncoding.EncodeToString(kf.Data)), 1))
}

// swap exchanges the contents of object a on target ta and object b on
// target tb.
func (r *tamperRepo) swap(ta int, a string, tb int, b string) {
	x, y := r.get(ta, a), r.get(tb, b)
	r.put(ta, a, y)
	r.put(tb, b, x)
}

// forge changes a byte of a shard's data and fixes both CRCs of its
// header: a shard that passes every check of its own (a CRC32C is no
// protection against someone who means it).
func (r *tamperRepo) forge(target int, name string) {
	b := r.get(target, name)
	b[len(b)-1] ^= 0x10
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	binary.LittleEndian.PutUint32(b[56:], crc32.Checksum(b[64:], castagnoli))
	binary.LittleEndian.PutUint32(b[60:], crc32.Checksum(b[:60], castagnoli))
	r.put(target, name, b)
}

// junk is an object no key opens, and junkName its SHA-256.
var (
	junk     = bytes.Repeat([]byte("not a Ferry object "), 20)
	junkName = sha256Hex(junk)
)

// shard is the name of shard i of pack p (on target i+1 with 2+1 on three).
func shard(p string, i int) string { return fmt.Sprintf("data/%s/%s.%d", p[:2], p, i) }

// TestTamper lets a storage provider with full access tamper with every
// kind of object on the targets, one case at a time on a fresh repository
// on three MinIO servers: it flips a byte, swaps two objects of a kind,
// replaces one with the object of another repository (same password), or
// forges a shard with valid checksums. Then `ferry restore` and `ferry
// verify --read-data-percent 100` run. Each case states what they do:
// restore either gives back the exact volume (rebuilding from parity what
// it finds damaged among the bytes it reads, and saying so) or fails naming
// the object; verify names it. Wrong data is never returned without an error. The one thing a
// provider can do undetected, hiding the newest snapshot, is a case too.
func TestTamper(t *testing.T) {
	c := minio.StartCluster(t, 3, "ferry", "")
	const password = "tamper test"
	work := t.TempDir()
	var images [2]string
	for i := range images {
		images[i] = filepath.Join(work, fmt.Sprintf("vol%d.img", i))
		if err := volume.Write(images[i], volume.Spec{Size: 6 << 20, DataFrac: 0.5, Seed: uint64(20 + i)}); err != nil {
			t.Fatal(err)
		}
	}
	other := initRepo(t, c, otherPrefix, password)
	mustFerry(t, s3Env(c, other.repo(), password), "backup", "--name", "db", images[0])

	// An outcome is an exit code and what the output says, with the
	// placeholders of tamperRepo.expand.
	type outcome struct {
		code int
		says []string
	}
	cases := []struct {
		name    string
		tamper  func(r *tamperRepo)
		latest  bool // restore "latest --name db" rather than the first snapshot by ID (see the loop)
		newest  bool // with latest: the restore gives the second volume, the newest snapshot
		restore outcome
		verify  outcome
	}{
		// config: sealed with the repository's key; it records the
		// target's position.
		{name: "config: flipped byte", tamper: func(r *tamperRepo) { r.flip(2, "config", 40) },
			restore: outcome{1, []string{"target 2 (", "config does not open"}},
			verify:  outcome{1, []string{"target 2 (", "config does not open"}}},
		{name: "config: swapped between targets", tamper: func(r *tamperRepo) { r.swap(1, "config", 2, "config") },
			restore: outcome{1, []string{"target 1 (", "is target 2 of this repository"}},
			verify:  outcome{1, []string{"target 1 (", "is target 2 of this repository"}}},
		{name: "config: another repository's", tamper: func(r *tamperRepo) { r.put(3, "config", r.otherObj(3, "config")) },
			restore: outcome{1, []string{"target 3 (", "belongs to another repository"}},
			verify:  outcome{1, []string{"target 3 (", "belongs to another repository"}}},

		// key objects: JSON holding the master key sealed under the
		// password's scrypt key, one per password, named by their SHA-256.
		// A key that does not open is a wrong password, as far as anyone
		// can tell.
		{name: "key object: sealed key changed on every target", tamper: func(r *tamperRepo) { r.everywhere(r.flipSealedKey) },
			restore: outcome{1, []string{"wrong password: no key in the repository opens with it"}},
			verify:  outcome{1, []string{"wrong password: no key in the repository opens with it"}}},
		{name: "key object: another repository's on every target", tamper: func(r *tamperRepo) {
			r.everywhere(func(t int) {
				name := r.otherName(t, "keys/")
				r.remove(t, r.key)
				r.put(t, name, r.otherObj(t, name))
			})
		},
			restore: outcome{1, []string{"target 1 (", "config does not open"}},
			verify:  outcome{1, []string{"target 1 (", "config does not open"}}},
		{name: "key object: another repository's on one target", tamper: func(r *tamperRepo) {
			name := r.otherName(3, "keys/")
			r.remove(3, r.key)
			r.put(3, name, r.otherObj(3, name))
		},
			restore: outcome{0, nil},
			verify:  outcome{4, []string{"target 3 {key}: missing"}}},

		// index objects: sealed, named by the SHA-256 of their bytes.
		{name: "index object: flipped byte on the first target", tamper: func(r *tamperRepo) { r.flip(1, r.index[0][0], 30) },
			restore: outcome{0, nil},
			verify:  outcome{4, []string{"object-corrupt target 1 {index0}", "content does not match its name"}}},
		{name: "index object: flipped byte on every target", tamper: func(r *tamperRepo) { r.everywhere(func(t int) { r.flip(t, r.index[0][0], 30) }) },
			restore: outcome{0, []string{"{index0}", "authentication failed", "missing from the index; looking for them in the headers"}},
			verify:  outcome{4, []string{"index-unreadable {index0}", "no target has a valid copy", "repair rebuilds the index from its header"}}},
		{name: "index objects: swapped", tamper: func(r *tamperRepo) { r.everywhere(func(t int) { r.swap(t, r.index[0][0], t, r.index[1][0]) }) },
			restore: outcome{0, nil},
			verify:  outcome{4, []string{"{index0}", "content does not match its name"}}},
		{name: "index object: another repository's", tamper: func(r *tamperRepo) {
			r.everywhere(func(t int) { r.put(t, r.index[0][0], r.otherObj(t, r.otherName(t, "index/"))) })
		},
			restore: outcome{0, []string{"{index0}", "authentication failed", "missing from the index; looking for them in the headers"}},
			verify:  outcome{4, []string{"index-unreadable {index0}", "no target has a valid copy", "repair rebuilds the index from its header"}}},

		// An object on one target that opens nowhere: junk named by its
		// SHA-256. Readers skip it with a warning (a copy that authenticates
		// on another target would be read instead; a target that does not
		// answer still fails the read), and verify names it.
		{name: "index object: junk on one target", tamper: func(r *tamperRepo) { r.put(2, "index/"+junkName, junk) },
			restore: outcome{0, []string{"skipping an index object that no target has a valid copy of", "index/" + junkName, "target 2: authentication failed"}},
			verify:  outcome{4, []string{"index/" + junkName}}},

		// manifests: sealed, named by the SHA-256 of their bytes.
		{name: "manifest: flipped byte on the first target", tamper: func(r *tamperRepo) { r.flip(1, "snapshots/"+r.snap[0], 30) },
			restore: outcome{0, nil},
			verify:  outcome{4, []string{"object-corrupt target 1 snapshots/{snap0}", "content does not match its name"}}},
		{name: "manifest: flipped byte on every target", tamper: func(r *tamperRepo) { r.everywhere(func(t int) { r.flip(t, "snapshots/"+r.snap[0], 30) }) },
			restore: outcome{1, []string{"snapshots/{snap0}", "content does not match its name"}},
			verify:  outcome{3, []string{"manifest unreadable on every target"}}},
		{name: "manifests: swapped", tamper: func(r *tamperRepo) {
			r.everywhere(func(t int) { r.swap(t, "snapshots/"+r.snap[0], t, "snapshots/"+r.snap[1]) })
		},
			restore: outcome{1, []string{"snapshots/{snap0}", "content does not match its name"}},
			verify:  outcome{3, []string{"2 snapshot(s) cannot be restored"}}},
		{name: "manifest: another repository's, under its own name", tamper: func(r *tamperRepo) {
			r.everywhere(func(t int) {
				name := r.otherName(t, "snapshots/")
				r.put(t, name, r.otherObj(t, name))
			})
		},
			latest:  true,
			newest:  true,
			restore: outcome{0, []string{"a manifest no target has a valid copy of might have been a newer one", "authentication failed"}},
			verify:  outcome{3, []string{"1 snapshot(s) cannot be restored"}}},
		{name: "manifest: another repository's, under ours", tamper: func(r *tamperRepo) {
			r.everywhere(func(t int) { r.put(t, "snapshots/"+r.snap[0], r.otherObj(t, r.otherName(t, "snapshots/"))) })
		},
			restore: outcome{1, []string{"snapshots/{snap0}", "content does not match its name"}},
			verify:  outcome{3, []string{"manifest unreadable on every target"}}},
		// "latest" fails closed too: the object might be the newest
		// snapshot. Snapshots named by ID still restore.
		{name: "manifest: junk on one target", tamper: func(r *tamperRepo) { r.put(2, "snapshots/"+junkName, junk) },
			latest:  true,
			newest:  true,
			restore: outcome{0, []string{"a manifest no target has a valid copy of might have been a newer one", junkName, "target 2: authentication failed"}},
			verify:  outcome{3, []string{junkName[:12]}}},
		// What a provider can do undetected: hide the newest snapshot.
		// "latest" is then the one before, whole and authentic (see
		// docs/security.md, rollback).
		{name: "manifest: newest hidden, not detected", tamper: func(r *tamperRepo) {
			r.everywhere(func(t int) { r.remove(t, "snapshots/"+r.snap[1]) })
		},
			latest:  true,
			restore: outcome{0, nil},
			verify:  outcome{0, nil}},

		// shards: a 64-byte header and data, each with a CRC32C; the pack
		// they make up must hash to its ID, and every blob in it is sealed.
		// A restore may read just the byte ranges of the blobs it needs and
		// rely on their seals, so it notices damage only where it reads;
		// verify reads everything.
		{name: "shards: header byte flipped in one shard of every pack", tamper: func(r *tamperRepo) {
			for _, p := range r.packs[0] {
				r.flip(1, shard(p, 0), 9)
			}
		},
			restore: outcome{0, nil},
			verify:  outcome{4, []string{"pack {pack0short} shard 0", "header: crc mismatch"}}},
		{name: "shards: data byte flipped in one shard of every pack", tamper: func(r *tamperRepo) {
			for _, p := range r.packs[0] {
				r.flip(2, shard(p, 1), 64+100)
			}
		},
			restore: outcome{0, []string{"reconstructed from parity: pack {pack0short} shard 1 on target 2: corrupt shard 1 of pack {pack0}: crc mismatch"}},
			verify:  outcome{4, []string{"pack {pack0short} shard 1", "crc mismatch"}}},
		{name: "shards: two of one pack flipped", tamper: func(r *tamperRepo) {
			r.flip(1, shard(r.packs[0][0], 0), 64+100)
			r.flip(3, shard(r.packs[0][0], 2), 64+100)
		},
			restore: outcome{3, []string{"data lost: pack {pack0}: pack lost: only 1 of 3 shards intact, 2 needed",
				"shard 0 on target 1: corrupt shard 0 of pack {pack0}: crc mismatch", "shard 2 on target 3: corrupt shard 2 of pack {pack0}: crc mismatch"}},
			verify: outcome{3, []string{"{pack0short}"}}},
		{name: "shards: one forged with valid checksums", tamper: func(r *tamperRepo) { r.forge(1, shard(r.packs[0][0], 0)) },
			restore: outcome{0, []string{"pack {pack0short} shard 0 on target 1", "passes its checksums, but the pack is authentic only without it"}},
			verify:  outcome{4, []string{"pack {pack0short} shard 0"}}},
		{name: "shards: swapped between two packs", tamper: func(r *tamperRepo) { r.swap(1, shard(r.packs[0][0], 0), 1, shard(r.packs[0][1], 0)) },
			restore: outcome{0, []string{"reconstructed from parity: pack {pack0short} shard 0 on target 1", "wrong pack id"}},
			verify:  outcome{4, []string{"pack {pack0short} shard 0"}}},
		{name: "shard: another repository's", tamper: func(r *tamperRepo) {
			r.put(1, shard(r.packs[0][0], 0), r.otherObj(1, r.otherName(1, "data/")))
		},
			restore: outcome{0, []string{"reconstructed from parity: pack {pack0short} shard 0 on target 1", "wrong pack id"}},
			verify:  outcome{4, []string{"pack {pack0short} shard 0"}}},
		{name: "shard: deleted", tamper: func(r *tamperRepo) { r.remove(2, shard(r.packs[0][0], 1)) },
			restore: outcome{0, []string{"reconstructed from parity: pack {pack0short} shard 1 on target 2: missing"}},
			verify:  outcome{4, []string{"pack {pack0short} shard 1", "missing"}}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newTamperRepo(t, c, fmt.Sprintf("case%02d", i), password, images)
			tc.tamper(r)
			// The restore and verify run as on another machine, without
			// the local index cache the backups filled: that cache holds
			// the index objects as they were written and would hide the
			// tampering with them (which is its purpose).
			env := append(s3Env(c, r.m.repo(), password), "FERRY_CACHE_DIR="+t.TempDir())
			expand := func(says []string) []string {
				out := make([]string, len(says))
				for i, s := range says {
					out[i] = r.expand(s)
				}
				return out
			}

			// The first volume is what a restore that succeeds gives back:
			// by ID, or as "latest" once the newest snapshot is hidden; the
			// second when "latest" is the newest despite a manifest it
			// skipped (newest).
			args := []string{"restore", r.snap[0]}
			if tc.latest {
				args = []string{"restore", "latest", "--name", "db"}
			}
			out := filepath.Join(t.TempDir(), "out.img")
			res := ferry(t, env, append(args, "--target", out)...)
			if res.code != tc.restore.code {
				t.Errorf("restore: exit %d, want %d; stderr:\n%s", res.code, tc.restore.code, res.stderr)
			}
			says(t, "restore", res.stderr, expand(tc.restore.says))
			if res.code == 0 && tc.newest {
				sameFile(t, images[1], out)
			} else if res.code == 0 {
				sameFile(t, images[0], out)
			} else if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("a failed restore left %s", out)
			}

			res = ferry(t, env, "verify", "--read-data-percent", "100", "--state-file", filepath.Join(t.TempDir(), "state"))
			if res.code != tc.verify.code {
				t.Errorf("verify: exit %d, want %d; output:\n%s%s", res.code, tc.verify.code, res.stdout, res.stderr)
			}
			says(t, "verify", res.stdout+res.stderr, expand(tc.verify.says))
		})
	}
}

func says(t *testing.T, what, out string, want []string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s does not say %q:\n%s", what, w, out)
		}
	}
}

func without(all, old []string) []string {
	var out []string
	for _, x := range all {
		if !slices.Contains(old, x) {
			out = append(out, x)
		}
	}
	return out
}

func listNames(t *testing.T, s *minio.Server, prefix, dir string) []string {
	t.Helper()
	var out []string
	for o := range s.Client(t).ListObjects(t.Context(), "ferry", miniogo.ListObjectsOptions{Prefix: prefix + dir, Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		out = append(out, strings.TrimPrefix(o.Key, prefix))
	}
	slices.Sort(out)
	return out
}
