package agent

// Continuous verification: every repository the agent has replicated into
// is verified (structure with the shard checksums the targets keep, plus a
// rotating share of the packs' data) every VerifyInterval, and the newest
// snapshot of each of its volumes is drilled into verify.Discard every
// DrillInterval. Both are jittered by ±10% so agents started together
// spread their load.
//
// Budget: a verify run reads at most VerifyBytesPerSecond × VerifyInterval ×
// VerifyMaxShare bytes of shard data (the read-data percent is derived from
// the repository's size, estimated from the index's pack lengths), and its
// reads are paced at VerifyBytesPerSecond, so a run takes at most about
// VerifyMaxShare of the interval. Both hold per repository. A run reads at
// least 1% of the packs, so a repository larger than 100 times that budget
// is verified at the paced rate for longer than the share. Drills are not
// paced: they measure how fast a restore is (the RTO evidence), and read
// the snapshot's packs once per DrillInterval. The checksum pass is one
// HEAD request per shard per run, not paced (it moves no data): on a
// provider that bills requests, it costs as many GET-priced requests per
// run as the repository has shards.
//
// The same loop prunes the repository every PruneInterval (±10%): one
// repo.Prune run, which deletes the packs earlier runs marked and marks
// the newly unreferenced ones (the snapshots the retention rules forgot
// after replications). In a cluster it runs under the repository's Lease,
// so prune never overlaps verification or repair. Cost: the listings, the
// index and the manifests, as a structural verify without the HEADs, plus
// the deletions.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/ferrydr/ferry/agent/replicate"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/verify"
)

// repoRef names a repository the agent replicated into, and the Secret
// that opens it.
type repoRef struct {
	Repository      string `json:"repository"`
	SecretNamespace string `json:"secret_namespace"`
	SecretName      string `json:"secret_name"`
}

// key is a file-name-safe name for the repository's state files.
func (r repoRef) key() string {
	h := sha256.Sum256([]byte(r.Repository + "\x00" + r.SecretNamespace + "\x00" + r.SecretName))
	return hex.EncodeToString(h[:8])
}

// verifier remembers the repositories (DIR/repos.json) and runs one loop
// for each.
type verifier struct {
	cfg     Config
	secrets replicate.Secrets
	m       *metrics
	log     *slog.Logger

	mu    sync.Mutex
	repos []repoRef
	added chan repoRef

	// exclusive, when set (in a cluster), runs fn while this agent holds
	// the repository's Lease, so one agent at a time verifies and repairs
	// it; nil runs fn at once.
	exclusive func(ctx context.Context, lease string, fn func(ctx context.Context))
}

func newVerifier(cfg Config, secrets replicate.Secrets, m *metrics, log *slog.Logger) (*verifier, error) {
	v := &verifier{cfg: cfg, secrets: secrets, m: m, log: log.With("component", "verify"), added: make(chan repoRef)}
	b, err := os.ReadFile(v.reposFile())
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		if err := json.Unmarshal(b, &v.repos); err != nil {
			return nil, fmt.Errorf("%s: %w", v.reposFile(), err)
		}
	}
	return v, nil
}

func (v *verifier) reposFile() string { return filepath.Join(v.cfg.StateDir, "repos.json") }

// remember adds a repository a job replicated into; known ones are a no-op.
// It blocks until the loop takes it, or ctx ends.
func (v *verifier) remember(ctx context.Context, ref repoRef) {
	v.mu.Lock()
	if slices.Contains(v.repos, ref) {
		v.mu.Unlock()
		return
	}
	v.repos = append(v.repos, ref)
	b, err := json.MarshalIndent(v.repos, "", "  ")
	if err == nil {
		err = writeFileSync(v.reposFile(), b)
	}
	v.mu.Unlock()
	if err != nil {
		// Verified until the agent restarts, and remembered by the next job.
		v.log.Error("remember repository", "repository", ref.Repository, "error", err)
	}
	select {
	case v.added <- ref:
	case <-ctx.Done():
	}
}

// run starts a loop for every known repository and for each one added,
// until ctx ends.
func (v *verifier) run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	v.mu.Lock()
	known := slices.Clone(v.repos)
	v.mu.Unlock()
	start := func(ref repoRef) {
		if v.exclusive == nil {
			wg.Go(func() { v.loop(ctx, ref) })
			return
		}
		wg.Go(func() { v.exclusive(ctx, "ferry-verify-"+ref.key(), func(ctx context.Context) { v.loop(ctx, ref) }) })
	}
	for _, ref := range known {
		start(ref)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ref := <-v.added:
			start(ref)
		}
	}
}

// jitter returns d ± 10%.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
}

// repoLoop is one repository's loop and what it learned. Only its own
// goroutine touches it.
type repoLoop struct {
	v   *verifier
	ref repoRef
	log *slog.Logger

	snaps       []*repo.Snapshot // as last listed
	checked     map[string]bool  // snapshots the last verify run found whole (neither lost nor needing repair)
	drillOK     map[string]bool
	drillFailed map[string]bool
	checksummed time.Time // when the last run with the checksum pass ended
}

func (v *verifier) loop(ctx context.Context, ref repoRef) {
	l := &repoLoop{v: v, ref: ref, log: v.log.With("repository", ref.Repository),
		checked: map[string]bool{}, drillOK: map[string]bool{}, drillFailed: map[string]bool{}}
	// The first runs come at a random point of the first interval, so a
	// restarted agent does not verify everything at once. A zero time is
	// a task that never runs.
	now := time.Now()
	first := func(interval time.Duration) time.Time {
		if interval <= 0 {
			return time.Time{}
		}
		return now.Add(time.Duration(rand.Int64N(int64(interval))))
	}
	verifyEvery, drillEvery := v.cfg.VerifyInterval, v.cfg.DrillInterval
	if verifyEvery < 0 {
		drillEvery = -1
	}
	tasks := []struct {
		next  time.Time
		every time.Duration
		run   func(context.Context)
	}{
		{first(verifyEvery), verifyEvery, l.verify},
		{first(drillEvery), drillEvery, l.drill},
		{first(v.cfg.PruneInterval), v.cfg.PruneInterval, l.prune},
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		var next time.Time
		for _, task := range tasks {
			if !task.next.IsZero() && (next.IsZero() || task.next.Before(next)) {
				next = task.next
			}
		}
		if next.IsZero() {
			<-ctx.Done()
			return
		}
		t.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for i := range tasks {
			if task := &tasks[i]; !task.next.IsZero() && !time.Now().Before(task.next) {
				task.run(ctx)
				task.next = time.Now().Add(jitter(task.every))
			}
		}
	}
}

// prune runs one prune of the repository: it deletes what earlier runs
// marked and is still unreferenced, and marks what is newly so.
func (l *repoLoop) prune(ctx context.Context) {
	m := l.v.m
	start := time.Now()
	r, _, err := l.open(ctx, nil)
	var rep *repo.PruneReport
	if err == nil {
		rep, err = r.Prune(ctx, repo.PruneOptions{Grace: l.v.cfg.PruneGrace})
	}
	if err != nil {
		if ctx.Err() == nil {
			m.pruneRuns.WithLabelValues("error").Inc()
			l.log.Error("prune could not run", "error", err, "seconds", time.Since(start).Seconds())
		}
		return
	}
	var bytes int64
	for _, b := range rep.BytesDeleted {
		bytes += b
	}
	m.pruneRuns.WithLabelValues("ok").Inc()
	m.prunedPacks.Add(float64(len(rep.Deleted)))
	m.prunedBytes.Add(float64(bytes))
	l.log.Info("pruned", "snapshots", rep.Snapshots, "packs", rep.Packs, "unreferenced", rep.Unreferenced,
		"marked", rep.Marked, "waiting", rep.Waiting, "held_back", rep.HeldBack, "deleted", len(rep.Deleted), "bytes_deleted", bytes,
		"index_objects_rewritten", rep.IndexDeleted, "deletions_finished", rep.Finished, "backups_running", len(rep.Writers),
		"seconds", time.Since(start).Seconds())
}

// open opens the repository, reading the Secret afresh (it may have been
// rotated), and returns it with the password it opened with. With lim,
// every object read is paced by it.
func (l *repoLoop) open(ctx context.Context, lim *limiter) (*repo.Repo, []byte, error) {
	sec, err := l.v.secrets.Secret(ctx, l.ref.SecretNamespace, l.ref.SecretName)
	if err != nil {
		return nil, nil, err
	}
	locs, err := objstore.ParseRepo(l.ref.Repository)
	if err != nil {
		return nil, nil, err
	}
	stores := objstore.OpenAll(ctx, locs, sec.Env)
	if lim != nil {
		for i, s := range stores {
			stores[i] = pacedStore{s, lim}
		}
	}
	r, err := repo.Open(ctx, stores, sec.Password)
	if err != nil {
		return nil, nil, fmt.Errorf("open repository: %w", err)
	}
	r.IndexCache = indexCache(l.v.cfg)
	return r, sec.Password, nil
}

// readPercent is the share of the packs one run may read: budget bytes per
// run over the stored shard bytes, at least 1 when there is any data.
func readPercent(budget float64, stored int64) int {
	if stored <= 0 {
		return 0
	}
	return int(min(max(budget*100/float64(stored), 1), 100))
}

func (l *repoLoop) verify(ctx context.Context) {
	cfg := l.v.cfg
	m := l.v.m
	start := time.Now()
	fail := func(what string, err error) {
		if ctx.Err() != nil {
			return
		}
		m.verifyRuns.WithLabelValues("error").Inc()
		l.log.Error("verification could not run", "step", what, "error", err, "seconds", time.Since(start).Seconds())
	}
	r, password, err := l.open(ctx, newLimiter(float64(cfg.VerifyBytesPerSecond)))
	if err != nil {
		fail("open", err)
		return
	}
	idx, err := r.LoadIndex(ctx)
	if err != nil {
		fail("load index", err)
		return
	}
	var packed int64
	for _, p := range idx.Packs() {
		packed += p.Length
	}
	s := r.Config.Erasure
	stored := packed * int64(s.K+s.M) / int64(max(s.K, 1))
	budget := float64(cfg.VerifyBytesPerSecond) * cfg.VerifyInterval.Seconds() * cfg.VerifyMaxShare
	pct := readPercent(budget, stored)
	stateDir := filepath.Join(cfg.StateDir, "verify")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		fail("state dir", err)
		return
	}
	// The checksum pass (one HEAD per shard) finds a shard replaced by
	// bytes of its size without reading it; it runs every ChecksumInterval,
	// the cheaper size check in between.
	sizesOnly := time.Since(l.checksummed) < cfg.ChecksumInterval
	rep, err := verify.Run(ctx, r, verify.Options{ReadDataPercent: pct, SizesOnly: sizesOnly, StateFile: filepath.Join(stateDir, l.ref.key()+".json"), Password: password})
	if err != nil {
		fail("verify", err)
		return
	}
	if !sizesOnly {
		l.checksummed = time.Now()
	}
	// What the run found is what the found-metrics show; the state after
	// a repair (fresh, with the packs reading found damaged read again)
	// sets the rest, so that a pack only reading found lost stays lost.
	missing, corrupt, _ := tally(rep)
	read := rep.ReadBytes()
	final := rep
	if rep.Status != verify.OK && !cfg.NoRepair {
		if after := l.repair(ctx, rep, password); after != nil {
			final = after
			read += after.ReadBytes()
		}
	}
	// The listing names the volumes; only the snapshots a run checked
	// (final.SnapshotIDs) count as proven by it.
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		l.log.Warn("list snapshots after verification", "error", err)
	} else {
		l.snaps = snaps
	}

	_, _, atRisk := tally(final)
	m.shardsMissing.WithLabelValues(rep.RepoID).Set(float64(missing))
	m.shardsCorrupt.WithLabelValues(rep.RepoID).Set(float64(corrupt))
	m.packsAtRisk.WithLabelValues(rep.RepoID).Set(float64(atRisk))
	m.verifyBytes.Add(float64(read))
	result := resultLabel(final.Status)
	m.verifyRuns.WithLabelValues(result).Inc()

	l.checked = map[string]bool{}
	for _, id := range final.SnapshotIDs {
		l.checked[id] = true
	}
	for _, refs := range [][]verify.SnapshotRef{final.Lost, final.NeedRebuild} {
		for _, s := range refs {
			delete(l.checked, s.ID)
			delete(l.drillOK, s.ID)
		}
	}
	l.publish()

	attrs := []any{"status", result, "snapshots", rep.Snapshots, "packs", rep.Packs, "read_percent", pct,
		"bytes_read", read, "head_requests", rep.HeadRequests, "shards_by_checksum", rep.Shards.Checksum, "shards_by_size_only", rep.Shards.SizeOnly,
		"shards_missing", missing, "shards_corrupt", corrupt, "packs_at_risk", atRisk,
		"problems", len(rep.Problems), "problems_after_repair", len(final.Problems), "lost_snapshots", len(final.Lost), "seconds", time.Since(start).Seconds()}
	if err := final.Err(); err != nil {
		l.log.Warn("verified: repository damaged", append(attrs, "error", err)...)
		return
	}
	l.log.Info("verified", attrs...)
}

// repair fixes what rep found and returns the check after it
// (verify.Recheck; nil when that could not run), so the metrics show the
// repository as it is after the repair.
func (l *repoLoop) repair(ctx context.Context, rep *verify.Report, password []byte) *verify.Report {
	r, _, err := l.open(ctx, nil) // writes are not paced: they are what the repository lacks
	if err != nil {
		l.log.Error("repair could not run", "step", "open", "error", err)
		return nil
	}
	res, err := verify.Repair(ctx, r, rep)
	if res != nil {
		l.v.m.repairShards.Add(float64(len(res.Shards)))
		l.log.Info("repaired", "shards", len(res.Shards), "objects_copied", len(res.Copied), "packs_indexed", res.Indexed, "failed", len(res.Failed))
	}
	if err != nil {
		l.log.Warn("repair incomplete", "error", err)
	}
	after, err := verify.Recheck(ctx, r, rep, password)
	if err != nil {
		l.log.Error("verify after repair", "error", err)
		return nil
	}
	return after
}

// tally counts the report's damaged shards and the packs with fewer than
// k+m healthy shards (all of them when a target could not be listed).
func tally(rep *verify.Report) (missing, corrupt, atRisk int) {
	risk := map[string]bool{}
	for _, p := range rep.Problems {
		switch p.Kind {
		case verify.KindShardMissing:
			missing++
		case verify.KindShardSize, verify.KindShardCorrupt:
			corrupt++
		case verify.KindPackLost, verify.KindPackNoShards, verify.KindPackCorrupt:
		default:
			continue
		}
		risk[p.Pack] = true
	}
	for _, t := range rep.Targets {
		if !t.Reachable {
			return missing, corrupt, rep.Packs
		}
	}
	return missing, corrupt, len(risk)
}

func resultLabel(s verify.Severity) string {
	switch s {
	case verify.Degraded:
		return "degraded"
	case verify.DataLost:
		return "data_lost"
	}
	return "ok"
}

// volumeKey groups a repository's snapshots by volume.
func volumeKey(s *repo.Snapshot) string {
	if s.Volume.CSIVolumeID != "" {
		return s.Volume.CSIVolumeID
	}
	return s.Name
}

// newestByVolume returns the newest snapshot of each volume.
func newestByVolume(snaps []*repo.Snapshot) map[string]*repo.Snapshot {
	out := map[string]*repo.Snapshot{}
	for _, s := range snaps {
		if cur, ok := out[volumeKey(s)]; !ok || s.Started.After(cur.Started) {
			out[volumeKey(s)] = s
		}
	}
	return out
}

// publish sets each volume's restorable timestamp to the creation time of
// its newest proven snapshot: drilled successfully, or found healthy by the
// last verify run and not failed by a drill. A volume with none gets 0, so
// that an RPO alert fires rather than the series vanishing.
func (l *repoLoop) publish() {
	type best struct {
		at        time.Time
		namespace string
	}
	vols := map[string]best{}
	for _, s := range l.snaps {
		k := volumeKey(s)
		b, seen := vols[k]
		if !seen {
			b.namespace = s.Volume.Namespace
		}
		proven := l.drillOK[s.ID] || (l.checked[s.ID] && !l.drillFailed[s.ID])
		if proven && s.Started.After(b.at) {
			b = best{s.Started, s.Volume.Namespace}
		}
		vols[k] = b
	}
	for k, b := range vols {
		v := 0.0
		if !b.at.IsZero() {
			v = float64(b.at.Unix())
		}
		l.v.m.restorable.WithLabelValues(k, b.namespace).Set(v)
	}
}

func (l *repoLoop) drill(ctx context.Context) {
	m := l.v.m
	r, _, err := l.open(ctx, nil)
	var idx *repo.Index
	var snaps []*repo.Snapshot
	if err == nil {
		snaps, err = r.Snapshots(ctx)
	}
	if err == nil {
		idx, err = r.LoadIndex(ctx)
	}
	if err != nil {
		if ctx.Err() == nil {
			m.drillRuns.WithLabelValues("error").Inc()
			l.log.Error("drill could not run", "error", err)
		}
		return
	}
	l.snaps = snaps
	newest := newestByVolume(snaps)
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range newest {
			if !yield(k) {
				return
			}
		}
	}) {
		s := newest[k]
		log := l.log.With("volume", k, "snapshot", s.ID[:min(12, len(s.ID))], "started", s.Started)
		res, err := verify.Drill(ctx, r, s, verify.Discard, verify.DrillOptions{Index: idx})
		switch {
		case err == nil:
			l.drillOK[s.ID] = true
			delete(l.drillFailed, s.ID)
			m.drillDuration.WithLabelValues(k).Set(res.DurationSeconds)
			m.drillBytesPerSecond.WithLabelValues(k).Set(res.BytesPerSecond)
			m.drillBytesFetched.Add(float64(res.BytesFetched))
			m.drillRuns.WithLabelValues("ok").Inc()
			log.Info("drill restored the snapshot", "seconds", res.DurationSeconds, "bytes_volume", res.BytesVolume,
				"bytes_fetched", res.BytesFetched, "bytes_per_second", res.BytesPerSecond, "shards_reconstructed", res.Reconstructed)
		case errors.Is(err, restore.ErrDataLost), errors.Is(err, restore.ErrMismatch):
			l.drillFailed[s.ID] = true
			delete(l.drillOK, s.ID)
			m.drillRuns.WithLabelValues("data_lost").Inc()
			log.Error("drill: snapshot cannot be restored", "error", err)
		case ctx.Err() != nil:
			return
		default:
			m.drillRuns.WithLabelValues("error").Inc()
			log.Error("drill could not run", "error", err)
		}
	}
	l.publish()
}

// limiter paces reads to a rate in bytes per second: each read is paid for
// after it arrives, by waiting until the bytes read so far fit the rate.
type limiter struct {
	rate float64
	mu   sync.Mutex
	next time.Time
}

func newLimiter(rate float64) *limiter { return &limiter{rate: rate} }

func (l *limiter) pay(ctx context.Context, n int) error {
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	until := l.next
	l.mu.Unlock()
	t := time.NewTimer(time.Until(until))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// pacedStore is a Store whose reads are paced by a limiter.
type pacedStore struct {
	objstore.Store
	lim *limiter
}

func (s pacedStore) Get(ctx context.Context, name string) ([]byte, error) {
	b, err := s.Store.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	return b, s.lim.pay(ctx, len(b))
}

func (s pacedStore) GetRange(ctx context.Context, name string, off, length int64) ([]byte, error) {
	b, err := s.Store.GetRange(ctx, name, off, length)
	if err != nil {
		return nil, err
	}
	return b, s.lim.pay(ctx, len(b))
}

// writeFileSync replaces path with b durably: tmp, fsync, rename, fsync(dir).
func writeFileSync(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
