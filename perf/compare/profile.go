package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

// profile is a CPU profile of one Ferry operation.
type profile struct {
	Op      string `json:"op"`
	File    string `json:"file"`
	Command string `json:"command"` // the pprof command whose output Top is
	Top     string `json:"top"`
}

// profile runs, in this process and with a CPU profile, each Ferry
// operation that missed a target (every one with all): the same library
// calls `ferry backup` and `ferry restore` make, against the same servers.
// A full and a second backup go into a repository of their own; the
// restores read the last round's second snapshot.
func (t *tools) profile(ctx context.Context, res *results, im *images, all bool, outDir string) error {
	want := map[string]bool{}
	for _, tg := range res.Targets {
		if tg.Op != "" && (all || !tg.Pass) {
			want[tg.Op] = true
		}
	}
	if len(want) == 0 {
		return nil
	}
	open := func(prefix string) (*repo.Repo, error) {
		locs, err := objstore.ParseRepo(t.ferryRepo(prefix))
		if err != nil {
			return nil, err
		}
		env := func(k string) string {
			switch k {
			case "AWS_ACCESS_KEY_ID":
				return minio.RootUser
			case "AWS_SECRET_ACCESS_KEY":
				return minio.RootPassword
			}
			return ""
		}
		return repo.Open(ctx, objstore.OpenAll(ctx, locs, env), []byte(password))
	}
	profiled := func(op string, fn func() error) error {
		path, _ := filepath.Abs(filepath.Join(outDir, "cpu-"+op+".pprof"))
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		logf("CPU profile of Ferry's %s -> %s", op, path)
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		err = fn()
		pprof.StopCPUProfile()
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		return summarize(res, op, path, "")
	}
	backupOp := func(r *repo.Repo, img string) func() error {
		return func() error {
			_, err := backup.File(ctx, r, img, backup.Options{Name: "vol"})
			return err
		}
	}

	if want["full"] || want["second"] {
		const prefix = "profile"
		if _, err := t.plain(ctx, t.ferryInit(prefix)); err != nil {
			return err
		}
		r, err := open(prefix)
		if err != nil {
			return err
		}
		if want["full"] {
			err = profiled("full", backupOp(r, im.Base))
		} else {
			err = backupOp(r, im.Base)()
		}
		if err != nil {
			return err
		}
		if want["second"] {
			if err := profiled("second", backupOp(r, im.Changed)); err != nil {
				return err
			}
		}
	}
	out := filepath.Join(t.work, "profile-restored.img")
	restoreOp := func() error {
		r, err := open(t.last.prefix)
		if err != nil {
			return err
		}
		snap, err := r.FindSnapshot(ctx, t.last.snap, "")
		if err != nil {
			return err
		}
		defer os.Remove(out)
		_, err = restore.Run(ctx, r, snap, out, restore.Options{})
		return err
	}
	if want["restore"] {
		if err := profiled("restore", restoreOp); err != nil {
			return err
		}
	}
	if want["cbt"] && res.CBT != nil {
		if err := summarize(res, "cbt", res.CBT.Profile, "-incremental", "-tagfocus", "backup=incremental", "-relative_percentages"); err != nil {
			return err
		}
	}
	if want["degraded"] {
		t.servers[downServer].Stop()
		err := profiled("degraded", restoreOp)
		if rerr := t.servers[downServer].Relaunch(); err != nil {
			return rerr
		}
		if err != nil {
			return err
		}
	}
	for _, op := range []string{"memory-backup", "memory-restore"} {
		if want[op] {
			if err := t.memory(ctx, res, im, op, outDir); err != nil {
				return err
			}
		}
	}
	return nil
}

// summarize adds the top of a profile to the results (flat and cumulative
// tops go next to the profile as text, named with suffix), with pprof's
// extra arguments (a tag to focus on, a sample index).
func summarize(res *results, op, path, suffix string, extra ...string) error {
	pprofTop := func(args ...string) (string, []byte, error) {
		args = append(append(append([]string{"tool", "pprof", "-top"}, extra...), args...), path)
		out, err := exec.Command("go", args...).Output()
		return "go " + strings.Join(args, " "), out, err
	}
	cmd, top, err := pprofTop("-nodecount=25")
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	base := strings.TrimSuffix(path, ".pprof") + suffix
	os.WriteFile(base+".txt", top, 0o644)
	if _, cum, err := pprofTop("-cum", "-nodecount=50"); err == nil {
		os.WriteFile(base+"-cum.txt", cum, 0o644)
	}
	// Keep pprof's totals line and the table, not the file's identity.
	var kept []string
	for _, l := range strings.SplitAfter(string(top), "\n") {
		if !strings.HasPrefix(l, "File:") && !strings.HasPrefix(l, "Build ID:") && !strings.HasPrefix(l, "Type:") && !strings.HasPrefix(l, "Time:") {
			kept = append(kept, l)
		}
	}
	pr := profile{Op: op, File: path, Command: cmd, Top: strings.Join(kept, "")}
	fmt.Print(pr.Top)
	res.Profiles = append(res.Profiles, pr)
	return nil
}
