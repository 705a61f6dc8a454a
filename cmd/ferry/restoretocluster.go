package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/ferrydr/ferry/agent"
	"github.com/ferrydr/ferry/agent/cluster"
	"github.com/ferrydr/ferry/transport/objstore"
)

func restoreToClusterCmd(g *globals) *cobra.Command {
	var (
		req        cluster.RestoreRequest
		kubeconfig string
		from       string
		wait       bool
		timeout    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "restore-to-cluster --repo REPO SNAPSHOT|latest --kubeconfig FILE --namespace NS --pvc NAME [--storage-class SC] [--wait]",
		Short: "Restore a snapshot into a new PVC of a cluster, through its Ferry agents",
		Long: `Restore a snapshot into another cluster (the DR case). The cluster's Ferry
agents create a volume with their CSI driver, write the snapshot into it,
and register it as a PersistentVolume bound to a new PVC of that name.

SNAPSHOT is an ID, a unique prefix of one, or "latest": the latest of the
PVC --from NAMESPACE/PVC names, or of the series --name names. The agents
read the repository with the Secret --secret-name in --secret-namespace of
the target cluster; this command needs no password.

With --wait it shows progress and returns when the PVC is Bound.`,
		Args: exactArgs(1, "one SNAPSHOT (an ID, a prefix of one, or latest)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.repo == "" {
				return usageError{errors.New("no repository: use --repo or set FERRY_REPO")}
			}
			if _, err := objstore.ParseRepo(g.repo); err != nil {
				return usageError{fmt.Errorf("--repo: %w", err)}
			}
			r := &req.Restore
			if r.Namespace == "" || r.PVC == "" {
				return usageError{errors.New("restore-to-cluster needs --namespace and --pvc: the claim to create")}
			}
			r.Snapshot = args[0]
			if from != "" {
				ns, pvc, ok := strings.Cut(from, "/")
				if !ok || ns == "" || pvc == "" {
					return usageError{fmt.Errorf("--from %q: want NAMESPACE/PVC", from)}
				}
				r.Source.Namespace, r.Source.PVC = ns, pvc
			}
			if r.Snapshot == "latest" && from == "" && r.Source.Name == "" {
				return usageError{errors.New(`"latest" needs --from NAMESPACE/PVC or --name SERIES: the latest of what?`)}
			}
			if r.VolumeMode != "" && r.VolumeMode != "Filesystem" && r.VolumeMode != "Block" {
				return usageError{fmt.Errorf("--volume-mode %q: want Filesystem or Block", r.VolumeMode)}
			}
			req.Repository = g.repo
			if req.Secret.Namespace == "" {
				req.Secret.Namespace = req.Namespace
			}
			rc, err := agent.KubeConfig(kubeconfig)
			if err != nil {
				return err
			}
			rc.UserAgent = "ferry-restore-to-cluster"
			client, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return err
			}
			dyn, err := dynamic.NewForConfig(rc)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			j, err := cluster.SubmitRestore(ctx, client, dyn, req)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "restore job %s/%s created: %s from %s into PVC %s/%s\n", j.Namespace, j.Name, r.Snapshot, g.repo, r.Namespace, r.PVC)
			if !wait {
				fmt.Fprintf(out, "follow it with: kubectl -n %s get ferryjob %s -w\n", j.Namespace, j.Name)
				return nil
			}
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			start := time.Now()
			done, err := cluster.WaitRestore(ctx, client, dyn, j, func(s string) {
				fmt.Fprintf(out, "%6s  %s\n", time.Since(start).Round(time.Second), s)
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "PVC %s/%s is Bound to PersistentVolume %s: snapshot %s, in %s\n",
				r.Namespace, r.PVC, done.Status.Volume, done.Status.Snapshot, time.Since(start).Round(time.Second))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the target cluster (default: in-cluster service account)")
	f.StringVar(&req.Restore.Namespace, "namespace", "", "namespace of the PVC to create (it must exist)")
	f.StringVar(&req.Restore.PVC, "pvc", "", "name of the PVC to create (it must not exist)")
	f.StringVar(&req.Restore.StorageClassName, "storage-class", "", "StorageClass of the new volume; its provisioner picks the agents (default: none, the agents' one driver)")
	f.StringVar(&req.Restore.VolumeMode, "volume-mode", "Filesystem", "Filesystem or Block")
	f.StringVar(&req.Restore.FSType, "fs-type", "", "filesystem type recorded in the PersistentVolume (default ext4)")
	f.StringVar(&from, "from", "", "with latest: the original NAMESPACE/PVC of the snapshot")
	f.StringVar(&req.Restore.Source.Name, "name", "", "with latest: the series name of the snapshot (ferry.dev/name)")
	f.StringVar(&req.Namespace, "ferry-namespace", "ferry-system", "namespace of the Ferry agents in the target cluster")
	f.StringVar(&req.Secret.Name, "secret-name", "ferry-repository", "Secret with the repository password and credentials, in the target cluster")
	f.StringVar(&req.Secret.Namespace, "secret-namespace", "", "namespace of that Secret (default: --ferry-namespace)")
	f.StringVar(&req.Driver, "driver", "", "CSI driver whose agents restore (default: from --storage-class, or the agents' one driver)")
	f.BoolVar(&wait, "wait", false, "show progress and return when the PVC is Bound")
	f.DurationVar(&timeout, "timeout", 0, "with --wait: give up waiting after this long (0: never); the job goes on")
	return cmd
}
