package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydr/ferry/testenv/volume"
)

func TestCLIRepair(t *testing.T) {
	repoURL, dirs := fileRepo(t, 3)
	env := []string{"FERRY_REPO=" + repoURL, "FERRY_PASSWORD=pw", "XDG_STATE_HOME=" + t.TempDir()}
	img := filepath.Join(t.TempDir(), "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 48 << 20, DataFrac: 0.5, Seed: 4}); err != nil {
		t.Fatal(err)
	}
	mustFerry(t, env, "init", "--pack-size", "2")
	mustFerry(t, env, "backup", img)

	shards := func(dir string) []string {
		var out []string
		filepath.WalkDir(filepath.Join(dir, "data"), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				out = append(out, p)
			}
			return nil
		})
		return out
	}
	// Target 2: a shard gone. Target 3: a shard corrupt, and its index
	// objects and manifests gone.
	os.Remove(shards(dirs[1])[0])
	bad := shards(dirs[2])[1]
	b, _ := os.ReadFile(bad)
	b[len(b)-10] ^= 0xff
	os.WriteFile(bad, b, 0o600)
	os.RemoveAll(filepath.Join(dirs[2], "index"))
	os.RemoveAll(filepath.Join(dirs[2], "snapshots"))

	if r := ferry(t, env, "verify", "--read-data-percent", "100"); r.code != exitDegraded {
		t.Fatalf("verify before repair: exit %d, want %d\n%s%s", r.code, exitDegraded, r.stdout, r.stderr)
	}
	if r := ferry(t, env, "repair", "--read-data-percent", "100"); r.code != 0 {
		t.Fatalf("repair: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := ferry(t, env, "verify", "--read-data-percent", "100"); r.code != 0 {
		t.Fatalf("verify after repair: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// The repaired copies carry the repository: lose target 1, restore.
	if err := os.RemoveAll(dirs[0]); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "restored.img")
	mustFerry(t, env, "restore", "latest", "--target", out)
	sameFile(t, img, out)
}

// TestCLIRepairLostByReading: two shards of a pack flipped in place, which
// only reading finds (a file:// target keeps the checksum it took at
// write). Repair cannot rebuild the pack; the check after it reads that
// pack again, so repair exits as data lost, not 0.
func TestCLIRepairLostByReading(t *testing.T) {
	repoURL, dirs := fileRepo(t, 3)
	env := []string{"FERRY_REPO=" + repoURL, "FERRY_PASSWORD=pw", "XDG_STATE_HOME=" + t.TempDir()}
	img := filepath.Join(t.TempDir(), "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 16 << 20, DataFrac: 0.5, Seed: 5}); err != nil {
		t.Fatal(err)
	}
	mustFerry(t, env, "init", "--pack-size", "2")
	mustFerry(t, env, "backup", img)
	var first string
	filepath.WalkDir(filepath.Join(dirs[0], "data"), func(p string, d os.DirEntry, err error) error {
		if err == nil && first == "" && strings.HasSuffix(p, ".0") {
			first = p
		}
		return nil
	})
	if first == "" {
		t.Fatal("no shard 0 on target 1")
	}
	rel, _ := filepath.Rel(dirs[0], strings.TrimSuffix(first, ".0"))
	for i, shard := range []string{first, filepath.Join(dirs[1], rel+".1")} {
		b, err := os.ReadFile(shard)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)-10-i] ^= 0xff
		if err := os.WriteFile(shard, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if r := ferry(t, env, "verify"); r.code != 0 {
		t.Fatalf("the structural verify saw the damage (this test needs it unseen): exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r := ferry(t, env, "repair", "--read-data-percent", "100")
	if r.code != exitDataLost || !strings.Contains(r.stdout, "could not repair") {
		t.Fatalf("repair: exit %d, want %d and what it could not repair\n%s%s", r.code, exitDataLost, r.stdout, r.stderr)
	}
}
