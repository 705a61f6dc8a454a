package minio

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	miniogo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/ferrydr/ferry/transport/objstore"
)

// Root credentials of every test server. Test-only values.
const (
	RootUser     = "ferry-test-root"
	RootPassword = "ferry-test-root-secret"
)

// NoMinIOEnv, set to 1, makes Start skip the test instead of failing when
// MinIO is not already built or cannot start. It is a developer opt-out;
// CI must not set it.
const NoMinIOEnv = "FERRY_TEST_NO_MINIO"

// Server is one MinIO process on 127.0.0.1 with its own data directory.
type Server struct {
	Endpoint  string // "127.0.0.1:PORT"
	AccessKey string
	SecretKey string
	DataDir   string // MinIO's drive: buckets are directories in it
	CAFile    string // PEM of the CA that signed the server's certificate; "" without TLS

	t       testing.TB
	bin     string
	certs   string // --certs-dir
	console string // console address, needed on the command line even with the browser off

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	log  *tailBuffer
}

const (
	buildTimeout = 20 * time.Minute
	startTimeout = 60 * time.Second
	stopTimeout  = 10 * time.Second
)

// Start builds MinIO if needed, starts it on free loopback ports with a
// fresh data directory, waits until it serves requests, and stops it when
// the test ends. On failure it calls t.Fatal with MinIO's own output, or
// t.Skip when FERRY_TEST_NO_MINIO=1.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, false)
}

// StartTLS is Start with HTTPS, using a certificate for 127.0.0.1 from a
// throwaway CA whose certificate is in CAFile.
func StartTLS(t testing.TB) *Server {
	t.Helper()
	return start(t, true)
}

func start(t testing.TB, withTLS bool) *Server {
	t.Helper()
	optOut := os.Getenv(NoMinIOEnv) == "1"
	fail := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if optOut {
			t.Skipf("%s (skipped: %s=1)", msg, NoMinIOEnv)
		}
		t.Fatalf("%s\n(set %s=1 to skip MinIO tests on a developer machine)", msg, NoMinIOEnv)
	}
	bin := Cached()
	if bin == "" {
		if optOut {
			t.Skipf("MinIO is not built (run: go run ./testenv/cmd/ferry-testenv install); skipped: %s=1", NoMinIOEnv)
		}
		t.Logf("building MinIO %s@%s into the cache, once per machine (a few minutes)", Module, Version)
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		var err error
		if bin, err = Binary(ctx); err != nil {
			fail("MinIO: %v", err)
		}
	}
	s, err := newServer(bin, t.TempDir(), withTLS)
	if err != nil {
		t.Fatalf("MinIO: %v", err)
	}
	s.t = t
	t.Cleanup(s.Stop)
	if err := s.launchOnFreePorts(); err != nil {
		fail("MinIO: %v", err)
	}
	return s
}

// Run starts a server outside a test, for a program that drives
// benchmarks: MinIO is built into the cache first if needed, its data and
// certificates go under dir, and the caller stops it with Stop (Restart
// needs a server from Start; Relaunch returns its error instead).
func Run(ctx context.Context, dir string) (*Server, error) {
	bin, err := Binary(ctx)
	if err != nil {
		return nil, err
	}
	s, err := newServer(bin, dir, false)
	if err != nil {
		return nil, err
	}
	if err := s.launchOnFreePorts(); err != nil {
		return nil, err
	}
	return s, nil
}

// newServer prepares a server whose data and certificates live under dir.
func newServer(bin, dir string, withTLS bool) (*Server, error) {
	s := &Server{
		AccessKey: RootUser,
		SecretKey: RootPassword,
		DataDir:   filepath.Join(dir, "data"),
		bin:       bin,
		certs:     filepath.Join(dir, "certs"),
	}
	if withTLS {
		s.CAFile = filepath.Join(dir, "ca.pem")
		if err := writeCerts(s.certs, s.CAFile); err != nil {
			return nil, fmt.Errorf("TLS certificates: %w", err)
		}
	}
	return s, nil
}

// launchOnFreePorts starts the server on free loopback ports. A free port
// can be taken by someone else before MinIO binds it; it tries again with
// new ports then.
func (s *Server) launchOnFreePorts() error {
	var err error
	for range 3 {
		var ports [2]string
		if ports, err = freePorts(); err != nil {
			return err
		}
		s.Endpoint, s.console = "127.0.0.1:"+ports[0], "127.0.0.1:"+ports[1]
		if err = s.launch(); err == nil || !errors.Is(err, errAddrInUse) {
			return err
		}
	}
	return err
}

// Stop stops the server (SIGTERM, then SIGKILL after 10s). It is safe to
// call more than once; the data directory stays for Restart.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(stopTimeout):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Restart stops the server and starts it again on the same port with the
// same data, as after a crash or an upgrade.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.Relaunch(); err != nil {
		s.t.Fatalf("restart MinIO: %v", err)
	}
}

// Relaunch is Restart for a server from Run: it stops the server if it
// runs, starts it again on the same port with the same data, and returns
// what went wrong instead of failing a test.
func (s *Server) Relaunch() error {
	s.Stop()
	var err error
	// The port was just released; it can linger briefly in use.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err = s.launch(); err == nil || !errors.Is(err, errAddrInUse) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Pid returns the server process's ID, or 0 while it is stopped (for a
// benchmark that accounts for the server's CPU time).
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

var errAddrInUse = errors.New("address already in use")

func (s *Server) launch() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = &tailBuffer{max: 64 << 10}
	cmd := exec.Command(s.bin, "server",
		"--address", s.Endpoint,
		"--console-address", s.console,
		"--certs-dir", s.certs,
		s.DataDir)
	cmd.Env = append(withoutMinIOEnv(os.Environ()),
		"MINIO_ROOT_USER="+s.AccessKey,
		"MINIO_ROOT_PASSWORD="+s.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
	)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	// Die with the test binary even if it is killed before cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	if err := s.waitLive(done); err != nil {
		cmd.Process.Kill()
		<-done
		out := s.log.String()
		if strings.Contains(out, "address already in use") {
			err = fmt.Errorf("%w: %v", errAddrInUse, err)
		}
		return fmt.Errorf("start %s on %s: %w\n--- minio output ---\n%s", s.bin, s.Endpoint, err, out)
	}
	s.cmd, s.done = cmd, done
	return nil
}

// waitLive polls /minio/health/live until the server answers 200 without
// marking itself offline (its object layer still initialising).
func (s *Server) waitLive(exited <-chan struct{}) error {
	client := &http.Client{Timeout: 2 * time.Second}
	url := "http://" + s.Endpoint + "/minio/health/live"
	if s.CAFile != "" {
		pool, err := caPool(s.CAFile)
		if err != nil {
			return err
		}
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
		url = "https://" + s.Endpoint + "/minio/health/live"
	}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(startTimeout)
	var lastErr error
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && resp.Header.Get("x-minio-server-status") != "offline" {
				return nil
			}
			err = fmt.Errorf("health check: %s", resp.Status)
		}
		lastErr = err
		select {
		case <-exited:
			return errors.New("minio exited during startup")
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not live after %v: %v", startTimeout, lastErr)
		}
	}
}

// freePorts returns two distinct free TCP ports on 127.0.0.1.
func freePorts() ([2]string, error) {
	var ports [2]string
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return ports, err
		}
		defer l.Close()
		_, ports[i], _ = net.SplitHostPort(l.Addr().String())
	}
	return ports, nil
}

// withoutMinIOEnv drops the caller's MINIO_* settings so they cannot change
// the test server.
func withoutMinIOEnv(env []string) []string {
	var out []string
	for _, e := range env {
		if !strings.HasPrefix(e, "MINIO_") {
			out = append(out, e)
		}
	}
	return out
}

// Client returns a minio-go client with the root credentials.
func (s *Server) Client(t testing.TB) *miniogo.Client {
	t.Helper()
	opts := &miniogo.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, "")}
	if s.CAFile != "" {
		pool, err := caPool(s.CAFile)
		if err != nil {
			t.Fatal(err)
		}
		opts.Secure = true
		opts.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	}
	c, err := miniogo.New(s.Endpoint, opts)
	if err != nil {
		t.Fatalf("minio client: %v", err)
	}
	return c
}

// CreateBucket creates a bucket.
func (s *Server) CreateBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Client(t).MakeBucket(ctx, name, miniogo.MakeBucketOptions{}); err != nil {
		t.Fatalf("create bucket %s on %s: %v", name, s.Endpoint, err)
	}
}

// DeleteBucket deletes a bucket with everything in it.
func (s *Server) DeleteBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Client(t).RemoveBucketWithOptions(ctx, name, miniogo.RemoveBucketOptions{ForceDelete: true}); err != nil {
		t.Fatalf("delete bucket %s on %s: %v", name, s.Endpoint, err)
	}
}

// URL returns the objstore target URL of bucket/prefix on this server:
// "s3+http://127.0.0.1:PORT/bucket/prefix", or for a StartTLS server
// "s3://127.0.0.1:PORT/bucket/prefix?ca=CAFILE". An empty prefix adds
// nothing. Credentials are not in it: see AccessKey and SecretKey.
func (s *Server) URL(bucket, prefix string) string {
	scheme := "s3+http://"
	if s.CAFile != "" {
		scheme = "s3://"
	}
	u := scheme + s.Endpoint + "/" + bucket
	if prefix = strings.Trim(prefix, "/"); prefix != "" {
		u += "/" + prefix
	}
	if s.CAFile != "" {
		u += "?ca=" + url.QueryEscape(s.CAFile)
	}
	return u
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// Cluster is n MinIO servers with one bucket each, standing for n zones
// or regions: the targets of one repository.
type Cluster struct {
	Servers []*Server
	URLs    []string // one target URL per server, in order
}

// StartCluster starts n servers, each with bucket, and targets under prefix.
func StartCluster(t testing.TB, n int, bucket, prefix string) *Cluster {
	t.Helper()
	c := &Cluster{}
	for range n {
		s := Start(t)
		s.CreateBucket(t, bucket)
		c.Servers = append(c.Servers, s)
		c.URLs = append(c.URLs, s.URL(bucket, prefix))
	}
	return c
}

// Repo is the targets as --repo takes them.
func (c *Cluster) Repo() string { return strings.Join(c.URLs, ",") }

// Env looks up the servers' credentials (they share them), for
// objstore.OpenEnv, so tests need not touch the process environment.
func (c *Cluster) Env(key string) string {
	switch key {
	case "AWS_ACCESS_KEY_ID":
		return RootUser
	case "AWS_SECRET_ACCESS_KEY":
		return RootPassword
	}
	return ""
}

// Stores opens the cluster's targets, in order.
func (c *Cluster) Stores(t testing.TB) []objstore.Store {
	t.Helper()
	locs, err := objstore.ParseRepo(c.Repo())
	if err != nil {
		t.Fatal(err)
	}
	return objstore.OpenAll(context.Background(), locs, c.Env)
}
