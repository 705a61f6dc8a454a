package repo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/transport/objstore"
)

// Locks (locks/<id>, on every target; sealed JSON, associated data "ferry
// lock v1") announce a process writing to the repository: a backup
// ("writer") or a prune ("prune"). They are advisory, for prune: a prune
// does not delete the packs it marked while a writer that may not have seen
// the marks is running (see prune.go), and only one prune runs at a time.
//
// A lock is refreshed every LockRefresh by writing a new lock object with
// the same start time and deleting the previous one (objects are never
// overwritten). A lock not refreshed for LockStale is stale: its holder is
// presumed dead and prune ignores it. A holder that could not refresh for
// lockKeepWithin has lost its lock (it may have been ignored) and refuses
// to commit.
var lockAD = []byte("ferry lock v1")

// Lock timing. The clocks of the machines writing to a repository must
// agree within ClockSkew.
const (
	LockRefresh = 5 * time.Minute
	LockStale   = 30 * time.Minute
	ClockSkew   = 5 * time.Minute

	// lockKeepWithin is how long a holder may go without a successful
	// refresh and still trust that no prune took its lock for stale: the
	// stale limit, less the skew of the prune's clock and a margin for the
	// commit it is about to make.
	lockKeepWithin = LockStale - 2*ClockSkew
)

// Lock kinds.
const (
	LockWriter = "writer"
	LockPrune  = "prune"
)

var (
	// ErrLockLost means this process could not refresh its lock in time: a
	// prune may have taken it for stale, so the backup must not commit.
	ErrLockLost = errors.New("repository lock lost")
	// ErrLocked means another prune holds the repository's prune lock.
	ErrLocked = errors.New("another prune is running")
)

// LockInfo is the content of a lock object.
type LockInfo struct {
	Kind      string    `json:"kind"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Processes string    `json:"processes,omitempty"` // see processSpace
	Started   time.Time `json:"started"`
	Refreshed time.Time `json:"refreshed"`
}

// Stale reports whether the lock's holder is presumed dead at now: it has
// not refreshed the lock for LockStale, or it ran in this process space
// and its process is gone (a backup or prune killed here need not be
// waited for).
func (l LockInfo) Stale(now time.Time) bool {
	if now.Sub(l.Refreshed) > LockStale {
		return true
	}
	return l.Processes != "" && l.Processes == processSpace && l.PID != os.Getpid() &&
		errors.Is(syscall.Kill(l.PID, 0), syscall.ESRCH)
}

// processSpace names the PID namespace of this boot of this machine, in
// which a lock's PID can be looked up; "" where it cannot be told. A host
// name is not enough: containers share it with their node, not their PIDs.
var processSpace = func() string {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(boot)) + " " + ns
}()

func (l LockInfo) String() string {
	return fmt.Sprintf("%s lock of %s (pid %d), started %s, refreshed %s", l.Kind, l.Host, l.PID,
		l.Started.Format(time.RFC3339), l.Refreshed.Format(time.RFC3339))
}

// heldLock is a lock this process holds and refreshes.
type heldLock struct {
	r    *Repo
	stop context.CancelFunc // ends the refreshing, a write in flight included
	done chan struct{}

	mu     sync.Mutex
	info   LockInfo
	name   string
	lastOK time.Time // when the lock object was last written everywhere
	lost   error
	refs   int // writer locks are shared by the backups of one Repo
}

// Lock announces a writer (a backup) to prune and keeps the announcement
// fresh until release is called; call it before loading the index and
// release it after the snapshot is committed. While the lock is fresh,
// prune deletes none of the packs it marked after the lock was taken
// (minus ClockSkew), and SaveSnapshot refuses to commit once the lock has
// been lost. The backups of one Repo share one lock object.
func (r *Repo) Lock(ctx context.Context) (release func(), err error) {
	r.lockMu.Lock()
	defer r.lockMu.Unlock()
	if h := r.writer; h != nil {
		h.mu.Lock()
		h.refs++
		h.mu.Unlock()
		return sync.OnceFunc(r.releaseWriter), nil
	}
	h, err := r.takeLock(ctx, LockWriter)
	if err != nil {
		return nil, err
	}
	h.refs = 1
	r.writer = h
	return sync.OnceFunc(r.releaseWriter), nil
}

func (r *Repo) releaseWriter() {
	r.lockMu.Lock()
	h := r.writer
	if h == nil {
		r.lockMu.Unlock()
		return
	}
	h.mu.Lock()
	h.refs--
	last := h.refs == 0
	h.mu.Unlock()
	if last {
		r.writer = nil
	}
	r.lockMu.Unlock()
	if last {
		h.release()
	}
}

// heldWriter returns the writer lock this Repo holds, or nil.
func (r *Repo) heldWriter() *heldLock {
	r.lockMu.Lock()
	defer r.lockMu.Unlock()
	return r.writer
}

// takeLock writes a lock object of kind and starts refreshing it.
func (r *Repo) takeLock(ctx context.Context, kind string) (*heldLock, error) {
	require := r.RequireAll
	if kind == LockWriter {
		require = r.RequireWritable // a backup may go without down targets
	}
	if err := require(); err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	now := time.Now().UTC()
	h := &heldLock{r: r, done: make(chan struct{}),
		info: LockInfo{Kind: kind, Host: host, PID: os.Getpid(), Processes: processSpace, Started: now, Refreshed: now}}
	name, err := r.writeLock(ctx, h.info)
	if err != nil {
		return nil, fmt.Errorf("write %s lock: %w", kind, err)
	}
	h.name, h.lastOK = name, now
	// The lock outlives the caller's context until released.
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	h.stop = stop
	go h.refresh(rctx)
	return h, nil
}

// writeLock writes a lock object to every target; a writer's, like the
// other objects of a backup, to every target not down (see DegradedWrites),
// whatever ctx.
func (r *Repo) writeLock(ctx context.Context, info LockInfo) (string, error) {
	b, err := json.Marshal(info)
	if err != nil {
		return "", err
	}
	obj := r.key.Seal(nil, b, lockAD)
	sum := sha256.Sum256(obj)
	name := "locks/" + hex.EncodeToString(sum[:])
	return name, r.put(ctx, name, func(*Target) ([]byte, error) { return obj, nil }, info.Kind == LockWriter, nil)
}

// deleteLock deletes a lock object of kind from every target; a writer's
// is left on the targets that are down, where waiting for each would hold
// up the backup: prune, which needs every target, ignores it once stale.
func (r *Repo) deleteLock(ctx context.Context, kind, name string) error {
	if kind != LockWriter {
		return r.deleteEverywhere(ctx, name)
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, t := range r.Targets {
		if t.Down() != nil {
			continue
		}
		g.Go(func() error {
			if err := t.Store.Delete(gctx, name); err != nil && !errors.Is(err, objstore.ErrNotFound) {
				return fmt.Errorf("delete %s from target %d (%s): %w", name, t.Index+1, t.Store.Location(), err)
			}
			return nil
		})
	}
	return g.Wait()
}

// refresh rewrites the lock every LockRefresh until ctx ends.
func (h *heldLock) refresh(ctx context.Context) {
	defer close(h.done)
	t := time.NewTicker(LockRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.mu.Lock()
		info := h.info
		h.mu.Unlock()
		now := time.Now().UTC()
		info.Refreshed = now
		wctx, cancel := context.WithTimeout(ctx, LockRefresh)
		name, err := h.r.writeLock(wctx, info)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				// Released while writing: the new object may be on some
				// targets already.
				dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				h.r.deleteLock(dctx, info.Kind, name)
				cancel()
				return
			}
			slog.Warn("could not refresh the repository lock; retrying", "kind", info.Kind, "error", err)
			continue
		}
		h.mu.Lock()
		old := h.name
		if h.lost == nil && now.Sub(h.lastOK) > lockKeepWithin {
			h.lost = fmt.Errorf("%w: not refreshed for %s", ErrLockLost, now.Sub(h.lastOK).Round(time.Second))
		}
		h.info, h.name, h.lastOK = info, name, now
		h.mu.Unlock()
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		if err := h.r.deleteLock(dctx, info.Kind, old); err != nil && ctx.Err() == nil {
			slog.Warn("could not delete the previous repository lock; prune ignores it once stale", "lock", old, "error", err)
		}
		cancel()
	}
}

// check returns ErrLockLost unless the lock has been fresh all along.
func (h *heldLock) check() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lost == nil {
		if gap := time.Since(h.lastOK); gap > lockKeepWithin {
			h.lost = fmt.Errorf("%w: not refreshed for %s", ErrLockLost, gap.Round(time.Second))
		}
	}
	return h.lost
}

func (h *heldLock) started() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.info.Started
}

// release stops refreshing and deletes the lock object.
func (h *heldLock) release() {
	h.stop()
	<-h.done
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h.mu.Lock()
	name, kind := h.name, h.info.Kind
	h.mu.Unlock()
	if err := h.r.deleteLock(ctx, kind, name); err != nil {
		slog.Warn("could not delete the repository lock; prune ignores it once stale", "lock", name, "error", err)
	}
}

// Locks returns the repository's lock objects by name. A lock object that
// does not open is an error (prune must not ignore a writer it cannot
// read).
//
// A refresh writes a lock's new object before it deletes the old one, but
// both may fall between the listing and the read: the old object is gone
// and the new one was not listed. So when a listed lock has vanished,
// Locks lists again and reads the names it has not seen, until a round
// finds none vanished: a refreshed lock's new object is then in the
// listing, and a released lock is rightly left out.
func (r *Repo) Locks(ctx context.Context) (map[string]LockInfo, error) {
	out := map[string]LockInfo{}
	seen := map[string]bool{}
	for round := 1; ; round++ {
		vanished, err := r.loadNew(ctx, "locks/", seen, func(name string, b []byte) error {
			plain, err := r.openNamed(name, b, lockAD)
			if err != nil {
				return err
			}
			var l LockInfo
			if err := json.Unmarshal(plain, &l); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			out[name] = l
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read locks: %w", err)
		}
		if !vanished {
			return out, nil
		}
		if round == locksRounds {
			return nil, fmt.Errorf("read locks: lock objects vanished between listing and reading in %d listings in a row; try again", round)
		}
	}
}

// locksRounds bounds the listings of one Locks call. Each further round
// needs a lock written and deleted within the moment between a listing
// and its reads.
const locksRounds = 10

// lockPrune takes the prune lock: it writes its own lock object, then
// backs off (deleting it) if another live prune lock exists. Of two prunes
// starting together at least one sees the other, so at most one proceeds.
func (r *Repo) lockPrune(ctx context.Context) (*heldLock, error) {
	h, err := r.takeLock(ctx, LockPrune)
	if err != nil {
		return nil, err
	}
	locks, err := r.Locks(ctx)
	if err != nil {
		h.release()
		return nil, err
	}
	now := time.Now()
	for name, l := range locks {
		if l.Kind == LockPrune && name != h.name && !l.Stale(now) {
			h.release()
			return nil, fmt.Errorf("%w: %s", ErrLocked, l)
		}
	}
	return h, nil
}

// deleteEverywhere deletes one object from every target.
func (r *Repo) deleteEverywhere(ctx context.Context, name string) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, t := range r.Targets {
		g.Go(func() error {
			if err := t.Store.Delete(gctx, name); err != nil && !errors.Is(err, objstore.ErrNotFound) {
				return fmt.Errorf("delete %s from target %d (%s): %w", name, t.Index+1, t.Store.Location(), err)
			}
			return nil
		})
	}
	return g.Wait()
}
