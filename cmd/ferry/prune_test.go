package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/testenv/volume"
)

// TestCLIForgetPrune: forget by keep rules (dry run first) and by ID,
// then two prune runs; what stays verifies and restores. Bad command
// lines exit 2.
func TestCLIForgetPrune(t *testing.T) {
	repoURL, _ := fileRepo(t, 3)
	env := []string{"FERRY_REPO=" + repoURL, "FERRY_PASSWORD=pw"}
	work := t.TempDir()
	mustFerry(t, env, "init", "--erasure", "2+1")
	var ids []string
	for i, name := range []string{"db", "db", "logs", "db"} {
		img := filepath.Join(work, name+string(rune('a'+i)))
		if err := volume.Write(img, volume.Spec{Size: 8 << 20, DataFrac: 0.8, Seed: uint64(10 + i)}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, strings.TrimSpace(mustFerry(t, env, "backup", "--name", name, img)))
	}

	for _, args := range [][]string{
		{"forget"},
		{"forget", "--keep-last", "-1"},
		{"forget", "--keep-last", "1", ids[0]},
		{"forget", "--name", "db", ids[0]},
		{"prune", "--grace", "-1s"},
		{"prune", "extra"},
	} {
		if r := ferry(t, env, args...); r.code != 2 {
			t.Errorf("ferry %s: exit %d, want 2 (%s)", strings.Join(args, " "), r.code, r.stderr)
		}
	}

	var dry struct {
		DryRun    bool `json:"dry_run"`
		Forget    int  `json:"forget"`
		Snapshots []struct {
			ID      string   `json:"id"`
			Keep    bool     `json:"keep"`
			Reasons []string `json:"reasons"`
		} `json:"snapshots"`
	}
	out := mustFerry(t, env, "forget", "--keep-last", "1", "--name", "db", "--dry-run", "--json")
	if err := json.Unmarshal([]byte(out), &dry); err != nil {
		t.Fatal(err)
	}
	if !dry.DryRun || dry.Forget != 2 || len(dry.Snapshots) != 3 || !dry.Snapshots[0].Keep || dry.Snapshots[0].ID != ids[3] || dry.Snapshots[0].Reasons[0] != "last" {
		t.Fatalf("dry run: %s", out)
	}
	if n := strings.Count(mustFerry(t, env, "snapshots"), "\n"); n != 5 {
		t.Fatalf("the dry run forgot something: %d lines", n)
	}
	out = mustFerry(t, env, "forget", "--keep-last", "1", "--name", "db")
	if !strings.Contains(out, "forgot 2 snapshot(s), kept 1") || !strings.Contains(out, "keep    "+ids[3][:12]) {
		t.Fatalf("forget:\n%s", out)
	}
	if out := mustFerry(t, env, "forget", ids[2][:8]); !strings.Contains(out, "forgot 1 snapshot(s)\n") {
		t.Fatalf("forget by ID:\n%s", out)
	}
	if n := strings.Count(mustFerry(t, env, "snapshots"), "\n"); n != 2 {
		t.Fatalf("%d lines of snapshots, want the header and one", n)
	}

	if out := mustFerry(t, env, "prune", "--grace", "0"); !strings.Contains(out, "marked for deletion") || !strings.Contains(out, "0 pack(s) deleted") {
		t.Fatalf("first prune:\n%s", out)
	}
	if out := mustFerry(t, env, "prune", "--grace", "0", "--dry-run"); !strings.Contains(out, "would be deleted pack") {
		t.Fatalf("dry run:\n%s", out)
	}
	var rep struct {
		Deleted []struct{ ID string } `json:"deleted"`
		Bytes   []int64               `json:"bytes_deleted_per_target"`
	}
	if err := json.Unmarshal([]byte(mustFerry(t, env, "prune", "--grace", "0", "--json")), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) == 0 || len(rep.Bytes) != 3 || rep.Bytes[0] == 0 {
		t.Fatalf("second prune: %+v", rep)
	}
	if r := ferry(t, env, "verify"); r.code != 0 {
		t.Fatalf("verify after prune: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	restored := filepath.Join(work, "restored")
	mustFerry(t, env, "restore", "latest", "--name", "db", "--target", restored)
	sameFile(t, filepath.Join(work, "dbd"), restored)
}
