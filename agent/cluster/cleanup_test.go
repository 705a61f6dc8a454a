package cluster_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ferrydr/ferry/agent/cluster"
)

// sighting is what watchJobs saw of a job: its last version, and when it
// was first found gone.
type sighting struct {
	last *cluster.Job
	gone time.Time
}

// watchJobs reads each job every 100 ms for d, or until all are gone.
func watchJobs(t *testing.T, d time.Duration, jobs map[string]*cluster.Jobs) map[string]*sighting {
	t.Helper()
	seen := map[string]*sighting{}
	for n := range jobs {
		seen[n] = &sighting{}
	}
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		left := 0
		for n, js := range jobs {
			s := seen[n]
			if !s.gone.IsZero() {
				continue
			}
			j, err := js.Get(t.Context(), n)
			switch {
			case err == nil:
				s.last = j
				left++
			case apierrors.IsNotFound(err):
				s.gone = time.Now()
			default:
				left++ // read again
			}
		}
		if left == 0 {
			break
		}
	}
	return seen
}

// TestFinishedJobsAreDeleted: with KeepFinished, a Succeeded or Failed job
// is deleted that long after it ended (its last heartbeat, else its
// creation, when it has no CompletionTime), by the agent that ran it, or
// by another agent StaleAfter later; a Pending or Running job is never
// deleted, however old; without KeepFinished nothing is; and a delete
// never takes a job created again under the same name.
func TestFinishedJobsAreDeleted(t *testing.T) {
	c := startAPI(t)
	const keep = "ferry-keep" // a namespace whose agent keeps finished jobs
	if _, err := c.Client.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: keep}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	jobs := &cluster.Jobs{Client: c.Dynamic, Namespace: ns}
	kept := &cluster.Jobs{Client: c.Dynamic, Namespace: keep}
	const keepFinished = 2 * time.Second
	h := func(ctx context.Context, j *cluster.Job, p *cluster.Progress) (*cluster.Outcome, error) {
		if j.Name == "failed" {
			return nil, cluster.Permanent(errors.New("the snapshot is gone"))
		}
		return &cluster.Outcome{Message: "restored"}, nil
	}
	w := worker(jobs, "n1", h)
	w.KeepFinished = keepFinished
	// Longer than the slack below, which a loaded machine may need.
	w.StaleAfter = 6 * time.Second
	serve(t, w)
	serve(t, worker(kept, "n1", h))

	// Jobs of a driver no agent here runs, in the states other agents, or
	// a person, left them in. All are created before the clock starts: the
	// first object in a new namespace takes the API server a while.
	names := []string{"pending", "running", "elsewhere", "no-completion", "no-completion-or-any", "kept-old"}
	in := func(n string) *cluster.Jobs {
		if strings.HasPrefix(n, "kept-") {
			return kept
		}
		return jobs
	}
	for _, n := range names {
		j := restoreJob(n)
		j.Spec.Driver = "other.driver"
		create(t, in(n), j)
	}
	hourAgo := metav1.NewTime(time.Now().Add(-time.Hour).Truncate(time.Second))
	justNow := metav1.NewTime(time.Now().Truncate(time.Second))
	others := map[string]cluster.JobStatus{
		"pending": {Phase: cluster.PhasePending, Attempts: 1, CompletionTime: &hourAgo},
		"running": {Phase: cluster.PhaseRunning, Agent: "n2", Attempts: 1, Heartbeat: &hourAgo, StartTime: &hourAgo, CompletionTime: &hourAgo},
		// Just finished by another agent: this one deletes it StaleAfter
		// after that one would have.
		"elsewhere": {Phase: cluster.PhaseSucceeded, Agent: "n2", Attempts: 1, CompletionTime: &justNow},
		// Made final without a CompletionTime.
		"no-completion":        {Phase: cluster.PhaseFailed, Agent: "n2", Attempts: 1, Heartbeat: &hourAgo},
		"no-completion-or-any": {Phase: cluster.PhaseSucceeded},
		"kept-old":             {Phase: cluster.PhaseSucceeded, Agent: "n2", CompletionTime: &hourAgo},
	}
	for _, n := range names {
		setStatus(t, in(n), n, others[n])
	}
	create(t, jobs, restoreJob("succeeded"), restoreJob("failed"))
	create(t, kept, restoreJob("kept-ran"))
	wrote := time.Now()

	watch := map[string]*cluster.Jobs{}
	for _, n := range append(names, "succeeded", "failed", "kept-ran") {
		watch[n] = in(n)
	}
	seen := watchJobs(t, 16*time.Second, watch)
	for n, s := range seen {
		st := others[n] // what the test wrote; the first read may come after the delete
		if s.last != nil {
			st = s.last.Status
		} else if n != "no-completion" {
			t.Errorf("%s: gone before the first read", n)
			continue
		}
		var due time.Time // zero: never
		switch n {
		case "succeeded", "failed":
			want := cluster.PhaseSucceeded
			if n == "failed" {
				want = cluster.PhaseFailed
			}
			if st.Phase != want || st.CompletionTime == nil || st.Agent != "n1" {
				t.Errorf("%s: last seen %+v, want %s with a CompletionTime, by n1", n, st, want)
				continue
			}
			due = st.CompletionTime.Add(keepFinished)
		case "elsewhere":
			due = justNow.Add(keepFinished + w.StaleAfter)
		case "no-completion":
			due = wrote // by its hour-old heartbeat, at once; by its creation it would be seconds later
		case "no-completion-or-any":
			due = s.last.CreationTimestamp.Add(keepFinished + w.StaleAfter)
		case "kept-ran":
			if st.Phase != cluster.PhaseSucceeded {
				t.Errorf("%s: last seen %+v, want Succeeded", n, st)
			}
		}
		// The agent looks again when a job is due, so it goes at once
		// (10-100 ms here); 3 s of slack is still less than the
		// StaleAfter that another agent waits.
		switch {
		case due.IsZero() && !s.gone.IsZero():
			t.Errorf("%s (%s): deleted; it should be kept", n, st.Phase)
		case due.IsZero():
		case s.gone.IsZero():
			t.Errorf("%s (%s): not deleted within 16 s; due %s after the test wrote the jobs", n, st.Phase, due.Sub(wrote).Round(time.Millisecond))
		case s.gone.Before(due):
			t.Errorf("%s (%s): deleted %s before it was due", n, st.Phase, due.Sub(s.gone).Round(time.Millisecond))
		case s.gone.After(due.Add(3 * time.Second)):
			t.Errorf("%s (%s): deleted %s after it was due", n, st.Phase, s.gone.Sub(due).Round(time.Millisecond))
		default:
			t.Logf("%s (%s): deleted %s after it was due", n, st.Phase, s.gone.Sub(due).Round(time.Millisecond))
		}
	}

	// A job read, deleted and created again under its name: the delete
	// with the old read conflicts and leaves the new job.
	old, err := kept.Get(t.Context(), "kept-old")
	if err != nil {
		t.Fatal(err)
	}
	if err := kept.Delete(t.Context(), old); err != nil {
		t.Fatal(err)
	}
	create(t, kept, restoreJob("kept-old"))
	if err := kept.Delete(t.Context(), old); !apierrors.IsConflict(err) {
		t.Errorf("delete with the UID of a job deleted since: %v, want a conflict", err)
	}
	if _, err := kept.Get(t.Context(), "kept-old"); err != nil {
		t.Errorf("the job created again: %v", err)
	}
}
