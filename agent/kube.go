package agent

// In a Kubernetes cluster the agent takes its jobs from FerryJobs (package
// cluster) instead of the local queue: the hook beside the CSI driver's
// controller creates them, any agent of the same driver claims one, and
// another takes it over if that agent is lost. Secrets come from the API,
// and the agent announces itself with a Lease so that restore-to-cluster
// can tell whether anyone will run its job.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ferrydr/ferry/agent/cluster"
	"github.com/ferrydr/ferry/agent/replicate"
	"github.com/ferrydr/ferry/csi/hook"
)

func (c *Config) validateKube() error {
	if c.Namespace == "" {
		c.Namespace = os.Getenv("POD_NAMESPACE")
	}
	if c.Namespace == "" {
		return errors.New("--namespace (or $POD_NAMESPACE) is required with --kube: the agents' namespace")
	}
	if c.NodeName == "" {
		c.NodeName = os.Getenv("NODE_NAME")
	}
	if c.NodeName == "" {
		c.NodeName, _ = os.Hostname()
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 10 * time.Second
	}
	if c.KeepFinishedJobs == 0 {
		c.KeepFinishedJobs = 7 * 24 * time.Hour
	}
	if c.KeepFinishedJobs > 0 && c.KeepFinishedJobs < time.Minute {
		// restore-to-cluster --wait reads the result of the job it waits
		// for once it has ended.
		return fmt.Errorf("--keep-finished-jobs %s: at least 1m, so that restore-to-cluster --wait can read a finished job's result (negative keeps them all)", c.KeepFinishedJobs)
	}
	return nil
}

// KubeConfig returns the client configuration: the kubeconfig file when
// given, else the in-cluster service account.
func KubeConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("not in a cluster and no --kubeconfig given: %w", err)
	}
	return c, nil
}

type kubeMode struct {
	cfg      Config
	driver   string
	client   kubernetes.Interface
	dyn      dynamic.Interface
	jobs     *cluster.Jobs
	secrets  cluster.Secrets
	enqueuer *cluster.Enqueuer
	runner   *replicate.Runner
	log      *slog.Logger
}

func newKubeMode(cfg Config, driver string, runner *replicate.Runner, log *slog.Logger) (*kubeMode, error) {
	rc, err := KubeConfig(cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "ferry-agent"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	jobs := &cluster.Jobs{Client: dyn, Namespace: cfg.Namespace}
	return &kubeMode{
		cfg: cfg, driver: driver, client: client, dyn: dyn, jobs: jobs,
		secrets:  cluster.Secrets{Client: client, Dir: filepath.Join(cfg.StateDir, "secrets")},
		enqueuer: &cluster.Enqueuer{Jobs: jobs, Driver: driver},
		runner:   runner, log: log,
	}, nil
}

// serve runs FerryJobs and announces the agent until ctx ends.
// exclusive runs fn while this agent holds the Lease (see verifier).
func (k *kubeMode) exclusive(ctx context.Context, lease string, fn func(ctx context.Context)) {
	cluster.Exclusive(ctx, k.client, k.cfg.Namespace, lease, k.cfg.NodeName, cluster.DefaultLeaseTiming, k.log, fn)
}

func (k *kubeMode) serve(ctx context.Context, g *errgroup.Group, m *metrics, v *verifier) {
	ev := cluster.NewEvents(k.client, k.dyn, "ferry-agent", k.cfg.NodeName)
	rep := &cluster.Replicator{Runner: k.runner, Dynamic: k.dyn, Done: func(s hook.Snapshot, res *replicate.Result, took time.Duration) {
		m.observe(s, res, took)
		if v != nil {
			r := s.Replication
			v.remember(ctx, repoRef{r.Repository, r.SecretNamespace, r.SecretName})
		}
	}}
	rst := &cluster.Restorer{Client: k.client, Secrets: k.secrets, Expose: k.runner.Expose, Driver: k.driver, IndexCache: k.runner.IndexCache, Log: k.log}
	w := &cluster.Worker{
		Jobs: k.jobs, Node: k.cfg.NodeName, Driver: k.driver, Events: ev,
		Handlers:    map[string]cluster.Handler{cluster.TypeReplicate: rep.Handle, cluster.TypeRestore: rst.Handle},
		Concurrency: k.cfg.Workers, Heartbeat: k.cfg.Heartbeat, MaxAttempts: k.cfg.MaxAttempts,
		KeepFinished: k.cfg.KeepFinishedJobs, Log: k.log,
		Observe: func(j *cluster.Job) {
			if j.Spec.Type != cluster.TypeReplicate {
				return
			}
			switch j.Status.Phase {
			case cluster.PhasePending:
				m.jobs.WithLabelValues("retry").Inc()
			case cluster.PhaseFailed:
				m.jobs.WithLabelValues("dropped").Inc()
			}
		},
		Running: m.running,
	}
	g.Go(func() error {
		defer ev.Stop()
		return w.Serve(ctx)
	})
	g.Go(func() error {
		cluster.Announce(ctx, k.client, k.cfg.Namespace, k.cfg.NodeName, k.driver, k.cfg.Heartbeat, k.log)
		return nil
	})
}
