package reflinkcsi

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydr/ferry/testenv/xfs"
)

// TestDirSize is the size of the XFS StartTest makes when cfg.Dir is
// empty. The image is sparse: it costs what the test writes.
const TestDirSize = 1 << 30

// StartTest runs a driver for the duration of a test and returns it once
// it serves. Empty fields of cfg are filled in: Dir with a new XFS of
// TestDirSize bytes (xfs.Mount), Endpoint with a socket in a new
// temporary directory, NodeID with "node-1", Logger with one writing to
// the test's log. The driver stops when the test ends; the test fails if
// it returned an error.
func StartTest(t testing.TB, cfg Config) *Driver {
	t.Helper()
	d, _ := serve(t, testConfig(t, cfg))
	return d
}

// StartStoppable is StartTest that also returns a function which stops the
// driver before the test ends, as when its node is lost. Calling it again
// does nothing.
func StartStoppable(t testing.TB, cfg Config) (*Driver, func()) {
	t.Helper()
	return serve(t, testConfig(t, cfg))
}

// testConfig fills in the empty fields of cfg as StartTest does.
func testConfig(t testing.TB, cfg Config) Config {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = xfs.Mount(t, TestDirSize)
	}
	if cfg.Endpoint == "" {
		// Not t.TempDir: a socket path must stay under 108 bytes.
		dir, err := os.MkdirTemp("", "reflinkcsi-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		cfg.Endpoint = "unix://" + filepath.Join(dir, "csi.sock")
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "node-1"
	}
	if cfg.Logger == nil {
		w := &testLogWriter{t: t}
		t.Cleanup(w.stop)
		cfg.Logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg
}

// serve starts a driver with cfg and returns it once it serves, and a
// function that stops it (also called when the test ends).
func serve(t testing.TB, cfg Config) (*Driver, func()) {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("reflinkcsi driver: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	sock, _ := socketPath(d.cfg.Endpoint)
	// Until a connection is accepted: the socket file appears at bind,
	// a moment before listen, and a connection in between is refused.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		select {
		case err := <-done:
			t.Fatalf("reflinkcsi driver did not start: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("reflinkcsi driver did not create %s in 10s", sock)
		}
	}
	return d, stop
}

// Config returns the driver's configuration, with the defaults New and
// StartTest filled in.
func (d *Driver) Config() Config { return d.cfg }

// testLogWriter sends log lines to t.Log until the test's cleanup, after
// which a late line (from a call the server abandoned) is dropped rather
// than failing the test binary.
type testLogWriter struct {
	mu      sync.Mutex
	t       testing.TB
	stopped bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testLogWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}
