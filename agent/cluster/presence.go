package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// Agents announce themselves with a Lease each in their namespace, renewed
// while they run, so that restore-to-cluster can tell "no agent" from "an
// agent that has not picked the job up yet".
const (
	agentLeasePrefix = "ferry-agent-"
	labelAgent       = "ferry.dev/agent"
	annotationDriver = "ferry.dev/csi-driver"
)

// Announce renews this agent's Lease every period until ctx ends, then
// deletes it.
func Announce(ctx context.Context, client kubernetes.Interface, namespace, node, driver string, period time.Duration, log *slog.Logger) {
	leases := client.CoordinationV1().Leases(namespace)
	name := agentLeasePrefix + node
	seconds := int32(3 * period / time.Second)
	renew := func() error {
		t := metav1.NewMicroTime(time.Now())
		l, err := leases.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = leases.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{labelAgent: "true"}, Annotations: map[string]string{annotationDriver: driver}},
				Spec:       coordinationv1.LeaseSpec{HolderIdentity: &node, LeaseDurationSeconds: &seconds, RenewTime: &t},
			}, metav1.CreateOptions{})
			return err
		}
		if err != nil {
			return err
		}
		l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &node, &seconds, &t
		_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		return err
	}
	tk := time.NewTicker(period)
	defer tk.Stop()
	for {
		if err := renew(); err != nil && ctx.Err() == nil {
			log.Warn("renew the agent's Lease", "lease", namespace+"/"+name, "error", err)
		}
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = leases.Delete(dctx, name, metav1.DeleteOptions{})
			return
		case <-tk.C:
		}
	}
}

// AgentInfo is a live agent.
type AgentInfo struct {
	Node, Driver string
	Renewed      time.Time
}

// LiveAgents lists the agents whose Lease is fresh.
func LiveAgents(ctx context.Context, client kubernetes.Interface, namespace string) ([]AgentInfo, error) {
	ls, err := client.CoordinationV1().Leases(namespace).List(ctx, metav1.ListOptions{LabelSelector: labelAgent + "=true"})
	if err != nil {
		return nil, fmt.Errorf("list agents in %s: %w", namespace, err)
	}
	var out []AgentInfo
	for _, l := range ls.Items {
		s := l.Spec
		if s.RenewTime == nil || s.LeaseDurationSeconds == nil {
			continue
		}
		if time.Since(s.RenewTime.Time) > time.Duration(*s.LeaseDurationSeconds)*time.Second {
			continue
		}
		out = append(out, AgentInfo{Node: ptr.Deref(s.HolderIdentity, strings.TrimPrefix(l.Name, agentLeasePrefix)), Driver: l.Annotations[annotationDriver], Renewed: s.RenewTime.Time})
	}
	return out, nil
}
