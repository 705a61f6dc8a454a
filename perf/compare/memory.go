package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
)

// memorySoftLimit is a Go runtime soft memory limit to try the command
// under (the ferry command sets none; deploy/ may).
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

// memory looks into the operation behind a failed memory target (a full
// backup of the large volume, or a restore of its second snapshot): the
// command with GODEBUG=gctrace=1, as is and with GOMEMLIMIT set to
// memorySoftLimit, to tell the live heap from what the garbage collector
// lets grow; then the same library calls in a fresh process of this
// program that samples its own memory (probe), with a heap profile taken
// nearest its peak RSS.
func (t *tools) memory(ctx context.Context, res *results, im *images, op, outDir string) error {
	out := filepath.Join(t.work, "memory-restored.img")
	kind := strings.TrimPrefix(op, "memory-")
	for i, env := range []string{"GODEBUG=gctrace=1", "GODEBUG=gctrace=1 GOMEMLIMIT=" + memorySoftLimit, ""} {
		prefix := fmt.Sprintf("memory%d", i)
		var j job
		if kind == "backup" {
			if _, err := t.plain(ctx, t.ferryInit(prefix)); err != nil {
				return err
			}
			j = t.ferryJob(prefix, "backup", "--name", "vol", im.Base)
		} else {
			j = t.ferryJob(t.last.prefix, "restore", t.last.snap, "--target", out)
		}
		if env == "" {
			// The probe: the same, in a fresh process of this program.
			heap, _ := filepath.Abs(filepath.Join(outDir, "heap-"+kind+".pprof"))
			self, err := os.Executable()
			if err != nil {
				return err
			}
			args := []string{"-probe", kind, "-probe-heap", heap}
			if kind == "backup" {
				args = append(args, im.Base)
			} else {
				args = append(args, t.last.snap, out)
			}
			j.name, j.args, j.show = self, args, "compare "+strings.Join(args, " ")
			if err := t.probe(ctx, res, op, heap, j); err != nil {
				return err
			}
			os.Remove(out)
			continue
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

// probe runs this program in probe mode and reads its report.
func (t *tools) probe(ctx context.Context, res *results, op, heap string, j job) error {
	logf("Ferry's %s in a fresh process of this program, its memory sampled every 20 ms", strings.TrimPrefix(op, "memory-"))
	fmt.Printf("  $ %s\n", j.show)
	cmd := exec.CommandContext(ctx, j.name, j.args...)
	cmd.Env = append(os.Environ(), j.env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", j.show, err, tail(stderr.Bytes()))
	}
	var peak memoryPeak
	if err := json.Unmarshal(out, &peak); err != nil {
		return fmt.Errorf("%s printed %q: %w", j.show, out, err)
	}
	peak.Op = op
	fmt.Printf("    peak RSS %s (anonymous %s, files %s; %s before): Go heap objects %s, free heap %s, stacks %s, Go resident in all %s\n",
		mib(peak.RSS), mib(peak.RSSAnon), mib(peak.RSSFile), mib(peak.Baseline), mib(peak.HeapObjects), mib(peak.HeapFree), mib(peak.Stacks), mib(peak.GoResident))
	res.MemoryPeaks = append(res.MemoryPeaks, peak)
	if err := summarize(res, op+" (live as of the last GC)", heap, "-inuse", "-sample_index=inuse_space"); err != nil {
		return err
	}
	return summarize(res, op+" (allocated during the run)", heap, "-alloc", "-sample_index=alloc_space")
}

// runProbe is this program in probe mode: kind is backup (args: the
// image) or restore (args: the snapshot and the target file), on the
// repository of $FERRY_REPO with $FERRY_PASSWORD, as the ferry command
// would. It prints the memoryPeak as JSON and writes the heap profile to
// heapPath.
func runProbe(ctx context.Context, kind, heapPath string, args []string) error {
	locs, err := objstore.ParseRepo(os.Getenv("FERRY_REPO"))
	if err != nil {
		return err
	}
	r, err := repo.Open(ctx, objstore.OpenAll(ctx, locs, os.Getenv), []byte(os.Getenv("FERRY_PASSWORD")))
	if err != nil {
		return err
	}
	var fn func() error
	switch {
	case kind == "backup" && len(args) == 1:
		fn = func() error {
			_, err := backup.File(ctx, r, args[0], backup.Options{Name: "vol"})
			return err
		}
	case kind == "restore" && len(args) == 2:
		snap, err := r.FindSnapshot(ctx, args[0], "")
		if err != nil {
			return err
		}
		fn = func() error {
			_, err := restore.Run(ctx, r, snap, args[1], restore.Options{})
			return err
		}
	default:
		return fmt.Errorf("-probe %s %q: want backup IMAGE or restore SNAPSHOT TARGET", kind, args)
	}
	peak, err := sampleMemory(heapPath, fn)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(peak)
}

// memoryPeak is a process's memory when its RSS peaked: what the kernel
// counts (/proc/self/status) and what Go's runtime accounts for
// (runtime/metrics), in bytes.
type memoryPeak struct {
	Op       string `json:"op"`
	Baseline int64  `json:"baseline_rss"` // before the run
	RSS      int64  `json:"rss"`
	RSSAnon  int64  `json:"rss_anon"`
	RSSFile  int64  `json:"rss_file"`
	// The runtime's classes: heap objects (live, and dead ones not yet
	// swept), heap memory holding no object and not yet returned to the
	// kernel, goroutine stacks, and all the runtime has mapped and not
	// returned.
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

// readMemory samples this process's memory.
func readMemory() memoryPeak {
	var m memoryPeak
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

// sampleMemory runs fn while sampling this process's memory every 20 ms,
// and returns the sample of the highest RSS. It writes to heapPath the
// heap profile taken nearest that peak (at most one every half second;
// a heap profile describes the heap as of the last garbage collection).
func sampleMemory(heapPath string, fn func() error) (memoryPeak, error) {
	debug.FreeOSMemory()
	base := readMemory()
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
				if m := readMemory(); m.RSS > peak.RSS {
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
	if err == nil && heap.Len() == 0 {
		err = errors.New("the run never raised the RSS: no heap profile")
	}
	if err == nil {
		err = os.WriteFile(heapPath, heap.Bytes(), 0o644)
	}
	return peak, err
}
