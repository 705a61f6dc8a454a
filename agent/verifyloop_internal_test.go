package agent

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// TestReadPercent: a run reads the share of the packs the budget pays
// for, at least 1% of a repository that holds data, at most all of it.
func TestReadPercent(t *testing.T) {
	for _, c := range []struct {
		budget float64
		stored int64
		want   int
	}{
		{1 << 30, 0, 0},                  // nothing stored: nothing to read
		{1 << 30, 1 << 20, 100},          // the budget exceeds the repository
		{10 << 20, 100 << 20, 10},        // a tenth
		{10 << 20, 1000 << 20, 1},        // 1%
		{1 << 20, 1 << 40, 1},            // far larger than the budget: still 1%
		{288 << 20, 1 << 30, 28},         // rounded down
		{1 << 30, 1 << 30, 100},          // exactly all
		{1, 1 << 40, 1},                  // a tiny budget
		{float64(1 << 62), 1 << 62, 100}, // no overflow
	} {
		if got := readPercent(c.budget, c.stored); got != c.want {
			t.Errorf("readPercent(%v, %d) = %d, want %d", c.budget, c.stored, got, c.want)
		}
	}
}

// TestJitter: intervals are spread over ±10%, never beyond.
func TestJitter(t *testing.T) {
	const d = time.Hour
	lo, hi := d, d
	for range 10000 {
		j := jitter(d)
		if j < d*9/10 || j > d*11/10 {
			t.Fatalf("jitter(%v) = %v, outside ±10%%", d, j)
		}
		lo, hi = min(lo, j), max(hi, j)
	}
	// 10,000 draws cover nearly the whole range.
	if lo > d*91/100 || hi < d*109/100 {
		t.Errorf("jitter spread only over [%v, %v]", lo, hi)
	}
}

// TestLimiter: reads are paced to the rate, in the bubble's fake time:
// 10 MiB at 1 MiB/s take 10 s however they are split, and a cancelled
// context ends the wait.
func TestLimiter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		l := newLimiter(1 << 20)
		start := time.Now()
		for range 10 {
			if err := l.pay(ctx, 1<<20); err != nil {
				t.Fatal(err)
			}
		}
		if got := time.Since(start); got != 10*time.Second {
			t.Errorf("10 MiB at 1 MiB/s took %v, want 10s", got)
		}
		// Idle time is not saved up: after a pause, the next read waits its own share.
		time.Sleep(time.Minute)
		start = time.Now()
		if err := l.pay(ctx, 512<<10); err != nil {
			t.Fatal(err)
		}
		if got := time.Since(start); got != 500*time.Millisecond {
			t.Errorf("512 KiB after a pause took %v, want 500ms", got)
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if err := l.pay(cctx, 100<<20); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("pay with a context ending first: %v", err)
		}
	})
}
