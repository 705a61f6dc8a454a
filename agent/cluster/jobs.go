package cluster

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/ferrydr/ferry/csi/hook"
)

// Jobs are the FerryJobs of one namespace (the agents' own).
type Jobs struct {
	Client    dynamic.Interface
	Namespace string
}

func (js *Jobs) api() dynamic.ResourceInterface {
	return js.Client.Resource(JobResource).Namespace(js.Namespace)
}

// Create creates j, or returns the job of that name if it exists.
func (js *Jobs) Create(ctx context.Context, j *Job) (*Job, error) {
	j.Namespace = js.Namespace
	u, err := toUnstructured(j)
	if err != nil {
		return nil, err
	}
	out, err := js.api().Create(ctx, u, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return js.Get(ctx, j.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("create FerryJob %s/%s: %w", js.Namespace, j.Name, err)
	}
	return toJob(out)
}

// Get reads one job.
func (js *Jobs) Get(ctx context.Context, name string) (*Job, error) {
	u, err := js.api().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return toJob(u)
}

// UpdateStatus writes j.Status; it fails with a conflict when j is not the
// newest version of the job, which is how claims stay exclusive.
func (js *Jobs) UpdateStatus(ctx context.Context, j *Job) (*Job, error) {
	u, err := toUnstructured(j)
	if err != nil {
		return nil, err
	}
	out, err := js.api().UpdateStatus(ctx, u, metav1.UpdateOptions{})
	if err != nil {
		return nil, err
	}
	return toJob(out)
}

// Delete deletes j, and never a job created again under its name since j
// was read: the delete has j's UID as a precondition, and fails with a
// conflict when the UID is another.
func (js *Jobs) Delete(ctx context.Context, j *Job) error {
	err := js.api().Delete(ctx, j.Name, metav1.DeleteOptions{Preconditions: metav1.NewUIDPreconditions(string(j.UID))})
	if err != nil {
		return fmt.Errorf("delete FerryJob %s/%s: %w", js.Namespace, j.Name, err)
	}
	return nil
}

// ReplicationJobName is the name of the job replicating a driver's
// snapshot: the same snapshot always gives the same job, so the hook's
// retries create it once.
func ReplicationJobName(driver, snapshotID string) string {
	h := sha256.Sum256([]byte(driver + "\x00" + snapshotID))
	return "replicate-" + hex.EncodeToString(h[:10])
}

// Enqueuer hands the hook's snapshots to the agents as FerryJobs.
type Enqueuer struct {
	Jobs   *Jobs
	Driver string // the CSI driver's name
}

// Enqueue creates the replication job for s; it is idempotent.
func (e *Enqueuer) Enqueue(ctx context.Context, s hook.Snapshot) error {
	r := s.Replication
	j := &Job{
		ObjectMeta: metav1.ObjectMeta{
			Name:   ReplicationJobName(e.Driver, s.SnapshotID),
			Labels: map[string]string{"app.kubernetes.io/managed-by": "ferry", LabelType: strings.ToLower(TypeReplicate)},
		},
		Spec: JobSpec{
			Type: TypeReplicate, Repository: r.Repository, Driver: e.Driver,
			Secret:    SecretRef{Namespace: r.SecretNamespace, Name: r.SecretName},
			Replicate: &Replicate{Snapshot: s},
		},
	}
	if r.SnapshotNamespace != "" && r.SnapshotName != "" {
		j.Annotations = map[string]string{AnnotationVolumeSnapshot: r.SnapshotNamespace + "/" + r.SnapshotName}
	}
	_, err := e.Jobs.Create(ctx, j)
	return err
}

// Labels and annotations Ferry puts on its objects.
const (
	LabelType                = "ferry.dev/type"
	AnnotationVolumeSnapshot = "ferry.dev/volumesnapshot"
)

// Progress is what a running job reports; the worker copies it into the
// job's status at every heartbeat.
type Progress struct {
	mu     sync.Mutex
	msg    string
	sample func() (total, done, read int64)
}

// Say sets the job's status message.
func (p *Progress) Say(format string, args ...any) {
	p.mu.Lock()
	p.msg = fmt.Sprintf(format, args...)
	p.mu.Unlock()
}

// Track sets where the byte counts come from: the volume's size, the
// bytes done, and the bytes read from the source.
func (p *Progress) Track(sample func() (total, done, read int64)) {
	p.mu.Lock()
	p.sample = sample
	p.mu.Unlock()
}

func (p *Progress) fill(st *JobStatus) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sample != nil {
		st.BytesTotal, st.BytesDone, st.BytesRead = p.sample()
	}
	if p.msg != "" {
		st.Message = p.msg
	}
}

// Outcome is what a finished job reports.
type Outcome struct {
	BytesRead, BytesNew, BytesStored int64
	Mode, Snapshot, Volume           string
	Message                          string // for the status and the Event
	// Degraded: done, but without a target that was down (see
	// backup.Summary.Degraded); the Event is a Warning.
	Degraded bool
}

// ErrPermanent marks errors that retrying cannot fix (a PVC that exists, a
// snapshot that is lost): the job fails at once.
var ErrPermanent = errors.New("permanent")

// Permanent wraps err as ErrPermanent.
func Permanent(err error) error { return fmt.Errorf("%w: %w", ErrPermanent, err) }

// Handler runs one attempt of a job. It returns when the job is done, has
// failed, or ctx ends (the agent stops, or lost the job to another agent).
type Handler func(ctx context.Context, j *Job, p *Progress) (*Outcome, error)

// Worker runs FerryJobs on this node: it watches the namespace's jobs,
// claims a pending one by writing its status with the version it read
// (only one agent's write can succeed), renews Status.Heartbeat while it
// runs, and takes over a Running job whose heartbeat it has seen unchanged
// for StaleAfter (its agent is gone). Staleness is judged by this agent's
// clock alone: the heartbeat is another node's time, compared only for
// change, so a node clock ahead or behind neither takes a live job nor
// keeps a dead one. (A job first seen Running, as after this agent starts,
// waits StaleAfter from then.) An agent that cannot renew its heartbeat
// for StaleAfter minus one Heartbeat stops the job itself, so it is never
// run twice at once while the API server is reachable by the new owner.
// A pending replication is claimed only once the earlier ones of its
// volume are over (see blockedBy). Finished jobs are deleted KeepFinished
// after they ended (see expire).
type Worker struct {
	Jobs        *Jobs
	Node        string // this agent's identity, in Status.Agent
	Driver      string // the CSI driver this agent serves
	Handlers    map[string]Handler
	Events      *Events // nil: none
	Concurrency int     // jobs at once; default 1
	Heartbeat   time.Duration
	StaleAfter  time.Duration
	MaxAttempts int // default 20
	// KeepFinished is how long a Succeeded or Failed job stays for
	// kubectl to show; 0 or less: forever.
	KeepFinished time.Duration
	Log          *slog.Logger
	// Observe, when set, sees every attempt's recorded end (metrics).
	Observe func(j *Job)
	// Running, when set, counts the jobs running now.
	Running interface {
		Inc()
		Dec()
	}

	mu       sync.Mutex
	running  map[string]bool
	beats    map[string]beat // of jobs other agents run
	noDelete atomic.Bool     // the API server said Forbidden to a delete
}

// beat is a heartbeat of another agent's job as this agent last saw it,
// and when, by this agent's clock, it saw it first.
type beat struct {
	agent string
	at    time.Time // the holder's clock: compared for change only
	seen  time.Time
}

func (w *Worker) defaults() {
	if w.Concurrency <= 0 {
		w.Concurrency = 1
	}
	if w.Heartbeat <= 0 {
		w.Heartbeat = 10 * time.Second
	}
	if w.StaleAfter <= w.Heartbeat {
		w.StaleAfter = 4 * w.Heartbeat
	}
	if w.MaxAttempts <= 0 {
		w.MaxAttempts = 20
	}
	if w.Log == nil {
		w.Log = slog.Default()
	}
	w.running = map[string]bool{}
	w.beats = map[string]beat{}
}

// Serve runs jobs until ctx ends.
func (w *Worker) Serve(ctx context.Context) error {
	w.defaults()
	f := dynamicinformer.NewFilteredDynamicSharedInformerFactory(w.Jobs.Client, w.Heartbeat, w.Jobs.Namespace, nil)
	inf := f.ForResource(JobResource)
	q := workqueue.NewTypedDelayingQueue[string]()
	defer q.ShutDown()
	l := inf.Lister().ByNamespace(w.Jobs.Namespace)
	add := func(obj any) {
		if u, ok := obj.(*unstructured.Unstructured); ok {
			q.Add(u.GetName())
		}
	}
	// A replication that ends or is deleted lets the next one of its
	// volume start now rather than at the next resync.
	release := func(obj any) {
		if u, ok := obj.(*unstructured.Unstructured); ok {
			if j, err := toJob(u); err == nil {
				for _, x := range volumeJobs(l, j) {
					q.Add(x.Name)
				}
			}
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: add,
		UpdateFunc: func(old, o any) {
			add(o)
			if !over(old) && over(o) {
				release(o)
			}
		},
		DeleteFunc: func(o any) {
			if !over(o) {
				release(o)
			}
		},
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		if ctx.Err() != nil {
			return nil // stopped before the informer synced: not its failure
		}
		return fmt.Errorf("FerryJobs in %s: the informer did not sync (is the CRD installed and may the agent list ferryjobs?)", w.Jobs.Namespace)
	}
	w.Log.Info("running FerryJobs", "namespace", w.Jobs.Namespace, "node", w.Node, "concurrency", w.Concurrency)
	go func() {
		<-ctx.Done()
		q.ShutDown()
	}()
	var wg sync.WaitGroup
	for range w.Concurrency {
		wg.Go(func() {
			for {
				name, stop := q.Get()
				if stop {
					return
				}
				if again := w.consider(ctx, l, name); again > 0 {
					q.AddAfter(name, again)
				}
				q.Done(name)
			}
		})
	}
	wg.Wait()
	f.Shutdown()
	return nil
}

// consider runs the job if it is this agent's to run, and says when to
// look at it again (0: when it changes).
func (w *Worker) consider(ctx context.Context, l cache.GenericNamespaceLister, name string) time.Duration {
	obj, err := l.Get(name)
	if err != nil {
		w.forget(name)
		return 0 // deleted
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return 0
	}
	j, err := toJob(u)
	if err != nil {
		w.Log.Error("unreadable FerryJob", "job", name, "error", err)
		return 0
	}
	st := &j.Status
	switch {
	case st.Final():
		w.forget(name)
		return w.expire(ctx, j)
	case j.Spec.Node != "" && j.Spec.Node != w.Node, j.Spec.Driver != w.Driver:
		return 0
	case w.Handlers[j.Spec.Type] == nil:
		return 0
	}
	w.mu.Lock()
	busy := w.running[name]
	w.mu.Unlock()
	if busy {
		return 0
	}
	if st.Phase == PhaseRunning && st.Agent != w.Node {
		unchanged := w.unchangedFor(j)
		if unchanged < w.StaleAfter {
			return w.StaleAfter - unchanged
		}
		w.Log.Warn("taking over a job whose agent stopped renewing it", "job", name, "agent", st.Agent, "heartbeat", st.Heartbeat, "unchanged", unchanged.Round(time.Second))
	}
	if st.RetryAfter != nil {
		if d := time.Until(st.RetryAfter.Time); d > 0 {
			return d
		}
	}
	if st.Phase != PhaseRunning {
		if p := blockedBy(l, j); p != nil {
			w.wait(ctx, j, p)
			return 0 // p's end queues j again
		}
	}
	w.run(ctx, j)
	return 0
}

// unchangedFor returns how long, by this agent's clock, j has been seen
// with the heartbeat it has now, from the same agent.
func (w *Worker) unchangedFor(j *Job) time.Duration {
	b := beat{agent: j.Status.Agent}
	if j.Status.Heartbeat != nil {
		b.at = j.Status.Heartbeat.Time
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if old, ok := w.beats[j.Name]; ok && old.agent == b.agent && old.at.Equal(b.at) {
		return time.Since(old.seen)
	}
	b.seen = time.Now()
	w.beats[j.Name] = b
	return 0
}

// forget drops what unchangedFor knows of a job that is over or gone.
func (w *Worker) forget(name string) {
	w.mu.Lock()
	delete(w.beats, name)
	w.mu.Unlock()
}

// expire deletes a finished job KeepFinished after it ended, as Kubernetes
// deletes a Job with ttlSecondsAfterFinished, or says when it will be due.
// It does so for the jobs of every driver: any agent's informer holds them
// all. The agent that ran the job deletes it; the others wait StaleAfter
// longer, in case that agent is gone, so that a cluster of many agents
// sends one delete per job rather than one per agent. Two that still meet
// are harmless: the later one gets NotFound.
func (w *Worker) expire(ctx context.Context, j *Job) time.Duration {
	if w.KeepFinished <= 0 || w.noDelete.Load() {
		return 0
	}
	st := &j.Status
	// Ferry writes CompletionTime with every final phase; a job made final
	// some other way (by hand) may have none, and then its last heartbeat,
	// else its creation, says when it ended.
	ended := j.CreationTimestamp.Time
	switch {
	case st.CompletionTime != nil:
		ended = st.CompletionTime.Time
	case st.Heartbeat != nil:
		ended = st.Heartbeat.Time
	}
	due := ended.Add(w.KeepFinished)
	if st.Agent != w.Node {
		due = due.Add(w.StaleAfter)
	}
	if d := time.Until(due); d > 0 {
		return d
	}
	err := w.Jobs.Delete(ctx, j)
	switch {
	case err == nil:
		w.Log.Info("deleted finished FerryJob", "job", j.Name, "phase", st.Phase, "completed", ended)
	case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		// Another agent deleted it (and someone may have created it again).
	case apierrors.IsForbidden(err):
		// Every resync would try again, for every finished job.
		if w.noDelete.CompareAndSwap(false, true) {
			w.Log.Error("may not delete FerryJobs: finished ones are kept until the agent restarts with delete on ferryjobs (deploy/rbac/agent.yaml grants it)", "error", err)
		}
	case ctx.Err() == nil:
		w.Log.Warn("delete a finished FerryJob", "job", j.Name, "error", err)
	}
	return 0
}

// before orders replications of a volume: by when the snapshot was cut,
// then by when the job was created, then by name, so that every agent
// computes the same order.
func before(a, b *Job) bool {
	return cmp.Or(
		a.Spec.Replicate.Snapshot.CreatedAt.Compare(b.Spec.Replicate.Snapshot.CreatedAt),
		a.CreationTimestamp.Time.Compare(b.CreationTimestamp.Time),
		strings.Compare(a.Name, b.Name),
	) < 0
}

// volumeJobs returns the replications of j's volume that are not over, j
// included; none when j is not a replication.
func volumeJobs(l cache.GenericNamespaceLister, j *Job) []*Job {
	if j.Spec.Type != TypeReplicate || j.Spec.Replicate == nil {
		return nil
	}
	objs, _ := l.List(labels.Everything())
	var out []*Job
	for _, o := range objs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok || over(u) {
			continue // most jobs are over, which is cheaper to see than to convert them
		}
		x, err := toJob(u)
		if err == nil && x.Spec.Type == TypeReplicate && x.Spec.Replicate != nil &&
			x.Spec.Replicate.Snapshot.SourceVolumeID == j.Spec.Replicate.Snapshot.SourceVolumeID &&
			x.Spec.Repository == j.Spec.Repository && x.Spec.Driver == j.Spec.Driver {
			out = append(out, x)
		}
	}
	return out
}

// blockedBy returns the replication j must wait for before it is claimed:
// the last of its volume's that come before it, or nil. Replications of one
// volume (to one repository, by one driver) so run one at a time in the
// order the snapshots were cut, whichever agents run them: each backup's
// parent is the snapshot before it, and the newest snapshot ends up the
// repository's latest.
func blockedBy(l cache.GenericNamespaceLister, j *Job) *Job {
	var last *Job
	for _, x := range volumeJobs(l, j) {
		if before(x, j) && (last == nil || before(last, x)) {
			last = x
		}
	}
	return last
}

// wait says in j's status which job it waits for; it writes only a new
// message, and a conflict means j changed, which brings it back here.
func (w *Worker) wait(ctx context.Context, j, p *Job) {
	msg := fmt.Sprintf("waiting for FerryJob %s (snapshot %s) of the same volume to finish", p.Name, p.Spec.Replicate.Snapshot.SnapshotID)
	w.Log.Debug("job waits for an earlier replication of its volume", "job", j.Name, "for", p.Name)
	if j.Status.Message == msg {
		return
	}
	j.Status.Phase, j.Status.Message = PhasePending, msg
	if _, err := w.Jobs.UpdateStatus(ctx, j); err != nil && !apierrors.IsConflict(err) && ctx.Err() == nil {
		w.Log.Warn("say why the job waits", "job", j.Name, "error", err)
	}
}

// over reports whether obj is a FerryJob that is over, from its phase alone.
func over(obj any) bool {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return false
	}
	p, _, _ := unstructured.NestedString(u.Object, "status", "phase")
	return p == PhaseSucceeded || p == PhaseFailed
}

// run claims j and runs one attempt of it.
func (w *Worker) run(ctx context.Context, j *Job) {
	log := w.Log.With("job", j.Name, "type", j.Spec.Type)
	prev := j.Status.Agent
	j.Status.Phase, j.Status.Agent = PhaseRunning, w.Node
	j.Status.Attempts++
	j.Status.Heartbeat, j.Status.RetryAfter = now(), nil
	if j.Status.StartTime == nil {
		j.Status.StartTime = now()
	}
	j.Status.Message = "started on node " + w.Node
	if prev != "" && prev != w.Node {
		j.Status.Message = fmt.Sprintf("taken over by node %s from node %s, which stopped renewing it", w.Node, prev)
	}
	claimed, err := w.Jobs.UpdateStatus(ctx, j)
	if err != nil {
		if !apierrors.IsConflict(err) && ctx.Err() == nil {
			log.Warn("claim job", "error", err)
		}
		return // another agent claimed it first, or it changed: the informer brings it back
	}
	w.mu.Lock()
	w.running[j.Name] = true
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.running, j.Name)
		w.mu.Unlock()
	}()
	j = claimed
	if w.Running != nil {
		w.Running.Inc()
		defer w.Running.Dec()
	}
	w.Events.started(ctx, j)
	log.Info("job started", "attempt", j.Status.Attempts)

	jctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	p := &Progress{}
	hbDone := make(chan struct{})
	var latest atomic.Pointer[Job]
	latest.Store(j)
	go func() {
		defer close(hbDone)
		w.heartbeat(jctx, cancel, &latest, p, log)
	}()
	start := time.Now()
	out, err := w.Handlers[j.Spec.Type](jctx, j, p)
	cancel(nil)
	<-hbDone
	if errors.Is(context.Cause(jctx), errLost) {
		log.Warn("job lost to another agent; stopped", "error", err)
		return
	}
	w.finish(ctx, latest.Load(), p, out, err, time.Since(start), log)
}

var errLost = errors.New("another agent owns the job now")

// heartbeat renews the claim until ctx ends, copying the progress in.
func (w *Worker) heartbeat(ctx context.Context, cancel context.CancelCauseFunc, latest *atomic.Pointer[Job], p *Progress, log *slog.Logger) {
	t := time.NewTicker(w.Heartbeat)
	defer t.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		j, err := w.renew(ctx, latest.Load(), p)
		switch {
		case err == nil:
			latest.Store(j)
			lastOK = time.Now()
		case errors.Is(err, errLost):
			cancel(errLost)
			return
		case time.Since(lastOK) > w.StaleAfter-w.Heartbeat:
			log.Error("cannot renew the job's heartbeat; stopping it so another agent can take over", "error", err)
			cancel(errLost)
			return
		default:
			log.Warn("renew job heartbeat", "error", err)
		}
	}
}

func (w *Worker) renew(ctx context.Context, j *Job, p *Progress) (*Job, error) {
	for range 3 {
		cp := *j
		p.fill(&cp.Status)
		cp.Status.Heartbeat = now()
		out, err := w.Jobs.UpdateStatus(ctx, &cp)
		if !apierrors.IsConflict(err) {
			return out, err
		}
		// Someone else wrote the job: reread it, and give up if the
		// write was another agent's claim.
		if j, err = w.Jobs.Get(ctx, j.Name); err != nil {
			return nil, err
		}
		if j.Status.Agent != w.Node || j.Status.Phase != PhaseRunning {
			return nil, errLost
		}
	}
	return nil, errors.New("heartbeat: too many conflicting writes")
}

// finish records the attempt's result: Succeeded, Failed, or Pending with
// a RetryAfter.
func (w *Worker) finish(ctx context.Context, j *Job, p *Progress, out *Outcome, runErr error, took time.Duration, log *slog.Logger) {
	stopping := ctx.Err() != nil
	if stopping {
		// The agent is stopping: hand the job back at once rather than
		// make another agent wait for the heartbeat to go stale.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
	}
	for range 5 {
		st := &j.Status
		p.fill(st)
		st.Heartbeat = now()
		st.Seconds = took.Round(time.Millisecond).Seconds()
		switch {
		case runErr == nil:
			st.Phase, st.CompletionTime = PhaseSucceeded, now()
			if out != nil {
				st.BytesRead, st.BytesNew, st.BytesStored = out.BytesRead, out.BytesNew, out.BytesStored
				st.Mode, st.Snapshot, st.Volume, st.Message = out.Mode, out.Snapshot, out.Volume, out.Message
			}
		case stopping:
			st.Phase, st.Agent = PhasePending, ""
			st.Attempts-- // not the job's fault
			st.Message = fmt.Sprintf("node %s stopped while running it; waiting for an agent", w.Node)
		case errors.Is(runErr, ErrPermanent) || st.Attempts >= w.MaxAttempts:
			st.Phase, st.CompletionTime = PhaseFailed, now()
			st.Message = strings.TrimPrefix(runErr.Error(), ErrPermanent.Error()+": ")
			if !errors.Is(runErr, ErrPermanent) {
				st.Message = fmt.Sprintf("gave up after %d attempts: %s", st.Attempts, st.Message)
			}
		default:
			delay := min(time.Duration(1<<min(st.Attempts-1, 8))*5*time.Second, 30*time.Minute)
			st.Phase, st.Agent = PhasePending, ""
			t := metav1.NewTime(time.Now().Add(delay).Truncate(time.Second))
			st.RetryAfter = &t
			st.Message = fmt.Sprintf("attempt %d of %d failed, retrying in %s: %v", st.Attempts, w.MaxAttempts, delay, runErr)
		}
		_, err := w.Jobs.UpdateStatus(ctx, j)
		if err == nil {
			switch {
			case runErr == nil:
				log.Info("job succeeded", "seconds", st.Seconds, "message", st.Message)
			case stopping:
				log.Info("job handed back: the agent is stopping")
			default:
				log.Warn("job attempt failed", "phase", st.Phase, "error", runErr)
			}
			if !stopping {
				w.Events.finished(ctx, j, out, runErr)
				if w.Observe != nil {
					w.Observe(j)
				}
			}
			return
		}
		if !apierrors.IsConflict(err) {
			log.Error("record the job's result", "error", err)
			return
		}
		fresh, gerr := w.Jobs.Get(ctx, j.Name)
		if gerr != nil || fresh.Status.Agent != w.Node {
			return
		}
		fresh.Status = j.Status
		j = fresh
	}
}
