package repo

import (
	"context"
	"errors"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydr/ferry/transport/objstore"
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

// listHook runs after once, after its nth listing under prefix: the moment
// between a listing and the reads of what it listed.
type listHook struct {
	objstore.Store
	prefix string
	nth    int
	n      *atomic.Int32
	after  func()
}

func (s listHook) List(ctx context.Context, prefix string, fn func(objstore.Info) error) error {
	err := s.Store.List(ctx, prefix, fn)
	if prefix == s.prefix && s.n.Add(1) == int32(s.nth) {
		s.after()
	}
	return err
}

// TestLocksDuringRefresh: a writer lock refreshed after the last target
// listed locks/ and before its object was read (the old object gone, the
// new one not listed) is still found, by Locks and by the prune that
// relies on it to hold back the packs it marked.
func TestLocksDuringRefresh(t *testing.T) {
	ctx := context.Background()
	stores := memStores(3)
	r := initRepo(t, stores)
	_, unreferenced := storePack(t, r, []byte("garbage while a backup runs"))
	release, err := r.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	h := r.writer
	h.stop() // refreshed by hand below
	<-h.done
	refresh := func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		info := h.info
		info.Refreshed = time.Now().UTC()
		name, err := r.writeLock(ctx, info)
		if err == nil {
			err = r.deleteLock(ctx, LockWriter, h.name)
		}
		if err != nil {
			t.Error(err)
		}
		h.info, h.name = info, name
	}
	// open returns a Repo that sees the refresh between its nth listing of
	// locks/ and its reads.
	open := func(nth int) *Repo {
		hooked := slices.Clone(stores)
		last := len(hooked) - 1
		hooked[last] = listHook{Store: stores[last], prefix: "locks/", nth: nth, n: new(atomic.Int32), after: refresh}
		other, err := Open(ctx, hooked, []byte("pw"))
		if err != nil {
			t.Fatal(err)
		}
		return other
	}

	locks, err := open(1).Locks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	name := h.name
	h.mu.Unlock()
	if _, ok := locks[name]; !ok || len(locks) != 1 {
		t.Fatalf("locks found during a refresh: %v, want only the refreshed %s", locks, name)
	}

	if rep, err := r.Prune(ctx, PruneOptions{}); err != nil || rep.Marked != 1 {
		t.Fatalf("first prune: %+v %v", rep, err)
	}
	// The prune that would delete the marked pack but for the lock. It
	// lists locks/ twice: for other prunes when it has taken its own lock,
	// then for the writers.
	rep, err := open(2).Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Writers) != 1 || rep.HeldBack != 1 || len(rep.Deleted) != 0 {
		t.Fatalf("prune that read the locks during a refresh: %+v (pack %s)", rep, unreferenced)
	}
}
