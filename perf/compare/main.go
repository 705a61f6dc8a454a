// Command compare measures Ferry against restic on this machine, side by
// side in one run, for the performance targets of issue 6.
//
// It installs restic from Debian's packages when it is missing, builds
// bin/ferry, makes (or reuses from the cache) a raw ext4 volume image full
// of real files and a copy of it with about 2% of its blocks changed by
// rewriting files through a loop mount, and starts three MinIO servers on
// loopback (testenv/minio). Then, several times, interleaved:
//
//	full backup      ferry backup (erasure 2+1 over the three servers)
//	                 restic backup --stdin (one repository on one of them)
//	second backup    the changed image, both tools reading all of it
//	restore          the second snapshot into a file, both tools
//	degraded restore ferry again with one MinIO server stopped
//	small volume     ferry backup and restore of a volume a tenth the size
//
// timing each command from start to exit, with its CPU time and peak RSS
// (GNU time), the MinIO servers' CPU time and every other process's (on a
// shared machine, the measure of how disturbed a run was; before each
// command it waits a while for the machine to be idle). It then runs
// BenchmarkIncrementalCSI on the same two images (changed-block tracking
// through the test CSI driver), profiles every Ferry operation that
// misses its target (in-process, the same library calls as the command;
// a failed memory target gets GC traces instead), and prints medians,
// ratios and PASS/FAIL per target with the exact commands, also written
// to perf/out/.
//
// Run it as root (loop mounts, the CSI driver's loop devices) from the
// repository:
//
//	go run ./perf/compare [-runs 3] [-size 3584] [-cbt-runs 2] [-quiet-wait 30s]
//
// Images are cached under $FERRY_CACHE/compare (else ~/.cache/ferry);
// MinIO data and restored files go to a temporary directory removed at
// the end.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/ferrydr/ferry/testenv/cache"
	"github.com/ferrydr/ferry/testenv/minio"
)

type config struct {
	runs     int
	sizeMiB  int64
	fill     float64
	change   float64
	cbtRuns  int
	cacheDir string
	workDir  string
	outDir   string
	rebuild  bool
	profile  string // "failing", "all" or "none"
	chunk    string // ferry init --chunk-size
}

func main() {
	var cfg config
	flag.IntVar(&cfg.runs, "runs", 3, "measurements of each kind, interleaved ferry, restic, ferry, restic ...")
	flag.Int64Var(&cfg.sizeMiB, "size", 3584, "size of the volume image in MiB (at least 3072 for the issue's targets)")
	flag.Float64Var(&cfg.fill, "fill", 0.70, "share of the image filled with files")
	flag.Float64Var(&cfg.change, "change", 0.02, "share of the image's blocks the second backup finds changed")
	flag.IntVar(&cfg.cbtRuns, "cbt-runs", 2, "iterations of BenchmarkIncrementalCSI on the same images (0 skips it)")
	flag.StringVar(&cfg.cacheDir, "cache", "", "where the images are kept between runs (default $FERRY_CACHE/compare or ~/.cache/ferry/compare)")
	flag.StringVar(&cfg.workDir, "work", "", "where MinIO's data and restored images go, removed at the end (default $TMPDIR)")
	flag.StringVar(&cfg.outDir, "out", "perf/out", "where results, logs and CPU profiles are written")
	flag.BoolVar(&cfg.rebuild, "rebuild", false, "make the images anew even if cached")
	flag.DurationVar(&quietWait, "quiet-wait", quietWait, "before each measurement, wait up to this long for other processes to leave the machine idle (0: never wait)")
	flag.StringVar(&cfg.chunk, "chunk-size", "", "ferry init --chunk-size for Ferry's repositories, and the same sizes for the changed-block benchmark (default: Ferry's default)")
	flag.StringVar(&cfg.profile, "profile", "failing", "CPU-profile Ferry's operations: failing (those that miss a target), all, none")
	probe := flag.String("probe", "", "(used by compare itself) run Ferry's backup or restore in this process and report its memory")
	probeHeap := flag.String("probe-heap", "", "(with -probe) where the heap profile goes")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *probe != "" {
		if err := runProbe(ctx, *probe, *probeHeap, flag.Args()); err != nil {
			fmt.Fprintf(os.Stderr, "compare -probe: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if err := compare(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "compare: %v\n", err)
		os.Exit(1)
	}
}

func compare(ctx context.Context, cfg config) error {
	if os.Geteuid() != 0 {
		return errors.New("run as root: the images are loop-mounted and the CSI benchmark uses loop devices")
	}
	switch cfg.profile {
	case "failing", "all", "none":
	default:
		return fmt.Errorf("-profile %q: want failing, all or none", cfg.profile)
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if err := os.Chdir(root); err != nil {
		return err
	}
	if cfg.cacheDir == "" {
		d, err := cache.Dir()
		if err != nil {
			return err
		}
		cfg.cacheDir = filepath.Join(d, "compare")
	}
	if err := os.MkdirAll(cfg.outDir, 0o755); err != nil {
		return err
	}
	res := &results{Date: time.Now().Format("2006-01-02 15:04"), Runs: cfg.runs, Samples: map[string][]sample{}, Summaries: map[string]json.RawMessage{}}

	restic, err := ensureTool("restic", "restic")
	if err != nil {
		return err
	}
	if _, err := ensureTool(timeTool, "time"); err != nil {
		return err
	}
	res.Restic = version(restic, "version")
	logf("building bin/ferry")
	if err := run("go", "build", "-o", "bin/ferry", "./cmd/ferry"); err != nil {
		return err
	}
	ferry, _ := filepath.Abs("bin/ferry")
	res.Go = runtime.Version()
	res.Machine = machine()
	res.Tree = checkout()
	logf("restic: %s; machine: %s; Ferry %s", res.Restic, res.Machine, res.Tree)

	im, err := ensureImages(cfg.cacheDir, cfg.sizeMiB<<20, cfg.fill, cfg.change, cfg.rebuild)
	if err != nil {
		return fmt.Errorf("images: %w", err)
	}
	res.Images = im
	logf("volume %s (%s of files, %s allocated), changed copy: %d blocks of 4 KiB differ (%.2f%% of the volume, %.2f%% of its allocated blocks); small volume %s",
		mib(im.Size), mib(im.FileBytes), mib(im.Allocated), im.ChangedBlocks,
		100*float64(im.ChangedBlocks*blockSize)/float64(im.Size), 100*float64(im.ChangedBlocks*blockSize)/float64(im.Allocated), mib(im.SmallSize))

	work, err := os.MkdirTemp(cfg.workDir, "ferry-compare-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	var servers []*minio.Server
	defer func() {
		for _, s := range servers {
			s.Stop()
		}
	}()
	logf("starting three MinIO servers on loopback")
	for i := range 3 {
		s, err := minio.Run(ctx, filepath.Join(work, fmt.Sprintf("minio%d", i)))
		if err != nil {
			return err
		}
		servers = append(servers, s)
	}
	t := &tools{ferry: ferry, restic: restic, servers: servers, work: work, chunkSize: cfg.chunk}
	if err := t.makeBuckets(ctx); err != nil {
		return err
	}
	for i := 1; i <= cfg.runs; i++ {
		if err := t.round(ctx, res, im, i); err != nil {
			return err
		}
	}
	res.Commands = t.commands

	if cfg.cbtRuns > 0 {
		if res.CBT, err = runCBT(ctx, im, cfg.cbtRuns, cfg.outDir, cfg.chunk); err != nil {
			return err
		}
	}
	res.evaluate()
	if cfg.profile != "none" {
		if err := t.profile(ctx, res, im, cfg.profile == "all", cfg.outDir); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
	}
	report := res.markdown()
	fmt.Println()
	fmt.Print(report)
	stamp := time.Now().Format("20060102-1504")
	if err := os.WriteFile(filepath.Join(cfg.outDir, "compare-"+stamp+".md"), []byte(report), 0o644); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	return os.WriteFile(filepath.Join(cfg.outDir, "compare-"+stamp+".json"), b, 0o644)
}

// machine describes the CPU and memory, for the report.
func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	var si syscall.Sysinfo_t
	mem := ""
	if syscall.Sysinfo(&si) == nil {
		mem = fmt.Sprintf(", %d GiB RAM", uint64(si.Totalram)*uint64(si.Unit)>>30)
	}
	return fmt.Sprintf("%d cores %s%s", runtime.NumCPU(), cpu, mem)
}

// checkout describes the checkout measured: its commit, and how many files
// differ from it (work in progress is measured too).
func checkout() string {
	head, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "not a git checkout"
	}
	st, _ := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output()
	n := 0
	for _, l := range strings.Split(string(st), "\n") {
		if strings.TrimSpace(l) != "" {
			n++
		}
	}
	return fmt.Sprintf("commit %s with %d changed files in the working tree", strings.TrimSpace(string(head)), n)
}

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }
