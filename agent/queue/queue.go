// Package queue is the agent's durable job queue: one JSON file per job in
// a state directory, written tmp -> fsync -> rename -> fsync(dir), so a job
// that Put returned for survives kill -9 and power loss.
//
//	DIR/jobs/<id>.json     a job: its payload, attempts, last error, next try
//
// Jobs for the same key (a volume) never run at once: Next hands out the
// oldest ready job whose key is idle. Claims live in memory only, so after a
// restart every unfinished job is ready again; the job's steps must be
// idempotent (they are: see agent).
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Job is one unit of work.
type Job struct {
	ID        string          `json:"id"`  // unique; Put is idempotent per ID
	Key       string          `json:"key"` // jobs with one key run one at a time, oldest first
	Kind      string          `json:"kind"`
	Payload   json.RawMessage `json:"payload"`
	Created   time.Time       `json:"created"`
	Attempts  int             `json:"attempts"`
	LastError string          `json:"last_error,omitempty"`
	NotBefore time.Time       `json:"not_before,omitzero"`
}

// Queue is a durable queue in a directory. It is safe for concurrent use
// by one process; two processes must not share a directory (the agent holds
// a lock file).
type Queue struct {
	dir     string
	mu      sync.Mutex
	jobs    map[string]*Job
	running map[string]bool // keys
	wake    chan struct{}
}

// Open loads the queue in dir, creating it if needed.
func Open(dir string) (*Queue, error) {
	jd := filepath.Join(dir, "jobs")
	if err := os.MkdirAll(jd, 0o700); err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	q := &Queue{dir: jd, jobs: map[string]*Job{}, running: map[string]bool{}, wake: make(chan struct{}, 1)}
	entries, err := os.ReadDir(jd)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".tmp-") {
			os.Remove(filepath.Join(jd, name)) // a write that never completed
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(jd, name))
		if err != nil {
			return nil, fmt.Errorf("queue: %w", err)
		}
		var j Job
		if err := json.Unmarshal(b, &j); err != nil || j.ID+".json" != name {
			return nil, fmt.Errorf("queue: job file %s is damaged; move it away to continue: %v", name, err)
		}
		q.jobs[j.ID] = &j
	}
	return q, nil
}

func validID(id string) bool {
	return id != "" && len(id) <= 200 && !strings.ContainsAny(id, "/\\\x00") && !strings.HasPrefix(id, ".")
}

// Put adds a job durably. A job with the same ID already queued is kept
// as it is.
func (q *Queue) Put(j Job) error {
	if !validID(j.ID) {
		return fmt.Errorf("queue: invalid job id %q", j.ID)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.jobs[j.ID]; ok {
		return nil
	}
	if j.Created.IsZero() {
		j.Created = time.Now().UTC()
	}
	if err := q.write(&j); err != nil {
		return err
	}
	q.jobs[j.ID] = &j
	q.signal()
	return nil
}

func (q *Queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *Queue) write(j *Job) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(q.dir, ".tmp-")
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(q.dir, j.ID+".json"))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("queue: write job %s: %w", j.ID, err)
	}
	return syncDir(q.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Next blocks until a job is ready and its key idle, claims it and returns
// a copy. The caller must end the claim with Done or Retry.
func (q *Queue) Next(ctx context.Context) (Job, error) {
	for {
		q.mu.Lock()
		j, wait := q.pick(time.Now())
		if j != nil {
			q.running[j.Key] = true
			out := *j
			q.mu.Unlock()
			return out, nil
		}
		q.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return Job{}, ctx.Err()
		case <-q.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// pick returns the oldest ready job whose key is idle and which is the
// oldest of its key (a snapshot's parent replicates before it), or how long
// to wait before one may be.
func (q *Queue) pick(now time.Time) (*Job, time.Duration) {
	head := map[string]*Job{}
	for _, j := range q.jobs {
		if h := head[j.Key]; h == nil || older(j, h) {
			head[j.Key] = j
		}
	}
	var best *Job
	wait := time.Minute
	for key, j := range head {
		if q.running[key] {
			continue
		}
		if d := j.NotBefore.Sub(now); d > 0 {
			wait = min(wait, d)
			continue
		}
		if best == nil || older(j, best) {
			best = j
		}
	}
	return best, wait
}

func older(a, b *Job) bool {
	return a.Created.Before(b.Created) || a.Created.Equal(b.Created) && a.ID < b.ID
}

// Done removes a finished job and releases its key.
func (q *Queue) Done(j Job) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.running, j.Key)
	delete(q.jobs, j.ID)
	q.signal()
	err := os.Remove(filepath.Join(q.dir, j.ID+".json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("queue: remove job %s: %w", j.ID, err)
	}
	return syncDir(q.dir)
}

// Retry records a failed attempt and makes the job ready again after delay.
func (q *Queue) Retry(j Job, cause error, delay time.Duration) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.running, j.Key)
	cur, ok := q.jobs[j.ID]
	if !ok {
		return nil
	}
	cur.Attempts++
	cur.LastError = cause.Error()
	cur.NotBefore = time.Now().Add(delay).UTC()
	q.signal()
	return q.write(cur)
}

// List returns the queued jobs, oldest first, and whether each is running.
func (q *Queue) List() []Job {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]Job, 0, len(q.jobs))
	for _, j := range q.jobs {
		out = append(out, *j)
	}
	slices.SortFunc(out, func(a, b Job) int { return a.Created.Compare(b.Created) })
	return out
}
