package repo_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/verify"
)

// garbageRepo makes a repository whose first snapshot was forgotten and
// whose packs a prune run has marked, and returns the packs that must
// survive.
func garbageRepo(t *testing.T, c *minio.Cluster, prefix string) (*pruneRepo, map[pack.ID]bool) {
	t.Helper()
	ctx := context.Background()
	p := newPruneRepo(t, c, prefix)
	r := p.open(t)
	first := p.backup(t, r, "v", p.image(t, "v1", 6<<20, 51))
	second := p.backup(t, r, "v", p.image(t, "v2", 6<<20, 51, [3]int64{2 << 20, 4 << 20, 52}))
	if err := r.Forget(ctx, []string{first}); err != nil {
		t.Fatal(err)
	}
	live := packsOf(t, r, second)
	if rep := prune(t, p.open(t), 0); rep.Marked == 0 {
		t.Fatalf("nothing marked: %+v", rep)
	}
	return p, live
}

// afterInterruption checks the repository an interrupted prune left: it
// verifies (notices at most when strict, nothing lost in any case) and
// restores; a prune then finishes, leaving exactly the live packs.
func (p *pruneRepo) afterInterruption(t *testing.T, live map[pack.ID]bool, strict bool) {
	t.Helper()
	rep, err := verify.Run(context.Background(), p.open(t), verify.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range rep.Problems {
		if pr.Severity == verify.DataLost || strict && pr.Severity > verify.Notice {
			t.Errorf("after the interruption: %s", pr)
		}
	}
	prune(t, p.open(t), 0)
	if got := p.packsOnTargets(t); len(got) != len(live) {
		t.Errorf("%d packs on the targets after the rerun, want the %d live ones", len(got), len(live))
	} else {
		for id := range live {
			if !got[id] {
				t.Errorf("live pack %s deleted", id.Short())
			}
		}
	}
	p.check(t, true)
}

// TestPruneInterrupted stops a prune at the start of each of its steps
// (the context is cancelled when the step is reported); the repository
// verifies, and the next prune finishes.
func TestPruneInterrupted(t *testing.T) {
	c := minio.StartCluster(t, 3, "ferry", "")
	for _, step := range []string{"lock", "list", "read", "finish", "mark", "index", "record", "delete", "clean"} {
		t.Run(step, func(t *testing.T) {
			p, live := garbageRepo(t, c, "step-"+step)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			reached := false
			_, err := p.open(t).Prune(ctx, repo.PruneOptions{Progress: func(s string) {
				if s == step {
					reached = true
					cancel()
				}
			}})
			if !reached || err == nil {
				t.Fatalf("prune did not stop at %s: reached %v, %v", step, reached, err)
			}
			p.afterInterruption(t, live, true)
		})
	}
}

// TestPruneKilled kills a prune process (SIGKILL) a few milliseconds into
// its deleting steps; whatever it left, nothing is lost, and the next
// prune, in another process, finishes.
func TestPruneKilled(t *testing.T) {
	c := minio.StartCluster(t, 3, "ferry", "")
	rng := rand.New(rand.NewPCG(61, 1))
	for i, step := range []string{"mark", "index", "delete", "delete", "clean"} {
		t.Run(fmt.Sprintf("%s-%d", step, i), func(t *testing.T) {
			p, live := garbageRepo(t, c, fmt.Sprintf("killed-%d", i))
			cmd := exec.Command(os.Args[0], "-test.run=^TestPruneChild$")
			cmd.Env = append(os.Environ(), "FERRY_PRUNE_CHILD_REPO="+p.urls(),
				"AWS_ACCESS_KEY_ID="+p.c.Env("AWS_ACCESS_KEY_ID"), "AWS_SECRET_ACCESS_KEY="+p.c.Env("AWS_SECRET_ACCESS_KEY"))
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			lines := bufio.NewScanner(out)
			killed := false
			for lines.Scan() {
				if lines.Text() == "step "+step {
					time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
					cmd.Process.Kill()
					killed = true
					break
				}
			}
			cmd.Wait()
			if !killed {
				t.Fatalf("the prune ended before step %s", step)
			}
			p.afterInterruption(t, live, false)
		})
	}
}

// TestPruneChild is the prune process TestPruneKilled kills: it prints
// each step as it starts.
func TestPruneChild(t *testing.T) {
	urls := os.Getenv("FERRY_PRUNE_CHILD_REPO")
	if urls == "" {
		t.Skip("run by TestPruneKilled")
	}
	locs, err := objstore.ParseRepo(urls)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	r, err := repo.Open(ctx, objstore.OpenAll(ctx, locs, os.Getenv), prunePassword)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Prune(ctx, repo.PruneOptions{Progress: func(s string) { fmt.Println(strings.TrimSpace("step " + s)) }})
	if err != nil {
		t.Fatal(err)
	}
}
