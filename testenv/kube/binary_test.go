package kube

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/testenv/cache"
)

func TestWrapperGoMod(t *testing.T) {
	mod := modFile{
		Go:      "1.26.0",
		Godebug: []struct{ Key, Value string }{{"default", "go1.26"}},
		Require: []modVersion{{"k8s.io/api", "v0.37.0"}, {"k8s.io/utils", "v0.0.0-20260707023825-cf1189d6abe3"}, {"github.com/x/y", "v0.37.0"}},
		Replace: []struct{ Old, New modVersion }{
			{modVersion{Path: "example.com/client"}, modVersion{Path: "./client"}},
			{modVersion{Path: "k8s.io/kms"}, modVersion{"k8s.io/kms", "v0.37.0"}},
			{modVersion{Path: "example.com/fork"}, modVersion{"example.com/other", "v0.37.0"}},
		},
	}
	b := &build{module: "example.com/m", version: "v8.7.0", localVersion: "v8.7.0"}
	want := `module ferry.test/testenv/kube

go 1.26.0

godebug default=go1.26
require example.com/m v8.7.0

replace example.com/client => example.com/client v8.7.0
replace k8s.io/kms => k8s.io/kms v0.37.0
replace example.com/fork => example.com/other v0.37.0
`
	if got, err := b.wrapperGoMod(mod); err != nil || got != want {
		t.Fatalf("wrapper go.mod: %v\n%s\nwant:\n%s", err, got, want)
	}

	b.stagingVersion = "v0.37.2"
	want = `module ferry.test/testenv/kube

go 1.26.0

godebug default=go1.26
require example.com/m v8.7.0
require k8s.io/api v0.37.2

replace example.com/client => example.com/client v8.7.0
replace k8s.io/kms => k8s.io/kms v0.37.2
replace example.com/fork => example.com/other v0.37.0
`
	if got, err := b.wrapperGoMod(mod); err != nil || got != want {
		t.Fatalf("wrapper go.mod with stagingVersion: %v\n%s\nwant:\n%s", err, got, want)
	}

	mod.Replace[0].New.Path = "/elsewhere/client"
	if _, err := b.wrapperGoMod(mod); err == nil {
		t.Fatal("a replace with a directory outside the module's repository was accepted")
	}
}

// A binary's name in the cache changes with each version it is built
// from: a new pin or toolchain never finds the old build.
func TestBinaryNames(t *testing.T) {
	names := map[string]bool{}
	for _, b := range builds {
		for _, p := range b.programs {
			name := b.binaryName(p)
			for _, v := range []string{b.version, b.stagingVersion, runtime.Version()} {
				if !strings.Contains(name, v) {
					t.Errorf("%s: %q is not in the name", name, v)
				}
			}
			if names[name] {
				t.Errorf("two binaries named %s", name)
			}
			names[name] = true
		}
	}
}

// The cached binaries are the pinned versions, and Install finds them
// without building.
func TestBinariesCached(t *testing.T) {
	bins := binaries(t)
	again, err := Install(t.Context(), testLogWriter{t})
	if err != nil || *again != *bins {
		t.Fatalf("Install() = %+v, %v; want %+v", again, err, bins)
	}
	for file, want := range map[string]string{
		bins.Etcd:               "etcd Version: " + strings.TrimPrefix(EtcdVersion, "v"),
		bins.APIServer:          "Kubernetes " + KubernetesVersion,
		bins.ControllerManager:  "Kubernetes " + KubernetesVersion,
		bins.SnapshotController: SnapshotterVersion,
		bins.CSISnapshotter:     SnapshotterVersion,
	} {
		out, err := exec.Command(file, "--version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("%s --version: %v\n%s\nwant %q in it", file, err, out, want)
		}
	}
}

func TestOptOutSkips(t *testing.T) {
	t.Setenv("FERRY_CACHE", t.TempDir()) // nothing built here
	t.Setenv(NoKubeEnv, "1")
	returned := false
	t.Run("start", func(t *testing.T) {
		Start(t)
		returned = true
	})
	if returned {
		t.Fatal("Start with no binaries and the opt-out set did not skip")
	}
}

// A program that dies at startup is reported with its own output.
func TestLaunchFailureShowsLog(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "etcd")
	script := "#!/bin/sh\necho 'etcd: listen tcp 127.0.0.1:1: bind: address already in use' >&2\nexit 1\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	tries := 0
	_, _, err := launch(context.Background(), "etcd", filepath.Join(dir, "etcd.log"), fake, 1,
		func([]int) []string { tries++; return nil },
		func(context.Context, []int) error { return os.ErrNotExist })
	if err == nil || !strings.Contains(err.Error(), "exited during startup") || !strings.Contains(err.Error(), "bind: address already in use") {
		t.Fatalf("launch of a failing program: %v", err)
	}
	if tries != 3 {
		t.Fatalf("a program that lost its port was started %d times, want 3", tries)
	}
}

func TestLockFileWaitsForContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	unlock, err := cache.Lock(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := cache.Lock(ctx, path); err == nil {
		t.Fatal("second lock while held succeeded")
	}
	unlock()
}

// A program that dies during the test is reported when it is stopped.
func TestStopReportsEarlyExit(t *testing.T) {
	dir := t.TempDir()
	dead, err := startProcess("dead", filepath.Join(dir, "dead.log"), "/bin/sh", "-c", "echo 'panic: out of cheese'; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	<-dead.done
	if err := dead.stop(); err == nil || !strings.Contains(err.Error(), "exited by itself") || !strings.Contains(err.Error(), "out of cheese") {
		t.Fatalf("stop of a program that had exited: %v", err)
	}
	if err := dead.stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}

	alive, err := startProcess("alive", filepath.Join(dir, "alive.log"), "/bin/sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	if err := alive.stop(); err != nil {
		t.Fatalf("stop of a running program: %v", err)
	}
	select {
	case <-alive.done:
	default:
		t.Fatal("program still running after stop")
	}
}
