package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
)

// Prune deletes the packs no snapshot refers to, in two phases: a run
// marks the unreferenced packs in a prune plan; a later run deletes those
// still unreferenced once their grace is over, unless a backup that may
// not have seen the mark is still running. Each run does both: it deletes
// what earlier runs marked and marks what it finds newly unreferenced.
//
// Why nothing a snapshot refers to is deleted. A pack P is deleted by a run
// only if (1) a plan has marked P continuously since time M (the plan's
// writer's clock, taken just before the plan was written); (2) the run's
// clock read D >= M + grace before it listed anything; (3) no lock of a
// backup that started before M + ClockSkew was live when it listed the
// locks; (4) no manifest it listed afterwards, bar those a deletion record
// names, refers to a chunk of P. Take a backup B whose manifest refers to a
// chunk of P. If B committed before the run listed the manifests, (4)
// fails. Otherwise B was running or had not started when the run listed
// the locks:
//
//   - B holds a lock (Repo.Lock, before it loads the index): if the lock
//     was live then, by (3) B started after M + ClockSkew, so B read the
//     plans after P was marked, and LoadIndex excluded P from dedupe (Has);
//     a chunk B reuses from a parent snapshot without looking it up is
//     caught when B commits: SaveSnapshot refuses a manifest that needs a
//     marked pack not held back by B's own lock. If B's lock had gone
//     stale, B refuses to commit (ErrLockLost). If B took its lock after
//     the listing, it read the plans after that, when P was still marked
//     or already out of the index (index objects are deleted before
//     shards, marks after shards), and the same holds.
//   - B holds no lock: SaveSnapshot refuses a manifest that needs a pack
//     marked with a deletable time less than commitMargin away, or named by
//     a deletion record; a backup that started before the mark and commits
//     after the deletion is caught only while the record is there (until
//     the next prune). Lockless backups are safe only when they take less
//     than the grace.
//
// New packs are never at risk from the run that lists them: a pack is
// deleted by a run after the one that marked it, and a backup writing
// packs holds its lock from before the first of them, so any mark of them
// comes after the lock's start and (3) holds them back until the backup
// has committed and released the lock (then (4) protects them), or
// crashed (then they are garbage).
//
// Segments (segment.go) are blobs in packs: "a chunk of P" above reads
// "a chunk or a segment of P" throughout. A backup dedupes its segments
// against the index (Has) as it does its chunks, writes the new ones under
// its lock, and its commit checks both.
//
// Assumptions: the clocks of the machines writing to the repository agree
// within ClockSkew, less the seconds a plan takes to write; a commit
// (SaveSnapshot's check to the manifest on every target) takes less than
// commitMargin less ClockSkew; a backup's lock is refreshed at least every
// lockKeepWithin, or the backup does not commit; a backup that writes
// segments holds a lock. Only one prune runs at a time (the prune lock;
// in a cluster also the agent's Lease).
//
// Interruptions: every step is idempotent and leaves a repository that
// verifies. The order within a run is: new plan (marks carried over and
// added) before the old plans go; index objects for the packs that stay,
// before the deletion record; the record before any deletion; index
// objects before shards; old plans and the previous run's records last. A run that
// finds a deletion record finishes it first.

// PruneOptions tune Prune.
type PruneOptions struct {
	// Grace is how long a pack stays marked before it may be deleted. It
	// must exceed the longest backup that holds no lock (see Repo.Lock).
	Grace time.Duration
	// DryRun reports what a run would mark and delete, and writes nothing.
	DryRun bool
	// Progress, when set, is told the name of each step as it starts:
	// "lock", "list", "read", "finish", "mark", "index", "record",
	// "delete", "clean".
	Progress func(step string)
}

// PruneReport says what a prune found and did.
type PruneReport struct {
	DryRun       bool         `json:"dry_run"`
	Snapshots    int          `json:"snapshots"`
	Packs        int          `json:"packs"` // packs with shards or index entries
	Referenced   int          `json:"packs_referenced"`
	Unreferenced int          `json:"packs_unreferenced"`
	Marked       int          `json:"packs_marked"`           // newly marked by this run
	Waiting      int          `json:"packs_waiting"`          // marked, grace not over
	HeldBack     int          `json:"packs_held_back"`        // marked, held back by backups that may not have seen the mark
	NextDeletion time.Time    `json:"next_deletion,omitzero"` // earliest deletable time of the packs left marked
	Deleted      []PrunedPack `json:"deleted"`
	BytesDeleted []int64      `json:"bytes_deleted_per_target"` // shard bytes, by target
	IndexWritten int          `json:"index_objects_written"`
	IndexDeleted int          `json:"index_objects_deleted"`
	Finished     int          `json:"deletions_finished"`  // deletions an interrupted run left, finished
	Completed    []string     `json:"completed,omitempty"` // index objects an interrupted writer left on some targets, copied to the rest
	Writers      []LockInfo   `json:"writers,omitempty"`   // backups running (live writer locks)
}

// PrunedPack is one pack a prune deleted (or, in a dry run, would delete).
type PrunedPack struct {
	ID     string    `json:"id"`
	Bytes  int64     `json:"bytes"` // its shards on every target
	Marked time.Time `json:"marked"`
}

// pruner is one Prune run.
type pruner struct {
	r    *Repo
	opts PruneOptions
	rep  *PruneReport
	lock *heldLock
	now  time.Time // read before anything is listed

	records map[string]*Deletion
	gone    *Deleting
	locks   map[string]LockInfo
	present []map[string]bool   // replicated objects ("snapshots/<id>", "index/<id>") per target
	shards  map[pack.ID][]int64 // listed size of each shard, -1 when absent
	plans   map[string]*Plan
	doomed  []pack.ID              // packs to delete
	stale   []string               // plans, records and locks to delete at the end
	packs   map[pack.ID]*prunePack // every pack known from the index or the listings
}

type prunePack struct {
	info    PackInfo
	entries []pack.Entry
	objects []string // index objects naming it
	live    bool
}

// Prune runs one prune (see the comment above PruneOptions).
func (r *Repo) Prune(ctx context.Context, opts PruneOptions) (*PruneReport, error) {
	if err := r.RequireAll(); err != nil {
		return nil, err
	}
	p := &pruner{r: r, opts: opts, rep: &PruneReport{DryRun: opts.DryRun, Deleted: []PrunedPack{}, BytesDeleted: make([]int64, len(r.Targets))}}
	if !opts.DryRun {
		if err := p.step(ctx, "lock"); err != nil {
			return nil, err
		}
		h, err := r.lockPrune(ctx)
		if err != nil {
			return nil, err
		}
		defer h.release()
		p.lock = h
	}
	for _, s := range []struct {
		name string
		run  func(context.Context) error
	}{
		{"list", p.list}, {"read", p.read}, {"finish", p.finish}, {"mark", p.mark},
	} {
		if err := p.step(ctx, s.name); err != nil {
			return nil, err
		}
		if err := s.run(ctx); err != nil {
			return nil, err
		}
	}
	if opts.DryRun {
		return p.rep, nil
	}
	if len(p.doomed) > 0 {
		if err := p.delete(ctx); err != nil {
			return nil, err
		}
	}
	if err := p.step(ctx, "clean"); err != nil {
		return nil, err
	}
	return p.rep, p.clean(ctx)
}

func (p *pruner) step(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if p.lock != nil {
		if err := p.lock.check(); err != nil {
			return err
		}
	}
	if p.opts.Progress != nil {
		p.opts.Progress(name)
	}
	return ctx.Err()
}

// list reads the clock and the deletion records, reads the locks, then
// lists snapshots/, index/ and data/ on every target, in that order: the
// locks before the manifests (see Prune), and the reverse of a backup's
// commit order, so that what a listed manifest needs is in the later
// listings.
func (p *pruner) list(ctx context.Context) error {
	r := p.r
	p.now = time.Now()
	var err error
	if p.records, err = r.deletions(ctx); err != nil {
		return err
	}
	p.gone = deletingOf(p.records)
	var mu sync.Mutex
	if p.locks, err = r.Locks(ctx); err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(p.locks)) {
		if l := p.locks[name]; l.Kind == LockWriter && !l.Stale(p.now) {
			p.rep.Writers = append(p.rep.Writers, l)
		}
	}
	p.present = make([]map[string]bool, len(r.Targets))
	for i := range p.present {
		p.present[i] = map[string]bool{}
	}
	p.shards = map[pack.ID][]int64{}
	n := r.Config.Erasure.Shards()
	for _, prefix := range []string{"snapshots/", "index/", "data/"} {
		err := r.listEvery(ctx, prefix, func(t *Target, i objstore.Info) {
			mu.Lock()
			defer mu.Unlock()
			if prefix != "data/" {
				p.present[t.Index][i.Name] = true
				return
			}
			id, shard, ok := ParseShardName(i.Name)
			if !ok || shard >= n || r.TargetOf(shard) != t {
				return // not a shard of this layout: verify reports it, prune leaves it
			}
			sizes := p.shards[id]
			if sizes == nil {
				sizes = slices.Repeat([]int64{-1}, n)
				p.shards[id] = sizes
			}
			sizes[shard] = i.Size
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// listEvery lists prefix on every target at once (ListOn); every target
// must answer.
func (r *Repo) listEvery(ctx context.Context, prefix string, fn func(*Target, objstore.Info)) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, t := range r.Targets {
		g.Go(func() error {
			err := r.ListOn(gctx, t, prefix, func(i objstore.Info) error {
				fn(t, i)
				return nil
			})
			if err != nil {
				return fmt.Errorf("list %s on target %d (%s): %w", prefix, t.Index+1, t.Store.Location(), err)
			}
			return nil
		})
	}
	return g.Wait()
}

// names returns the listed replicated objects under dir, not named by a
// deletion record, as IDs.
func (p *pruner) names(dir string) []string {
	seen := map[string]bool{}
	for _, objs := range p.present {
		for name := range objs {
			if id, ok := strings.CutPrefix(name, dir); ok && !p.gone.Objects[name] {
				seen[id] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

// read reads the manifests (and their segments), the index objects and
// the plans, and decides which packs are referenced. Prune stops
// (deleting nothing) on anything it cannot read, or when a snapshot needs
// a chunk no index object holds: the pack holding it would look
// unreferenced. Memory: the index, and about 50 bytes per distinct chunk
// the snapshots refer to (manifests are read one at a time per worker and
// dropped, segmented ones a segment at a time).
func (p *pruner) read(ctx context.Context) error {
	r := p.r
	referenced := map[chunk.ID]bool{} // chunk -> found in the index
	index := map[string]*IndexBatch{}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, id := range p.names("snapshots/") {
		g.Go(func() error {
			s, err := r.loadSnapshot(gctx, id)
			switch {
			case errors.Is(err, objstore.ErrNotFound):
				return nil // forgotten since the listing
			case err != nil:
				return fmt.Errorf("snapshot %s: %w", id, err)
			}
			mu.Lock()
			p.rep.Snapshots++
			for _, sg := range s.Segments {
				referenced[sg.ID] = false
			}
			mu.Unlock()
			err = r.Extents(gctx, s, func(exts []Extent) error {
				mu.Lock()
				defer mu.Unlock()
				for _, e := range exts {
					if !e.Zero {
						referenced[e.ID] = false
					}
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("%w (run ferry verify; prune deletes nothing until every snapshot reads)", err)
			}
			return nil
		})
	}
	for _, id := range p.names("index/") {
		g.Go(func() error {
			var batch *IndexBatch
			err := r.getAny(gctx, "index/"+id, func(b []byte) error {
				var err error
				batch, err = r.OpenIndexObject(id, b)
				return err
			})
			if err != nil {
				return fmt.Errorf("index object %s: %w (run ferry verify and ferry repair; prune deletes nothing until every index object reads)", id, err)
			}
			mu.Lock()
			index[id] = batch
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	plans, err := r.loadPlans(ctx)
	if err != nil {
		return fmt.Errorf("read prune plans: %w", err)
	}
	p.plans = plans

	p.packs = map[pack.ID]*prunePack{}
	get := func(id pack.ID) *prunePack {
		pp := p.packs[id]
		if pp == nil {
			pp = &prunePack{info: PackInfo{ID: id}}
			p.packs[id] = pp
		}
		return pp
	}
	for _, obj := range slices.Sorted(maps.Keys(index)) {
		batch := index[obj]
		for i, info := range batch.Packs {
			if p.gone.Packs[info.ID] {
				continue
			}
			pp := get(info.ID)
			if pp.entries == nil {
				pp.info, pp.entries = info, batch.Entries[i]
			} else if pp.info.ShardCRC == nil {
				pp.info.ShardCRC = info.ShardCRC
			}
			pp.objects = append(pp.objects, obj)
			for _, e := range batch.Entries[i] {
				if _, ok := referenced[e.ID]; ok {
					referenced[e.ID] = true
					pp.live = true
				}
			}
		}
	}
	missing := 0
	for _, found := range referenced {
		if !found {
			missing++
		}
	}
	if missing > 0 {
		return fmt.Errorf("%d chunk(s) that snapshots need are in no index object: run ferry verify and ferry repair first; prune deletes nothing until then", missing)
	}
	for id := range p.shards {
		if !p.gone.Packs[id] {
			get(id)
		}
	}
	p.rep.Packs = len(p.packs)
	for _, pp := range p.packs {
		if pp.live {
			p.rep.Referenced++
		}
	}
	p.rep.Unreferenced = p.rep.Packs - p.rep.Referenced
	return nil
}

// finish finishes what interrupted runs left: the deletions their records
// name (only what the listings still show), those records themselves, and
// index objects a writer left on some targets only.
func (p *pruner) finish(ctx context.Context) error {
	r := p.r
	if p.opts.DryRun {
		return nil
	}
	for _, d := range p.records {
		left := &Deletion{}
		for _, o := range d.objects() {
			if p.listedAnywhere(o) {
				dir, id, _ := strings.Cut(o, "/")
				if dir == "snapshots" {
					left.Snapshots = append(left.Snapshots, id)
				} else {
					left.Index = append(left.Index, id)
				}
			}
		}
		for _, id := range d.packIDs() {
			if _, ok := p.shards[id]; ok {
				left.Packs = append(left.Packs, id.String())
			}
		}
		if len(left.Snapshots)+len(left.Index)+len(left.Packs) > 0 {
			if err := r.carryOut(ctx, left); err != nil {
				return fmt.Errorf("finish an interrupted deletion: %w", err)
			}
			p.rep.Finished++
		}
	}
	var incomplete []string
	for _, id := range p.names("index/") {
		for _, objs := range p.present {
			if !objs["index/"+id] {
				incomplete = append(incomplete, "index/"+id)
				break
			}
		}
	}
	for _, name := range incomplete {
		var obj []byte
		err := r.getAny(ctx, name, func(b []byte) error {
			obj = b
			return r.checkReplicated(name, b)
		})
		if err != nil {
			return err
		}
		if err := r.putEverywhere(ctx, name, func(*Target) ([]byte, error) { return obj, nil }); err != nil {
			return err
		}
		p.rep.Completed = append(p.rep.Completed, name)
	}
	return nil
}

func (p *pruner) listedAnywhere(name string) bool {
	for _, objs := range p.present {
		if objs[name] {
			return true
		}
	}
	return false
}

// mark decides what to delete and what to keep marked, and writes the new
// plan.
func (p *pruner) mark(ctx context.Context) error {
	r := p.r
	marks := mergeMarks(p.plans)
	var writers []LockInfo
	for _, l := range p.locks {
		if l.Kind == LockWriter && !l.Stale(p.now) {
			writers = append(writers, l)
		}
	}
	heldBack := func(m Mark) bool {
		for _, l := range writers {
			if l.Started.Before(m.Marked.Add(ClockSkew)) {
				return true
			}
		}
		return false
	}
	keep := map[pack.ID]Mark{}
	var fresh []pack.ID
	for _, id := range slices.SortedFunc(maps.Keys(p.packs), comparePacks) {
		if p.packs[id].live {
			continue
		}
		m, ok := marks[id]
		switch {
		case !ok:
			fresh = append(fresh, id)
			continue
		case p.now.Before(m.Deletable):
			p.rep.Waiting++
		case heldBack(m):
			p.rep.HeldBack++
		default:
			p.doomed = append(p.doomed, id)
			continue
		}
		keep[id] = m
	}
	// The marking time is read just before the plan is written, after the
	// listings: a backup that starts later sees the plan.
	tmark := time.Now().UTC()
	for _, id := range fresh {
		keep[id] = Mark{Marked: tmark, Deletable: tmark.Add(p.opts.Grace)}
	}
	p.rep.Marked = len(fresh)
	for _, m := range keep {
		if p.rep.NextDeletion.IsZero() || m.Deletable.Before(p.rep.NextDeletion) {
			p.rep.NextDeletion = m.Deletable
		}
	}
	for _, id := range p.doomed {
		var bytes int64
		for i, size := range p.shards[id] {
			if size > 0 {
				bytes += size
				p.rep.BytesDeleted[r.TargetOf(i).Index] += size
			}
		}
		p.rep.Deleted = append(p.rep.Deleted, PrunedPack{ID: id.String(), Bytes: bytes, Marked: marks[id].Marked})
	}
	if p.opts.DryRun {
		return nil
	}

	if len(keep) > 0 && p.sameAsOnlyPlan(keep) {
		return nil
	}
	p.stale = slices.Collect(maps.Keys(p.plans))
	if len(keep) > 0 {
		if _, err := r.writePlan(ctx, &Plan{Created: tmark, Marks: keep}); err != nil {
			return fmt.Errorf("write the prune plan: %w", err)
		}
	}
	return nil
}

// clean deletes the plans this run replaced, the records of earlier runs
// (their deletions are finished; this run's stays for the verify runs
// until the next prune) and stale locks.
func (p *pruner) clean(ctx context.Context) error {
	for name, l := range p.locks {
		if l.Stale(p.now) {
			p.stale = append(p.stale, name)
		}
	}
	return p.r.deleteAll(ctx, slices.Concat(p.stale, slices.Collect(maps.Keys(p.records))))
}

// sameAsOnlyPlan reports whether the one existing plan marks exactly keep.
func (p *pruner) sameAsOnlyPlan(keep map[pack.ID]Mark) bool {
	if len(p.plans) != 1 {
		return false
	}
	for _, plan := range p.plans {
		return maps.EqualFunc(plan.Marks, keep, func(a, b Mark) bool {
			return a.Marked.Equal(b.Marked) && a.Deletable.Equal(b.Deletable)
		})
	}
	return false
}

// delete rewrites the index objects that name doomed packs, records the
// deletion, and deletes those index objects and the packs' shards.
func (p *pruner) delete(ctx context.Context) error {
	r, doomed := p.r, p.doomed
	dead := map[pack.ID]bool{}
	for _, id := range doomed {
		dead[id] = true
	}
	rewrite := map[string]bool{}
	for _, id := range doomed {
		for _, obj := range p.packs[id].objects {
			rewrite[obj] = true
		}
	}
	// A surviving pack named only by index objects that go is indexed anew.
	if err := p.step(ctx, "index"); err != nil {
		return err
	}
	batch := &IndexBatch{}
	flush := func() error {
		if len(batch.Packs) == 0 {
			return nil
		}
		if _, err := r.WriteIndex(ctx, batch); err != nil {
			return fmt.Errorf("rewrite the index: %w", err)
		}
		p.rep.IndexWritten++
		batch = &IndexBatch{}
		return nil
	}
	for _, id := range slices.SortedFunc(maps.Keys(p.packs), comparePacks) {
		pp := p.packs[id]
		if dead[id] || len(pp.objects) == 0 || !allIn(pp.objects, rewrite) {
			continue
		}
		batch.Add(pp.info, pp.entries)
		if batch.Len() >= 64<<10 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}

	if err := p.step(ctx, "record"); err != nil {
		return err
	}
	d := &Deletion{Created: time.Now().UTC(), Index: slices.Sorted(maps.Keys(rewrite))}
	for _, id := range doomed {
		d.Packs = append(d.Packs, id.String())
	}
	if _, err := r.writeDeletion(ctx, d); err != nil {
		return fmt.Errorf("write the deletion record: %w", err)
	}

	if err := p.step(ctx, "delete"); err != nil {
		return err
	}
	if err := r.carryOut(ctx, d); err != nil {
		return fmt.Errorf("delete: %w (the next prune finishes it)", err)
	}
	p.rep.IndexDeleted = len(d.Index)
	return nil
}

func allIn(xs []string, set map[string]bool) bool {
	for _, x := range xs {
		if !set[x] {
			return false
		}
	}
	return true
}

func comparePacks(a, b pack.ID) int { return bytes.Compare(a[:], b[:]) }

// ParseShardName splits "data/<pp>/<pack>.<i>" into the pack and the shard.
func ParseShardName(name string) (pack.ID, int, bool) {
	rest, ok := strings.CutPrefix(name, "data/")
	if !ok || len(rest) < 3 || rest[2] != '/' {
		return pack.ID{}, 0, false
	}
	hexID, idx, ok := strings.Cut(rest[3:], ".")
	if !ok || !strings.HasPrefix(hexID, rest[:2]) {
		return pack.ID{}, 0, false
	}
	id, err := pack.ParseID(hexID)
	if err != nil {
		return pack.ID{}, 0, false
	}
	i, err := strconv.Atoi(idx)
	if err != nil || i < 0 || strconv.Itoa(i) != idx {
		return pack.ID{}, 0, false
	}
	return id, i, true
}
