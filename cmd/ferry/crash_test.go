package main

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/testenv/volume"
)

// TestBackupKilled kills `ferry backup` (SIGKILL) at 32 points spread over
// a backup into three MinIO servers, each time with a changed volume. After
// each kill the same backup is run again and completes; `ferry verify`
// never finds a manifest pointing at missing data; and at the end every
// snapshot restores bit-identically to the volume it was taken of.
func TestBackupKilled(t *testing.T) {
	c := minio.StartCluster(t, 3, "ferry", "crash")
	env := []string{"FERRY_REPO=" + c.Repo(), "FERRY_PASSWORD=crash test",
		"AWS_ACCESS_KEY_ID=" + c.Env("AWS_ACCESS_KEY_ID"), "AWS_SECRET_ACCESS_KEY=" + c.Env("AWS_SECRET_ACCESS_KEY")}
	mustFerry(t, env, "init", "--erasure", "2+1", "--pack-size", "1")
	work := t.TempDir()
	img := filepath.Join(work, "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 48 << 20, DataFrac: 0.5, Seed: 3}); err != nil {
		t.Fatal(err)
	}

	// How long one backup of a changed volume takes, as in the loop
	// below, to spread the kills over it.
	mustFerry(t, env, "backup", "--name", "vol", img)
	if err := volume.Mutate(img, 8, 512<<10, 1000); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	mustFerry(t, env, "backup", "--name", "vol", img)
	full := time.Since(start)
	t.Logf("one backup of a changed volume takes %s", full.Round(time.Millisecond))

	// Kill points are spread over [0, full), jittered. A backup that
	// ends before its kill point does not count; the span then shrinks,
	// since the machine's speed varies. It goes on until 32 backups were
	// killed mid-way (at most 80 rounds).
	const want, rounds = 32, 80
	rng := rand.New(rand.NewPCG(7, 7))
	type snap struct{ id, copy string }
	var snaps []snap
	killed := 0
	for i := 0; killed < want; i++ {
		if i == rounds {
			t.Fatalf("only %d of %d backups were killed before they finished: the kill points missed", killed, rounds)
		}
		if err := volume.Mutate(img, 8, 512<<10, uint64(i)); err != nil {
			t.Fatal(err)
		}
		at := time.Duration((float64(killed) + rng.Float64()) / want * float64(full))
		cmd := exec.Command(ferryBin, "backup", "--name", "vol", "--json", img)
		cmd.Env = append(os.Environ(), env...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-time.After(at):
			cmd.Process.Kill()
			if err := <-done; err != nil {
				killed++
			} else {
				full = full * 3 / 4
			}
		case <-done: // finished before the kill point
			full = full * 3 / 4
		}

		// The repository shows no damage a reader would meet.
		if r := ferry(t, env, "verify", "--sizes-only", "--json"); r.code == 3 || r.code == 1 {
			t.Fatalf("after the kill at %s: verify exit %d:\n%s%s", at, r.code, r.stdout, r.stderr)
		}
		// The job, run again, completes.
		out := mustFerry(t, env, "backup", "--name", "vol", "--json", img)
		var b backupJSON
		if err := json.Unmarshal([]byte(out), &b); err != nil {
			t.Fatalf("backup output %q: %v", out, err)
		}
		keep := filepath.Join(work, b.SnapshotID[:12]+".img")
		mustCopy(t, img, keep)
		snaps = append(snaps, snap{b.SnapshotID, keep})
	}
	t.Logf("%d backups killed mid-way, in %d rounds", killed, len(snaps))

	// A full check reads every pack, then every snapshot restores.
	r := ferry(t, env, "verify", "--read-data-percent", "100", "--json")
	var rep struct {
		Lost []any `json:"lost_snapshots"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || (r.code != 0 && r.code != 4) || len(rep.Lost) > 0 {
		t.Fatalf("final verify: exit %d, %v:\n%s%s", r.code, err, r.stdout, r.stderr)
	}
	for _, s := range snaps {
		out := filepath.Join(work, "restored.img")
		os.Remove(out)
		mustFerry(t, env, "restore", s.id, "--target", out)
		sameFile(t, s.copy, out)
	}
}
