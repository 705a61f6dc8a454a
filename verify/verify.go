package verify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
)

// Options select what Run checks beyond the structure.
type Options struct {
	// ReadDataPercent, 1..100, downloads and fully checks that share of the
	// packs, continuing from the cursor in StateFile; 0 reads no data.
	ReadDataPercent int
	// StateFile keeps the read-data cursor between runs (see DefaultStateFile).
	StateFile string
	// Packs, when set, are read and fully checked instead of a rotating
	// share, and the cursor is left alone: how a check after a repair reads
	// again the packs whose damage only reading found.
	Packs []pack.ID
	// Workers is how many packs are read at once; default 4.
	Workers int
	// SizesOnly skips the checksum pass: shards are checked by their listed
	// sizes alone, without one Stat (an S3 HEAD request) per shard. It is
	// the cheapest check but misses a shard replaced by other bytes of the
	// same length, which only ReadDataPercent would then find.
	SizesOnly bool
	// StatWorkers is how many Stat requests are in flight per target during
	// the checksum pass; default 16.
	StatWorkers int
	// Progress, when set, counts the shard bytes the read-data level reads.
	Progress *Progress
	// Password, when set, is the password the repository was opened with:
	// every key object must then open with it to the repository's master
	// key (scrypt, about 100 ms per key object), or is reported. Without
	// it, key objects are checked against their names only.
	Password []byte
}

// Progress counts a running verification's downloads.
type Progress struct {
	Total atomic.Int64 // bytes planned
	Done  atomic.Int64 // bytes read so far
}

// Run checks the repository at the structural level and, with
// ReadDataPercent, reads a rotating share of the packs. Problems found go
// into the report; an error means the check itself could not be done (no
// target could be listed, the context ended, the state file failed).
func Run(ctx context.Context, r *repo.Repo, opts Options) (*Report, error) {
	if opts.ReadDataPercent < 0 || opts.ReadDataPercent > 100 {
		return nil, fmt.Errorf("read-data percent %d: want 1..100", opts.ReadDataPercent)
	}
	if opts.ReadDataPercent > 0 && opts.StateFile == "" {
		return nil, errors.New("read data: no state file for the rotation cursor")
	}
	if opts.ReadDataPercent > 0 && len(opts.Packs) > 0 {
		return nil, errors.New("read data: a percent and a list of packs are exclusive")
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.StatWorkers <= 0 {
		opts.StatWorkers = 16
	}
	c := newChecker(r)
	err := c.structural(ctx, opts)
	switch {
	case err != nil:
	case opts.ReadDataPercent > 0:
		err = c.readData(ctx, opts)
	case len(opts.Packs) > 0:
		// Only packs that should have shards: one pruned since is gone, not lost.
		known := slices.DeleteFunc(slices.Clone(opts.Packs), func(id pack.ID) bool { _, ok := c.packLen[id]; return !ok })
		err = c.readPacks(ctx, opts, known)
	}
	if err != nil {
		return nil, err
	}
	if err := c.settle(ctx); err != nil {
		return nil, err
	}
	if err := c.strays(ctx); err != nil {
		return nil, err
	}
	if err := c.attribute(ctx); err != nil {
		return nil, err
	}
	for _, s := range c.snaps {
		c.rep.SnapshotIDs = append(c.rep.SnapshotIDs, s.ID)
	}
	slices.Sort(c.rep.SnapshotIDs)
	c.rep.HeadRequests = c.heads.Load()
	c.rep.Duration = time.Since(c.rep.Started).Seconds()
	return c.rep, nil
}

// checker holds what one verification learned. Maps are keyed by pack and
// hold small values: memory is about 200 + 12(k+m) bytes per pack, plus the
// index (88 to 121 bytes per chunk or segment) and the extents of every
// manifest that holds its own (56 bytes per chunk of each, kept to name the
// snapshots a loss affects); a segmented snapshot's extents are read from
// their packs when needed, a segment at a time (see extents), and its
// manifest holds 40 bytes per segment.
type checker struct {
	r       *repo.Repo
	rep     *Report
	k, n, T int

	mu        sync.Mutex // guards rep, lost, reported, badChunks and statBad during parallel work
	heads     atomic.Int64
	reachable []bool
	listings  []*listing
	idx       *repo.Index
	entries   map[pack.ID][]pack.Entry // from the index objects
	crcs      map[pack.ID][]uint32     // shard CRCs the index recorded (none for version 1 index objects)
	packLen   map[pack.ID]int64        // packs that should have shards: indexed, or recovered for missing blobs
	recovered map[chunk.ID]found       // chunks and segments the index lacks, found in pack headers
	snaps     []*repo.Snapshot
	unindexed int                  // chunks and segments the snapshots need that the index lacks
	lost      map[pack.ID]string   // packs with fewer than k intact shards (or bad content), and why
	badChunks map[chunk.ID]string  // blobs (chunks, segments) that failed the deep check
	reported  map[shardKey]bool    // shard problems already reported
	shards    map[pack.ID][]int64  // listed size of shard i on its target, -1 if absent
	stray     map[pack.ID]struct{} // packs with shards but in no index
	statBad   map[shardKey]statBad // shards the checksum pass found bad
	gone      *repo.Deleting       // what deletion records named after the listings
}

// found is where a pack header says a blob the index lacks is.
type found struct {
	pack  pack.ID
	entry pack.Entry
}

// statBad is what the checksum pass found wrong with one shard.
type statBad struct {
	kind, detail string
}

type shardKey struct {
	pack  pack.ID
	shard int
}

// listing is what one target holds.
type listing struct {
	err       error
	config    bool
	keys      map[string]int64
	index     map[string]int64
	snapshots map[string]int64
	shards    int
	bytes     int64
}

func newChecker(r *repo.Repo) *checker {
	s := r.Config.Erasure
	return &checker{
		r: r, k: s.K, n: s.Shards(), T: len(r.Targets),
		rep:     &Report{RepoID: r.Config.ID, Scheme: s.String(), Started: time.Now().UTC(), Problems: []Problem{}},
		entries: map[pack.ID][]pack.Entry{}, packLen: map[pack.ID]int64{}, recovered: map[chunk.ID]found{},
		crcs: map[pack.ID][]uint32{}, lost: map[pack.ID]string{}, badChunks: map[chunk.ID]string{}, reported: map[shardKey]bool{},
		shards: map[pack.ID][]int64{}, stray: map[pack.ID]struct{}{}, statBad: map[shardKey]statBad{},
	}
}

func (c *checker) add(p Problem) {
	c.mu.Lock()
	c.rep.add(p)
	c.mu.Unlock()
}

func (c *checker) structural(ctx context.Context, opts Options) error {
	if err := c.list(ctx); err != nil {
		return err
	}
	if err := c.dropDeleting(ctx); err != nil {
		return err
	}
	if err := c.checkReplicas(ctx, opts.StatWorkers); err != nil {
		return err
	}
	if err := c.checkKeysAndConfig(ctx, opts.Password); err != nil {
		return err
	}
	if err := c.loadIndex(ctx, opts.Workers); err != nil {
		return err
	}
	if err := c.loadSnapshots(ctx, opts.Workers); err != nil {
		return err
	}
	if err := c.recoverUnindexed(ctx); err != nil {
		return err
	}
	if !opts.SizesOnly {
		if err := c.statShards(ctx, opts.StatWorkers); err != nil {
			return err
		}
	}
	c.checkShards(opts.SizesOnly)
	return nil
}

// list lists what every target holds, in phases: config and keys/, then
// snapshots/, then index/, then data/, each phase on all targets at once
// and finished everywhere before the next starts. That is the reverse of a
// backup's commit order (shards, index objects, manifest, each written to
// every target before the next; a snapshot's segments are in packs, as its
// chunks are), so a backup running meanwhile cannot make the listings
// contradict each other: whatever a listed manifest needs was on every
// target before it and is listed after it. What the backup writes
// meanwhile is at worst unreferenced, or a replicated object some target
// does not list yet (checkReplicas looks again).
func (c *checker) list(ctx context.Context) error {
	c.listings = make([]*listing, c.T)
	for i := range c.listings {
		c.listings[i] = &listing{keys: map[string]int64{}, index: map[string]int64{}, snapshots: map[string]int64{}}
	}
	var mu sync.Mutex // guards c.shards
	phases := [][]string{{"config", "keys/"}, {"snapshots/"}, {"index/"}, {"data/"}}
	for _, phase := range phases {
		g, gctx := errgroup.WithContext(ctx)
		for _, t := range c.r.Targets {
			l := c.listings[t.Index]
			if l.err != nil {
				continue
			}
			g.Go(func() error {
				for _, prefix := range phase {
					err := c.r.ListOn(gctx, t, prefix, func(i objstore.Info) error {
						c.record(t, l, prefix, i, &mu)
						return nil
					})
					if err != nil {
						if gctx.Err() != nil {
							return gctx.Err()
						}
						l.err = err
						return nil
					}
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
	}
	c.reachable = make([]bool, c.T)
	c.rep.Targets = make([]TargetStatus, c.T)
	for _, t := range c.r.Targets {
		l := c.listings[t.Index]
		ts := TargetStatus{Target: t.Index + 1, Location: t.Store.Location(), Reachable: l.err == nil}
		if l.err != nil {
			ts.Error = l.err.Error()
			c.add(Problem{Severity: Degraded, Kind: KindTargetUnavailable, Target: t.Index + 1,
				Detail: fmt.Sprintf("%s: %s; every object on it counts as missing", t.Store.Location(), describeTargetErr(l.err))})
		} else {
			ts.Shards, ts.Bytes = l.shards, l.bytes
		}
		c.rep.Targets[t.Index] = ts
		c.reachable[t.Index] = l.err == nil
	}
	if !slices.Contains(c.reachable, true) {
		return fmt.Errorf("list targets: %w", repo.ErrUnavailable)
	}
	return nil
}

func describeTargetErr(err error) string {
	switch {
	case errors.Is(err, objstore.ErrNoBucket):
		return "bucket missing (" + err.Error() + ")"
	case errors.Is(err, objstore.ErrPermission):
		return "access denied (" + err.Error() + ")"
	}
	return err.Error()
}

// record notes one object listed under prefix on target t.
func (c *checker) record(t *repo.Target, l *listing, prefix string, i objstore.Info, mu *sync.Mutex) {
	name := strings.TrimPrefix(i.Name, prefix)
	switch prefix {
	case "config":
		l.config = l.config || i.Name == "config"
	case "keys/":
		l.keys[name] = i.Size
	case "snapshots/":
		l.snapshots[name] = i.Size
	case "index/":
		l.index[name] = i.Size
	case "data/":
		c.listShard(t, l, i, mu)
	}
}

// listShard records one object listed under data/ on target t.
func (c *checker) listShard(t *repo.Target, l *listing, i objstore.Info, mu *sync.Mutex) {
	id, shard, ok := repo.ParseShardName(i.Name)
	if !ok || shard >= c.n || erasure.TargetFor(shard, c.T) != t.Index {
		c.add(Problem{Severity: Notice, Kind: KindStrayObject, Target: t.Index + 1, Object: i.Name,
			Detail: "not a shard of this repository's layout on this target"})
		return
	}
	l.shards++
	l.bytes += i.Size
	mu.Lock()
	defer mu.Unlock()
	sizes := c.shards[id]
	if sizes == nil {
		sizes = make([]int64, c.n)
		for j := range sizes {
			sizes[j] = -1
		}
		c.shards[id] = sizes
	}
	sizes[shard] = i.Size
}

// dropDeleting reads the deletion records and leaves out what they name:
// manifests and index objects that forget or prune is deleting (perhaps
// still on some targets), and the packs prune is deleting. It reads them
// after the listings, so a deletion that the listings saw half done is
// known: its record was written before it started.
func (c *checker) dropDeleting(ctx context.Context) error {
	gone, err := c.r.Deleting(ctx)
	if err != nil {
		return err
	}
	c.gone = gone
	for name := range gone.Objects {
		dir, id, _ := strings.Cut(name, "/")
		for _, l := range c.listings {
			switch dir {
			case "snapshots":
				delete(l.snapshots, id)
			case "index":
				delete(l.index, id)
			}
		}
	}
	for id := range gone.Packs {
		delete(c.shards, id)
	}
	return nil
}

// settle drops the problems that a forget or prune running meanwhile
// explains: those about objects and packs that a deletion record names
// now, and about manifests and index objects that no target has any more
// (deleted since they were listed). Only then is a problem damage.
func (c *checker) settle(ctx context.Context) error {
	if c.rep.Status < Degraded {
		return nil
	}
	gone, err := c.r.Deleting(ctx)
	if err != nil {
		return err
	}
	vanished := map[string]bool{}
	for _, p := range c.rep.Problems {
		dir, _, _ := strings.Cut(p.Object, "/")
		if (dir != "snapshots" && dir != "index") || gone.Objects[p.Object] {
			continue
		}
		if _, seen := vanished[p.Object]; seen {
			continue
		}
		vanished[p.Object] = c.vanished(ctx, p.Object)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	explained := func(object, packID string) bool {
		if gone.Objects[object] || vanished[object] {
			return true
		}
		id, err := pack.ParseID(packID)
		return err == nil && gone.Packs[id]
	}
	problems := c.rep.Problems
	c.rep.Problems, c.rep.Status = []Problem{}, OK
	for _, p := range problems {
		if !explained(p.Object, p.Pack) {
			c.rep.add(p)
		}
	}
	c.rep.Lost = slices.DeleteFunc(c.rep.Lost, func(s SnapshotRef) bool { return explained("snapshots/"+s.ID, "") })
	for id := range c.lost {
		if gone.Packs[id] {
			delete(c.lost, id)
		}
	}
	return nil
}

// vanished reports whether no target holds name any more (a Stat on each).
func (c *checker) vanished(ctx context.Context, name string) bool {
	for t := range c.T {
		if _, err := c.stat(ctx, t, name); !errors.Is(err, objstore.ErrNotFound) {
			return false
		}
	}
	return true
}

// miss is a replicated object that a target's listing lacks.
type miss struct {
	target int
	name   string
}

// checkReplicas reports replicated objects that some reachable target
// lacks.
func (c *checker) checkReplicas(ctx context.Context, workers int) error {
	var missing []miss
	for t, l := range c.listings {
		if l.err != nil {
			continue
		}
		if !l.config {
			missing = append(missing, miss{t, "config"})
		}
		for _, kind := range []struct {
			dir string
			get func(*listing) map[string]int64
		}{
			{"keys/", func(l *listing) map[string]int64 { return l.keys }},
			{"index/", func(l *listing) map[string]int64 { return l.index }},
			{"snapshots/", func(l *listing) map[string]int64 { return l.snapshots }},
		} {
			for _, n := range c.names(kind.get) {
				if _, ok := kind.get(l)[n]; !ok {
					missing = append(missing, miss{t, kind.dir + n})
				}
			}
		}
	}
	return c.reportMissing(ctx, workers, missing)
}

// reportMissing reports the objects missing from the listings. Each is
// looked for once more (one Stat): a backup or repair may have been
// writing it to that target while the targets were listed, and such an
// object is not missing.
func (c *checker) reportMissing(ctx context.Context, workers int, missing []miss) error {
	found := make([]bool, len(missing))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for i, m := range missing {
		g.Go(func() error {
			_, err := c.stat(gctx, m.target, m.name)
			found[i] = err == nil
			return gctx.Err()
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, m := range missing {
		switch {
		case found[i]:
		case m.name == "config":
			c.add(Problem{Severity: Degraded, Kind: KindObjectMissing, Target: m.target + 1, Object: "config", Detail: "missing"})
		default:
			c.add(Problem{Severity: Degraded, Kind: KindObjectMissing, Target: m.target + 1, Object: m.name, Detail: "missing (other targets have it)"})
		}
	}
	return nil
}

// dropMissing withdraws the object-missing problems about object, which
// turned out to have no valid copy or not to be this repository's: the
// targets without it miss nothing, and repair must not spread it.
func (c *checker) dropMissing(object string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	problems := c.rep.Problems
	c.rep.Problems, c.rep.Status = []Problem{}, OK
	for _, p := range problems {
		if p.Kind != KindObjectMissing || p.Object != object {
			c.rep.add(p)
		}
	}
}

// stat is Store.Stat on target t, counted.
func (c *checker) stat(ctx context.Context, t int, name string) (objstore.Info, error) {
	c.heads.Add(1)
	return c.r.Targets[t].Store.Stat(ctx, name)
}

// fetchReplicated reads every reachable target's copy of a replicated
// object (from those that list it): the first copy that opens is the good
// one, and every other copy must be byte-identical to it (the names are
// the SHA-256 of the content, so that is what they promise). Once a good
// copy is known, the copies that differ or do not open are reported as
// object-corrupt, for repair to replace. When no copy opens, it reports
// nothing and returns, one per copy, what was wrong with it, for the
// caller to report the object as a whole.
//
// Every copy is downloaded, all of them at once: a verify reads each index
// object and manifest once from every target that lists it (T times the
// metadata, which is small next to the data: about 45 bytes per chunk in
// index objects and 40 per chunk of each snapshot that keeps its extents
// in its manifest), and holds T copies of each object it checks at the
// same time (an index object is at most about 3 MB).
func (c *checker) fetchReplicated(ctx context.Context, dir, id string, sizes func(*listing) map[string]int64, open func([]byte) error) (bool, []string, error) {
	type badCopy struct {
		target int
		why    string
	}
	// The copies are read at once (a round trip each to a target in
	// another region) and judged in target order.
	type read struct {
		listed bool
		b      []byte
		err    error
	}
	copies := make([]read, len(c.listings))
	var wg sync.WaitGroup
	for t, l := range c.listings {
		if l.err != nil {
			continue
		}
		if _, ok := sizes(l)[id]; !ok {
			continue
		}
		copies[t].listed = true
		wg.Go(func() { copies[t].b, copies[t].err = c.r.Targets[t].Store.Get(ctx, dir+id) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return false, nil, ctx.Err()
	}
	var bad []badCopy
	var good []byte
	goodAt := -1
	for t, cp := range copies {
		if !cp.listed {
			continue
		}
		b, err := cp.b, cp.err
		switch {
		case err != nil:
			bad = append(bad, badCopy{t, err.Error()})
		case good != nil:
			if !bytes.Equal(b, good) {
				bad = append(bad, badCopy{t, fmt.Sprintf("%d bytes that differ from the good copy on target %d (%d bytes)", len(b), goodAt+1, len(good))})
			}
		default:
			if err := open(b); err != nil {
				bad = append(bad, badCopy{t, err.Error()})
			} else {
				good, goodAt = b, t
			}
		}
	}
	if good == nil {
		why := make([]string, len(bad))
		for i, b := range bad {
			why[i] = fmt.Sprintf("target %d: %s", b.target+1, b.why)
		}
		return false, why, nil
	}
	for _, b := range bad {
		c.add(Problem{Severity: Degraded, Kind: KindObjectCorrupt, Target: b.target + 1, Object: dir + id, Detail: b.why})
	}
	return true, nil, nil
}

// checkKeysAndConfig reads every reachable target's key objects and
// config (small: a few hundred bytes each) and checks them: a key object's
// content must match its name and, given the password, open with it to
// the repository's master key; a config must open with that key and
// describe this repository at that target's position. A copy that differs
// from a good one is object-corrupt (repair replaces it); a key object
// with no good copy, or one that holds another master key, is
// object-foreign; a config that does not check is object-corrupt, but
// repair leaves it alone (it might be another repository's target).
func (c *checker) checkKeysAndConfig(ctx context.Context, password []byte) error {
	keys := c.names(func(l *listing) map[string]int64 { return l.keys })
	opened := 0
	for _, id := range keys {
		var good []byte
		ok, why, err := c.fetchReplicated(ctx, "keys/", id, func(l *listing) map[string]int64 { return l.keys }, func(b []byte) error {
			if err := c.r.CheckKeyObject(id, b, nil); err != nil {
				return err
			}
			good = b
			return nil
		})
		if err != nil {
			return err
		}
		if !ok {
			c.dropMissing("keys/" + id)
			c.add(Problem{Severity: Degraded, Kind: KindObjectForeign, Object: "keys/" + id,
				Detail: fmt.Sprintf("no target has a valid copy (%s): not a key object Ferry wrote, or one damaged everywhere; it opens nothing; delete it by hand", strings.Join(why, "; "))})
			continue
		}
		if password == nil {
			continue
		}
		// One copy is enough: the others are byte-identical or reported.
		switch err := c.r.CheckKeyObject(id, good, password); {
		case err == nil:
			opened++
		case errors.Is(err, crypt.ErrWrongPassword):
			c.add(Problem{Severity: Notice, Kind: KindObjectForeign, Object: "keys/" + id,
				Detail: "does not open with this password: another password's key object, or not Ferry's"})
		default:
			c.dropMissing("keys/" + id)
			c.add(Problem{Severity: Degraded, Kind: KindObjectForeign, Object: "keys/" + id,
				Detail: err.Error() + ": a reader that meets it first fails to open the repository; delete it by hand"})
		}
	}
	if password != nil && opened == 0 && len(keys) > 0 {
		c.add(Problem{Severity: Degraded, Kind: KindObjectForeign, Object: "keys/",
			Detail: "no key object on the reachable targets opens with this password to the repository's master key"})
	}
	configs := make([][]byte, len(c.listings))
	errs := make([]error, len(c.listings))
	var wg sync.WaitGroup
	for t, l := range c.listings {
		if l.err == nil && l.config {
			wg.Go(func() { configs[t], errs[t] = c.r.Targets[t].Store.Get(ctx, "config") })
		}
	}
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	for t, l := range c.listings {
		if l.err != nil || !l.config {
			continue
		}
		b, err := configs[t], errs[t]
		if err == nil {
			err = c.r.CheckConfig(t, b)
		}
		if err != nil {
			c.add(Problem{Severity: Degraded, Kind: KindObjectCorrupt, Target: t + 1, Object: "config",
				Detail: err.Error() + "; repair does not overwrite a config: if this target is this repository's, delete its config object and run repair"})
		}
	}
	return nil
}

func (c *checker) names(get func(*listing) map[string]int64) []string {
	seen := map[string]bool{}
	for _, l := range c.listings {
		if l.err == nil {
			for n := range get(l) {
				seen[n] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (c *checker) loadIndex(ctx context.Context, workers int) error {
	c.idx = repo.NewIndex()
	names := c.names(func(l *listing) map[string]int64 { return l.index })
	c.rep.IndexObjs = len(names)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for _, id := range names {
		g.Go(func() error {
			var batch *repo.IndexBatch
			ok, why, err := c.fetchReplicated(gctx, "index/", id, func(l *listing) map[string]int64 { return l.index }, func(b []byte) error {
				var err error
				batch, err = c.r.OpenIndexObject(id, b)
				return err
			})
			if err != nil {
				return err
			}
			if !ok {
				c.dropMissing("index/" + id)
				c.add(Problem{Severity: Degraded, Kind: KindIndexUnreadable, Object: "index/" + id,
					Detail: fmt.Sprintf("no target has a valid copy (%s); restores and backups skip it. "+
						"If Ferry wrote it, the chunks it held that snapshots need are reported as chunk-unindexed (repair rebuilds the index from pack headers) or lost; "+
						"either way, once repair is done, delete it by hand from the targets named", strings.Join(why, "; "))})
				return nil
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			for i, p := range batch.Packs {
				if c.gone.Packs[p.ID] {
					continue
				}
				c.idx.AddPack(p, batch.Entries[i])
				if _, dup := c.packLen[p.ID]; !dup {
					c.packLen[p.ID] = p.Length
					c.entries[p.ID] = batch.Entries[i]
				}
				if p.ShardCRC != nil && c.crcs[p.ID] == nil {
					c.crcs[p.ID] = p.ShardCRC
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	c.rep.Packs = len(c.packLen)
	return nil
}

func (c *checker) loadSnapshots(ctx context.Context, workers int) error {
	names := c.names(func(l *listing) map[string]int64 { return l.snapshots })
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	for _, id := range names {
		g.Go(func() error {
			var s *repo.Snapshot
			ok, why, err := c.fetchReplicated(gctx, "snapshots/", id, func(l *listing) map[string]int64 { return l.snapshots }, func(b []byte) error {
				var err error
				s, err = c.r.OpenSnapshot(id, b)
				return err
			})
			if err != nil {
				return err
			}
			if !ok {
				c.dropMissing("snapshots/" + id)
				c.add(Problem{Severity: DataLost, Kind: KindSnapshotLost, Object: "snapshots/" + id,
					Detail: fmt.Sprintf("no target has a valid copy of the manifest (%s); listings and restores skip it. "+
						"If it is not a snapshot Ferry wrote (junk, or another tool's), delete it by hand from the targets named", strings.Join(why, "; "))})
				c.mu.Lock()
				c.rep.Lost = append(c.rep.Lost, SnapshotRef{ID: id, Why: []string{"manifest unreadable on every target"}})
				c.mu.Unlock()
				return nil
			}
			c.mu.Lock()
			c.snaps = append(c.snaps, s)
			c.mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	slices.SortFunc(c.snaps, func(a, b *repo.Snapshot) int {
		if d := a.Started.Compare(b.Started); d != 0 {
			return d
		}
		return strings.Compare(a.ID, b.ID)
	})
	c.rep.Snapshots = len(c.snaps) + len(c.rep.Lost)
	return nil
}

// recoverUnindexed gathers what the snapshots need, the segments of their
// extents and the chunks those name, and looks for what the index lacks in
// the headers of packs no index knows (an index object lost from every
// target): segments first, since a snapshot's chunks are known only once
// its segments are read, perhaps from such a pack. Only then does the
// structural level read pack data. A snapshot that a lost segment makes
// unreadable is reported lost and left out of the later checks.
func (c *checker) recoverUnindexed(ctx context.Context) error {
	for id := range c.shards {
		if _, ok := c.packLen[id]; !ok {
			c.stray[id] = struct{}{}
		}
	}
	strays := slices.SortedFunc(maps.Keys(c.stray), comparePacks)
	segments, missingSegs := map[chunk.ID]bool{}, map[chunk.ID]bool{}
	for _, s := range c.snaps {
		for _, sg := range s.Segments {
			segments[sg.ID] = true
			if !c.idx.Has(sg.ID) {
				missingSegs[sg.ID] = true
			}
		}
	}
	c.rep.Segments = len(segments)
	if err := c.findUnindexed(ctx, strays, missingSegs); err != nil {
		return err
	}
	chunks, missing := map[chunk.ID]bool{}, map[chunk.ID]bool{}
	readable := c.snaps[:0]
	once := map[chunk.ID]error{}
	for _, s := range c.snaps {
		ok, err := c.extents(ctx, s, once, func(exts []repo.Extent) {
			for _, e := range exts {
				if e.Zero {
					continue
				}
				chunks[e.ID] = true
				if !c.idx.Has(e.ID) {
					missing[e.ID] = true
				}
			}
		})
		if err != nil {
			return err
		}
		if ok {
			readable = append(readable, s)
		}
	}
	c.snaps = readable
	c.rep.Chunks = len(chunks)
	c.unindexed = len(missingSegs) + len(missing)
	return c.findUnindexed(ctx, strays, missing)
}

// findUnindexed reads the packs in strays, which no index knows, and
// records where their headers say the blobs in missing are. A pack that
// holds one is no garbage but a pack whose index was lost: repair rebuilds
// it from the header.
func (c *checker) findUnindexed(ctx context.Context, strays []pack.ID, missing map[chunk.ID]bool) error {
	if len(missing) == 0 {
		return nil
	}
	for _, id := range strays {
		p, _, err := c.r.ReadPack(ctx, id)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			continue // not readable: it stays garbage, and its blobs stay missing
		}
		entries, err := c.r.Codec.ParseHeader(p)
		if err != nil {
			continue
		}
		holds := false
		for _, e := range entries {
			if missing[e.ID] {
				c.recovered[e.ID] = found{id, e}
				holds = true
			}
		}
		if _, stray := c.stray[id]; holds && stray {
			delete(c.stray, id)
			c.packLen[id] = int64(len(p))
			c.add(Problem{Severity: Degraded, Kind: KindIndexRebuildable, Pack: id.String(),
				Detail: "holds chunks or segments of snapshots' extents that the index lost; repair rebuilds the index from its header"})
		}
	}
	return nil
}

// extents calls fn with the extents of snapshot s: those its manifest
// holds, or a segmented snapshot's a segment at a time, each read from its
// pack and not kept, so that memory holds one segment's extents, not every
// snapshot's. It returns false, fn having had some extents perhaps, for a
// snapshot whose segments it cannot read: one forgotten since it was
// listed (a prune may have deleted its segments meanwhile), or one with a
// segment lost, which it reports.
//
// With once, it reads each segment once over all the calls that share
// once: fn does not get again the extents of a segment an earlier snapshot
// had (snapshots of one volume share most), and a segment that did not
// read makes each snapshot that has it unreadable without a new attempt.
func (c *checker) extents(ctx context.Context, s *repo.Snapshot, once map[chunk.ID]error, fn func([]repo.Extent)) (bool, error) {
	if s.Segments == nil {
		fn(s.Extents)
		return true, nil
	}
	var off int64
	for i, sg := range s.Segments {
		err, seen := once[sg.ID]
		var exts []repo.Extent
		if !seen {
			exts, err = c.readSegment(ctx, sg, off)
			if once != nil {
				once[sg.ID] = err
			}
		}
		if err != nil {
			return false, c.unreadable(ctx, s, fmt.Errorf("segment %d of %d (%s): %w", i+1, len(s.Segments), sg.ID.Short(), err))
		}
		if !seen {
			fn(exts)
		}
		off += sg.Len
	}
	return true, nil
}

// readSegment reads segment sg, whose first extent is at off, from the
// pack that this verification's index, or a pack header for a segment the
// index lost, says holds it: the blob's range, or, when that does not
// authenticate, the whole pack, rebuilt from any k intact shards. A
// segment it cannot read so is lost (repo.ErrSegmentLost); damage short of
// that is for the shard checks to report.
func (c *checker) readSegment(ctx context.Context, sg repo.Segment, off int64) ([]repo.Extent, error) {
	p, e, ok := c.idx.Lookup(sg.ID)
	if !ok {
		f, ok := c.recovered[sg.ID]
		if !ok {
			return nil, fmt.Errorf("%w: in no index object and no pack header", repo.ErrSegmentLost)
		}
		p, e = repo.PackInfo{ID: f.pack, Length: c.packLen[f.pack]}, f.entry
	}
	exts, _, err := c.r.ReadSegmentFrom(ctx, sg, off, p, e)
	return exts, err
}

// unreadable handles err, which kept the extents of snapshot s from being
// read. A snapshot forgotten since it was listed is no concern; one with a
// segment lost is reported lost (err says which segment). Any other error
// is returned: the check could not be done.
func (c *checker) unreadable(ctx context.Context, s *repo.Snapshot, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	gone, derr := c.r.Deleting(ctx)
	if derr != nil {
		return derr
	}
	if name := "snapshots/" + s.ID; gone.Objects[name] || c.vanished(ctx, name) {
		return ctx.Err()
	}
	if !errors.Is(err, repo.ErrSegmentLost) {
		return fmt.Errorf("read the extents of snapshot %s: %w", s.ID, err)
	}
	ref := refOf(s)
	ref.Why = []string{err.Error()}
	c.add(Problem{Severity: DataLost, Kind: KindSnapshotLost, Object: "snapshots/" + s.ID,
		Detail: fmt.Sprintf("snapshot %s cannot be restored: %v; prune deletes nothing until it is forgotten", ref, err)})
	c.mu.Lock()
	c.rep.Lost = append(c.rep.Lost, ref)
	c.mu.Unlock()
	return nil
}

// sortedPacks returns the packs that should have shards, in ID order.
func (c *checker) sortedPacks() []pack.ID {
	return slices.SortedFunc(maps.Keys(c.packLen), comparePacks)
}

func comparePacks(a, b pack.ID) int { return bytes.Compare(a[:], b[:]) }

// shardSize is the size of every shard object of a pack of packLen bytes.
func (c *checker) shardSize(packLen int64) int64 {
	return int64(erasure.HeaderSize) + (packLen+int64(c.k)-1)/int64(c.k)
}

// statShards is the checksum pass: every listed shard of the right size
// whose CRC32C the index recorded is looked up with Stat (one HEAD request
// on S3; no data is read), StatWorkers at a time per target and all
// targets at once, and the CRC32C the store keeps is compared with the
// record. Problems are kept in statBad for checkShards; shards the pass
// cannot settle are counted as checked by size only.
func (c *checker) statShards(ctx context.Context, workers int) error {
	ids := c.sortedPacks()
	// Per target, under c.mu: the first Stat error; how many shards have a
	// checksum and how many not, and the first by name of those without.
	failed := make([]error, c.T)
	withCRC, withoutCRC, noCRC := make([]int, c.T), make([]int, c.T), make([]string, c.T)
	g, gctx := errgroup.WithContext(ctx)
	for t := range c.T {
		if !c.reachable[t] {
			continue
		}
		g.Go(func() error {
			tg, tctx := errgroup.WithContext(gctx)
			tg.SetLimit(workers)
			for _, id := range ids {
				crcs, sizes := c.crcs[id], c.shards[id]
				if crcs == nil || sizes == nil {
					continue
				}
				if tctx.Err() != nil {
					break
				}
				want := c.shardSize(c.packLen[id])
				for i := range c.n {
					if erasure.TargetFor(i, c.T) != t || sizes[i] != want {
						continue
					}
					tg.Go(func() error {
						info, err := c.stat(tctx, t, repo.ShardName(id, i))
						c.mu.Lock()
						defer c.mu.Unlock()
						key := shardKey{id, i}
						switch {
						case tctx.Err() != nil:
							return tctx.Err()
						case errors.Is(err, objstore.ErrNotFound):
							c.statBad[key] = statBad{KindShardMissing, "missing (deleted since it was listed)"}
						case err != nil:
							c.rep.Shards.SizeOnly++
							c.rep.Shards.StatFailed++
							if failed[t] == nil {
								failed[t] = err
							}
						case !info.HasCRC32C:
							c.rep.Shards.SizeOnly++
							c.rep.Shards.StoreHasNone++
							if withoutCRC[t]++; noCRC[t] == "" || info.Name < noCRC[t] {
								noCRC[t] = info.Name
							}
						case info.CRC32C != crcs[i]:
							c.rep.Shards.Checksum++
							withCRC[t]++
							c.statBad[key] = statBad{KindShardCorrupt, fmt.Sprintf("the store's CRC32C is %08x, the index recorded %08x (found by HEAD, not downloaded)", info.CRC32C, crcs[i])}
						default:
							c.rep.Shards.Checksum++
							withCRC[t]++
						}
						return nil
					})
				}
			}
			return tg.Wait()
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for t, err := range failed {
		if err != nil {
			c.add(Problem{Severity: Notice, Kind: KindChecksumUnchecked, Target: t + 1,
				Detail: "some shards were checked by size only, their Stat failed: " + err.Error()})
		}
	}
	// Ferry writes every shard with a checksum: on a target that keeps one
	// for the others, a shard without one was written by something else.
	for t := range c.T {
		if withCRC[t] > 0 && withoutCRC[t] > 0 {
			c.add(Problem{Severity: Notice, Kind: KindChecksumUnchecked, Target: t + 1, Object: noCRC[t],
				Detail: fmt.Sprintf("%d shard(s) on this target (the first by name shown) have no checksum although %d others do: rewritten by another tool? Checked by size only; --read-data-percent checks their content", withoutCRC[t], withCRC[t])})
		}
	}
	return nil
}

// checkShards compares the listings (and the checksum pass) with what
// every pack should have, and counts the shards checked by size only.
func (c *checker) checkShards(sizesOnly bool) {
	for _, id := range c.sortedPacks() {
		c.checkPackShards(id, sizesOnly)
	}
	for id := range c.stray {
		n := 0
		for _, s := range c.shards[id] {
			if s >= 0 {
				n++
			}
		}
		c.add(Problem{Severity: Notice, Kind: KindUnreferencedPack, Pack: id.String(),
			Detail: fmt.Sprintf("%d shard(s) of a pack no index knows: a backup still running, or one interrupted (garbage for prune)", n)})
	}
}

func (c *checker) checkPackShards(id pack.ID, sizesOnly bool) {
	sizes := c.shards[id]
	want := c.shardSize(c.packLen[id])
	intact := 0
	var bad []string
	for i := 0; i < c.n; i++ {
		t := erasure.TargetFor(i, c.T)
		sb, statFound := c.statBad[shardKey{id, i}]
		switch {
		case !c.reachable[t]:
			bad = append(bad, fmt.Sprintf("shard %d: target %d unreachable", i, t+1))
		case sizes == nil || sizes[i] < 0:
			bad = append(bad, fmt.Sprintf("shard %d: missing", i))
			if sizes != nil {
				c.reportShard(id, i, t, KindShardMissing, "missing")
			}
		case sizes[i] != want:
			bad = append(bad, fmt.Sprintf("shard %d: %d bytes", i, sizes[i]))
			c.reportShard(id, i, t, KindShardSize, fmt.Sprintf("%d bytes, want %d", sizes[i], want))
		case statFound:
			bad = append(bad, fmt.Sprintf("shard %d: %s", i, sb.kind))
			c.reportShard(id, i, t, sb.kind, sb.detail)
		default:
			intact++
			switch {
			case sizesOnly:
				c.rep.Shards.SizeOnly++
				c.rep.Shards.Skipped++
			case c.crcs[id] == nil:
				c.rep.Shards.SizeOnly++
				c.rep.Shards.NotRecorded++
			}
		}
	}
	switch {
	case sizes == nil && !slices.Contains(c.reachable, false):
		c.markLost(id, KindPackNoShards, fmt.Sprintf("the index names this pack but no target has a shard of it (%s)", strings.Join(bad, "; ")))
	case intact < c.k:
		c.markLost(id, KindPackLost, fmt.Sprintf("%d of %d shards intact, %d needed: %s", intact, c.n, c.k, strings.Join(bad, "; ")))
	}
}

func (c *checker) reportShard(id pack.ID, shard, target int, kind, detail string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := shardKey{id, shard}
	if c.reported[key] {
		return
	}
	c.reported[key] = true
	c.rep.add(Problem{Severity: Degraded, Kind: kind, Target: target + 1, Pack: id.String(), Shard: intp(shard),
		Object: repo.ShardName(id, shard), Detail: detail})
}

func (c *checker) markLost(id pack.ID, kind, why string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, done := c.lost[id]; done {
		return
	}
	c.lost[id] = why
	c.rep.add(Problem{Severity: DataLost, Kind: kind, Pack: id.String(), Detail: why})
}

// attribute names the snapshots that lost data or need repair to restore:
// those whose segments or chunks are in lost packs, failed the deep check,
// or are indexed nowhere (or only in a pack header).
func (c *checker) attribute(ctx context.Context) error {
	if len(c.lost)+len(c.badChunks)+c.unindexed == 0 {
		return nil // nothing to name a snapshot for: spare reading the segments again
	}
	for _, s := range c.snaps {
		var lost, fix []string
		type inPack struct{ first, n int } // the segments in a lost pack
		var packs []string
		lostPacks := map[string]*inPack{}
		for i, sg := range s.Segments {
			switch why, ofPack, rebuild := c.need(sg.ID); {
			case ofPack:
				if lostPacks[why] == nil {
					packs = append(packs, why)
					lostPacks[why] = &inPack{first: i}
				}
				lostPacks[why].n++
			case why != "":
				lost = append(lost, fmt.Sprintf("segment %d of %d (%s): %s", i+1, len(s.Segments), sg.ID.Short(), why))
			case rebuild:
				fix = append(fix, fmt.Sprintf("segment %s needs the index rebuilt", sg.ID.Short()))
			}
		}
		for _, why := range packs {
			p := lostPacks[why]
			msg := fmt.Sprintf("%s, with segment %d of %d (%s)", why, p.first+1, len(s.Segments), s.Segments[p.first].ID.Short())
			if p.n > 1 {
				msg += fmt.Sprintf(" and %d more", p.n-1)
			}
			lost = append(lost, msg)
		}
		// With a segment lost, the snapshot is, and its extents may not read.
		if len(lost) == 0 {
			ok, err := c.extents(ctx, s, nil, func(exts []repo.Extent) {
				for _, e := range exts {
					if e.Zero {
						continue
					}
					switch why, ofPack, rebuild := c.need(e.ID); {
					case ofPack:
						lost = append(lost, why)
					case why != "":
						lost = append(lost, fmt.Sprintf("chunk %s at offset %d: %s", e.ID.Short(), e.Off, why))
					case rebuild:
						fix = append(fix, fmt.Sprintf("chunk %s needs the index rebuilt", e.ID.Short()))
					}
				}
			})
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
		}
		if len(lost) > 0 {
			ref := refOf(s)
			ref.Why = firstDistinct(lost, 5)
			c.rep.Lost = append(c.rep.Lost, ref)
			c.rep.add(Problem{Severity: DataLost, Kind: KindSnapshotUnrestorable, Object: "snapshots/" + s.ID,
				Detail: fmt.Sprintf("snapshot %s cannot be restored: %s", ref, strings.Join(ref.Why, "; "))})
		} else if len(fix) > 0 {
			ref := refOf(s)
			ref.Why = firstDistinct(fix, 5)
			c.rep.NeedRebuild = append(c.rep.NeedRebuild, ref)
			c.rep.add(Problem{Severity: Degraded, Kind: KindChunkUnindexed, Object: "snapshots/" + s.ID,
				Detail: fmt.Sprintf("snapshot %s: %d chunk(s) or segment(s) missing from the index, found in pack headers", ref, len(fix))})
		}
	}
	return nil
}

// need says why blob id, a chunk or a segment that a snapshot needs, is
// lost ("" if it is not; ofPack when for its pack's sake, the reason then
// naming the pack alone), and whether the index lost its entry, which
// repair rebuilds from the header of the pack that holds it.
func (c *checker) need(id chunk.ID) (why string, ofPack, rebuild bool) {
	if why, bad := c.badChunks[id]; bad {
		return why, false, false
	}
	p, _, ok := c.idx.Lookup(id)
	pid := p.ID
	if !ok {
		f, ok := c.recovered[id]
		if !ok {
			return "in no index and no pack header", false, false
		}
		pid, rebuild = f.pack, true
	}
	if _, bad := c.lost[pid]; bad {
		return "pack " + pid.Short() + " lost", true, rebuild
	}
	return "", false, rebuild
}

func firstDistinct(xs []string, n int) []string {
	var out []string
	seen := map[string]bool{}
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	if len(out) > n {
		out = append(out[:n], fmt.Sprintf("and %d more", len(out)-n))
	}
	return out
}

// strays reports the objects under plans/, deletions/ and locks/ that
// reads skip (repo.Repo.Skipped): some targets lack them and none holds a
// valid copy. Prune and backups go on without them; they are worth a look,
// not a repair.
func (c *checker) strays(ctx context.Context) error {
	if _, err := c.r.Plans(ctx); err != nil {
		return err
	}
	if _, err := c.r.Locks(ctx); err != nil {
		return err
	}
	if _, err := c.r.Deleting(ctx); err != nil {
		return err
	}
	skipped := c.r.Skipped()
	for _, name := range slices.Sorted(maps.Keys(skipped)) {
		c.add(Problem{Severity: Notice, Kind: KindObjectForeign, Object: name,
			Detail: skipped[name] + "; not an object in force (junk, or a damaged copy of one deleted on the other targets): reads skip it; delete it by hand from the targets named"})
	}
	return nil
}
