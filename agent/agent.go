// Package agent is Ferry's node agent: it serves the CSI hook in front of
// the node's CSI driver, keeps the replication jobs the hook queues in a
// durable queue in its state directory, runs them (package replicate), and
// serves /metrics and /healthz (and, with Config.Profiling, the Go profiles).
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ferrydr/ferry/agent/queue"
	"github.com/ferrydr/ferry/agent/replicate"
	"github.com/ferrydr/ferry/csi/expose"
	"github.com/ferrydr/ferry/csi/hook"
)

// Config is filled from flags and checked once by Validate.
type Config struct {
	CSIListen     string // unix:///path: where the hook serves (the socket kubelet and the sidecars use)
	CSIDriver     string // unix:///path: the driver's own socket
	StateDir      string // queue, lock, the exposed snapshots' paths and the index cache
	NodeID        string // empty: ask the driver (NodeGetInfo)
	SecretsDir    string // see replicate.DirSecrets
	MetricsListen string // host:port for /metrics and /healthz; empty: none
	Profiling     bool   // serve net/http/pprof under /debug/pprof/ on MetricsListen
	Workers       int    // jobs run at once (different volumes); default 1
	HookOnly      bool   // serve the hook and queue jobs, run none (controller-side sidecar)
	MaxAttempts   int    // a job that failed this often is dropped; default 20

	// Continuous verification of the repositories replicated into (see
	// verifyloop.go). Zero values take the defaults.
	VerifyInterval       time.Duration // between verify runs of a repository; default 1h; negative: no verification or drills
	DrillInterval        time.Duration // between drills of each volume's newest snapshot; default 24h; negative: no drills
	VerifyBytesPerSecond int64         // read rate of a verify run; default 8 MiB/s
	VerifyMaxShare       float64       // share of the interval a run may spend reading, in (0, 1]; default 0.1
	ChecksumInterval     time.Duration // between verify runs that check every shard's stored checksum (one HEAD each); default 24h
	NoRepair             bool          // verification only reports damage; by default the agent repairs it

	// Prune, in the same loop and under the same Lease as verification
	// (so prune and repair never overlap). Retention itself (forget) is
	// applied after each replication, by the class's ferry.dev/keep-* rules.
	PruneInterval time.Duration // between prune runs of a repository; default 24h; negative: never
	PruneGrace    time.Duration // how long a pack stays marked before it may be deleted; default 1h

	// In a Kubernetes cluster (see kube.go): jobs are FerryJobs handed out
	// through the API instead of the local queue, and Secrets are read from
	// the API instead of SecretsDir.
	Kube        bool
	Kubeconfig  string        // empty: the in-cluster configuration
	Namespace   string        // the agents' namespace: FerryJobs, Leases, Secrets
	NodeName    string        // this agent's identity in FerryJobs and Leases; default: the host name
	ClusterName string        // recorded in manifests; may be empty
	Heartbeat   time.Duration // a running FerryJob's heartbeat; default 10s
	// How long a finished FerryJob is kept after it ended; default 168h
	// (7 days); negative: forever.
	KeepFinishedJobs time.Duration
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	sockets := []struct{ name, v string }{{"--csi-driver", c.CSIDriver}}
	if c.CSIListen != "" || !c.Kube || c.HookOnly {
		// A node agent in a cluster needs no hook: the controller's runs it.
		sockets = append(sockets, struct{ name, v string }{"--csi-listen", c.CSIListen})
	}
	for _, f := range sockets {
		if !strings.HasPrefix(f.v, "unix://") || len(f.v) == len("unix://") {
			return fmt.Errorf("%s %q: want unix:///path/to/socket", f.name, f.v)
		}
	}
	if c.CSIListen == c.CSIDriver {
		return errors.New("--csi-listen and --csi-driver are the same socket")
	}
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("--state-dir %q: want an absolute path", c.StateDir)
	}
	if c.Profiling && c.MetricsListen == "" {
		return errors.New("--profiling needs --metrics-listen: the profiles are served on the metrics address")
	}
	if c.Kube {
		if err := c.validateKube(); err != nil {
			return err
		}
	} else if c.SecretsDir == "" {
		return errors.New("--secrets-dir is required: where repository Secrets are mounted")
	}
	if c.Workers <= 0 {
		c.Workers = 1
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 20
	}
	if c.VerifyInterval == 0 {
		c.VerifyInterval = time.Hour
	}
	if c.DrillInterval == 0 {
		c.DrillInterval = 24 * time.Hour
	}
	if c.VerifyBytesPerSecond <= 0 {
		c.VerifyBytesPerSecond = 8 << 20
	}
	if c.ChecksumInterval == 0 {
		c.ChecksumInterval = 24 * time.Hour
	}
	if c.VerifyMaxShare == 0 {
		c.VerifyMaxShare = 0.1
	}
	if c.VerifyMaxShare < 0 || c.VerifyMaxShare > 1 {
		return fmt.Errorf("--verify-max-share %g: want a share of time in (0, 1]", c.VerifyMaxShare)
	}
	if c.PruneInterval == 0 {
		c.PruneInterval = 24 * time.Hour
	}
	if c.PruneGrace == 0 {
		c.PruneGrace = time.Hour
	}
	if c.PruneGrace < 0 {
		return fmt.Errorf("--prune-grace %s: want a positive duration", c.PruneGrace)
	}
	return nil
}

func socketPath(u string) string { return strings.TrimPrefix(u, "unix://") }

// Run serves until ctx ends.
// indexCache is where the agent keeps the repositories' index
// (Repo.IndexCache): in its state directory, on the node's disk.
func indexCache(cfg Config) string { return filepath.Join(cfg.StateDir, "cache") }

func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return err
	}
	unlock, err := lockDir(cfg.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	conn, err := grpc.NewClient("unix://"+socketPath(cfg.CSIDriver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("driver socket: %w", err)
	}
	defer conn.Close()
	info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil {
		return fmt.Errorf("driver at %s: %w", cfg.CSIDriver, err)
	}
	if cfg.NodeID == "" && !cfg.HookOnly {
		ni, err := csi.NewNodeClient(conn).NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
		if err != nil {
			return fmt.Errorf("node id from the driver: %w", err)
		}
		cfg.NodeID = ni.GetNodeId()
	}
	host, _ := os.Hostname()
	runner := &replicate.Runner{
		Driver: conn, DriverName: info.GetName(), Host: host, Cluster: cfg.ClusterName, Log: log,
		Expose:     expose.Config{Driver: conn, NodeID: cfg.NodeID, Dir: filepath.Join(cfg.StateDir, "expose")},
		IndexCache: indexCache(cfg),
	}

	g, ctx := errgroup.WithContext(ctx)
	var (
		q   *queue.Queue
		enq hook.Enqueuer
		kc  *kubeMode
	)
	if cfg.Kube {
		if kc, err = newKubeMode(cfg, info.GetName(), runner, log); err != nil {
			return err
		}
		runner.Secrets, enq = kc.secrets, kc.enqueuer
	} else {
		if q, err = queue.Open(cfg.StateDir); err != nil {
			return err
		}
		runner.Secrets = replicate.DirSecrets(cfg.SecretsDir)
	}
	m := newMetrics(q)
	if q != nil {
		enq = enqueuer{q, m}
	}
	var v *verifier
	if !cfg.HookOnly && (cfg.VerifyInterval > 0 || cfg.PruneInterval > 0) {
		if v, err = newVerifier(cfg, runner.Secrets, m, log); err != nil {
			return err
		}
		if kc != nil {
			v.exclusive = kc.exclusive
		}
		g.Go(func() error { return v.run(ctx) })
	}

	if cfg.CSIListen != "" {
		path := socketPath(cfg.CSIListen)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale socket: %w", err)
		}
		lis, err := net.Listen("unix", path)
		if err != nil {
			return fmt.Errorf("listen %s: %w", cfg.CSIListen, err)
		}
		// A class that names no Secret namespace gets the agents' own: in
		// a cluster they may read Secrets there and nowhere else. Alone,
		// the class must name one.
		secretNS := ""
		if cfg.Kube {
			secretNS = cfg.Namespace
		}
		srv := hook.New(conn, enq, secretNS, log).Server()
		g.Go(func() error { return srv.Serve(lis) })
		g.Go(func() error {
			<-ctx.Done()
			srv.GracefulStop()
			return nil
		})
	}
	if cfg.MetricsListen != "" {
		hs := &http.Server{Addr: cfg.MetricsListen, Handler: handler(m, conn, cfg.Profiling), ReadHeaderTimeout: 10 * time.Second}
		g.Go(func() error {
			if err := hs.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			return hs.Close()
		})
	}
	switch {
	case cfg.HookOnly:
	case kc != nil:
		kc.serve(ctx, g, m, v)
	default:
		for range cfg.Workers {
			g.Go(func() error { return work(ctx, q, runner, v, m, cfg.MaxAttempts, log) })
		}
	}
	queued := 0
	if q != nil {
		queued = len(q.List())
	}
	log.Info("agent serving", "csi_listen", cfg.CSIListen, "driver", info.GetName(), "node", cfg.NodeID, "kube", cfg.Kube, "queued", queued)
	err = g.Wait()
	if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled)) {
		return nil
	}
	return err
}

type enqueuer struct {
	q *queue.Queue
	m *metrics
}

// Enqueue stores the job; its ID is the snapshot's, so retries are no-ops.
func (e enqueuer) Enqueue(_ context.Context, s hook.Snapshot) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return e.q.Put(queue.Job{ID: jobID(s.SnapshotID), Key: s.SourceVolumeID, Kind: "replicate", Payload: b})
}

// jobID makes a file-name-safe ID from a CSI snapshot ID.
func jobID(snapshotID string) string {
	r := strings.NewReplacer("/", "_", "\\", "_", "\x00", "_")
	id := r.Replace(snapshotID)
	if strings.HasPrefix(id, ".") {
		id = "_" + id
	}
	return id
}

// work runs jobs from q; the repositories they replicate into are handed
// to v (when not nil) to be verified.
func work(ctx context.Context, q *queue.Queue, r *replicate.Runner, v *verifier, m *metrics, maxAttempts int, log *slog.Logger) error {
	for {
		j, err := q.Next(ctx)
		if err != nil {
			return nil // ctx ended
		}
		var s hook.Snapshot
		if err := json.Unmarshal(j.Payload, &s); err != nil {
			log.Error("dropping unreadable job", "job", j.ID, "error", err)
			q.Done(j)
			continue
		}
		start := time.Now()
		m.running.Inc()
		res, err := r.Run(ctx, s, replicate.Options{})
		m.running.Dec()
		switch {
		case err == nil:
			m.observe(s, res, time.Since(start))
			if err := q.Done(j); err != nil {
				log.Error("finish job", "job", j.ID, "error", err)
			}
			if v != nil {
				v.remember(ctx, repoRef{s.Replication.Repository, s.Replication.SecretNamespace, s.Replication.SecretName})
			}
		case ctx.Err() != nil:
			return nil // the next agent runs it again
		case j.Attempts+1 >= maxAttempts:
			m.jobs.WithLabelValues("dropped").Inc()
			log.Error("replication failed too often, giving up", "snapshot", s.SnapshotID, "attempts", j.Attempts+1, "error", err)
			q.Done(j)
		default:
			m.jobs.WithLabelValues("retry").Inc()
			delay := min(time.Duration(1<<min(j.Attempts, 8))*5*time.Second, 30*time.Minute)
			if errors.Is(err, replicate.ErrNotReady) {
				delay = 5 * time.Second
			}
			log.Warn("replication failed, will retry", "snapshot", s.SnapshotID, "attempt", j.Attempts+1, "in", delay, "error", err)
			if err := q.Retry(j, err, delay); err != nil {
				log.Error("record retry", "job", j.ID, "error", err)
			}
		}
	}
}

// lockDir holds an exclusive lock on DIR/lock so two agents never share a
// state directory.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("state directory %s is in use by another agent: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// handler serves /metrics, /healthz and, with profiling, the Go runtime's
// profiles under /debug/pprof/. A profile shows the process's internals
// (stacks, command line), so they go on this mux only when asked for;
// importing net/http/pprof also registers them on http.DefaultServeMux,
// which nothing in Ferry serves.
func handler(m *metrics, conn *grpc.ClientConn, profiling bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if _, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{}); err != nil {
			http.Error(w, "driver probe failed: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index) // also serves the named profiles: heap, goroutine, ...
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}
