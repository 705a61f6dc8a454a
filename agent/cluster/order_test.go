package cluster_test

import (
	"context"
	"errors"
	"net/http"
	"path"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/ferrydr/ferry/agent/cluster"
	"github.com/ferrydr/ferry/csi/hook"
)

func replicateJob(name, volume string, cut time.Time) *cluster.Job {
	return &cluster.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: cluster.JobSpec{
			Type: cluster.TypeReplicate, Repository: "file:///nowhere", Driver: "test.driver",
			Secret: cluster.SecretRef{Namespace: ns, Name: "repo"},
			Replicate: &cluster.Replicate{Snapshot: hook.Snapshot{
				SnapshotID: "snap-" + name, SourceVolumeID: volume, CreatedAt: cut,
			}},
		},
	}
}

// runs records when the handlers of jobs started and ended.
type runs struct {
	mu         sync.Mutex
	start, end map[string]time.Time
}

func newRuns() *runs { return &runs{start: map[string]time.Time{}, end: map[string]time.Time{}} }

// handler holds each job for hold, then fails those in fail.
func (r *runs) handler(hold time.Duration, fail map[string]error) cluster.Handler {
	return func(ctx context.Context, j *cluster.Job, p *cluster.Progress) (*cluster.Outcome, error) {
		r.mu.Lock()
		r.start[j.Name] = time.Now()
		r.mu.Unlock()
		time.Sleep(hold)
		r.mu.Lock()
		r.end[j.Name] = time.Now()
		r.mu.Unlock()
		if err := fail[j.Name]; err != nil {
			return nil, err
		}
		return &cluster.Outcome{Message: "replicated"}, nil
	}
}

func (r *runs) get(name string) (start, end time.Time, ran bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	start, ran = r.start[name]
	return start, r.end[name], ran
}

// statusWrites counts the requests that write a job's status, by job.
type statusWrites struct {
	rt http.RoundTripper
	mu sync.Mutex
	n  map[string]int
}

func (s *statusWrites) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPut && path.Base(r.URL.Path) == "status" {
		s.mu.Lock()
		s.n[path.Base(path.Dir(r.URL.Path))]++
		s.mu.Unlock()
	}
	return s.rt.RoundTrip(r)
}

func (s *statusWrites) count(job string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[job]
}

func create(t *testing.T, jobs *cluster.Jobs, js ...*cluster.Job) {
	t.Helper()
	for _, j := range js {
		if _, err := jobs.Create(t.Context(), j); err != nil {
			t.Fatal(err)
		}
	}
}

// setStatus writes a job's status as an agent would have.
func setStatus(t *testing.T, jobs *cluster.Jobs, name string, st cluster.JobStatus) {
	t.Helper()
	j, err := jobs.Get(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	j.Status = st
	if _, err := jobs.UpdateStatus(t.Context(), j); err != nil {
		t.Fatal(err)
	}
}

// TestReplicationsOfAVolumeRunInOrder: two agents run three replications
// of one volume one after the other in the order the snapshots were cut,
// each starting as soon as the one before it ends; replications of another
// volume, or of the same volume to another repository, do not wait for
// them.
func TestReplicationsOfAVolumeRunInOrder(t *testing.T) {
	c := startAPI(t)
	jobs := &cluster.Jobs{Client: c.Dynamic, Namespace: ns}
	cut := time.Now().Add(-time.Hour)
	// Created in an order that is neither the order of the cuts nor that of
	// the names.
	create(t, jobs,
		replicateJob("rep-x", "vol-a", cut.Add(3*time.Second)),
		replicateJob("rep-z", "vol-a", cut.Add(1*time.Second)),
		replicateJob("rep-y", "vol-a", cut.Add(2*time.Second)),
		replicateJob("other-volume", "vol-b", cut.Add(4*time.Second)))
	otherRepo := replicateJob("other-repo", "vol-a", cut.Add(4*time.Second))
	otherRepo.Spec.Repository = "file:///elsewhere"
	create(t, jobs, otherRepo)
	inOrder := []string{"rep-z", "rep-y", "rep-x"}

	// The agents start once the jobs exist: a job waits only for those its
	// agent has seen. Their informers resync once a minute, so a job that
	// starts within seconds was started by its predecessor's end.
	r := newRuns()
	for _, n := range []string{"n1", "n2"} {
		w := worker(jobs, n, nil)
		w.Handlers[cluster.TypeReplicate] = r.handler(200*time.Millisecond, nil)
		w.Heartbeat = time.Minute
		serve(t, w)
	}
	for _, n := range append(inOrder, "other-volume", "other-repo") {
		if j := waitFinal(t, jobs, n, 30*time.Second); j.Status.Phase != cluster.PhaseSucceeded || j.Status.Attempts != 1 {
			t.Errorf("%s: %+v", n, j.Status)
		}
	}
	for i := 1; i < len(inOrder); i++ {
		prev, cur := inOrder[i-1], inOrder[i]
		_, ended, _ := r.get(prev)
		started, _, _ := r.get(cur)
		if !started.After(ended) {
			t.Errorf("%s started %s before %s ended", cur, ended.Sub(started), prev)
		}
		if gap := started.Sub(ended); gap > 3*time.Second {
			t.Errorf("%s started %s after %s ended", cur, gap, prev)
		}
	}
	_, last, _ := r.get(inOrder[len(inOrder)-1])
	for _, n := range []string{"other-volume", "other-repo"} {
		if started, _, _ := r.get(n); !started.Before(last) {
			t.Errorf("%s waited for the replications of another series: started %s after they ended", n, started.Sub(last))
		}
	}
}

// TestReplicationWaits: a replication waits for the one before it of its
// volume while that one waits to be retried, and says so once; a failed
// one lets the next run. A running one whose agent is gone is taken over
// while the next waits for it.
func TestReplicationWaits(t *testing.T) {
	c := startAPI(t)
	jobs := &cluster.Jobs{Client: c.Dynamic, Namespace: ns}
	cut := time.Now().Add(-time.Hour)
	create(t, jobs,
		replicateJob("retried", "vol-a", cut), replicateJob("after-retried", "vol-a", cut.Add(time.Second)),
		replicateJob("orphan", "vol-b", cut), replicateJob("after-orphan", "vol-b", cut.Add(time.Second)))
	retry := metav1.NewTime(time.Now().Add(12 * time.Second).Truncate(time.Second))
	setStatus(t, jobs, "retried", cluster.JobStatus{Phase: cluster.PhasePending, Attempts: 1, RetryAfter: &retry, Message: "attempt 1 of 3 failed"})
	lost := metav1.NewTime(time.Now().Add(-time.Hour).Truncate(time.Second))
	setStatus(t, jobs, "orphan", cluster.JobStatus{Phase: cluster.PhaseRunning, Agent: "gone", Attempts: 1, Heartbeat: &lost, StartTime: &lost})

	r := newRuns()
	h := r.handler(200*time.Millisecond, map[string]error{"retried": cluster.Permanent(errors.New("the snapshot is gone"))})
	writes := &statusWrites{n: map[string]int{}}
	cfg := rest.CopyConfig(c.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { writes.rt = rt; return writes })
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"n1", "n2"} {
		w := worker(&cluster.Jobs{Client: dyn, Namespace: ns}, n, nil)
		w.Handlers[cluster.TypeReplicate] = h
		serve(t, w)
	}

	const want = "waiting for FerryJob retried (snapshot snap-retried) of the same volume to finish"
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		j, err := jobs.Get(t.Context(), "after-retried")
		if err == nil && j.Status.Message == want && j.Status.Phase == cluster.PhasePending {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after-retried does not say it waits: %+v %v", j, err)
		}
	}
	time.Sleep(2500 * time.Millisecond) // resyncs, each a second apart
	if n := writes.count("after-retried"); n > 2 {
		t.Errorf("the agents wrote the status of the waiting job %d times; once each at most, the second conflicting", n)
	}
	if time.Now().After(retry.Time) {
		t.Fatal("the API server was too slow to see after-retried wait before retried's RetryAfter")
	}
	if _, _, ran := r.get("after-retried"); ran {
		t.Error("after-retried ran while retried waited for its RetryAfter")
	}

	if j := waitFinal(t, jobs, "retried", 30*time.Second); j.Status.Phase != cluster.PhaseFailed || j.Status.Message != "the snapshot is gone" {
		t.Errorf("retried: %+v", j.Status)
	}
	if j := waitFinal(t, jobs, "orphan", 30*time.Second); j.Status.Phase != cluster.PhaseSucceeded || j.Status.Attempts != 2 || j.Status.Agent == "gone" {
		t.Errorf("orphan: %+v", j.Status)
	}
	for _, n := range []string{"after-retried", "after-orphan"} {
		if j := waitFinal(t, jobs, n, 30*time.Second); j.Status.Phase != cluster.PhaseSucceeded || j.Status.Attempts != 1 {
			t.Errorf("%s: %+v", n, j.Status)
		}
	}
	if started, _, _ := r.get("retried"); started.Before(retry.Time) {
		t.Errorf("retried ran %s before its RetryAfter", retry.Sub(started))
	}
	for prev, next := range map[string]string{"retried": "after-retried", "orphan": "after-orphan"} {
		_, ended, _ := r.get(prev)
		if started, _, _ := r.get(next); !started.After(ended) {
			t.Errorf("%s started %s before %s ended", next, ended.Sub(started), prev)
		}
	}
}
