package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/testenv/volume"
)

var ferryBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ferry-cli-test")
	if err != nil {
		panic(err)
	}
	ferryBin = filepath.Join(dir, "ferry")
	// The commands' default --cache-dir, kept out of the user's own.
	os.Setenv("FERRY_CACHE_DIR", filepath.Join(dir, "cache"))
	if out, err := exec.Command("go", "build", "-o", ferryBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build ferry: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

func ferry(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(ferryBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{out.String(), errb.String(), code}
}

func mustFerry(t *testing.T, env []string, args ...string) string {
	t.Helper()
	r := ferry(t, env, args...)
	if r.code != 0 {
		t.Fatalf("ferry %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

func fileRepo(t *testing.T, n int) (string, []string) {
	dir := t.TempDir()
	var urls, dirs []string
	for i := 0; i < n; i++ {
		d := filepath.Join(dir, fmt.Sprintf("zone-%d", i))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
		urls = append(urls, "file://"+d)
	}
	return strings.Join(urls, ","), dirs
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		t.Fatalf("%s and %s differ", a, b)
	}
}

type backupJSON struct {
	SnapshotID  string  `json:"snapshot_id"`
	BytesVolume int64   `json:"bytes_volume"`
	BytesRead   int64   `json:"bytes_read"`
	BytesNew    int64   `json:"bytes_new"`
	BytesStored int64   `json:"bytes_stored"`
	Duration    float64 `json:"duration_seconds"`
}

func TestCLIEndToEnd(t *testing.T) {
	repoURL, dirs := fileRepo(t, 3)
	cache := t.TempDir()
	env := []string{"FERRY_REPO=" + repoURL, "FERRY_PASSWORD=correct horse", "FERRY_CACHE_DIR=" + cache}
	work := t.TempDir()
	img := filepath.Join(work, "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 64 << 20, DataFrac: 0.3, Seed: 1}); err != nil {
		t.Fatal(err)
	}

	out := mustFerry(t, env, "init", "--erasure", "2+1", "--chunk-size", "64K")
	if !strings.Contains(out, "survives the loss of any 1 whole target") || !strings.Contains(out, "chunks of 32 KiB to 512 KiB") {
		t.Fatalf("init does not say what the layout survives and the chunk sizes: %q", out)
	}
	if r := ferry(t, env, "init", "--erasure", "2+1"); r.code == 0 || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("second init: exit %d, %q", r.code, r.stderr)
	}

	var b1, b2, b3 backupJSON
	if err := json.Unmarshal([]byte(mustFerry(t, env, "backup", "--json", "--name", "db", img)), &b1); err != nil {
		t.Fatal(err)
	}
	if b1.BytesVolume != 64<<20 || b1.BytesRead == 0 || b1.BytesRead > 40<<20 || b1.BytesNew == 0 || b1.BytesStored == 0 || b1.SnapshotID == "" {
		t.Fatalf("first backup summary: %+v", b1)
	}
	// The backup kept the index objects it wrote in the local cache, in a
	// directory named by the repository's ID, and nothing else there.
	if copies, _ := filepath.Glob(filepath.Join(cache, "*", "index", "*")); len(copies) == 0 {
		entries, _ := os.ReadDir(cache)
		t.Fatalf("no index object cached in FERRY_CACHE_DIR (it holds %v)", entries)
	}
	// The same image again stores nothing new.
	if err := json.Unmarshal([]byte(mustFerry(t, env, "backup", "--json", "--name", "db", img)), &b2); err != nil {
		t.Fatal(err)
	}
	if b2.BytesNew != 0 {
		t.Fatalf("unchanged volume stored %d new bytes", b2.BytesNew)
	}
	v1 := filepath.Join(work, "v1.img")
	if err := os.Link(img, v1); err != nil {
		t.Fatal(err)
	}
	// A changed copy stores about the change.
	img2 := filepath.Join(work, "vol2.img")
	mustCopy(t, img, img2)
	if err := volume.Mutate(img2, 4, 256<<10, 3); err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(mustFerry(t, env, "backup", "--name", "db2", img2))
	if len(id) != 64 {
		t.Fatalf("backup printed %q, want a snapshot id", id)
	}
	out = mustFerry(t, env, "snapshots", "--json")
	var snaps []struct {
		ID, Name string
		Size     int64
	}
	if err := json.Unmarshal([]byte(out), &snaps); err != nil || len(snaps) != 3 {
		t.Fatalf("snapshots: %v %s", err, out)
	}
	if err := json.Unmarshal([]byte(mustFerry(t, env, "backup", "--json", img2)), &b3); err != nil {
		t.Fatal(err)
	}
	if b3.BytesNew != 0 {
		t.Fatalf("second volume backed up again stored %d new bytes", b3.BytesNew)
	}

	restored := filepath.Join(work, "restored.img")
	mustFerry(t, env, "restore", "latest", "--name", "db", "--workers", "1", "--target", restored)
	sameFile(t, img, restored)
	// A new file is sparse: the holes were not written.
	if used := allocated(t, restored); used > 40<<20 {
		t.Fatalf("restored file uses %d bytes of disk; holes were written", used)
	}
	// Into an existing larger file: real zeros, trimmed to size.
	existing := filepath.Join(work, "existing.img")
	if err := os.WriteFile(existing, bytes.Repeat([]byte{0xAB}, 70<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	mustFerry(t, env, "restore", id[:10], "--target", existing)
	sameFile(t, img2, existing)

	// Lose a whole target and restore again.
	if err := os.RemoveAll(dirs[2]); err != nil {
		t.Fatal(err)
	}
	again := filepath.Join(work, "again.img")
	r := ferry(t, env, "restore", b1.SnapshotID, "--target", again)
	if r.code != 0 {
		t.Fatalf("restore with a target gone: %s", r.stderr)
	}
	sameFile(t, v1, again)
}

func mustCopy(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "--sparse=always", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
}

func allocated(t *testing.T, path string) int64 {
	out, err := exec.Command("du", "-B1", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	fmt.Sscan(string(out), &n)
	return n
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func TestCLIErrors(t *testing.T) {
	repoURL, _ := fileRepo(t, 3)
	good := []string{"FERRY_REPO=" + repoURL, "FERRY_PASSWORD=s3cr3t-right"}
	img := filepath.Join(t.TempDir(), "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 8 << 20, DataFrac: 0.5, Seed: 2}); err != nil {
		t.Fatal(err)
	}
	mustFerry(t, good, "init")
	mustFerry(t, good, "backup", img)
	emptyDir := t.TempDir()

	cases := []struct {
		name string
		env  []string
		args []string
		code int
		want string
	}{
		{"wrong password", []string{"FERRY_REPO=" + repoURL, "FERRY_PASSWORD=s3cr3t-wrong"}, []string{"restore", "latest"}, 1, "wrong password"},
		{"unknown snapshot", good, []string{"restore", "deadbeef"}, 1, "snapshot not found"},
		{"unreachable target", []string{fmt.Sprintf("FERRY_REPO=s3+http://127.0.0.1:%d/bucket", closedPort(t)), "FERRY_PASSWORD=x", "AWS_ACCESS_KEY_ID=a", "AWS_SECRET_ACCESS_KEY=b"}, []string{"restore", "latest"}, 1, "127.0.0.1"},
		{"not a repository", []string{"FERRY_REPO=file://" + emptyDir, "FERRY_PASSWORD=x"}, []string{"restore", "latest"}, 1, "no Ferry repository"},
		{"no password", []string{"FERRY_REPO=" + repoURL, "FERRY_PASSWORD="}, []string{"restore", "latest"}, 2, "no password"},
		{"bad repo url", []string{"FERRY_REPO=ftp://x/y", "FERRY_PASSWORD=x"}, []string{"restore", "latest"}, 2, "--repo"},
		{"bad restore workers", good, []string{"restore", "latest", "--workers", "0"}, 2, "--workers 0: want 1 to 64"},
		{"bad erasure", []string{"FERRY_REPO=file://" + emptyDir, "FERRY_PASSWORD=x"}, []string{"init", "--erasure", "3"}, 2, "--erasure"},
		{"bad chunk size", []string{"FERRY_REPO=file://" + emptyDir, "FERRY_PASSWORD=x"}, []string{"init", "--chunk-size", "100K"}, 2, "power of two"},
		{"missing source", good, []string{"backup", "/nonexistent/vol.img"}, 1, "/nonexistent/vol.img"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "out.img")
			args := c.args
			if args[0] == "restore" {
				args = append(args, "--target", target)
			}
			start := time.Now()
			r := ferry(t, c.env, args...)
			if r.code != c.code {
				t.Fatalf("exit %d, want %d; stderr %q", r.code, c.code, r.stderr)
			}
			lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "ferry: ") || !strings.Contains(lines[0], c.want) {
				t.Fatalf("want one line mentioning %q, got %q", c.want, r.stderr)
			}
			if strings.Contains(r.stderr, "s3cr3t") {
				t.Fatalf("password in the message: %q", r.stderr)
			}
			if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s was written", target)
			}
			if entries, _ := os.ReadDir(filepath.Dir(target)); len(entries) != 0 {
				t.Fatalf("files left beside the target: %v", entries)
			}
			if d := time.Since(start); d > 30*time.Second {
				t.Fatalf("took %s to fail", d)
			}
		})
	}
}

func TestProgressLine(t *testing.T) {
	got := progressLine("backup", 512<<20, 2<<30, 2*time.Second)
	for _, want := range []string{"512 MiB / 2.0 GiB", "25%", "256 MiB/s", "ETA 6s"} {
		if !strings.Contains(got, want) {
			t.Fatalf("%q lacks %q", got, want)
		}
	}
}
