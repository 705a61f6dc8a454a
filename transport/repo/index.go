package repo

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
)

// An index object lists where chunks live and what every shard of their
// packs must be. Version 2 (written; sealed, associated data "ferry index v2"):
//
//	version (2) || packs (uvarint) || packs × pack
//	pack: pack ID (32) || pack length (uvarint) || shards (uvarint, 0 or k+m) || shards × CRC32C (u32 LE) || entries (uvarint) || entries × entry
//	entry: flags (1: bit 0 = zstd) || chunk ID (32) || offset, length, raw length (uvarints)
//
// A shard's CRC32C covers the whole shard object as stored (header and
// data), so it can be compared with the checksum the store keeps without a
// download. Version 1 (read; associated data "ferry index v1") is the same
// without the shard count and CRCs.
var (
	indexAD   = []byte("ferry index v2")
	indexADv1 = []byte("ferry index v1")
)

// PackInfo describes one pack known to the index.
type PackInfo struct {
	ID     pack.ID
	Length int64
	// ShardCRC holds the CRC32C of each of the k+m shard objects, by shard
	// index; nil when not recorded (a pack indexed by a version 1 index
	// object). It is shared: never modify it.
	ShardCRC []uint32
}

// loc says where a chunk's blob lives: the pack.Entry of a chunk less its
// ID, which is the map's key, in 16 bytes. The index is the largest
// structure a backup or restore keeps per chunk, and it grows with the
// whole repository, not the volume at hand.
type loc struct {
	pack   int32 // position in Index.packs
	offset uint32
	length uint32
	raw    uint32 // RawLength, with rawCompressed set when compressed
}

// rawCompressed marks a compressed blob in loc.raw; pack.MaxRawLength
// leaves the bit free.
const rawCompressed = 1 << 31

func newLoc(pi int32, e pack.Entry) loc {
	l := loc{pack: pi, offset: e.Offset, length: e.Length, raw: e.RawLength}
	if e.Compressed {
		l.raw |= rawCompressed
	}
	return l
}

func (l loc) entry(id chunk.ID) pack.Entry {
	return pack.Entry{ID: id, Offset: l.offset, Length: l.length, RawLength: l.raw &^ rawCompressed, Compressed: l.raw&rawCompressed != 0}
}

// Index maps chunk IDs to their blobs. It is safe for concurrent use.
// In memory it takes 88 to 121 bytes per chunk, as Go's map grows in steps
// (a 48-byte slot and its control byte, and the free slots), measured by
// perf's BenchmarkIndexMemory. An index that LoadIndex reads into
// Repo.IndexCache keeps at most defaultSpillAt entries in memory and the
// rest in runs on the local disk (indexrun.go).
//
// An index from LoadIndex also knows which packs a prune plan marks for
// deletion: Lookup prefers a chunk's copy in an unmarked pack, and Has
// counts only those, so a backup stores a chunk again rather than refer
// to a pack prune may delete.
type Index struct {
	mu     sync.RWMutex
	packs  []PackInfo
	byPack map[pack.ID]int32
	chunks map[chunk.ID]loc // the entries not in runs, newer than theirs
	marks  map[pack.ID]Mark // set before any pack is added

	dir     string // where runs are made; "" keeps every entry in chunks
	spillAt int
	runs    []*run // oldest first
	loading bool   // LoadIndex is adding: spill without merging
	keep    bool   // runs made now are kept for a saved state (indexbase.go)
	// saved is how many entries came from a saved state: LoadIndex
	// counts, tests look.
	saved int
}

// NewIndex returns an empty index that lives in memory.
func NewIndex() *Index {
	return &Index{byPack: map[pack.ID]int32{}, chunks: map[chunk.ID]loc{}}
}

// newDiskIndex returns an empty index that keeps its entries in runs in
// dir beyond spillAt of them.
func newDiskIndex(dir string, spillAt int) *Index {
	x := NewIndex()
	x.dir, x.spillAt = dir, spillAt
	return x
}

func (x *Index) marked(l loc) bool {
	_, m := x.marks[x.packs[l.pack].ID]
	return m
}

// replaces says whether a later copy of a chunk is kept over an earlier
// one: only an unmarked copy over a marked one.
func (x *Index) replaces(kept, later loc) bool { return x.marked(kept) && !x.marked(later) }

// find returns the copy of chunk id that Lookup gives: of the copies in
// the runs (oldest first) and then in the map, the first, unless a later
// one replaces it. The caller holds x.mu.
func (x *Index) find(id chunk.ID) (loc, bool) {
	var best loc
	found := false
	consider := func(l loc) {
		if !found || x.replaces(best, l) {
			best, found = l, true
		}
	}
	for _, r := range x.runs {
		l, ok, err := r.find(id)
		if err != nil {
			// A local read failed: this copy counts as absent, so a backup
			// stores the chunk again and a restore or commit says it is
			// missing, rather than trusting what could not be read.
			x.readFailed(err)
			continue
		}
		if ok {
			consider(l)
			if len(x.marks) == 0 || !x.marked(best) {
				return best, true
			}
		}
	}
	if l, ok := x.chunks[id]; ok {
		consider(l)
	}
	return best, found
}

var runReadFailed sync.Once

func (x *Index) readFailed(err error) {
	runReadFailed.Do(func() {
		slog.Error("reading the local index cache failed; the chunks it holds count as absent (backups store them again)", "dir", x.dir, "error", err)
	})
}

// Lookup returns where chunk id is stored.
func (x *Index) Lookup(id chunk.ID) (PackInfo, pack.Entry, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	l, ok := x.find(id)
	if !ok {
		return PackInfo{}, pack.Entry{}, false
	}
	return x.packs[l.pack], l.entry(id), true
}

// Has reports whether chunk id is stored in a pack a new snapshot may
// refer to: one no prune plan marks for deletion.
func (x *Index) Has(id chunk.ID) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	l, ok := x.find(id)
	return ok && !x.marked(l)
}

// Marked returns the prune plans' mark on pack id, as LoadIndex read them.
// (The marks never change after LoadIndex, so no lock is needed.)
func (x *Index) Marked(id pack.ID) (Mark, bool) {
	m, ok := x.marks[id]
	return m, ok
}

// Len is the number of chunks indexed. A chunk added after LoadIndex
// that a run already holds counts twice.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	n := len(x.chunks)
	for _, r := range x.runs {
		n += r.n
	}
	return n
}

// Packs returns the packs the index knows.
func (x *Index) Packs() []PackInfo {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return append([]PackInfo(nil), x.packs...)
}

// PackCount is how many packs the index knows.
func (x *Index) PackCount() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.packs)
}

// Pack returns what the index knows of pack id.
func (x *Index) Pack(id pack.ID) (PackInfo, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	pi, ok := x.byPack[id]
	if !ok {
		return PackInfo{}, false
	}
	return x.packs[pi], true
}

// AddPack records the entries of one pack. A pack indexed twice keeps its
// first record, gaining shard CRCs from the second if it had none. A chunk
// in several packs keeps its first location, unless that pack is marked
// for deletion and this one is not.
func (x *Index) AddPack(p PackInfo, entries []pack.Entry) {
	x.mu.Lock()
	defer x.mu.Unlock()
	pi, ok := x.byPack[p.ID]
	switch {
	case !ok:
		pi = int32(len(x.packs))
		x.packs = append(x.packs, p)
		x.byPack[p.ID] = pi
	case x.packs[pi].ShardCRC == nil:
		x.packs[pi].ShardCRC = p.ShardCRC
	}
	for _, e := range entries {
		l := newLoc(pi, e)
		if old, dup := x.chunks[e.ID]; dup && !x.replaces(old, l) {
			continue
		}
		x.chunks[e.ID] = l
	}
	if x.dir != "" && len(x.chunks) >= x.spillAt {
		x.spill()
	}
}

// spill writes the map out as a run and merges the newest runs as the
// binary counter asks. On failure the entries stay in memory, where they
// are as good, and the index stops using the disk. The caller holds x.mu.
func (x *Index) spill() {
	if len(x.chunks) == 0 {
		return
	}
	err := x.writeRun()
	for err == nil && !x.loading && len(x.runs) >= 2 && x.runs[len(x.runs)-2].n <= x.runs[len(x.runs)-1].n {
		err = x.mergeFrom(len(x.runs) - 2)
	}
	if err != nil {
		slog.Warn("the local index cache failed; keeping the index in memory", "dir", x.dir, "error", err)
		x.dir = ""
	}
}

func (x *Index) writeRun() error {
	ids := make([]chunk.ID, 0, len(x.chunks))
	locs := make([]loc, 0, len(x.chunks))
	for id, l := range x.chunks {
		ids, locs = append(ids, id), append(locs, l)
	}
	// Sorted through 16-byte keys, the ID's first 8 bytes and its
	// position, which move faster than whole records; IDs are keyed
	// hashes, so equal first bytes are rare.
	type key struct {
		prefix uint64
		i      int
	}
	keys := make([]key, len(ids))
	for i, id := range ids {
		keys[i] = key{binary.BigEndian.Uint64(id[:8]), i}
	}
	slices.SortFunc(keys, func(a, b key) int {
		if a.prefix != b.prefix {
			return cmp.Compare(a.prefix, b.prefix)
		}
		return bytes.Compare(ids[a.i][:], ids[b.i][:])
	})
	w, err := newRunWriter(x.dir, len(ids), x.keep)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := w.add(ids[k.i], locs[k.i]); err != nil {
			w.abort()
			return err
		}
	}
	r, err := w.finish()
	if err != nil {
		return err
	}
	x.runs = append(x.runs, r)
	clear(x.chunks)
	return nil
}

// mergeFrom merges x.runs[i:] into one run. The files of the runs it
// merged that the load made are removed: no state names them.
func (x *Index) mergeFrom(i int) error {
	m, err := mergeRuns(x.dir, x.runs[i:], x.keep, x.replaces)
	if err != nil {
		return err
	}
	for _, r := range x.runs[i:] {
		r.f.Close()
		if x.keep && r.name != "" && !r.adopted {
			os.Remove(filepath.Join(x.dir, r.name))
		}
	}
	x.runs = append(x.runs[:i], m)
	return nil
}

// settle ends LoadIndex for an index with a directory. An index that
// started from a saved state's runs (the first from of x.runs) merges the
// runs the load added into one, and then merges as the binary counter
// does, so that a load rewrites the saved runs only once it has added as
// many entries as they hold. Any other ends as one run, so that lookups
// read one block.
func (x *Index) settle(from int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.loading = false
	if x.dir == "" {
		return
	}
	if len(x.chunks) > 0 {
		if err := x.writeRun(); err != nil {
			slog.Warn("the local index cache failed; keeping the index in memory", "dir", x.dir, "error", err)
			x.dir = ""
			return
		}
	}
	var err error
	if len(x.runs)-from > 1 {
		err = x.mergeFrom(from)
	}
	for err == nil && len(x.runs) >= 2 && x.runs[len(x.runs)-2].n <= x.runs[len(x.runs)-1].n {
		err = x.mergeFrom(len(x.runs) - 2)
	}
	if err != nil {
		// The runs are still good, only more of them are read.
		slog.Warn("merging the local index cache failed", "dir", x.dir, "error", err)
	}
	x.chunks = map[chunk.ID]loc{} // without the spilled map's room
}

// IndexBatch is the content of one index object.
type IndexBatch struct {
	Packs   []PackInfo
	Entries [][]pack.Entry
}

// Add appends one pack's entries.
func (b *IndexBatch) Add(p PackInfo, entries []pack.Entry) {
	b.Packs = append(b.Packs, p)
	b.Entries = append(b.Entries, entries)
}

// Len counts the entries in the batch.
func (b *IndexBatch) Len() int {
	n := 0
	for _, e := range b.Entries {
		n += len(e)
	}
	return n
}

// marshal encodes the batch as version 2. crcs supplies the shard CRCs of
// a pack whose PackInfo has none (nil: not recorded).
func (b *IndexBatch) marshal(crcs func(pack.ID) []uint32) []byte {
	out := []byte{2}
	out = binary.AppendUvarint(out, uint64(len(b.Packs)))
	for i, p := range b.Packs {
		out = append(out, p.ID[:]...)
		out = binary.AppendUvarint(out, uint64(p.Length))
		sums := p.ShardCRC
		if sums == nil && crcs != nil {
			sums = crcs(p.ID)
		}
		out = binary.AppendUvarint(out, uint64(len(sums)))
		for _, c := range sums {
			out = binary.LittleEndian.AppendUint32(out, c)
		}
		out = binary.AppendUvarint(out, uint64(len(b.Entries[i])))
		for _, e := range b.Entries[i] {
			var flags byte
			if e.Compressed {
				flags = 1
			}
			out = append(out, flags)
			out = append(out, e.ID[:]...)
			out = binary.AppendUvarint(out, uint64(e.Offset))
			out = binary.AppendUvarint(out, uint64(e.Length))
			out = binary.AppendUvarint(out, uint64(e.RawLength))
		}
	}
	return out
}

var errIndexFormat = errors.New("malformed index object")

type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint(max uint64) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 || v > max {
		r.err = errIndexFormat
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(n int) []byte {
	if r.err != nil || len(r.b) < n {
		r.err = errIndexFormat
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u32() uint32 {
	if b := r.bytes(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

// ParseIndexBatch parses an index object's plaintext, of version 1 or 2.
func ParseIndexBatch(b []byte) (*IndexBatch, error) {
	r := &reader{b: b}
	version := r.bytes(1)
	if r.err == nil && version[0] != 1 && version[0] != 2 {
		return nil, fmt.Errorf("index version %d: %w", version[0], errIndexFormat)
	}
	// Every pack takes at least 34 bytes (35 in version 2), every entry
	// 36 (flags, ID and three one-byte uvarints), every CRC 4: counts
	// beyond what the bytes can hold are rejected before allocating.
	np := r.uvarint(uint64(len(b)) / 34)
	batch := &IndexBatch{}
	for i := uint64(0); i < np && r.err == nil; i++ {
		var p PackInfo
		copy(p.ID[:], r.bytes(32))
		p.Length = int64(r.uvarint(1 << 40))
		if version[0] == 2 {
			if ns := r.uvarint(min(256, uint64(len(r.b))/4)); ns > 0 {
				p.ShardCRC = make([]uint32, ns)
				for j := range p.ShardCRC {
					p.ShardCRC[j] = r.u32()
				}
			}
		}
		ne := r.uvarint(uint64(len(r.b)) / 36)
		entries := make([]pack.Entry, 0, ne)
		for j := uint64(0); j < ne && r.err == nil; j++ {
			var e pack.Entry
			flags := r.bytes(1)
			copy(e.ID[:], r.bytes(32))
			e.Offset = uint32(r.uvarint(1<<32 - 1))
			e.Length = uint32(r.uvarint(1<<32 - 1))
			e.RawLength = uint32(r.uvarint(pack.MaxRawLength))
			if r.err == nil {
				e.Compressed = flags[0]&1 != 0
				if int64(e.Offset)+int64(e.Length) > p.Length {
					r.err = errIndexFormat
				}
			}
			entries = append(entries, e)
		}
		batch.Add(p, entries)
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = errIndexFormat
	}
	if r.err != nil {
		return nil, r.err
	}
	return batch, nil
}

// WriteIndex seals batch and writes it to every target. A pack given
// without shard CRCs gets those WritePack recorded when this Repo wrote it
// (none otherwise). It keeps a copy in the local index cache, if any. It
// returns the bytes written over all targets.
func (r *Repo) WriteIndex(ctx context.Context, batch *IndexBatch) (int64, error) {
	obj := r.key.Seal(nil, batch.marshal(r.unindexedCRCs), indexAD)
	sum := sha256.Sum256(obj)
	name := "index/" + hex.EncodeToString(sum[:])
	if err := r.putEverywhere(ctx, name, func(*Target) ([]byte, error) { return obj, nil }); err != nil {
		return 0, err
	}
	if dir, err := r.indexDir(); err == nil {
		keepIndex(dir, name, obj) // the next load on this machine need not download it
	}
	x := r.loaded.Load()
	for i, p := range batch.Packs {
		if x != nil {
			if p.ShardCRC == nil {
				p.ShardCRC = r.unindexedCRCs(p.ID)
			}
			x.AddPack(p, batch.Entries[i])
		}
		r.unindexed.Delete(p.ID)
	}
	return int64(len(obj) * r.copies(ctx)), nil
}

func (r *Repo) unindexedCRCs(id pack.ID) []uint32 {
	if v, ok := r.unindexed.Load(id); ok {
		return v.([]uint32)
	}
	return nil
}

// readIndex reads index object name from the local cache in dir, or
// else from a target, caching it.
func (r *Repo) readIndex(ctx context.Context, dir, name string) (*IndexBatch, error) {
	if b := cachedIndex(dir, name); b != nil {
		if batch, err := r.openIndex(b); err == nil {
			return batch, nil
		}
	}
	var batch *IndexBatch
	err := r.getAny(ctx, name, func(b []byte) error {
		var err error
		if batch, err = r.openIndex(b); err == nil {
			keepIndex(dir, name, b)
		}
		return err
	})
	return batch, err
}

// openIndex authenticates and parses a sealed index object of version 2 or 1.
func (r *Repo) openIndex(obj []byte) (*IndexBatch, error) {
	version := byte(2)
	plain, err := r.key.Open(nil, obj, indexAD)
	if err != nil {
		var errV1 error
		if plain, errV1 = r.key.Open(nil, obj, indexADv1); errV1 != nil {
			return nil, err
		}
		version = 1
	}
	// The version inside must be the one the seal names.
	if len(plain) == 0 || plain[0] != version {
		return nil, fmt.Errorf("index sealed as version %d holds another version: %w", version, errIndexFormat)
	}
	batch, err := ParseIndexBatch(plain)
	if err != nil {
		return nil, err
	}
	n := r.Config.Erasure.Shards()
	for _, p := range batch.Packs {
		if p.ShardCRC != nil && len(p.ShardCRC) != n {
			return nil, fmt.Errorf("pack %s: %d shard CRCs, the scheme has %d shards: %w", p.ID.Short(), len(p.ShardCRC), n, errIndexFormat)
		}
	}
	return batch, nil
}

// LoadIndex reads every index object (from any target that has it) and
// the prune plans' marks; index objects and packs that a deletion record
// names are left out, and so, with a warning, are objects under index/
// that no target has a valid copy of (ErrNoValidCopy). An index object
// deleted since the listing (a prune rewrote it, writing its replacement
// first) makes it list again, so the replacement is read.
//
// With Repo.IndexCache, it starts from the index it saved there last time
// and reads only the index objects listed since (indexbase.go), and saves
// the result for the next load.
func (r *Repo) LoadIndex(ctx context.Context) (*Index, error) {
	recs, err := r.deletions(ctx)
	if err != nil {
		return nil, err
	}
	gone := deletingOf(recs)
	plans, err := r.loadPlans(ctx)
	if err != nil {
		return nil, fmt.Errorf("read prune plans: %w", err)
	}
	dir, err := r.indexDir()
	if err != nil {
		slog.Warn("cannot use the local index cache; keeping the index in memory", "error", err)
	}
	marks := mergeMarks(plans)
	basis := stateBasis(marks, gone)
	x := NewIndex()
	var state *indexState
	if dir != "" {
		x = newDiskIndex(dir, loadSpillAt)
		x.loading, x.keep = true, true
		if state, err = r.loadState(dir, basis); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				slog.Info("rebuilding the local index", "dir", dir, "reason", err)
			}
			state = nil
		}
	}
	x.marks = marks
	// read holds the objects read or skipped; covered, those the index
	// holds (a state covers exactly these).
	read, covered := map[string]bool{}, map[string]bool{}
	from := 0          // x.runs[:from] are the saved state's
	stateObjects := -1 // how many objects it covers; -1: no state used
	for round := 1; ; round++ {
		names, err := r.listAll(ctx, "index/")
		if err != nil {
			state.close()
			return nil, err
		}
		if state != nil {
			if x.adopt(state, names) {
				from, stateObjects = len(x.runs), len(state.objects)
				for _, o := range state.objects {
					read[o], covered[o] = true, true
				}
			} else {
				slog.Info("rebuilding the local index", "dir", dir, "reason", "an index object it covers is gone")
				state.close()
			}
			state = nil
		}
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(8)
		var mu sync.Mutex
		var bad []string
		vanished := false
		for _, name := range names {
			if read[name] || gone.Objects[name] {
				continue
			}
			read[name] = true
			g.Go(func() error {
				batch, err := r.readIndex(gctx, dir, name)
				switch {
				case err == nil:
				case gctx.Err() != nil:
					return gctx.Err()
				case errors.Is(err, objstore.ErrNotFound):
					mu.Lock()
					vanished = true
					mu.Unlock()
					return nil
				case errors.Is(err, ErrNoValidCopy):
					// Not an index object of this repository, or one lost
					// everywhere: either way it indexes nothing. A backup
					// then stores its chunks again; a restore that needs
					// them says which are missing.
					slog.Warn("skipping an index object that no target has a valid copy of; ferry verify reports it", "object", name, "error", err)
					return nil
				default:
					mu.Lock()
					bad = append(bad, err.Error())
					mu.Unlock()
					return nil
				}
				for i, p := range batch.Packs {
					if !gone.Packs[p.ID] {
						x.AddPack(p, batch.Entries[i])
					}
				}
				mu.Lock()
				covered[name] = true
				mu.Unlock()
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
		if len(bad) > 0 {
			return nil, fmt.Errorf("unreadable index objects: %s", strings.Join(bad, "; "))
		}
		if !vanished || round == 3 {
			break
		}
	}
	if x.dir != "" {
		x.settle(from)
		x.keep = false
		// Save unless the state was used as it is.
		if x.dir != "" && (stateObjects < 0 || len(covered) > stateObjects) {
			if err := r.saveState(dir, basis, x, slices.Collect(maps.Keys(covered))); err != nil {
				slog.Warn("could not save the local index; the next command rebuilds it", "dir", dir, "error", err)
			}
		}
	}
	if dir != "" {
		for name := range gone.Objects {
			delete(read, name)
		}
		uncache(dir, read)
		uncacheSegments(dir, x)
	}
	r.loaded.Store(x)
	return x, nil
}

// loadSpillAt is the spillAt of the indexes LoadIndex makes; tests lower it.
var loadSpillAt = defaultSpillAt

// adopt starts x, empty, from state, if every index object the state
// covers is among names.
func (x *Index) adopt(state *indexState, names []string) bool {
	listed := make(map[string]bool, len(names))
	for _, n := range names {
		listed[n] = true
	}
	for _, o := range state.objects {
		if !listed[o] {
			return false
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.packs = state.packs
	for i, p := range x.packs {
		x.byPack[p.ID] = int32(i)
	}
	x.runs = state.runs
	for _, r := range x.runs {
		r.adopted = true
		x.saved += r.n
	}
	return true
}
