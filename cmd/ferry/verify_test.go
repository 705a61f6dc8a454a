package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/testenv/loop"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/objstore"
)

type verifyJSON struct {
	Status      string `json:"status"`
	Packs       int    `json:"packs"`
	ShardChecks struct {
		Checksum int `json:"checksum"`
		SizeOnly int `json:"size_only"`
		Skipped  int `json:"skipped"`
	} `json:"shard_checks"`
	HeadRequests int `json:"head_requests"`
	ReadData     *struct {
		Packs int `json:"packs"`
	} `json:"read_data"`
	Drill *struct {
		BytesVolume    int64   `json:"bytes_volume"`
		BytesPerSecond float64 `json:"bytes_per_second"`
	} `json:"drill"`
	Lost []struct {
		ID, Name string
	} `json:"lost_snapshots"`
	Problems []struct {
		Kind   string `json:"kind"`
		Target int    `json:"target"`
	} `json:"problems"`
}

func TestCLIVerify(t *testing.T) {
	repoURL, dirs := fileRepo(t, 3)
	env := []string{"FERRY_REPO=" + repoURL, "FERRY_PASSWORD=correct horse"}
	work := t.TempDir()
	img := filepath.Join(work, "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 24 << 20, DataFrac: 0.5, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	mustFerry(t, env, "init", "--erasure", "2+1")
	id := strings.TrimSpace(mustFerry(t, env, "backup", "--name", "db", img))
	state := filepath.Join(work, "state", "verify.json")

	var v verifyJSON
	out := mustFerry(t, env, "verify", "--json", "--read-data-percent", "100", "--state-file", state, "--drill", "latest")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatal(err)
	}
	if v.Status != "ok" || v.Packs == 0 || v.ReadData == nil || v.ReadData.Packs != v.Packs || v.Drill == nil || v.Drill.BytesVolume != 24<<20 {
		t.Fatalf("healthy verify: %s", out)
	}
	if _, err := os.Stat(state); err != nil {
		t.Fatalf("state file not written: %v", err)
	}
	if v.ShardChecks.Checksum != 3*v.Packs || v.HeadRequests != 3*v.Packs {
		t.Fatalf("want every shard checked by checksum, one HEAD each: %s", out)
	}
	v = verifyJSON{}
	out = mustFerry(t, env, "verify", "--json", "--sizes-only")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatal(err)
	}
	if v.Status != "ok" || v.ShardChecks.Skipped != 3*v.Packs || v.ShardChecks.Checksum != 0 || v.HeadRequests != 0 {
		t.Fatalf("--sizes-only: %s", out)
	}
	scratch := filepath.Join(work, "scratch.img")
	if out := mustFerry(t, env, "verify", "--drill", id[:8], "--drill-target", scratch); !strings.Contains(out, "digest verified") || !strings.Contains(out, "status: ok") {
		t.Fatalf("drill into a scratch file: %s", out)
	}
	if _, err := os.Stat(scratch); !os.IsNotExist(err) {
		t.Fatalf("drill left its scratch file behind: %v", err)
	}
	if r := ferry(t, env, "verify", "--drill", "latest", "--drill-target", img); r.code != exitUsage {
		t.Fatalf("drill over an existing file: exit %d, %s", r.code, r.stderr)
	}
	// A scratch volume that held other data ends holding the snapshot,
	// its zero ranges zeroed too; past the snapshot's end it is untouched.
	backing := filepath.Join(work, "scratch-volume.img")
	if err := os.WriteFile(backing, bytes.Repeat([]byte{0xEE}, 25<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := loop.Attach(t, backing, false)
	if out := mustFerry(t, env, "verify", "--drill", "latest", "--drill-target", dev); !strings.Contains(out, "digest verified") {
		t.Fatalf("drill into a block device: %s", out)
	}
	got, err := os.ReadFile(dev)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(want)], want) || !bytes.Equal(got[len(want):], bytes.Repeat([]byte{0xEE}, len(got)-len(want))) {
		t.Fatal("after a drill into a block device, the device does not hold the snapshot followed by what it held")
	}

	// A shard replaced by other bytes of its size, through the store (which
	// keeps the new bytes' checksum): found without reading, unless
	// --sizes-only; repaired.
	shards, _ := filepath.Glob(filepath.Join(dirs[2], "data", "*", "*.2"))
	if len(shards) == 0 {
		t.Fatal("no shards on target 3")
	}
	store, err := objstore.NewFile(dirs[2])
	if err != nil {
		t.Fatal(err)
	}
	name, _ := filepath.Rel(dirs[2], shards[0])
	obj, err := store.Get(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := store.Stat(t.Context(), name); err != nil || !info.HasCRC32C {
		t.Skipf("the test's file system keeps no user xattrs: %+v %v", info, err)
	}
	for i := range obj {
		obj[i] ^= 0x5a
	}
	if err := store.Delete(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	if err := store.Create(t.Context(), name, obj); err != nil {
		t.Fatal(err)
	}
	r := ferry(t, env, "verify")
	if r.code != exitDegraded || !strings.Contains(r.stdout, "shard-corrupt") || !strings.Contains(r.stdout, "target 3") {
		t.Fatalf("a replaced shard: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if r := ferry(t, env, "verify", "--sizes-only"); r.code != 0 {
		t.Fatalf("a replaced shard, --sizes-only: exit %d\n%s", r.code, r.stdout)
	}
	if r := ferry(t, env, "repair"); r.code != 0 || !strings.Contains(r.stdout, "rebuilt pack") {
		t.Fatalf("repair of a replaced shard: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}

	// One shard gone: degraded, exit 4, the target named.
	shards, _ = filepath.Glob(filepath.Join(dirs[1], "data", "*", "*.1"))
	if len(shards) == 0 {
		t.Fatal("no shards on target 2")
	}
	if err := os.Remove(shards[0]); err != nil {
		t.Fatal(err)
	}
	r = ferry(t, env, "verify")
	if r.code != exitDegraded || !strings.Contains(r.stdout, "shard-missing") || !strings.Contains(r.stdout, "target 2") {
		t.Fatalf("one shard gone: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}

	// Its sibling on target 1 too: data lost, exit 3, the snapshot named.
	sibling := filepath.Join(dirs[0], strings.TrimPrefix(strings.TrimSuffix(shards[0], ".1"), dirs[1])+".0")
	if err := os.Remove(sibling); err != nil {
		t.Fatal(err)
	}
	r = ferry(t, env, "verify", "--json")
	if r.code != exitDataLost || !strings.Contains(r.stderr, id[:12]) || !strings.Contains(r.stderr, "db") {
		t.Fatalf("two shards of a pack gone: exit %d\n%s", r.code, r.stderr)
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.Status != "data lost" || len(v.Lost) != 1 || v.Lost[0].ID != id {
		t.Fatalf("json of a lost snapshot: %v %s", err, r.stdout)
	}
}
