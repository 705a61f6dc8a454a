package repo

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

// TestLockRefreshStopped: a backup's writer lock whose refreshing stops
// (the process hangs, or every write of it fails) holds prune back while
// fresh; once stale, prune ignores it and deletes the packs it marked, and
// the backup, which may have meant to refer to them, refuses to commit.
// And at the earliest moment a prune whose clock runs ClockSkew ahead may
// take a lock for stale, its holder already counts it as lost.
func TestLockRefreshStopped(t *testing.T) {
	ctx := context.Background()
	stores := memStores(3)
	r := initRepo(t, stores)
	ids, unreferenced := storePack(t, r, []byte("held by a backup that stopped refreshing its lock"))
	release, err := r.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	h := r.writer
	h.stop() // the refresh loop ends; the lock object stays
	<-h.done

	other, err := Open(ctx, stores, []byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := other.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Marked != 1 || len(rep.Deleted) != 0 {
		t.Fatalf("first prune: %+v", rep)
	}
	rep, err = other.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Writers) != 1 || rep.HeldBack != 1 || len(rep.Deleted) != 0 {
		t.Fatalf("prune beside a fresh writer lock: %+v", rep)
	}

	// What the targets hold, and the holder knows, once LockStale has
	// passed without a refresh.
	h.mu.Lock()
	info := h.info
	shift := LockStale + time.Minute
	info.Started, info.Refreshed = info.Started.Add(-shift), info.Refreshed.Add(-shift)
	name, err := r.writeLock(ctx, info)
	if err == nil {
		err = r.deleteLock(ctx, LockWriter, h.name)
	}
	h.info, h.name, h.lastOK = info, name, info.Refreshed
	h.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	rep, err = other.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Writers) != 0 || len(rep.Deleted) != 1 || rep.Deleted[0].ID != unreferenced.String() {
		t.Fatalf("prune beside a stale writer lock: %+v", rep)
	}
	if locks, err := other.Locks(ctx); err != nil || len(locks) != 0 {
		t.Fatalf("stale lock not cleared: %v %v", locks, err)
	}
	if _, err := snapshotOf(t, r, "late", ids...); !errors.Is(err, ErrLockLost) {
		t.Fatalf("commit after the lock went stale: %v", err)
	}
	release()

	// The boundary: a prune's clock up to ClockSkew ahead finds a lock
	// stale LockStale after its last refresh by that clock.
	release, err = r.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h = r.writer
	h.stop()
	<-h.done
	last := time.Now().Add(-(LockStale - ClockSkew) - time.Second)
	h.mu.Lock()
	h.lastOK = last
	h.mu.Unlock()
	seen := LockInfo{PID: os.Getpid(), Processes: processSpace, Refreshed: last}
	if !seen.Stale(time.Now().Add(ClockSkew)) {
		t.Fatal("a prune ClockSkew ahead does not find the lock stale")
	}
	if err := h.check(); !errors.Is(err, ErrLockLost) {
		t.Fatalf("holder of a lock a prune may take for stale: %v", err)
	}
}
