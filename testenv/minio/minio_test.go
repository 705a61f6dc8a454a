package minio

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	miniogo "github.com/minio/minio-go/v7"

	"github.com/ferrydr/ferry/testenv/cache"
)

func TestServer(t *testing.T) {
	s := Start(t)
	if !strings.HasPrefix(s.Endpoint, "127.0.0.1:") {
		t.Fatalf("Endpoint %q is not on loopback", s.Endpoint)
	}
	if got, want := s.URL("bkt", "/p/q/"), "s3+http://"+s.Endpoint+"/bkt/p/q"; got != want {
		t.Errorf("URL = %q, want %q", got, want)
	}
	if got, want := s.URL("bkt", ""), "s3+http://"+s.Endpoint+"/bkt"; got != want {
		t.Errorf("URL = %q, want %q", got, want)
	}
	ctx := t.Context()
	s.CreateBucket(t, "bkt")
	c := s.Client(t)
	if _, err := c.PutObject(ctx, "bkt", "o", strings.NewReader("hello"), 5, miniogo.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if entries, err := os.ReadDir(filepath.Join(s.DataDir, "bkt")); err != nil || len(entries) == 0 {
		t.Errorf("bucket not under DataDir: %v", err)
	}

	endpoint := s.Endpoint
	s.Restart()
	if s.Endpoint != endpoint {
		t.Fatalf("Restart moved the server from %s to %s", endpoint, s.Endpoint)
	}
	if got := get(t, s.Client(t), "bkt", "o"); got != "hello" {
		t.Fatalf("object after Restart = %q", got)
	}

	s.Stop()
	s.Stop() // idempotent
	if conn, err := net.DialTimeout("tcp", s.Endpoint, time.Second); err == nil {
		conn.Close()
		t.Fatal("server still accepts connections after Stop")
	}
	s.Restart()
	s.DeleteBucket(t, "bkt") // with its object
	if ok, err := s.Client(t).BucketExists(ctx, "bkt"); err != nil || ok {
		t.Fatalf("bucket after DeleteBucket: exists=%v, %v", ok, err)
	}
}

func get(t *testing.T, c *miniogo.Client, bucket, name string) string {
	t.Helper()
	o, err := c.GetObject(t.Context(), bucket, name, miniogo.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	b, err := io.ReadAll(o)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestServerTLS(t *testing.T) {
	s := StartTLS(t)
	if s.CAFile == "" {
		t.Fatal("no CAFile")
	}
	want := "s3://" + s.Endpoint + "/bkt/p?ca=" + strings.ReplaceAll(s.CAFile, "/", "%2F")
	if got := s.URL("bkt", "p"); got != want {
		t.Errorf("URL = %q, want %q", got, want)
	}
	s.CreateBucket(t, "bkt")
	if _, err := s.Client(t).PutObject(t.Context(), "bkt", "o", strings.NewReader("tls"), 3, miniogo.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := get(t, s.Client(t), "bkt", "o"); got != "tls" {
		t.Fatalf("got %q", got)
	}
}

// Several servers at once, as several zones or regions.
func TestServersIndependent(t *testing.T) {
	a, b := Start(t), Start(t)
	if a.Endpoint == b.Endpoint || a.DataDir == b.DataDir {
		t.Fatal("two servers share an endpoint or a data directory")
	}
	a.CreateBucket(t, "only-a")
	if ok, err := b.Client(t).BucketExists(t.Context(), "only-a"); err != nil || ok {
		t.Fatalf("bucket of server a visible on b: %v, %v", ok, err)
	}
}

func TestBinaryCached(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	p, err := Binary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p != Cached() || filepath.Base(p) != "minio-"+Version {
		t.Fatalf("Binary() = %q, Cached() = %q", p, Cached())
	}
	out, err := exec.Command(p, "--version").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte(" version ")) {
		t.Fatalf("%s --version: %v\n%s", p, err, out)
	}
}

// The build path itself, into an empty cache, from two callers at once:
// one builds, the other waits for the lock and finds the result.
func TestBinaryBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds MinIO (seconds with a warm Go build cache, minutes without)")
	}
	cache := t.TempDir()
	t.Setenv("FERRY_CACHE", cache)
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	var (
		wg    sync.WaitGroup
		paths [2]string
		errs  [2]error
	)
	for i := range paths {
		wg.Go(func() { paths[i], errs[i] = Binary(ctx) })
	}
	wg.Wait()
	want := filepath.Join(cache, "bin", "minio-"+Version)
	for i := range paths {
		if errs[i] != nil || paths[i] != want {
			t.Fatalf("Binary() = %q, %v; want %q", paths[i], errs[i], want)
		}
	}
	entries, err := os.ReadDir(filepath.Join(cache, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".build-") {
			t.Errorf("temporary build directory %s left behind", e.Name())
		}
	}
}

func TestCacheDir(t *testing.T) {
	t.Setenv("FERRY_CACHE", "/x/ferry-cache")
	if d, _ := CacheDir(); d != "/x/ferry-cache" {
		t.Errorf("with FERRY_CACHE: %q", d)
	}
	t.Setenv("FERRY_CACHE", "")
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	if d, _ := CacheDir(); d != "/xdg/ferry" {
		t.Errorf("with XDG_CACHE_HOME: %q", d)
	}
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if d, _ := CacheDir(); d != "/home/u/.cache/ferry" {
		t.Errorf("with HOME only: %q", d)
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
	if _, err := cache.Lock(ctx, path); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second lock while held: %v, want the context's error", err)
	}
	unlock()
	unlock2, err := cache.Lock(t.Context(), path)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}

func TestOptOutSkips(t *testing.T) {
	t.Setenv("FERRY_CACHE", t.TempDir()) // nothing built here
	t.Setenv(NoMinIOEnv, "1")
	returned := false
	t.Run("start", func(t *testing.T) {
		Start(t)
		returned = true
	})
	if returned {
		t.Fatal("Start with no binary and the opt-out set did not skip")
	}
}

// A server that dies at startup is reported with its own output.
func TestLaunchFailureShowsOutput(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "minio")
	script := "#!/bin/sh\necho 'FATAL Unable to use the drive: disk on fire' >&2\nexit 1\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	s := &Server{bin: fake, Endpoint: "127.0.0.1:1", console: "127.0.0.1:2", DataDir: t.TempDir(), certs: t.TempDir()}
	err := s.launch()
	if err == nil || !strings.Contains(err.Error(), "disk on fire") || !strings.Contains(err.Error(), "exited during startup") {
		t.Fatalf("launch of a failing server: %v", err)
	}
}
