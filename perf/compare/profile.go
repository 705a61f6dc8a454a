package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

// profile is a CPU profile of one Ferry operation.
type profile struct {
	Op      string  `json:"op"`
	File    string  `json:"file"`
	Seconds float64 `json:"seconds"`
	Command string  `json:"command"` // the pprof command whose output Top is
	Top     string  `json:"top"`
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
		start := time.Now()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		err = fn()
		pprof.StopCPUProfile()
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		return summarize(res, op, path, time.Since(start).Seconds())
	}
	backupOp := func(r *repo.Repo, img string) func() error {
		return func() error {
			_, err := backup.File(ctx, r, img, backup.Options{Name: "vol"})
			return err
		}
	}

	if want["full"] || want["second"] {
		const prefix = "profile"
		if _, err := t.plain(ctx, t.ferryJob(prefix, "init", "--erasure", erasure)); err != nil {
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
		if err := summarize(res, "cbt", res.CBT.Profile, 0, "-tagfocus", "backup=incremental", "-relative_percentages"); err != nil {
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
		if !want[op] {
			continue
		}
		if err := t.memory(ctx, res, im, op); err != nil {
			return err
		}
		fn := restoreOp
		if op == "memory-backup" {
			const prefix = "memory-in-process"
			if _, err := t.plain(ctx, t.ferryJob(prefix, "init", "--erasure", erasure)); err != nil {
				return err
			}
			r, err := open(prefix)
			if err != nil {
				return err
			}
			fn = backupOp(r, im.Base)
		}
		logf("Ferry's %s in this process, its memory sampled every 20 ms", strings.TrimPrefix(op, "memory-"))
		heapPath, _ := filepath.Abs(filepath.Join(outDir, "heap-"+strings.TrimPrefix(op, "memory-")+".pprof"))
		peak, err := sampleMemory(op, heapPath, fn)
		if err != nil {
			return err
		}
		if err := summarize(res, op, heapPath, 0, "-sample_index=inuse_space"); err != nil {
			return err
		}
		fmt.Printf("    peak RSS %s (anonymous %s, files %s; %s before): Go heap objects %s, free heap %s, stacks %s, Go resident in all %s\n",
			mib(peak.RSS), mib(peak.RSSAnon), mib(peak.RSSFile), mib(peak.Baseline), mib(peak.HeapObjects), mib(peak.HeapFree), mib(peak.Stacks), mib(peak.GoResident))
		res.MemoryPeaks = append(res.MemoryPeaks, peak)
	}
	return nil
}

// memorySoftLimit is the Go runtime's soft memory limit the README says
// the ferry command sets.
const memorySoftLimit = "224MiB"

// memoryRun is a run of the command with the runtime's GC trace on.
type memoryRun struct {
	Op      string  `json:"op"`
	Env     string  `json:"env"` // what the run added to the environment
	Wall    float64 `json:"wall_s"`
	MaxRSS  int64   `json:"max_rss_bytes"`
	GCs     int     `json:"gcs"`
	MaxHeap int64   `json:"max_heap_mb"` // the largest heap a GC started at
	MaxLive int64   `json:"max_live_mb"` // the largest heap a GC left live
	MaxGoal int64   `json:"max_goal_mb"`
}

var gcTraceLine = regexp.MustCompile(`(\d+)->(\d+)->(\d+) MB, (\d+) MB goal`)

// memory runs the operation behind a failed memory target (a full backup
// of the large volume, or a restore of its second snapshot) with
// GODEBUG=gctrace=1, as is and with GOMEMLIMIT set to memorySoftLimit,
// to tell the live heap from what the garbage collector lets grow.
func (t *tools) memory(ctx context.Context, res *results, im *images, op string) error {
	out := filepath.Join(t.work, "memory-restored.img")
	for i, env := range []string{"GODEBUG=gctrace=1", "GODEBUG=gctrace=1 GOMEMLIMIT=" + memorySoftLimit} {
		var j job
		if op == "memory-backup" {
			prefix := fmt.Sprintf("memory%d", i)
			if _, err := t.plain(ctx, t.ferryJob(prefix, "init", "--erasure", erasure)); err != nil {
				return err
			}
			j = t.ferryJob(prefix, "backup", "--name", "vol", im.Base)
		} else {
			j = t.ferryJob(t.last.prefix, "restore", t.last.snap, "--target", out)
		}
		j.env = append(j.env, strings.Fields(env)...)
		j.show = env + " " + j.show
		j.stderr = &bytes.Buffer{}
		s, _, err := timed(ctx, t.servers, j)
		os.Remove(out)
		if err != nil {
			return err
		}
		m := memoryRun{Op: op, Env: env, Wall: s.Wall, MaxRSS: s.MaxRSS}
		for _, g := range gcTraceLine.FindAllStringSubmatch(j.stderr.String(), -1) {
			m.GCs++
			heap, _ := strconv.ParseInt(g[1], 10, 64)
			live, _ := strconv.ParseInt(g[3], 10, 64)
			goal, _ := strconv.ParseInt(g[4], 10, 64)
			m.MaxHeap, m.MaxLive, m.MaxGoal = max(m.MaxHeap, heap), max(m.MaxLive, live), max(m.MaxGoal, goal)
		}
		fmt.Printf("    %d GCs; largest heap at a GC start %d MB, largest live heap %d MB, largest goal %d MB\n", m.GCs, m.MaxHeap, m.MaxLive, m.MaxGoal)
		res.Memory = append(res.Memory, m)
	}
	return nil
}

// memoryPeak is this process's memory when its RSS peaked during an
// in-process run: what the kernel counts (/proc/self/status) and what Go's
// runtime accounts for (runtime/metrics), in bytes.
type memoryPeak struct {
	Op       string `json:"op"`
	Baseline int64  `json:"baseline_rss"` // before the run
	RSS      int64  `json:"rss"`
	RSSAnon  int64  `json:"rss_anon"`
	RSSFile  int64  `json:"rss_file"`
	// The runtime's classes: live and dead heap objects, heap memory
	// mapped but holding no object (free, not yet returned), goroutine
	// stacks, and everything the runtime has mapped and not released.
	HeapObjects int64 `json:"heap_objects"`
	HeapFree    int64 `json:"heap_free"`
	Stacks      int64 `json:"stacks"`
	GoResident  int64 `json:"go_resident"`
}

var peakMetrics = []string{
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/stacks:bytes",
	"/memory/classes/total:bytes",
	"/memory/classes/heap/released:bytes",
}

// sampleMemory runs fn while sampling this process's memory every 20 ms,
// and returns the sample of the highest RSS. It writes to heapPath the
// heap profile taken nearest that peak (at most one every half second;
// the profile describes the heap as of the last garbage collection).
func sampleMemory(op, heapPath string, fn func() error) (memoryPeak, error) {
	read := func() memoryPeak {
		m := memoryPeak{Op: op}
		if b, err := os.ReadFile("/proc/self/status"); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				k, v, _ := strings.Cut(l, ":")
				f := strings.Fields(v)
				if len(f) == 0 {
					continue
				}
				n, _ := strconv.ParseInt(f[0], 10, 64)
				switch k {
				case "VmRSS":
					m.RSS = n << 10
				case "RssAnon":
					m.RSSAnon = n << 10
				case "RssFile":
					m.RSSFile = n << 10
				}
			}
		}
		ss := make([]metrics.Sample, len(peakMetrics))
		for i, name := range peakMetrics {
			ss[i].Name = name
		}
		metrics.Read(ss)
		v := func(i int) int64 { return int64(ss[i].Value.Uint64()) }
		m.HeapObjects, m.HeapFree, m.Stacks, m.GoResident = v(0), v(1), v(2), v(3)-v(4)
		return m
	}
	debug.FreeOSMemory() // what an earlier run left is not this run's
	base := read()
	stop := make(chan struct{})
	done := make(chan memoryPeak)
	var heap bytes.Buffer
	go func() {
		peak := base
		var profiled time.Time
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				done <- peak
				return
			case <-t.C:
				if m := read(); m.RSS > peak.RSS {
					peak = m
					if time.Since(profiled) > 500*time.Millisecond {
						heap.Reset()
						pprof.Lookup("heap").WriteTo(&heap, 0)
						profiled = time.Now()
					}
				}
			}
		}
	}()
	err := fn()
	close(stop)
	peak := <-done
	peak.Baseline = base.RSS
	if err == nil {
		err = os.WriteFile(heapPath, heap.Bytes(), 0o644)
	}
	return peak, err
}

// summarize adds the top of a CPU profile to the results (flat and
// cumulative tops go next to the profile as text), with pprof's extra
// arguments (a tag to focus on).
func summarize(res *results, op, path string, seconds float64, extra ...string) error {
	pprofTop := func(args ...string) (string, []byte, error) {
		args = append(append(append([]string{"tool", "pprof", "-top"}, extra...), args...), path)
		out, err := exec.Command("go", args...).Output()
		return "go " + strings.Join(args, " "), out, err
	}
	cmd, top, err := pprofTop("-nodecount=25")
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	base := strings.TrimSuffix(path, ".pprof")
	if op == "cbt" {
		base += "-incremental"
	}
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
	pr := profile{Op: op, File: path, Seconds: seconds, Command: cmd, Top: strings.Join(kept, "")}
	fmt.Print(pr.Top)
	res.Profiles = append(res.Profiles, pr)
	return nil
}
