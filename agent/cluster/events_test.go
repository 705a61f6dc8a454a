package cluster_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ferrydr/ferry/agent/cluster"
)

// TestReplicationEvents: each way a replication ends gives the FerryJob
// the Event an operator looks for, of the right type: Succeeded (Normal),
// Degraded when a target was down (Warning, with the handler's sentence),
// Failed when it cannot be done (Warning); every attempt starts with
// ReplicationStarted.
func TestReplicationEvents(t *testing.T) {
	c := startAPI(t)
	jobs := &cluster.Jobs{Client: c.Dynamic, Namespace: ns}
	const degradedMsg = "degraded: target 2 (s3+http://b.example/ferry) was unavailable; 3 shards and 2 replicated objects not written there"
	w := worker(jobs, "n1", nil)
	w.Handlers = map[string]cluster.Handler{cluster.TypeReplicate: func(ctx context.Context, j *cluster.Job, p *cluster.Progress) (*cluster.Outcome, error) {
		switch j.Name {
		case "degraded":
			return &cluster.Outcome{Snapshot: "abc", Message: degradedMsg, Degraded: true}, nil
		case "lost":
			return nil, cluster.Permanent(errors.New("snapshot snap-lost is gone from the driver"))
		}
		return &cluster.Outcome{Snapshot: "abc", Message: "replicated"}, nil
	}}
	w.Events = cluster.NewEvents(c.Client, c.Dynamic, "ferry-agent", "n1")
	t.Cleanup(w.Events.Stop)
	serve(t, w)

	want := map[string]struct{ typ, reason, msg string }{
		"ok":       {corev1.EventTypeNormal, "ReplicationSucceeded", "replicated"},
		"degraded": {corev1.EventTypeWarning, "ReplicationDegraded", degradedMsg},
		"lost":     {corev1.EventTypeWarning, "ReplicationFailed", "snap-lost is gone"},
	}
	now := time.Now()
	for name := range want {
		// One volume each: replications of one volume would wait in turn.
		if _, err := jobs.Create(t.Context(), replicateJob(name, "vol-"+name, now)); err != nil {
			t.Fatal(err)
		}
	}
	for name, ev := range want {
		waitFinal(t, jobs, name, 30*time.Second)
		var got []corev1.Event
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			l, err := c.Client.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
			if err != nil {
				t.Fatal(err)
			}
			if got = l.Items; len(got) >= 2 {
				break
			}
		}
		reasons := map[string]corev1.Event{}
		var seen []string // for the messages
		for _, e := range got {
			reasons[e.Reason] = e
			seen = append(seen, e.Type+" "+e.Reason+": "+e.Message)
		}
		if e, ok := reasons["ReplicationStarted"]; !ok || e.Type != corev1.EventTypeNormal {
			t.Errorf("%s: no Normal ReplicationStarted among %q", name, seen)
		}
		e, ok := reasons[ev.reason]
		if !ok || e.Type != ev.typ || !strings.Contains(e.Message, ev.msg) {
			t.Errorf("%s: want a %s %s Event saying %q, got %q", name, ev.typ, ev.reason, ev.msg, seen)
		}
		if len(got) != 2 {
			t.Errorf("%s: want Started and %s only, got %q", name, ev.reason, seen)
		}
	}
}
