package queue

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func next(t *testing.T, q *Queue) Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	j, err := q.Next(ctx)
	if err != nil {
		t.Fatalf("next: %v", err)
	}
	return j
}

func noJob(t *testing.T, q *Queue) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if j, err := q.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got job %s, want none", j.ID)
	}
}

func TestOrderAndExclusivity(t *testing.T) {
	q, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1000, 0)
	for i, id := range []string{"a1", "b1", "a2"} {
		if err := q.Put(Job{ID: id, Key: id[:1], Created: t0.Add(time.Duration(i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Put(Job{ID: "a1", Key: "a", Created: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if len(q.List()) != 3 {
		t.Fatalf("idempotent put: %d jobs", len(q.List()))
	}
	a1, b1 := next(t, q), next(t, q)
	if a1.ID != "a1" || b1.ID != "b1" {
		t.Fatalf("got %s, %s", a1.ID, b1.ID)
	}
	noJob(t, q) // a2 waits for a1: same volume
	if err := q.Done(a1); err != nil {
		t.Fatal(err)
	}
	if j := next(t, q); j.ID != "a2" {
		t.Fatalf("got %s", j.ID)
	}
}

func TestRetryAndRestart(t *testing.T) {
	dir := t.TempDir()
	q, _ := Open(dir)
	if err := q.Put(Job{ID: "s1", Key: "v", Payload: []byte(`{"x":1}`)}); err != nil {
		t.Fatal(err)
	}
	j := next(t, q)
	if err := q.Retry(j, errors.New("target down"), 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	noJob(t, q)
	time.Sleep(150 * time.Millisecond)
	if j := next(t, q); j.Attempts != 1 || j.LastError != "target down" {
		t.Fatalf("after retry: %+v", j)
	}
	// The process dies with the job claimed: a new queue on the same
	// directory has it ready again, payload intact.
	os.WriteFile(filepath.Join(dir, "jobs", ".tmp-123"), []byte("half"), 0o600)
	q2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	j2 := next(t, q2)
	if j2.ID != "s1" || string(j2.Payload) != `{"x":1}` || j2.Attempts != 1 {
		t.Fatalf("after restart: %+v", j2)
	}
	if _, err := os.Stat(filepath.Join(dir, "jobs", ".tmp-123")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a partial write was left behind")
	}
	if err := q2.Done(j2); err != nil {
		t.Fatal(err)
	}
	q3, _ := Open(dir)
	if len(q3.List()) != 0 {
		t.Fatal("done job came back")
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	q, _ := Open(dir)
	for _, id := range []string{"", "../x", ".hidden", "a/b"} {
		if err := q.Put(Job{ID: id, Key: "k"}); err == nil {
			t.Errorf("id %q accepted", id)
		}
	}
	os.WriteFile(filepath.Join(dir, "jobs", "x.json"), []byte("{"), 0o600)
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "x.json") {
		t.Fatalf("damaged job file: %v", err)
	}
}
