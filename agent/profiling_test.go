package agent

import (
	"bytes"
	"cmp"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// serveMetrics serves the agent's metrics handler on a loopback port. Its
// driver connection points at a socket nobody listens on: grpc.NewClient
// dials lazily, and only /healthz would use it.
func serveMetrics(t *testing.T, profiling bool) *httptest.Server {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(t.TempDir(), "no-driver.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	srv := httptest.NewServer(handler(newMetrics(nil), conn, profiling))
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, b
}

// isGzip: pprof serves profiles as gzip-compressed protocol buffers
// (without a Content-Encoding, so the client leaves them compressed).
func isGzip(b []byte) bool { return bytes.HasPrefix(b, []byte{0x1f, 0x8b}) }

// TestProfilingOn: with Profiling, every net/http/pprof endpoint answers on
// the metrics address with what `go tool pprof` and `go tool trace` read.
func TestProfilingOn(t *testing.T) {
	srv := serveMetrics(t, true)
	for _, c := range []struct {
		path string
		want string
		ok   func([]byte) bool
	}{
		{"/debug/pprof/", `lists "goroutine"`, func(b []byte) bool { return bytes.Contains(b, []byte("goroutine")) }},
		{"/debug/pprof/heap", "a gzip-compressed profile", isGzip},
		{"/debug/pprof/profile?seconds=1", "a gzip-compressed CPU profile", isGzip},
		{"/debug/pprof/cmdline", "the test binary's command line", func(b []byte) bool { return bytes.HasPrefix(b, []byte(os.Args[0])) }},
		{"/debug/pprof/symbol", "the symbol count", func(b []byte) bool { return bytes.HasPrefix(b, []byte("num_symbols: ")) }},
		{"/debug/pprof/trace?seconds=0.1", "an execution trace", func(b []byte) bool { return bytes.HasPrefix(b, []byte("go 1.")) }},
	} {
		t.Run(cmp.Or(strings.TrimPrefix(c.path, "/debug/pprof/"), "index"), func(t *testing.T) {
			code, b := get(t, srv.URL+c.path)
			if code != http.StatusOK || !c.ok(b) {
				t.Errorf("GET %s: %d, %d bytes starting %q; want 200 and %s", c.path, code, len(b), b[:min(len(b), 16)], c.want)
			}
		})
	}
}

// TestProfilingOff: without Profiling (the default) the profiles are not
// served at all, and the metrics are.
func TestProfilingOff(t *testing.T) {
	srv := serveMetrics(t, false)
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/profile?seconds=1"} {
		if code, _ := get(t, srv.URL+path); code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, code)
		}
	}
	if code, b := get(t, srv.URL+"/metrics"); code != http.StatusOK || !bytes.Contains(b, []byte("ferry_replication_jobs_running")) {
		t.Errorf("GET /metrics: %d\n%s", code, b)
	}
}

// TestProfilingNeedsMetricsListen: the profiles are served on the metrics
// address, so --profiling without one is refused rather than ignored.
func TestProfilingNeedsMetricsListen(t *testing.T) {
	cfg := Config{
		CSIListen: "unix:///run/ferry/hook.sock", CSIDriver: "unix:///run/csi/driver.sock",
		StateDir: "/var/lib/ferry", SecretsDir: "/etc/ferry/secrets", Profiling: true,
	}
	const want = "--profiling needs --metrics-listen: the profiles are served on the metrics address"
	if err := cfg.Validate(); err == nil || err.Error() != want {
		t.Errorf("Validate: %v, want %s", err, want)
	}
	cfg.MetricsListen = ":9808"
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate with --metrics-listen: %v", err)
	}
}
