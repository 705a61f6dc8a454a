// Package minio runs a real MinIO server on loopback for tests.
//
// The server is built from the Go module proxy at a pinned version (Module,
// Version) and cached, so only the first run on a machine pays for the
// build: `go run ./testenv/cmd/ferry-testenv install` does it ahead of
// `go test`. Start gives each test its own server, port and data directory.
package minio

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/ferrydr/ferry/testenv/cache"
)

// The MinIO server the tests run, as a Go module version.
const (
	Module  = "github.com/minio/minio"
	Version = "v0.0.0-20260212201848-7aac2a2c5b7c"
)

// CacheDir is where built test binaries are kept: $FERRY_CACHE if set, else
// $XDG_CACHE_HOME/ferry, else ~/.cache/ferry.
func CacheDir() (string, error) { return cache.Dir() }

// binaryPath returns where Binary keeps the server.
func binaryPath() (string, error) {
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(cache, "bin", "minio-"+Version), nil
}

// Cached returns the path of the cached server binary, or "" if it has not
// been built yet.
func Cached() string {
	p, err := binaryPath()
	if err != nil {
		return ""
	}
	if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
		return ""
	}
	return p
}

// Binary returns the path of the MinIO server binary, building it with
// `go install Module@Version` into the cache first if needed (a few
// minutes, needs the Go toolchain and the module proxy). Concurrent callers,
// also in other processes, wait for one build: it goes to a temporary
// directory under a file lock and is renamed into place.
func Binary(ctx context.Context) (string, error) {
	final, err := binaryPath()
	if err != nil {
		return "", err
	}
	if Cached() != "" {
		return final, nil
	}
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("minio cache: %w", err)
	}
	unlock, err := cache.Lock(ctx, final+".lock")
	if err != nil {
		return "", fmt.Errorf("minio cache: %w", err)
	}
	defer unlock()
	if Cached() != "" {
		return final, nil // another process built it while we waited
	}
	if err := build(ctx, dir, final); err != nil {
		return "", err
	}
	return final, nil
}

func build(ctx context.Context, dir, final string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		if root := os.Getenv("GOROOT"); root != "" {
			goTool, err = filepath.Join(root, "bin", "go"), nil
		}
	}
	if err != nil {
		return fmt.Errorf("build minio: the go command is needed: %w", err)
	}
	gobin, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return fmt.Errorf("build minio: %w", err)
	}
	defer os.RemoveAll(gobin)
	cmd := exec.CommandContext(ctx, goTool, "install", Module+"@"+Version)
	cmd.Dir = gobin // outside any module, so nothing but the pinned version counts
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOWORK=off", "GOFLAGS=-mod=mod")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build minio: go install %s@%s: %w\n%s", Module, Version, err, cache.Tail(out.Bytes(), 4096))
	}
	if err := os.Rename(filepath.Join(gobin, "minio"), final); err != nil {
		return fmt.Errorf("build minio: %w", err)
	}
	return nil
}
