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
