package objstore

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/semaphore"
)

// limitTransport must never have more than its limit of requests in flight,
// counting a request until its response body is closed.
func TestLimitTransport(t *testing.T) {
	var inFlight, peak atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		inFlight.Add(-1)
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	const limit = 3
	client := &http.Client{Transport: &limitTransport{sem: semaphore.NewWeighted(limit), rt: http.DefaultTransport}}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			resp, err := client.Get(srv.URL)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	}
	wg.Wait()
	if p := peak.Load(); p > limit || p < 2 {
		t.Fatalf("peak %d requests in flight, want 2..%d", p, limit)
	}

	// With every slot held by unclosed bodies, a request waits for its
	// context rather than going out.
	var bodies []io.Closer
	for range limit {
		resp, err := client.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, resp.Body)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	if _, err := client.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request beyond the limit: %v, want to wait until the deadline", err)
	}
	bodies[0].Close()
	resp, err := client.Get(srv.URL)
	if err != nil {
		t.Fatalf("request after a slot was freed: %v", err)
	}
	resp.Body.Close()
	for _, b := range bodies[1:] {
		b.Close()
	}
}
