package cluster

import (
	"context"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaseTiming is how an exclusive Lease is held: a holder that has not
// renewed it for Duration loses it.
type LeaseTiming struct {
	Duration, RenewDeadline, RetryPeriod time.Duration
}

// DefaultLeaseTiming is client-go's usual for controllers.
var DefaultLeaseTiming = LeaseTiming{Duration: 30 * time.Second, RenewDeadline: 20 * time.Second, RetryPeriod: 5 * time.Second}

// Exclusive runs fn whenever this agent (identity) holds the
// coordination.k8s.io Lease namespace/name, so that work such as verifying
// and repairing one repository runs on one node at a time across the
// cluster. fn's context ends when the Lease is lost or ctx ends; only once
// fn has returned does Exclusive release the Lease (ctx ended) or contend
// for it again (it was lost), so fn never overlaps itself, nor another
// agent's fn but where this one failed to renew the Lease in time.
// Exclusive returns when ctx ends.
func Exclusive(ctx context.Context, client kubernetes.Interface, namespace, name, identity string, timing LeaseTiming, log *slog.Logger, fn func(ctx context.Context)) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: namespace, Name: name},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
	}
	for ctx.Err() == nil {
		// client-go starts OnStartedLeading in a goroutine of its own and
		// releases the Lease as soon as its context ends, without waiting
		// for it: fn runs here instead, and the elector's context ends
		// only after fn has returned.
		leading := make(chan context.Context, 1)
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, ReleaseOnCancel: true, Name: name,
			LeaseDuration: timing.Duration, RenewDeadline: timing.RenewDeadline, RetryPeriod: timing.RetryPeriod,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) { leading <- ctx },
				OnStoppedLeading: func() {},
			},
		})
		if err != nil {
			log.Error("lease", "lease", namespace+"/"+name, "error", err)
			return
		}
		electing, stop := context.WithCancel(context.WithoutCancel(ctx))
		ran := make(chan struct{})
		go func() {
			defer close(ran)
			le.Run(electing) // returns when the Lease is lost or electing ends
		}()
		select {
		case held := <-leading:
			log.Info("holding lease", "lease", namespace+"/"+name)
			work, cancel := context.WithCancel(held)
			unwatch := context.AfterFunc(ctx, cancel)
			fn(work)
			unwatch()
			cancel()
		case <-ctx.Done():
		case <-ran: // lost before fn started
		}
		stop()
		<-ran
	}
}
