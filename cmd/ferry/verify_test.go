package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/testenv/volume"
)

type verifyJSON struct {
	Status   string `json:"status"`
	Packs    int    `json:"packs"`
	ReadData *struct {
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

	// One shard gone: degraded, exit 4, the target named.
	shards, _ := filepath.Glob(filepath.Join(dirs[1], "data", "*", "*.1"))
	if len(shards) == 0 {
		t.Fatal("no shards on target 2")
	}
	if err := os.Remove(shards[0]); err != nil {
		t.Fatal(err)
	}
	r := ferry(t, env, "verify")
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
