package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// cbtResult is what BenchmarkIncrementalCSI measured on the images.
type cbtResult struct {
	Command    string         `json:"command"`
	Volume     string         `json:"volume"` // the benchmark's own description
	Iterations []cbtIteration `json:"iterations"`
	Log        string         `json:"log"`
	// Profile is the benchmark's CPU profile; each backup's samples are
	// labelled backup=full, incremental or reread.
	Profile string `json:"profile"`
}

// cbtIteration is one iteration of the benchmark: its three backups.
type cbtIteration struct {
	Full, Inc, Reread cbtBackup
}

// cbtBackup is one backup through CSI, in seconds: in all, asking for the
// ranges to read (SnapshotMetadata), exposing the snapshot, backing up
// (BenchmarkIncrementalCSI's csiBackup).
type cbtBackup struct {
	Seconds float64 `json:"s"`
	ReadMiB int64   `json:"read_mib"`
	Ranges  float64 `json:"ranges_s"`
	Expose  float64 `json:"expose_s"`
	Backup  float64 `json:"backup_s"`
	// Within the backup: when the first and the last chunk were done.
	FirstChunk float64 `json:"first_chunk_s"`
	LastChunk  float64 `json:"last_chunk_s"`
}

func (c cbtBackup) String() string {
	return fmt.Sprintf("%.1f s, read %d MiB (ranges %.1f s, expose %.1f s, backup %.1f s: first chunk done after %.1f s, last after %.1f s)",
		c.Seconds, c.ReadMiB, c.Ranges, c.Expose, c.Backup, c.FirstChunk, c.LastChunk)
}

var (
	cbtIterationLine = regexp.MustCompile(`iteration \d+: full .*`)
	cbtBackupPart    = regexp.MustCompile(`(full|incremental|reread) ([\d.]+) s \(read (\d+) MiB; ranges ([\d.]+) s, expose ([\d.]+) s, backup ([\d.]+) s: first chunk after ([\d.]+) s, last after ([\d.]+) s\)`)
	cbtVolumeLine    = regexp.MustCompile(`volume \d+ MiB from .*`)
)

// chunkSizeEnv is the environment variable that gives
// BenchmarkIncrementalCSI an average chunk size (perf/csi_incremental_bench_test.go).
const chunkSizeEnv = "FERRY_BENCH_CHUNK_SIZE"

// runCBT runs BenchmarkIncrementalCSI on the two images: the base written
// into a volume of the test CSI driver, snapshot, the changed blocks
// written, snapshot, then per iteration a full backup of snapshot 1 and an
// incremental backup of snapshot 2 from the SnapshotMetadata delta, into
// three MinIO servers of its own.
func runCBT(ctx context.Context, im *images, n int, outDir, chunkSize string) (*cbtResult, error) {
	out, err := filepath.Abs(outDir)
	if err != nil {
		return nil, err
	}
	res := &cbtResult{Log: filepath.Join(out, "cbt.log"), Profile: filepath.Join(out, "cpu-cbt.pprof")}
	args := []string{"test", "-run", "^$", "-bench", "^BenchmarkIncrementalCSI$", "-benchtime", fmt.Sprintf("%dx", n), "-timeout", "60m", "-v",
		"-cpuprofile", res.Profile, "-o", filepath.Join(out, "perf.test"), "./perf/"}
	env := "FERRY_BENCH_CBT_IMAGES=" + im.Base + ":" + im.Changed
	if chunkSize != "" {
		env += " " + chunkSizeEnv + "=" + chunkSize
	}
	res.Command = env + " go " + strings.Join(args, " ")
	logf("changed-block tracking through the test CSI driver, on the same images (BenchmarkIncrementalCSI, %d iterations)", n)
	fmt.Printf("  $ %s\n", res.Command)
	log, err := os.Create(res.Log)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), strings.Fields(env)...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	waited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		pw.Close()
		waited <- err
	}()
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(log, line)
		if it, ok := parseCBTLine(line); ok {
			res.Iterations = append(res.Iterations, it)
			fmt.Printf("    %s\n", cbtIterationLine.FindString(line))
		} else if m := cbtVolumeLine.FindString(line); m != "" && res.Volume == "" {
			res.Volume = m
			fmt.Printf("    %s\n", m)
		}
	}
	io.Copy(io.Discard, pr) // after a line too long for the scanner
	if err := <-waited; err != nil {
		return nil, fmt.Errorf("BenchmarkIncrementalCSI: %w (log in %s)", err, res.Log)
	}
	if len(res.Iterations) == 0 {
		return nil, fmt.Errorf("BenchmarkIncrementalCSI logged no iteration (log in %s)", res.Log)
	}
	return res, nil
}

// parseCBTLine reads an iteration the benchmark logged.
func parseCBTLine(line string) (cbtIteration, bool) {
	var it cbtIteration
	m := cbtIterationLine.FindString(line)
	if m == "" {
		return it, false
	}
	parts := cbtBackupPart.FindAllStringSubmatch(m, -1)
	for _, p := range parts {
		var c cbtBackup
		c.Seconds, _ = strconv.ParseFloat(p[2], 64)
		c.ReadMiB, _ = strconv.ParseInt(p[3], 10, 64)
		c.Ranges, _ = strconv.ParseFloat(p[4], 64)
		c.Expose, _ = strconv.ParseFloat(p[5], 64)
		c.Backup, _ = strconv.ParseFloat(p[6], 64)
		c.FirstChunk, _ = strconv.ParseFloat(p[7], 64)
		c.LastChunk, _ = strconv.ParseFloat(p[8], 64)
		switch p[1] {
		case "full":
			it.Full = c
		case "incremental":
			it.Inc = c
		case "reread":
			it.Reread = c
		}
	}
	return it, len(parts) == 3
}
