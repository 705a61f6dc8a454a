package repo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/restic/chunker"
	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
)

var (
	// ErrNotRepository means the targets hold no Ferry repository.
	ErrNotRepository = errors.New("not a Ferry repository")
	// ErrExists means init found a repository (or other Ferry objects) already there.
	ErrExists = errors.New("a Ferry repository already exists there")
	// ErrTargetMismatch means a target belongs to another repository or sits at another position.
	ErrTargetMismatch = errors.New("target does not match the repository")
	// ErrUnavailable means too few targets answered for the operation.
	ErrUnavailable = errors.New("targets unavailable")
)

// Config is the repository's fixed layout, sealed in each target's config object.
type Config struct {
	Version     int            `json:"version"`
	ID          string         `json:"id"`
	Erasure     erasure.Scheme `json:"erasure"`
	Targets     int            `json:"targets"`
	Target      int            `json:"target"` // position of the target holding this copy
	ChunkerPol  chunker.Pol    `json:"chunker_pol"`
	ChunkParams chunkParams    `json:"chunk_params"`
	PackSize    int            `json:"pack_size"`
	Created     time.Time      `json:"created"`
}

type chunkParams struct {
	Min, Max    uint
	AverageBits int
}

// Chunking returns the repository's chunking parameters.
func (c Config) Chunking() chunk.Params {
	return chunk.Params{Pol: c.ChunkerPol, MinSize: c.ChunkParams.Min, MaxSize: c.ChunkParams.Max, AverageBits: c.ChunkParams.AverageBits}
}

// Options tune Init.
type Options struct {
	Erasure  erasure.Scheme
	PackSize int           // default DefaultPackSize
	Chunking *chunk.Params // default chunk.DefaultParams with a random polynomial
	// ChunkBits, when Chunking is nil and it is not 0, sets the chunk sizes
	// around an average of 2^ChunkBits (chunk.ParamsForAverage).
	ChunkBits int
	KDF       crypt.KDFParams // default crypt.DefaultKDF
}

// DefaultPackSize is the target size of a pack before erasure coding.
const DefaultPackSize = 16 << 20

var configAD = []byte("ferry config v1")

// Target is one object store of the repository and its health as seen by
// this process.
type Target struct {
	Index int
	Store objstore.Store
	down  atomic.Pointer[error]
}

// Down returns the error that made this process stop using the target, or nil.
func (t *Target) Down() error {
	if p := t.down.Load(); p != nil {
		return *p
	}
	return nil
}

// MarkDown records that the target failed with err; reads skip it from now on
// unless nothing else is left, and so do a backup's writes (see
// DegradedWrites): the mark lasts as long as the Repo, which the agent opens
// for each job. The first error is kept; the caller decides how to tell the
// user (ferry's commands list the targets that are Down when they end).
func (t *Target) MarkDown(err error) {
	if t.down.CompareAndSwap(nil, &err) {
		slog.Debug("target unavailable, continuing without it", "target", t.Index+1, "location", t.Store.Location(), "error", err)
	}
}

// Repo is an open repository.
type Repo struct {
	Targets []*Target
	Config  Config
	key     *crypt.Key
	IDKey   *chunk.IDKey
	Codec   *pack.Codec
	Coder   *erasure.Coder

	// IndexCache, when not empty, is a directory on the local disk where
	// LoadIndex keeps copies of the index objects it reads, so that the
	// next load downloads only new ones, and where the index it returns
	// keeps its entries instead of in memory (indexcache.go, indexrun.go).
	IndexCache string

	// SegmentExtents is how many extents a segment of a snapshot's
	// manifest holds on average (segment.go); 0 means
	// DefaultSegmentExtents. A snapshot of no more extents keeps them in
	// its manifest.
	SegmentExtents int

	// ListPage is how many names a listing request of the targets returns
	// (ListShards takes it into account); 0 means S3's 1,000.
	ListPage int

	// unindexed holds the shard CRCs ([]uint32) of the packs WritePack
	// wrote until WriteIndex records them, so that a writer's index entries
	// carry them without the writer handling them: at most the packs of one
	// index object per writer (a backup flushes its index every 64Ki chunks).
	unindexed sync.Map

	// loaded is the index LoadIndex last returned, with what WriteIndex
	// wrote since: SaveSnapshot checks a manifest against it.
	loaded atomic.Pointer[Index]
	// reloadMu makes readers of segments missing from loaded read the
	// index once between them, not once each.
	reloadMu sync.Mutex

	lockMu sync.Mutex
	writer *heldLock // the writer lock the backups of this Repo share (see Lock)

	// skipped holds, by name, why loadEach skipped an object as not in
	// force (errStray), for verify to report.
	skipped sync.Map
}

// Skipped returns the objects under plans/, deletions/ and locks/ that
// reads of this Repo skipped, some targets lacking them and none holding a
// valid copy (junk, or a damaged copy of one deleted everywhere else), each
// with why.
func (r *Repo) Skipped() map[string]string {
	out := map[string]string{}
	r.skipped.Range(func(k, v any) bool {
		out[k.(string)] = v.(string)
		return true
	})
	return out
}

func newTargets(stores []objstore.Store) []*Target {
	ts := make([]*Target, len(stores))
	for i, s := range stores {
		ts[i] = &Target{Index: i, Store: s}
	}
	return ts
}

// Init creates a repository on stores and returns it opened. It refuses when
// any target already holds Ferry objects.
func Init(ctx context.Context, stores []objstore.Store, password []byte, opts Options) (*Repo, error) {
	if len(stores) == 0 {
		return nil, errors.New("no targets")
	}
	if err := opts.Erasure.Validate(); err != nil {
		return nil, err
	}
	if opts.PackSize == 0 {
		opts.PackSize = DefaultPackSize
	}
	if opts.KDF == (crypt.KDFParams{}) {
		opts.KDF = crypt.DefaultKDF
	}
	var params chunk.Params
	if opts.Chunking != nil {
		params = *opts.Chunking
	} else {
		pol, err := chunker.RandomPolynomial()
		if err != nil {
			return nil, fmt.Errorf("chunker polynomial: %w", err)
		}
		params = chunk.DefaultParams(pol)
		if opts.ChunkBits != 0 {
			if params, err = chunk.ParamsForAverage(pol, opts.ChunkBits); err != nil {
				return nil, err
			}
		}
	}
	if err := params.Validate(); err != nil {
		return nil, err
	}
	targets := newTargets(stores)
	for _, t := range targets {
		found := false
		for _, prefix := range []string{"config", "keys/", "data/", "index/", "snapshots/"} {
			err := t.Store.List(ctx, prefix, func(objstore.Info) error { found = true; return errStop })
			if err != nil && !errors.Is(err, errStop) {
				return nil, fmt.Errorf("target %d (%s): %w", t.Index+1, t.Store.Location(), err)
			}
			if found {
				return nil, fmt.Errorf("target %d (%s): %w", t.Index+1, t.Store.Location(), ErrExists)
			}
		}
	}
	key, err := crypt.NewRandomKey()
	if err != nil {
		return nil, err
	}
	keyObj, err := crypt.Wrap(key, password, opts.KDF)
	if err != nil {
		return nil, err
	}
	idb := make([]byte, 16)
	if _, err := rand.Read(idb); err != nil {
		return nil, err
	}
	cfg := Config{
		Version: 1, ID: hex.EncodeToString(idb), Erasure: opts.Erasure, Targets: len(stores),
		ChunkerPol: params.Pol, ChunkParams: chunkParams{params.MinSize, params.MaxSize, params.AverageBits},
		PackSize: opts.PackSize, Created: time.Now().UTC(),
	}
	r, err := newRepo(targets, key, cfg)
	if err != nil {
		return nil, err
	}
	keyName := "keys/" + pack.Sum(keyObj).String()
	// Keys first: a config without a key could never be opened.
	if err := r.putEverywhere(ctx, keyName, func(*Target) ([]byte, error) { return keyObj, nil }); err != nil {
		return nil, err
	}
	err = r.putEverywhere(ctx, "config", func(t *Target) ([]byte, error) {
		c := cfg
		c.Target = t.Index
		b, err := json.Marshal(c)
		if err != nil {
			return nil, err
		}
		return key.Seal(nil, b, configAD), nil
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

var errStop = errors.New("stop listing")

func newRepo(targets []*Target, key *crypt.Key, cfg Config) (*Repo, error) {
	codec, err := pack.NewCodec(key)
	if err != nil {
		return nil, err
	}
	coder, err := erasure.NewCoder(cfg.Erasure)
	if err != nil {
		return nil, err
	}
	return &Repo{Targets: targets, Config: cfg, key: key, IDKey: chunk.NewIDKey(key.IDKey()), Codec: codec, Coder: coder}, nil
}

// Open opens the repository on stores (in the order given at init) with
// password. Targets that cannot be reached are marked down; Open fails only
// when no target can give it the key and config, or when a target's config
// shows that it belongs to another repository or sits at another position.
func Open(ctx context.Context, stores []objstore.Store, password []byte) (*Repo, error) {
	targets := newTargets(stores)
	// Each target's key object names and config are asked for at once, as
	// a target in another region costs a round trip per request; only
	// the key objects of the first target with any are read and opened
	// (scrypt), the others' need only be there.
	type found struct {
		keys      []string
		keysErr   error // other than ErrNotRepository: the target is down, config not asked for
		config    []byte
		configErr error
	}
	per := make([]found, len(targets))
	var wg sync.WaitGroup
	for _, t := range targets {
		wg.Go(func() {
			f := &per[t.Index]
			f.keys, f.keysErr = listKeys(ctx, t.Store)
			if f.keysErr != nil && !errors.Is(f.keysErr, ErrNotRepository) {
				return
			}
			f.config, f.configErr = t.Store.Get(ctx, "config")
		})
	}
	wg.Wait()
	var key *crypt.Key
	keyFrom := -1 // the target whose key objects gave key
	// Every readable config is checked once the key is known, also that of
	// a target whose key objects do not open with the password: such a
	// target is usually another repository's.
	configs := make([][]byte, len(targets))
	var problems []string
	sawKeys, sawConfig, reachable := false, false, 0
	for _, t := range targets {
		f := per[t.Index]
		err := f.keysErr
		var k *crypt.Key
		switch {
		case err != nil:
		case key != nil:
			k = key // readable, and the key is known
		default:
			k, err = openKey(ctx, t.Store, f.keys, password)
		}
		switch {
		case errors.Is(err, crypt.ErrWrongPassword):
			sawKeys = true
			reachable++
			problems = append(problems, fmt.Sprintf("target %d: %v", t.Index+1, err))
		case errors.Is(err, ErrNotRepository):
			reachable++
			problems = append(problems, fmt.Sprintf("target %d (%s): no keys", t.Index+1, t.Store.Location()))
		case err != nil:
			t.MarkDown(err)
			problems = append(problems, fmt.Sprintf("target %d: %v", t.Index+1, err))
			continue
		default:
			sawKeys = true
			reachable++
			if key == nil {
				key, keyFrom = k, t.Index
			}
		}
		if errors.Is(f.configErr, objstore.ErrNotFound) {
			continue
		}
		if f.configErr != nil {
			t.MarkDown(f.configErr)
			continue
		}
		sawConfig = true
		configs[t.Index] = f.config
	}
	switch {
	case key == nil && sawKeys:
		return nil, fmt.Errorf("%w: no key object on the targets opens with this password", crypt.ErrWrongPassword)
	case key == nil && reachable == 0:
		return nil, fmt.Errorf("%w: cannot reach any target (%s)", ErrUnavailable, strings.Join(problems, "; "))
	case key == nil && !sawConfig:
		return nil, fmt.Errorf("%w (%s)", ErrNotRepository, strings.Join(problems, "; "))
	}
	var cfg *Config
	for _, t := range targets {
		raw := configs[t.Index]
		if key == nil || raw == nil {
			continue
		}
		c, err := openConfig(key, raw)
		if errors.Is(err, crypt.ErrAuth) {
			if t.Index == keyFrom {
				return nil, fmt.Errorf("target %d (%s): its config does not open with the key its key objects hold: they or the config belong to another repository: %w", t.Index+1, t.Store.Location(), ErrTargetMismatch)
			}
			// Either target may be the odd one out: name both.
			kt := targets[keyFrom]
			return nil, fmt.Errorf("target %d (%s) belongs to another repository than target %d (%s): its config does not open with that target's key: %w", t.Index+1, t.Store.Location(), kt.Index+1, kt.Store.Location(), ErrTargetMismatch)
		}
		if err != nil {
			return nil, fmt.Errorf("target %d (%s): config: %w", t.Index+1, t.Store.Location(), err)
		}
		if c.Target != t.Index {
			return nil, fmt.Errorf("target %d (%s) is target %d of this repository; give the targets in their original order: %w", t.Index+1, t.Store.Location(), c.Target+1, ErrTargetMismatch)
		}
		if cfg != nil && c.ID != cfg.ID {
			return nil, fmt.Errorf("target %d (%s) belongs to repository %s, not %s: %w", t.Index+1, t.Store.Location(), c.ID, cfg.ID, ErrTargetMismatch)
		}
		if cfg == nil {
			cfg = &c
		}
	}
	if key == nil || cfg == nil {
		return nil, fmt.Errorf("%w: no target gave a readable key and config (%s)", ErrUnavailable, strings.Join(problems, "; "))
	}
	if cfg.Targets != len(stores) {
		return nil, fmt.Errorf("the repository has %d targets, %d given: %w", cfg.Targets, len(stores), ErrTargetMismatch)
	}
	c := *cfg
	c.Target = 0
	return newRepo(targets, key, c)
}

// OpenForRestore is Open for a restore, which needs only k shards of each
// pack and should not wait for a target that is gone: each target's key
// objects and config are asked for once, without the retries (about 1.5 s
// for a refused connection, several stall timeouts for a hung target), and
// a target that fails while another gives the key and config is marked
// down at once; reads then rebuild its shards from the others. Only when
// no target gives them does it open as Open does, with retries.
func OpenForRestore(ctx context.Context, stores []objstore.Store, password []byte) (*Repo, error) {
	r, err := Open(objstore.WithAttempts(ctx, 1), stores, password)
	if errors.Is(err, ErrUnavailable) || errors.Is(err, ErrNotRepository) {
		return Open(ctx, stores, password)
	}
	return r, err
}

// listKeys returns the names of the target's key objects, or
// ErrNotRepository when it has none.
func listKeys(ctx context.Context, s objstore.Store) ([]string, error) {
	var names []string
	err := s.List(ctx, "keys/", func(i objstore.Info) error { names = append(names, i.Name); return nil })
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, ErrNotRepository
	}
	return names, nil
}

// openKey returns the master key from the target's key objects names.
func openKey(ctx context.Context, s objstore.Store, names []string, password []byte) (*crypt.Key, error) {
	for _, n := range names {
		obj, err := s.Get(ctx, n)
		if err != nil {
			return nil, err
		}
		k, err := crypt.Unwrap(obj, password)
		if err == nil {
			return k, nil
		}
		if !errors.Is(err, crypt.ErrWrongPassword) {
			slog.Warn("skipping unreadable key object", "name", n, "error", err)
		}
	}
	return nil, crypt.ErrWrongPassword
}

func openConfig(key *crypt.Key, raw []byte) (Config, error) {
	var c Config
	b, err := key.Open(nil, raw, configAD)
	if err != nil {
		return c, err
	}
	// The version first: another version's config need not decode as this one.
	var v struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return c, err
	}
	if v.Version != 1 {
		return c, fmt.Errorf("unsupported repository version %d; this Ferry reads version 1", v.Version)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, err
	}
	if err := c.Erasure.Validate(); err != nil {
		return c, err
	}
	if err := c.Chunking().Validate(); err != nil {
		return c, err
	}
	if c.Targets < 1 || c.Target < 0 || c.Target >= c.Targets || c.PackSize < 1<<20 || c.PackSize > 256<<20 {
		return c, fmt.Errorf("config out of range (targets %d, target %d, pack size %d)", c.Targets, c.Target, c.PackSize)
	}
	return c, nil
}

// SurvivableTargetLosses is how many whole targets the layout can lose.
func (r *Repo) SurvivableTargetLosses() int {
	return erasure.SurvivableTargetLosses(r.Config.Erasure, len(r.Targets))
}

// RequireAll fails unless every target is reachable: prune and forget need
// all of them, for they delete, and must do so everywhere.
func (r *Repo) RequireAll() error {
	for _, t := range r.Targets {
		if err := t.Down(); err != nil {
			return fmt.Errorf("target %d (%s) is unavailable: %v: %w", t.Index+1, t.Store.Location(), err, ErrUnavailable)
		}
	}
	return nil
}

// RequireWritable fails when more targets are down than the layout survives
// (SurvivableTargetLosses): a backup may go on without the others (see
// DegradedWrites). The error names every target that is down.
func (r *Repo) RequireWritable() error {
	var down []string
	for _, t := range r.Targets {
		if err := t.Down(); err != nil {
			down = append(down, fmt.Sprintf("target %d (%s): %v", t.Index+1, t.Store.Location(), err))
		}
	}
	if len(down) <= r.SurvivableTargetLosses() {
		return nil
	}
	return fmt.Errorf("%w: %d of %d targets down and this layout (%s over %d targets) survives the loss of %d: %s",
		ErrUnavailable, len(down), len(r.Targets), r.Config.Erasure, len(r.Targets), r.SurvivableTargetLosses(), strings.Join(down, "; "))
}

// DegradedWrites returns ctx for a backup's writes, and the tally of what
// they left out. Under it, a write to a target that fails after the
// store's retries (unreachable, hanging, refusing us: isTargetFailure)
// marks the target down, and later writes skip a down target at once. A
// pack counts as written when its shards are on every target that is not
// down, at least k of them, and a replicated object (index object,
// manifest, writer lock) when every target that is not down has it; both
// only while no more targets are down than the layout survives
// (RequireWritable). Otherwise the write fails, and a replicated object's
// copies that it created are deleted again, so that a failed commit leaves
// no manifest. Repair writes the missing shards and objects once the
// target is back. Writes under any other context need every target.
func DegradedWrites(ctx context.Context) (context.Context, *Degraded) {
	d := &Degraded{}
	return context.WithValue(ctx, degradedKey{}, d), d
}

type degradedKey struct{}

func degradedFrom(ctx context.Context) *Degraded {
	d, _ := ctx.Value(degradedKey{}).(*Degraded)
	return d
}

// Degraded tallies, per target, what the writes under a DegradedWrites
// context did not write there because the target was down.
type Degraded struct {
	mu      sync.Mutex
	targets map[*Target]*DegradedTarget
}

// DegradedTarget is what one down target lacks. Objects counts the
// replicated objects repair copies (index objects, manifests), not lock
// objects: those are gone by then.
type DegradedTarget struct {
	Target   int    `json:"target"` // 1-based, for people
	Location string `json:"location"`
	Error    string `json:"error"` // why it is down
	Shards   int    `json:"shards_not_written"`
	Objects  int    `json:"objects_not_written"`
}

func (d *Degraded) skip(t *Target, shards, objects int) {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.targets == nil {
		d.targets = map[*Target]*DegradedTarget{}
	}
	dt := d.targets[t]
	if dt == nil {
		dt = &DegradedTarget{Target: t.Index + 1, Location: t.Store.Location()}
		if err := t.Down(); err != nil {
			dt.Error = err.Error()
		}
		d.targets[t] = dt
	}
	dt.Shards += shards
	dt.Objects += objects
}

// Targets returns the targets the writes left something out on, in order;
// nil when none.
func (d *Degraded) Targets() []DegradedTarget {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []DegradedTarget
	for _, dt := range d.targets {
		out = append(out, *dt)
	}
	slices.SortFunc(out, func(a, b DegradedTarget) int { return a.Target - b.Target })
	return out
}

// putEverywhere writes one object to every target; under DegradedWrites, to
// every target not down (see there). A target that already has the object
// (same name, content-addressed) counts as written.
func (r *Repo) putEverywhere(ctx context.Context, name string, data func(*Target) ([]byte, error)) error {
	d := degradedFrom(ctx)
	return r.put(ctx, name, data, d != nil, d)
}

// copies is how many targets hold an object putEverywhere(ctx, ...) just
// wrote: every target, or under DegradedWrites those not down.
func (r *Repo) copies(ctx context.Context) int {
	if degradedFrom(ctx) == nil {
		return len(r.Targets)
	}
	n := 0
	for _, t := range r.Targets {
		if t.Down() == nil {
			n++
		}
	}
	return n
}

// put is putEverywhere, going without down targets when degradable, and
// counting what it left out in d (nil: not counted).
func (r *Repo) put(ctx context.Context, name string, data func(*Target) ([]byte, error), degradable bool, d *Degraded) error {
	g, gctx := errgroup.WithContext(ctx)
	var mu sync.Mutex
	var created []*Target
	for _, t := range r.Targets {
		if degradable && t.Down() != nil {
			d.skip(t, 0, 1)
			continue
		}
		g.Go(func() error {
			b, err := data(t)
			if err != nil {
				return err
			}
			err = t.Store.Create(gctx, name, b)
			switch {
			case err == nil:
				mu.Lock()
				created = append(created, t)
				mu.Unlock()
				return nil
			case errors.Is(err, objstore.ErrExists):
				return nil
			case degradable && gctx.Err() == nil && isTargetFailure(err):
				t.MarkDown(err)
				d.skip(t, 0, 1)
				return nil
			}
			return fmt.Errorf("write %s to target %d (%s): %w", name, t.Index+1, t.Store.Location(), err)
		})
	}
	err := g.Wait()
	if err == nil && degradable {
		if err = r.RequireWritable(); err != nil {
			err = fmt.Errorf("write %s: %w", name, err)
		}
	}
	if err != nil && len(created) > 0 {
		r.unput(ctx, name, created)
	}
	return err
}

// unput deletes the copies of name that a failed put created, so that a
// manifest is on no target unless its commit succeeded. Best effort: a copy
// left behind is reported in the log.
func (r *Repo) unput(ctx context.Context, name string, created []*Target) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	for _, t := range created {
		if err := t.Store.Delete(ctx, name); err != nil && !errors.Is(err, objstore.ErrNotFound) {
			slog.Warn("could not delete the copy of a failed write", "object", name, "target", t.Index+1, "location", t.Store.Location(), "error", err)
		}
	}
}

// ErrNoValidCopy is wrapped by reads of a replicated object that some
// targets hold but none holds a copy of that opens (authenticates and
// matches its name): the object is not one this repository wrote (junk, an
// upload of another tool, an object of another repository), or it was
// damaged on every target. Readers of index objects and manifests skip it
// with a warning; verify reports it.
var ErrNoValidCopy = errors.New("no target has a valid copy")

// errStray is wrapped with ErrNoValidCopy when every target answered, some
// without the object and the others with copies that do not open. Ferry
// writes a replicated object to every target that is up, and a prune (the
// only writer of plans and deletion records) needs them all, so this is
// no object in force: junk, or a damaged copy of one that was deleted
// everywhere else.
var errStray = errors.New("and some targets have none")

// getAny reads a replicated object from the first target that has it,
// preferring targets not marked down. open authenticates the bytes; a target
// whose copy fails open is skipped. When every target answered that it has
// no such object, the error wraps objstore.ErrNotFound: the object was
// deleted (by forget or prune) since it was listed. When the copies read
// all failed open and every other target has none or was already down,
// it wraps ErrNoValidCopy; a target that fails to answer now makes it a
// plain error, as the copy it did not give might have been good.
func (r *Repo) getAny(ctx context.Context, name string, open func([]byte) error) error {
	var errs, bad []string // bad leaves out the targets without the object
	notFound, invalid, failed := 0, 0, 0
	for _, pass := range []bool{true, false} {
		for _, t := range r.Targets {
			if (t.Down() == nil) != pass {
				continue
			}
			b, err := t.Store.Get(ctx, name)
			switch {
			case err == nil:
				if err = open(b); err == nil {
					return nil
				}
				invalid++
			case errors.Is(err, objstore.ErrNotFound):
				notFound++
			case ctx.Err() != nil:
				return ctx.Err()
			default:
				if pass {
					failed++
				}
				t.MarkDown(err)
			}
			errs = append(errs, fmt.Sprintf("target %d: %v", t.Index+1, err))
			if !errors.Is(err, objstore.ErrNotFound) {
				bad = append(bad, errs[len(errs)-1])
			}
		}
	}
	switch {
	case notFound == len(r.Targets):
		return fmt.Errorf("read %s: %w on any target", name, objstore.ErrNotFound)
	case invalid > 0 && notFound > 0 && invalid+notFound == len(r.Targets):
		return fmt.Errorf("read %s: %w, %w (%s)", name, ErrNoValidCopy, errStray, strings.Join(bad, "; "))
	case invalid > 0 && failed == 0:
		return fmt.Errorf("read %s: %w (%s)", name, ErrNoValidCopy, strings.Join(bad, "; "))
	}
	return fmt.Errorf("read %s: %s", name, strings.Join(errs, "; "))
}

// loadEach reads every object under prefix (the union of the targets'
// listings) with getAny, at most 8 at once, and hands each to open. An
// object that every target has lost since the listing was deleted
// meanwhile and is skipped; so is, with a warning, one that some targets
// lack and none holds a valid copy of (errStray): otherwise one provider
// could stop every backup and prune with an object of its own under
// plans/, deletions/ or locks/.
func (r *Repo) loadEach(ctx context.Context, prefix string, open func(name string, b []byte) error) error {
	_, err := r.loadNew(ctx, prefix, map[string]bool{}, open)
	return err
}

// loadNew is loadEach for the names listed that are not in seen, which it
// adds to seen. It reports whether any of them vanished between the
// listing and the read.
func (r *Repo) loadNew(ctx context.Context, prefix string, seen map[string]bool, open func(name string, b []byte) error) (vanished bool, err error) {
	names, err := r.listAll(ctx, prefix)
	if err != nil {
		return false, err
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, name := range names {
		if seen[name] {
			continue
		}
		seen[name] = true
		g.Go(func() error {
			err := r.getAny(gctx, name, func(b []byte) error {
				mu.Lock()
				defer mu.Unlock()
				return open(name, b)
			})
			switch {
			case errors.Is(err, objstore.ErrNotFound):
				mu.Lock()
				vanished = true
				mu.Unlock()
				return nil
			case errors.Is(err, errStray):
				if _, warned := r.skipped.Swap(name, err.Error()); !warned {
					slog.Warn("skipping an object that some targets lack and none has a valid copy of; ferry verify reports it", "object", name, "error", err)
				}
				return nil
			}
			return err
		})
	}
	err = g.Wait()
	return vanished, err
}

// listAll returns the union of the names under prefix on every reachable
// target, listing them at once.
func (r *Repo) listAll(ctx context.Context, prefix string) ([]string, error) {
	var mu sync.Mutex
	seen := map[string]bool{}
	ok := 0
	var wg sync.WaitGroup
	for _, t := range r.Targets {
		if t.Down() != nil {
			continue
		}
		wg.Go(func() {
			err := t.Store.List(ctx, prefix, func(i objstore.Info) error {
				mu.Lock()
				seen[i.Name] = true
				mu.Unlock()
				return nil
			})
			if err != nil && ctx.Err() == nil {
				t.MarkDown(err)
			}
			if err == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if ok == 0 {
		return nil, fmt.Errorf("list %s: %w", prefix, ErrUnavailable)
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	return names, nil
}
