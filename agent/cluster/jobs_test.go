package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ferrydr/ferry/agent/cluster"
	"github.com/ferrydr/ferry/testenv/kube"
)

const ns = "ferry-system"

// startAPI starts an API server with the FerryJob CRD and the agents'
// namespace.
func startAPI(t *testing.T) *kube.Cluster {
	t.Helper()
	c := kube.Start(t)
	if _, err := c.ApplyFile(t.Context(), "../../deploy/crd/ferry.dev_ferryjobs.yaml", kube.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitEstablished(t.Context(), "ferryjobs.ferry.dev"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return c
}

func restoreJob(name string) *cluster.Job {
	return &cluster.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: cluster.JobSpec{
			Type: cluster.TypeRestore, Repository: "file:///nowhere", Driver: "test.driver",
			Secret:  cluster.SecretRef{Namespace: ns, Name: "repo"},
			Restore: &cluster.Restore{Snapshot: "latest", Namespace: "app", PVC: name},
		},
	}
}

func waitFinal(t *testing.T, jobs *cluster.Jobs, name string, within time.Duration) *cluster.Job {
	t.Helper()
	var j *cluster.Job
	var err error
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if j, err = jobs.Get(t.Context(), name); err == nil && j.Status.Final() {
			return j
		}
	}
	t.Fatalf("job %s not finished within %s: %+v %v", name, within, j, err)
	return nil
}

func worker(jobs *cluster.Jobs, node string, h cluster.Handler) *cluster.Worker {
	return &cluster.Worker{
		Jobs: jobs, Node: node, Driver: "test.driver", Concurrency: 2,
		Heartbeat: 500 * time.Millisecond, StaleAfter: 2 * time.Second, MaxAttempts: 3,
		Handlers: map[string]cluster.Handler{cluster.TypeRestore: h},
		Log:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

func serve(t *testing.T, w *cluster.Worker) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker %s: %v", w.Node, err)
		}
	})
}

// TestJobsRunOnce: three agents race for twelve jobs; every job runs
// exactly once (no attempt is run by two agents), failures are retried and
// then failed with the handler's error, and progress reaches the status.
func TestJobsRunOnce(t *testing.T) {
	c := startAPI(t)
	jobs := &cluster.Jobs{Client: c.Dynamic, Namespace: ns}
	var mu sync.Mutex
	runs := map[string][]string{}
	h := func(node string) cluster.Handler {
		return func(ctx context.Context, j *cluster.Job, p *cluster.Progress) (*cluster.Outcome, error) {
			mu.Lock()
			runs[j.Name] = append(runs[j.Name], node)
			mu.Unlock()
			p.Track(func() (int64, int64, int64) { return 100, 100, 7 })
			time.Sleep(700 * time.Millisecond) // past a heartbeat
			if strings.HasPrefix(j.Name, "bad") {
				return nil, errors.New("the volume is on fire")
			}
			if strings.HasPrefix(j.Name, "lost") {
				return nil, cluster.Permanent(errors.New("snapshot is not restorable"))
			}
			return &cluster.Outcome{Snapshot: "abc", Message: "done by " + node}, nil
		}
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		w := worker(jobs, n, h(n))
		serve(t, w)
	}
	var names []string
	for i := range 10 {
		names = append(names, fmt.Sprintf("ok-%d", i))
	}
	names = append(names, "bad-1", "lost-1")
	for _, n := range names {
		if _, err := jobs.Create(t.Context(), restoreJob(n)); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range names {
		j := waitFinal(t, jobs, n, time.Minute)
		mu.Lock()
		ran := runs[n]
		mu.Unlock()
		switch {
		case strings.HasPrefix(n, "ok"):
			if j.Status.Phase != cluster.PhaseSucceeded || len(ran) != 1 || j.Status.Attempts != 1 ||
				j.Status.Message != "done by "+ran[0] || j.Status.Agent != ran[0] || j.Status.BytesDone != 100 || j.Status.Snapshot != "abc" {
				t.Errorf("%s: ran on %v, status %+v", n, ran, j.Status)
			}
		case strings.HasPrefix(n, "bad"):
			if j.Status.Phase != cluster.PhaseFailed || len(ran) != 3 || j.Status.Attempts != 3 || !strings.Contains(j.Status.Message, "the volume is on fire") {
				t.Errorf("%s: ran on %v, status %+v", n, ran, j.Status)
			}
		default:
			if j.Status.Phase != cluster.PhaseFailed || len(ran) != 1 || j.Status.Message != "snapshot is not restorable" {
				t.Errorf("%s: ran on %v, status %+v", n, ran, j.Status)
			}
		}
	}
	// A job for another driver is left alone.
	other := restoreJob("other-driver")
	other.Spec.Driver = "other.driver"
	if _, err := jobs.Create(t.Context(), other); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if j, err := jobs.Get(t.Context(), "other-driver"); err != nil || j.Status.Phase != "" {
		t.Errorf("a job for another driver: %+v %v", j.Status, err)
	}
}

// TestJobSurvivesLostAgent kills (-9) the process of the agent running a
// job; another agent takes it over once its heartbeat is stale and
// finishes it.
func TestJobSurvivesLostAgent(t *testing.T) {
	c := startAPI(t)
	jobs := &cluster.Jobs{Client: c.Dynamic, Namespace: ns}
	if _, err := jobs.Create(t.Context(), restoreJob("survivor")); err != nil {
		t.Fatal(err)
	}
	// The first agent: this test binary again, running a worker whose
	// handler never ends.
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "FERRY_HELPER_AGENT=1", "FERRY_HELPER_KUBECONFIG="+c.Kubeconfig)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		j, err := jobs.Get(t.Context(), "survivor")
		if err == nil && j.Status.Phase == cluster.PhaseRunning && j.Status.Agent == "doomed" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first agent did not claim the job: %+v %v", j, err)
		}
	}
	time.Sleep(time.Second) // a heartbeat or two
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed := time.Now()

	ran := make(chan string, 2)
	serve(t, worker(jobs, "survivor-node", func(ctx context.Context, j *cluster.Job, p *cluster.Progress) (*cluster.Outcome, error) {
		ran <- j.Status.Message
		return &cluster.Outcome{Message: "finished"}, nil
	}))
	j := waitFinal(t, jobs, "survivor", time.Minute)
	took := time.Since(killed)
	if j.Status.Phase != cluster.PhaseSucceeded || j.Status.Agent != "survivor-node" || j.Status.Attempts != 2 {
		t.Fatalf("after the kill: %+v", j.Status)
	}
	if msg := <-ran; !strings.Contains(msg, "taken over by node survivor-node from node doomed") {
		t.Errorf("the new attempt's message: %q", msg)
	}
	if took > 10*time.Second {
		t.Errorf("takeover took %s; the heartbeat goes stale after 2s", took)
	}
	t.Logf("taken over %s after the kill", took.Round(100*time.Millisecond))
}

// TestTakeoverByLocalClock: a job's heartbeat is its agent's time, and
// node clocks differ. A job whose agent keeps renewing it is left alone
// however far that agent's clock is behind or ahead; once its heartbeat
// stops changing, another agent takes it over StaleAfter later by its own
// clock.
func TestTakeoverByLocalClock(t *testing.T) {
	c := startAPI(t)
	jobs := &cluster.Jobs{Client: c.Dynamic, Namespace: ns}
	skews := map[string]time.Duration{"clock-behind": -time.Hour, "clock-ahead": time.Hour}
	stops := map[string]func() time.Time{}
	for name, skew := range skews {
		if _, err := jobs.Create(t.Context(), restoreJob(name)); err != nil {
			t.Fatal(err)
		}
		stops[name] = hold(t, jobs, name, "skewed-"+name, skew)
	}
	// Held before the worker starts, which would claim them while pending.
	for name := range skews {
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if j, err := jobs.Get(t.Context(), name); err == nil && j.Status.Agent == "skewed-"+name {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s was not held", name)
			}
		}
	}
	type run struct {
		job string
		at  time.Time
	}
	ran := make(chan run, 4)
	w := worker(jobs, "taker", func(ctx context.Context, j *cluster.Job, p *cluster.Progress) (*cluster.Outcome, error) {
		ran <- run{j.Name, time.Now()}
		return &cluster.Outcome{Message: "finished"}, nil
	})
	serve(t, w)

	time.Sleep(3 * w.StaleAfter)
	select {
	case r := <-ran:
		t.Fatalf("%s was taken over while its agent renewed it", r.job)
	default:
	}
	changed := map[string]time.Time{}
	for name, stop := range stops {
		changed[name] = stop()
	}
	for range skews {
		select {
		case r := <-ran:
			after := r.at.Sub(changed[r.job])
			if after < w.StaleAfter || after > w.StaleAfter+4*time.Second {
				t.Errorf("%s taken over %s after its heartbeat last changed, want %s (a little more)", r.job, after.Round(10*time.Millisecond), w.StaleAfter)
			}
		case <-time.After(time.Minute):
			t.Fatal("a job whose heartbeat stopped changing was not taken over")
		}
	}
	for name := range skews {
		if j := waitFinal(t, jobs, name, time.Minute); j.Status.Phase != cluster.PhaseSucceeded || j.Status.Agent != "taker" {
			t.Errorf("%s: %+v", name, j.Status)
		}
	}
}

// hold runs the job as agent node would, renewing its heartbeat four times
// a second by a clock off by skew, until stop (or the test's end). stop
// returns when the heartbeat last changed, by the test's clock.
func hold(t *testing.T, jobs *cluster.Jobs, name, node string, skew time.Duration) (stop func() time.Time) {
	quit, last := make(chan struct{}), make(chan time.Time, 1)
	ctx := t.Context()
	go func() {
		var changed time.Time
		var prev metav1.Time
		defer func() { last <- changed }()
		for ctx.Err() == nil {
			j, err := jobs.Get(ctx, name)
			if err != nil {
				if ctx.Err() == nil {
					t.Error(err)
				}
				return
			}
			if j.Status.Agent != "" && j.Status.Agent != node {
				t.Errorf("%s taken by %s while %s renews it", name, j.Status.Agent, node)
				return
			}
			hb := metav1.NewTime(time.Now().Add(skew).Truncate(time.Second))
			j.Status.Phase, j.Status.Agent, j.Status.Heartbeat = cluster.PhaseRunning, node, &hb
			start := time.Now()
			if _, err := jobs.UpdateStatus(ctx, j); err != nil {
				if ctx.Err() == nil {
					t.Error(err)
				}
				return
			}
			if !hb.Equal(&prev) {
				changed, prev = start, hb
			}
			select {
			case <-quit:
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()
	stopped := sync.OnceValue(func() time.Time {
		close(quit)
		return <-last
	})
	t.Cleanup(func() { stopped() })
	return stopped
}

// TestMain runs the agent TestJobSurvivesLostAgent kills when this test
// binary is started as that child process.
func TestMain(m *testing.M) {
	if os.Getenv("FERRY_HELPER_AGENT") == "1" {
		doomedAgent()
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func doomedAgent() {
	rc, err := clientcmd.BuildConfigFromFlags("", os.Getenv("FERRY_HELPER_KUBECONFIG"))
	if err != nil {
		panic(err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		panic(err)
	}
	w := worker(&cluster.Jobs{Client: dyn, Namespace: ns}, "doomed", func(ctx context.Context, j *cluster.Job, p *cluster.Progress) (*cluster.Outcome, error) {
		select {} // until killed
	})
	w.Serve(context.Background())
}
