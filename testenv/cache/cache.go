// Package cache is where the test environment keeps the binaries it builds
// (MinIO, the Kubernetes control plane, the CSI sidecars) between runs, and
// the file lock that lets concurrent test processes wait for one build.
package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Dir is $FERRY_CACHE, else ~/.cache/ferry ($XDG_CACHE_HOME/ferry).
func Dir() (string, error) {
	if d := os.Getenv("FERRY_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir() // $XDG_CACHE_HOME or ~/.cache on Linux
	if err != nil {
		return "", fmt.Errorf("no cache directory (set FERRY_CACHE): %w", err)
	}
	return filepath.Join(d, "ferry"), nil
}

// Lock takes an exclusive flock on path, waiting until ctx is done.
func Lock(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, &fs.PathError{Op: "flock", Path: path, Err: err}
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for lock %s (another build running?): %w", path, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Tail returns at most the last n bytes of b (a failed build's output).
func Tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
