package main

import (
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/agent"
)

func agentCmds() []*cobra.Command {
	mk := func(use, short string, hookOnly bool) *cobra.Command {
		cfg := agent.Config{HookOnly: hookOnly}
		repair := true
		cmd := &cobra.Command{
			Use:   use,
			Short: short,
			Args:  noArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				cfg.NoRepair = !repair
				if err := cfg.Validate(); err != nil {
					return usageError{err}
				}
				log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
				return agent.Run(cmd.Context(), cfg, log)
			},
		}
		f := cmd.Flags()
		listenHelp := "socket the hook serves CSI on: unix:///path (what kubelet and the sidecars dial)"
		if !hookOnly {
			listenHelp += "; with --kube, a node agent may have none"
		}
		f.StringVar(&cfg.CSIListen, "csi-listen", "", listenHelp)
		f.StringVar(&cfg.CSIDriver, "csi-driver", "", "the CSI driver's own socket: unix:///path")
		f.StringVar(&cfg.StateDir, "state-dir", "/var/lib/ferry", "durable job queue and working paths")
		f.StringVar(&cfg.SecretsDir, "secrets-dir", "/etc/ferry/secrets", "repository Secrets, as DIR/NAMESPACE/NAME/KEY files (without --kube)")
		f.StringVar(&cfg.MetricsListen, "metrics-listen", ":9808", "address for /metrics and /healthz (empty: off)")
		f.BoolVar(&cfg.Profiling, "profiling", false, "also serve Go profiles (net/http/pprof: CPU, heap, goroutines, trace) under /debug/pprof/ on --metrics-listen; off by default because profiles show the process's internals")
		f.BoolVar(&cfg.Kube, "kube", false, "run in a Kubernetes cluster: jobs are FerryJobs, Secrets come from the API (see deploy/)")
		f.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "with --kube: kubeconfig file (default: the in-cluster service account)")
		f.StringVar(&cfg.Namespace, "namespace", "", "with --kube: the agents' namespace, for FerryJobs, Leases and Secrets; the hook looks there for the Secret of a class without ferry.dev/secret-namespace (default: $POD_NAMESPACE)")
		if !hookOnly {
			f.StringVar(&cfg.NodeID, "node-id", "", "this node's ID as the driver knows it (default: ask the driver)")
			f.IntVar(&cfg.Workers, "workers", 1, "replication jobs run at once (one per volume at most)")
			f.StringVar(&cfg.NodeName, "node-name", "", "with --kube: this agent's identity in FerryJobs and Leases (default: $NODE_NAME, else the host name)")
			f.StringVar(&cfg.ClusterName, "cluster-name", "", "recorded in the snapshots' manifests, to tell clusters apart in a shared repository")
			f.DurationVar(&cfg.Heartbeat, "heartbeat", 10*time.Second, "with --kube: how often a running FerryJob's status is renewed; another agent takes the job over after 4 missed")
			f.IntVar(&cfg.MaxAttempts, "max-attempts", 20, "failed attempts after which a job is given up")
			f.DurationVar(&cfg.KeepFinishedJobs, "keep-finished-jobs", 7*24*time.Hour, "with --kube: delete a Succeeded or Failed FerryJob this long after it ended (at least 1m; negative: keep them all)")
			f.DurationVar(&cfg.VerifyInterval, "verify-interval", time.Hour, "verify each repository replicated into this often, ±10% (negative: never, and no drills)")
			f.DurationVar(&cfg.DrillInterval, "drill-interval", 24*time.Hour, "restore each volume's newest snapshot into nothing this often, ±10%, to prove it and time it (negative: never)")
			f.Int64Var(&cfg.VerifyBytesPerSecond, "verify-bytes-per-second", 8<<20, "read rate of verification, per repository")
			f.DurationVar(&cfg.ChecksumInterval, "verify-checksum-interval", 24*time.Hour, "check every shard's stored checksum (one HEAD request each) this often; runs in between check sizes only")
			f.BoolVar(&repair, "repair", true, "repair what verification finds (rebuild shards from the survivors); in a cluster one agent per repository holds a Lease for it")
			f.Float64Var(&cfg.VerifyMaxShare, "verify-max-share", 0.1, "share of each verify interval spent reading at that rate: bounds the data read per run")
			f.DurationVar(&cfg.PruneInterval, "prune-interval", 24*time.Hour, "prune each repository replicated into this often, ±10%, deleting the data no snapshot refers to any more (negative: never); in a cluster under the repository's Lease, never during verification or repair")
			f.DurationVar(&cfg.PruneGrace, "prune-grace", time.Hour, "how long prune keeps a pack marked unreferenced before a later run may delete it; longer than any backup without a lock (older Ferry versions) takes")
		}
		return cmd
	}
	return []*cobra.Command{
		mk("agent --csi-listen unix:///A.sock --csi-driver unix:///B.sock", "Run the node agent: CSI hook, replication jobs, metrics", false),
		mk("hook --csi-listen unix:///A.sock --csi-driver unix:///B.sock", "Run the CSI hook alone (controller-side sidecar): validate and queue, replicate nothing", true),
	}
}
