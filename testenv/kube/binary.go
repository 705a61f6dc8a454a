package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/ferrydr/ferry/testenv/cache"
)

// The pinned versions. KubernetesVersion and StagingVersion go together
// (k8s.io/kubernetes v1.X.Y publishes its staging modules, k8s.io/api and
// the rest, as v0.X.Y) and match the k8s.io requirements of Ferry's go.mod.
// EtcdVersion is the newest patch of the etcd minor that KubernetesVersion
// was released with (its build/dependencies.yaml names etcd 3.7.0).
// SnapshotterVersion is the external-snapshotter release whose client
// module Ferry's go.mod requires; its sidecars and its CRDs are used
// together.
const (
	KubernetesVersion  = "v1.37.2"
	StagingVersion     = "v0.37.2"
	EtcdVersion        = "v3.7.3"
	SnapshotterVersion = "v8.7.0"
)

// SnapshotterClientModule holds the VolumeSnapshot API types and, in
// config/crd, the CRDs that Start installs.
const SnapshotterClientModule = "github.com/kubernetes-csi/external-snapshotter/client/v8"

// Binaries are the paths of the programs Start and StartSnapshotter run.
type Binaries struct {
	Etcd               string
	APIServer          string
	ControllerManager  string
	SnapshotController string
	CSISnapshotter     string
}

// program is one binary of a build: the package go build makes it from,
// and where Binaries keeps its path.
type program struct {
	pkg   string // import path; its last element names the binary
	field func(*Binaries) *string
}

// A build makes some of the binaries from one module at a pinned version.
// None of these modules can be `go install`ed: their go.mod files have
// replace directives, which count only in the main module. So each build
// generates a small main module that requires the module and repeats its
// replace directives (see wrapperGoMod), and builds in there.
type build struct {
	module, version string
	// localVersion is the version at which the modules that the module's
	// go.mod replaces with a directory of its own repository are
	// published: k8s.io/kubernetes' staging modules, etcd's sibling
	// modules, external-snapshotter's client module.
	localVersion string
	// stagingVersion, if set, moves the Kubernetes staging modules the
	// module requires (k8s.io modules at the same v0 minor) to this patch
	// release: one Kubernetes version for the clusters, their sidecars and
	// Ferry, and packages the Go build cache shares between the builds.
	stagingVersion string
	// mainSrc, if set, is the source of the build's one program, a
	// package of the wrapper module itself, for a module that has the
	// program only as a library.
	mainSrc  string
	ldflags  string // added to -s -w
	programs []program
}

const wrapperModule = "ferry.test/testenv/kube"

var builds = []build{
	{
		module: "go.etcd.io/etcd/server/v3", version: EtcdVersion, localVersion: EtcdVersion,
		mainSrc: `package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
`,
		programs: []program{
			{wrapperModule + "/cmd/etcd", func(b *Binaries) *string { return &b.Etcd }},
		},
	},
	{
		module: "k8s.io/kubernetes", version: KubernetesVersion, localVersion: StagingVersion,
		// What the Kubernetes release build stamps, so /version tells the truth.
		ldflags: kubeVersionLdflags(KubernetesVersion),
		programs: []program{
			{"k8s.io/kubernetes/cmd/kube-apiserver", func(b *Binaries) *string { return &b.APIServer }},
			{"k8s.io/kubernetes/cmd/kube-controller-manager", func(b *Binaries) *string { return &b.ControllerManager }},
		},
	},
	{
		module: "github.com/kubernetes-csi/external-snapshotter/v8", version: SnapshotterVersion, localVersion: SnapshotterVersion,
		stagingVersion: StagingVersion,
		ldflags:        "-X main.version=" + SnapshotterVersion,
		programs: []program{
			{"github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller", func(b *Binaries) *string { return &b.SnapshotController }},
			{"github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter", func(b *Binaries) *string { return &b.CSISnapshotter }},
		},
	},
}

func kubeVersionLdflags(v string) string {
	major, minor, _ := strings.Cut(strings.TrimPrefix(v, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	const pkg = "k8s.io/component-base/version"
	return fmt.Sprintf("-X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s -X %s.gitTreeState=clean",
		pkg, v, pkg, major, pkg, minor, pkg)
}

// binDir is the directory of the cached binaries, each named after
// what it is built from (see build.key).
func binDir() (string, error) {
	dir, err := cache.Dir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "bin"), nil
}

func (b *build) binaryName(p program) string { return path.Base(p.pkg) + "-" + b.key() }

// key says what b's binaries are built from: the module's version, the
// Kubernetes staging version its k8s.io modules are moved to, and the Go
// release that compiles them, so that a change of any pinned version or
// of the toolchain builds them again ("snapshot-controller-v8.7.0-k8s-
// v0.37.2-go1.26.8"). The Go release is the one that built this program:
// `go test` runs the test binary with that release's go command first in
// PATH, and runGo pins it with GOTOOLCHAIN so that the name stays true.
func (b *build) key() string {
	k := b.version
	if b.stagingVersion != "" {
		k += "-k8s-" + b.stagingVersion
	}
	return k + "-" + runtime.Version()
}

// cached reports whether all of b's programs are in dir, and fills in
// their paths.
func (b *build) cached(dir string, bins *Binaries) bool {
	for _, p := range b.programs {
		file := filepath.Join(dir, b.binaryName(p))
		if fi, err := os.Stat(file); err != nil || !fi.Mode().IsRegular() {
			return false
		}
		*p.field(bins) = file
	}
	return true
}

// Cached returns the cached binaries, or nil if any has not been built yet.
func Cached() *Binaries {
	dir, err := binDir()
	if err != nil {
		return nil
	}
	bins := &Binaries{}
	for i := range builds {
		if !builds[i].cached(dir, bins) {
			return nil
		}
	}
	return bins
}

// Install returns the binaries, building those not in the cache first
// (about 10 minutes on 2 cores with an empty Go build cache, under one
// with a warm one; it needs the Go toolchain and the module proxy). It reports what it builds
// and how long that took on progress. Concurrent callers, also in other
// processes, wait for one build of each module: it goes to a temporary
// directory under a file lock and is renamed into place.
func Install(ctx context.Context, progress io.Writer) (*Binaries, error) {
	dir, err := binDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("kube cache: %w", err)
	}
	bins := &Binaries{}
	for i := range builds {
		b := &builds[i]
		if b.cached(dir, bins) {
			continue
		}
		if err := b.buildLocked(ctx, dir, progress); err != nil {
			return nil, err
		}
		if !b.cached(dir, bins) {
			return nil, fmt.Errorf("build %s@%s: binaries missing after the build", b.module, b.version)
		}
	}
	// The CRDs Start installs come from the module cache: fetch them now,
	// not during a test.
	if _, err := snapshotCRDDir(); err != nil {
		return nil, err
	}
	return bins, nil
}

func (b *build) buildLocked(ctx context.Context, dir string, progress io.Writer) error {
	lock := filepath.Join(dir, b.binaryName(b.programs[0])+".lock")
	unlock, err := cache.Lock(ctx, lock)
	if err != nil {
		return fmt.Errorf("kube cache: %w", err)
	}
	defer unlock()
	if b.cached(dir, &Binaries{}) {
		return nil // another process built it while we waited
	}
	var names []string
	for _, p := range b.programs {
		names = append(names, path.Base(p.pkg))
	}
	fmt.Fprintf(progress, "kube: building %s from %s@%s...\n", strings.Join(names, ", "), b.module, b.version)
	start := time.Now()
	if err := b.build(ctx, dir); err != nil {
		return fmt.Errorf("build %s from %s@%s: %w", strings.Join(names, ", "), b.module, b.version, err)
	}
	fmt.Fprintf(progress, "kube: built %s in %s\n", strings.Join(names, ", "), time.Since(start).Round(time.Second))
	return nil
}

// build makes b's programs in a wrapper module and moves them into dir.
func (b *build) build(ctx context.Context, dir string) error {
	gt, err := goTool()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	src, out := filepath.Join(work, "src"), filepath.Join(work, "out")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return err
	}

	// The module's own go.mod, for its replace directives.
	var dl struct{ GoMod string }
	if err := goJSON(ctx, gt, src, &dl, "mod", "download", "-json", b.module+"@"+b.version); err != nil {
		return err
	}
	var mod modFile
	if err := goJSON(ctx, gt, src, &mod, "mod", "edit", "-json", dl.GoMod); err != nil {
		return err
	}
	goMod, err := b.wrapperGoMod(mod)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte(goMod), 0o644); err != nil {
		return err
	}
	if b.mainSrc != "" {
		mainDir := filepath.Join(src, strings.TrimPrefix(b.programs[0].pkg, wrapperModule+"/"))
		if err := os.MkdirAll(mainDir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(mainDir, "main.go"), []byte(b.mainSrc), 0o644); err != nil {
			return err
		}
	}

	args := []string{"build", "-trimpath", "-ldflags=" + strings.TrimSpace("-s -w "+b.ldflags), "-o", out + "/"}
	for _, p := range b.programs {
		args = append(args, p.pkg)
	}
	if _, err := runGo(ctx, gt, src, args...); err != nil {
		return err
	}
	for _, p := range b.programs {
		if err := os.Rename(filepath.Join(out, path.Base(p.pkg)), filepath.Join(dir, b.binaryName(p))); err != nil {
			return err
		}
	}
	return nil
}

// modFile is the part of `go mod edit -json` that wrapperGoMod uses.
type modFile struct {
	Go      string
	Godebug []struct{ Key, Value string }
	Require []modVersion
	Replace []struct{ Old, New modVersion }
}

type modVersion struct{ Path, Version string }

// wrapperGoMod returns the go.mod of a main module that builds b.module as
// the module's own go.mod would: same go version and godebug defaults, and
// each replace directive repeated, with a directory of the module's
// repository ("./staging/src/k8s.io/api", "../api", "./client") turned into
// the same module at b.localVersion, as published from that directory.
// With b.stagingVersion set, requirements and replacements of staging
// modules name that version instead.
func (b *build) wrapperGoMod(mod modFile) (string, error) {
	var s strings.Builder
	fmt.Fprintf(&s, "module %s\n\ngo %s\n\n", wrapperModule, mod.Go)
	for _, d := range mod.Godebug {
		fmt.Fprintf(&s, "godebug %s=%s\n", d.Key, d.Value)
	}
	fmt.Fprintf(&s, "require %s %s\n", b.module, b.version)
	for _, r := range mod.Require {
		if b.isStaging(r) {
			fmt.Fprintf(&s, "require %s %s\n", r.Path, b.stagingVersion)
		}
	}
	s.WriteString("\n")
	for _, r := range mod.Replace {
		if r.Old.Version != "" {
			return "", fmt.Errorf("replace of %s@%s: only replaces of all versions are handled", r.Old.Path, r.Old.Version)
		}
		to := r.New.Path + " " + r.New.Version
		if r.New.Version == "" { // a directory
			if !strings.HasPrefix(r.New.Path, "./") && !strings.HasPrefix(r.New.Path, "../") {
				return "", fmt.Errorf("replace of %s with %s: not a directory of the module's repository", r.Old.Path, r.New.Path)
			}
			to = r.Old.Path + " " + b.localVersion
		} else if r.New.Path == r.Old.Path && b.isStaging(r.New) {
			to = r.New.Path + " " + b.stagingVersion
		}
		fmt.Fprintf(&s, "replace %s => %s\n", r.Old.Path, to)
	}
	return s.String(), nil
}

// isStaging reports whether m is a Kubernetes staging module that
// b.stagingVersion moves: k8s.io/api v0.37.0 for v0.37.2, not k8s.io/utils.
func (b *build) isStaging(m modVersion) bool {
	if b.stagingVersion == "" {
		return false
	}
	minor := b.stagingVersion[:strings.LastIndex(b.stagingVersion, ".")+1] // "v0.37."
	return strings.HasPrefix(m.Path, "k8s.io/") && strings.HasPrefix(m.Version, minor)
}

func goTool() (string, error) {
	gt, err := exec.LookPath("go")
	if err != nil {
		if root := os.Getenv("GOROOT"); root != "" {
			return filepath.Join(root, "bin", "go"), nil
		}
		return "", fmt.Errorf("the go command is needed: %w", err)
	}
	return gt, nil
}

// runGo runs the go command in dir, outside any workspace, free to update
// the wrapper's go.sum, with the Go release build.key names, and returns
// its standard output.
func runGo(ctx context.Context, gt, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, gt, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "GOTOOLCHAIN="+runtime.Version())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, cache.Tail(append(stderr.Bytes(), stdout.Bytes()...), 4096))
	}
	return stdout.Bytes(), nil
}

func goJSON(ctx context.Context, gt, dir string, v any, args ...string) error {
	out, err := runGo(ctx, gt, dir, args...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return nil
}
