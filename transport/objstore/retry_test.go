package objstore_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydr/ferry/transport/objstore"
)

// flakyStore is a fake for failures a real server cannot be made to produce
// on cue: its first failures calls fail with a reset connection, and a
// Create can fail after it has been applied (the ambiguous case).
type flakyStore struct {
	objstore.Store
	failures      atomic.Int32 // calls left to fail
	applyThenFail bool         // Create writes before failing
	breakList     atomic.Bool  // next List fails after fn has seen every object
	calls         atomic.Int32
	stats         atomic.Int32
}

var errReset = &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}

func (f *flakyStore) fail() bool {
	f.calls.Add(1)
	return f.failures.Add(-1) >= 0
}

func (f *flakyStore) Create(ctx context.Context, name string, data []byte) error {
	if f.fail() {
		if f.applyThenFail {
			f.Store.Create(ctx, name, data)
		}
		return errReset
	}
	return f.Store.Create(ctx, name, data)
}

func (f *flakyStore) Get(ctx context.Context, name string) ([]byte, error) {
	if f.fail() {
		return nil, errReset
	}
	return f.Store.Get(ctx, name)
}

func (f *flakyStore) Stat(ctx context.Context, name string) (objstore.Info, error) {
	f.stats.Add(1)
	return f.Store.Stat(ctx, name)
}

func (f *flakyStore) List(ctx context.Context, prefix string, fn func(objstore.Info) error) error {
	if f.fail() {
		return errReset
	}
	err := f.Store.List(ctx, prefix, fn)
	if err == nil && f.breakList.Swap(false) {
		return errReset
	}
	return err
}

var fastRetry = objstore.RetryPolicy{Attempts: 5, Base: time.Millisecond, Max: 4 * time.Millisecond}

func flaky(failures int32) *flakyStore {
	f := &flakyStore{Store: objstore.NewMem()}
	f.failures.Store(failures)
	return f
}

func TestRetryTransient(t *testing.T) {
	f := flaky(2)
	s := objstore.WithRetry(f, fastRetry)
	if err := f.Store.Create(t.Context(), "x", []byte("data")); err != nil {
		t.Fatal(err)
	}
	b, err := s.Get(t.Context(), "x")
	if err != nil || string(b) != "data" {
		t.Fatalf("Get after 2 transient failures: %q, %v", b, err)
	}
	if n := f.calls.Load(); n != 3 {
		t.Fatalf("%d attempts, want 3", n)
	}
}

func TestRetryGivesUp(t *testing.T) {
	f := flaky(100)
	s := objstore.WithRetry(f, fastRetry)
	_, err := s.Get(t.Context(), "x")
	if !errors.Is(err, syscall.ECONNRESET) || !objstore.IsTransient(err) {
		t.Fatalf("Get: %v, want the transient cause", err)
	}
	if !strings.Contains(err.Error(), "5 attempts") {
		t.Errorf("error does not say it gave up: %v", err)
	}
	if n := f.calls.Load(); n != 5 {
		t.Fatalf("%d attempts, want 5", n)
	}
}

func TestRetryPermanentOnce(t *testing.T) {
	f := flaky(0)
	s := objstore.WithRetry(f, fastRetry)
	_, err := s.Get(t.Context(), "absent")
	if !errors.Is(err, objstore.ErrNotFound) {
		t.Fatal(err)
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("ErrNotFound retried: %d attempts", n)
	}
}

// The PUT landed but its answer was lost: the retry meets the object and
// must report success, since it is ours.
func TestRetryCreateAmbiguousSucceeds(t *testing.T) {
	f := flaky(1)
	f.applyThenFail = true
	s := objstore.WithRetry(f, fastRetry)
	if err := s.Create(t.Context(), "obj", []byte("mine")); err != nil {
		t.Fatalf("Create whose first attempt was applied: %v", err)
	}
	if f.stats.Load() != 1 {
		t.Fatalf("Create checked the object %d times, want 1 Stat", f.stats.Load())
	}
}

// The retry meets an object of another size (or checksum): not ours, so
// ErrExists stands.
func TestRetryCreateAmbiguousForeign(t *testing.T) {
	for _, other := range []string{"different size", "mi\x00e"} {
		f := flaky(1)
		s := objstore.WithRetry(f, fastRetry)
		if err := f.Store.Create(t.Context(), "obj", []byte(other)); err != nil {
			t.Fatal(err)
		}
		if err := s.Create(t.Context(), "obj", []byte("mine")); !errors.Is(err, objstore.ErrExists) {
			t.Fatalf("Create meeting %q after a failure: %v, want ErrExists", other, err)
		}
	}
}

func TestRetryCreateExistsFirstAttempt(t *testing.T) {
	f := flaky(0)
	s := objstore.WithRetry(f, fastRetry)
	f.Store.Create(t.Context(), "obj", []byte("mine"))
	if err := s.Create(t.Context(), "obj", []byte("mine")); !errors.Is(err, objstore.ErrExists) {
		t.Fatalf("Create of an existing object: %v, want ErrExists even with equal content", err)
	}
	if f.stats.Load() != 0 {
		t.Fatal("Create Stat-ed an object it never tried to write")
	}
}

func TestRetryHonoursContext(t *testing.T) {
	f := flaky(100)
	s := objstore.WithRetry(f, objstore.RetryPolicy{Attempts: 10, Base: time.Hour, Max: time.Hour})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Get(ctx, "x")
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Get: %v, want both the deadline and the last failure", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("retry ignored the context for %v", time.Since(start))
	}
}

func TestRetryList(t *testing.T) {
	f := flaky(0)
	for _, n := range []string{"a", "b", "c"} {
		f.Store.Create(t.Context(), n, nil)
	}
	s := objstore.WithRetry(f, fastRetry)

	// Failing before fn ran: retried, each object seen once.
	f.failures.Store(2)
	seen := map[string]int{}
	if err := s.List(t.Context(), "", func(i objstore.Info) error { seen[i.Name]++; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 3 || seen["a"] != 1 || seen["b"] != 1 || seen["c"] != 1 {
		t.Fatalf("List after failures before fn ran saw %v", seen)
	}

	// Failing after fn ran: not retried, so nothing is seen twice.
	f.breakList.Store(true)
	f.calls.Store(0)
	seen = map[string]int{}
	err := s.List(t.Context(), "", func(i objstore.Info) error { seen[i.Name]++; return nil })
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("List broken after fn ran: %v, want the failure", err)
	}
	if f.calls.Load() != 1 || len(seen) != 3 || seen["a"] != 1 {
		t.Fatalf("List broken after fn ran: %d attempts, saw %v", f.calls.Load(), seen)
	}

	// fn's own error comes back unchanged and is not retried.
	stop := errors.New("stop")
	f.calls.Store(0)
	if err := s.List(t.Context(), "", func(objstore.Info) error { return stop }); err != stop {
		t.Fatalf("List returned %v, want fn's error unchanged", err)
	}
	if f.calls.Load() != 1 {
		t.Fatalf("fn's error retried: %d attempts", f.calls.Load())
	}
}
