package cluster_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/agent/cluster"
)

// WaitRestore gives up with the same words, saying the job goes on,
// whether its context ends while it waits for the next poll or while it
// reads the job (as it does at once when the context has already ended).
func TestWaitRestoreGivesUp(t *testing.T) {
	c := startAPI(t)
	j, err := (&cluster.Jobs{Client: c.Dynamic, Namespace: ns}).Create(t.Context(), restoreJob("no-agent"))
	if err != nil {
		t.Fatal(err)
	}
	ended, cancel := context.WithCancel(t.Context())
	cancel()
	waiting, stop := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer stop()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"context ended before", ended, context.Canceled},
		{"deadline while waiting", waiting, context.DeadlineExceeded},
	} {
		var shown []string
		_, err := cluster.WaitRestore(tc.ctx, c.Client, c.Dynamic, j, func(s string) { shown = append(shown, s) })
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "gave up waiting for restore job ferry-system/no-agent (it goes on)") {
			t.Errorf("%s: %v", tc.name, err)
		}
		t.Logf("%s: %v, after showing %q", tc.name, err, shown)
	}
}
