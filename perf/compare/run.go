package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	miniogo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/ferrydr/ferry/testenv/minio"
)

func logf(format string, args ...any) {
	fmt.Printf("[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// run runs a setup command, failing with its output.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// sample is one timed run of a tool.
type sample struct {
	Wall   float64 `json:"wall_s"`
	User   float64 `json:"user_s"`
	Sys    float64 `json:"sys_s"`
	MaxRSS int64   `json:"max_rss_bytes"` // peak resident set of the tool's process
	// MinIOCPU is the CPU time the MinIO servers used during the run
	// (they share the machine's cores with the tool).
	MinIOCPU float64 `json:"minio_cpu_s"`
	// Others is the CPU time everything else on the machine used during
	// the run: other people's work on a shared machine, and the kernel's
	// writeback. Large values mean the run was disturbed.
	Others float64 `json:"others_cpu_s"`
}

// CPU is the tool's own CPU time.
func (s sample) CPU() float64 { return s.User + s.Sys }

// job is one command of the comparison: what it runs, and what to show.
type job struct {
	name  string // the binary
	args  []string
	env   []string // added to the environment; shown by name only
	stdin string   // a file to read stdin from, or ""
	show  string   // the command as printed, with variables for the secrets
	// stderr, when set, receives what the command wrote to stderr.
	stderr *bytes.Buffer
}

// timeTool is GNU time, which timed runs each command under for its peak
// RSS: the maxrss that wait4 reports for a child of this program is at
// least this program's own peak, because os/exec starts children with
// vfork and Linux carries the parent's high-water mark across the exec.
const timeTool = "/usr/bin/time"

// timed runs j after flushing dirty pages (so an earlier run's writeback
// does not land in this one) and waiting for a quiet machine, and
// measures it: wall time from start to exit, CPU time from wait4's rusage
// (GNU time's, which includes the command's), peak RSS from GNU time, and
// the MinIO servers' and everybody else's CPU time from /proc. It returns
// the command's stdout.
func timed(ctx context.Context, servers []*minio.Server, j job) (sample, []byte, error) {
	if err := run("sync"); err != nil {
		return sample{}, nil, err
	}
	waitQuiet(ctx, servers)
	fmt.Printf("  $ %s\n", j.show)
	rss, err := os.CreateTemp("", "ferry-compare-rss-")
	if err != nil {
		return sample{}, nil, err
	}
	rss.Close()
	defer os.Remove(rss.Name())
	cmd := exec.CommandContext(ctx, timeTool, append([]string{"-o", rss.Name(), "-f", "%M", j.name}, j.args...)...)
	// Cancelling kills the command too, not only GNU time.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Env = append(os.Environ(), j.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if j.stderr != nil {
		cmd.Stderr = io.MultiWriter(&stderr, j.stderr)
	}
	if j.stdin != "" {
		f, err := os.Open(j.stdin)
		if err != nil {
			return sample{}, nil, err
		}
		defer f.Close()
		cmd.Stdin = f
	}
	m0, b0 := minioCPU(servers), machineBusy()
	start := time.Now()
	err = cmd.Run()
	wall := time.Since(start)
	m1, b1 := minioCPU(servers), machineBusy()
	if err != nil {
		return sample{}, nil, fmt.Errorf("%s: %w\n%s", j.show, err, tail(stderr.Bytes()))
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	s := sample{
		Wall:     wall.Seconds(),
		User:     time.Duration(ru.Utime.Nano()).Seconds(),
		Sys:      time.Duration(ru.Stime.Nano()).Seconds(),
		MinIOCPU: m1 - m0,
	}
	b, err := os.ReadFile(rss.Name())
	if err != nil {
		return sample{}, nil, err
	}
	kib, err := strconv.ParseInt(string(bytes.TrimSpace(lastLine(b))), 10, 64)
	if err != nil {
		return sample{}, nil, fmt.Errorf("%s -f %%M wrote %q: %w", timeTool, b, err)
	}
	s.MaxRSS = kib << 10
	s.Others = max(0, b1-b0-s.CPU()-s.MinIOCPU)
	fmt.Printf("    %.1f s wall, %.1f s CPU (%.1f user, %.1f sys), peak RSS %s; MinIO CPU %.1f s, other processes %.1f s\n",
		s.Wall, s.CPU(), s.User, s.Sys, mib(s.MaxRSS), s.MinIOCPU, s.Others)
	return s, stdout.Bytes(), nil
}

func tail(b []byte) []byte {
	if len(b) > 4096 {
		return b[len(b)-4096:]
	}
	return b
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// minioCPU returns the CPU seconds the running servers have used so far.
func minioCPU(servers []*minio.Server) float64 {
	var total float64
	for _, s := range servers {
		pid := s.Pid()
		if pid == 0 {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses and may
		// hold spaces: state is field 3, utime 14, stime 15.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		total += (u + st) / clockTicks
	}
	return total
}

// machineBusy returns the CPU seconds all processes and the kernel have
// used so far (/proc/stat: every state but idle and iowait).
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy float64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is already in user
			continue
		}
		n, _ := strconv.ParseFloat(v, 64)
		busy += n
	}
	return busy / clockTicks
}

// quietLoad is how much of a core other processes may use, over a second,
// for the machine to count as quiet before a run.
const quietLoad = 0.3

// quietWait is the longest waitQuiet waits (the -quiet-wait flag).
var quietWait = 30 * time.Second

// waitQuiet waits until the other processes on the machine leave it
// nearly idle (the servers being idle too), or quietWait passes.
func waitQuiet(ctx context.Context, servers []*minio.Server) {
	if quietWait <= 0 {
		return
	}
	deadline := time.Now().Add(quietWait)
	for said := false; ; said = true {
		b0, m0 := machineBusy(), minioCPU(servers)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		load := machineBusy() - b0 - (minioCPU(servers) - m0)
		if load < quietLoad {
			return
		}
		if time.Now().After(deadline) {
			fmt.Printf("    (other processes still use %.1f cores: measuring anyway)\n", load)
			return
		}
		if !said {
			fmt.Printf("    (other processes use %.1f cores: waiting up to %s for them)\n", load, quietWait)
		}
	}
}

// client returns a minio-go client for a server.
func client(s *minio.Server) (*miniogo.Client, error) {
	return miniogo.New(s.Endpoint, &miniogo.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, "")})
}

// bucketBytes sums the sizes of the objects under bucket/prefix.
func bucketBytes(ctx context.Context, s *minio.Server, bucket, prefix string) (int64, error) {
	c, err := client(s)
	if err != nil {
		return 0, err
	}
	var n int64
	for o := range c.ListObjects(ctx, bucket, miniogo.ListObjectsOptions{Prefix: prefix + "/", Recursive: true}) {
		if o.Err != nil {
			return 0, fmt.Errorf("list %s/%s on %s: %w", bucket, prefix, s.Endpoint, o.Err)
		}
		n += o.Size
	}
	return n, nil
}

// ensureTool returns the path of a program, installing the Debian package
// that has it with apt-get when it is missing.
func ensureTool(name, pkg string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	logf("%s is not installed: installing Debian's package (apt-get install -y %s)", name, pkg)
	install := func() error {
		cmd := exec.Command("apt-get", "install", "-y", "--no-install-recommends", pkg)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		return cmd.Run()
	}
	if err := install(); err != nil {
		logf("apt-get install failed (%v): apt-get update, then again", err)
		if err := run("apt-get", "update"); err != nil {
			return "", err
		}
		if err := install(); err != nil {
			return "", fmt.Errorf("install %s: %w", pkg, err)
		}
	}
	return exec.LookPath(name)
}

// version returns the first line a tool prints for args.
func version(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return "unknown"
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return line
}

// moduleRoot returns the directory of the main module (the Ferry checkout).
func moduleRoot() (string, error) {
	gomod := goEnv("GOMOD")
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("run compare from the Ferry checkout (go run ./perf/compare)")
	}
	return filepath.Dir(gomod), nil
}
