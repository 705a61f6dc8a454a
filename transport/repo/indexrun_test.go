package repo

import (
	"context"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
)

// sameIndex checks that x answers Lookup and Has for every ID in ids as
// want does.
func sameIndex(t *testing.T, stage string, x, want *Index, ids []chunk.ID) {
	t.Helper()
	for _, id := range ids {
		gp, ge, gok := x.Lookup(id)
		wp, we, wok := want.Lookup(id)
		if gok != wok || ge != we || gp.ID != wp.ID {
			t.Fatalf("%s: Lookup(%s) = %s %+v %v, want %s %+v %v", stage, id.Short(), gp.ID.Short(), ge, gok, wp.ID.Short(), we, wok)
		}
		if g, w := x.Has(id), want.Has(id); g != w {
			t.Fatalf("%s: Has(%s) = %v, want %v", stage, id.Short(), g, w)
		}
	}
}

func randomID(rng *rand.Rand) (id chunk.ID) {
	for i := range id {
		id[i] = byte(rng.UintN(256))
	}
	return id
}

// addTestPack adds pack number p, of n chunks with random IDs, to x and
// returns their IDs.
func addTestPack(x *Index, rng *rand.Rand, p, n int) []chunk.ID {
	es := make([]pack.Entry, n)
	ids := make([]chunk.ID, n)
	for e := range es {
		ids[e] = randomID(rng)
		es[e] = pack.Entry{ID: ids[e], Offset: uint32(e), Length: 1, RawLength: 1}
	}
	x.AddPack(PackInfo{ID: pack.ID{byte(p), byte(p >> 8), 0xbb}, Length: 1 << 20}, es)
	return ids
}

// TestDiskIndexMatchesMemory adds the same packs, with chunks in several
// packs and some packs marked for deletion, to an index that spills to
// runs every few entries and to one in memory: both must answer alike
// at every stage, the runs must stay few, and settling must leave one
// run and nothing in memory.
func TestDiskIndexMatchesMemory(t *testing.T) {
	for _, withMarks := range []bool{false, true} {
		t.Run(fmt.Sprintf("marks=%v", withMarks), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, uint64(len(fmt.Sprint(withMarks)))))
			pool := make([]chunk.ID, 3000)
			for i := range pool {
				pool[i] = randomID(rng)
			}
			absent := make([]chunk.ID, 200)
			for i := range absent {
				absent[i] = pool[i]
				absent[i][31] ^= 0xff // not in the pool, but close to its IDs
			}
			const spillAt = 97
			mem, disk := NewIndex(), newDiskIndex(t.TempDir(), spillAt)
			var marks map[pack.ID]Mark
			if withMarks {
				marks = map[pack.ID]Mark{}
			}
			var packs []PackInfo
			var entries [][]pack.Entry
			for p := range 120 {
				info := PackInfo{ID: pack.ID{byte(p), byte(p >> 8), 0xaa}, Length: 1 << 20}
				if withMarks && p%3 == 0 {
					marks[info.ID] = Mark{}
				}
				var es []pack.Entry
				for e := range 1 + rng.IntN(60) {
					es = append(es, pack.Entry{ID: pool[rng.IntN(len(pool))], Offset: uint32(e * 100), Length: 90, RawLength: uint32(rng.IntN(1 << 20)), Compressed: rng.IntN(2) == 0})
				}
				packs, entries = append(packs, info), append(entries, es)
			}
			mem.marks, disk.marks = marks, marks
			maxRuns := 0
			for i := range packs {
				mem.AddPack(packs[i], entries[i])
				disk.AddPack(packs[i], entries[i])
				maxRuns = max(maxRuns, len(disk.runs))
				if i%17 == 0 {
					sameIndex(t, fmt.Sprintf("after pack %d", i), disk, mem, pool)
				}
			}
			if len(disk.runs) == 0 {
				t.Fatal("nothing was spilled to runs")
			}
			if limit := 2 + bits.Len(uint(mem.Len()/spillAt)); maxRuns > limit {
				t.Errorf("%d runs at once for %d chunks, want at most %d", maxRuns, mem.Len(), limit)
			}
			sameIndex(t, "before settle", disk, mem, append(pool, absent...))
			disk.settle(0)
			if len(disk.runs) != 1 || len(disk.chunks) != 0 {
				t.Fatalf("settled: %d runs and %d entries in memory, want 1 and 0", len(disk.runs), len(disk.chunks))
			}
			if disk.Len() != mem.Len() {
				t.Fatalf("settled Len %d, want %d", disk.Len(), mem.Len())
			}
			sameIndex(t, "settled", disk, mem, append(pool, absent...))
			// What a backup adds after the load goes to memory and is
			// found there; a chunk a run holds keeps the run's copy.
			extra := PackInfo{ID: pack.ID{0xee}, Length: 1 << 20}
			more := []pack.Entry{{ID: absent[0], Length: 5, RawLength: 9}, {ID: pool[0], Length: 7, RawLength: 11}}
			mem.AddPack(extra, more)
			disk.AddPack(extra, more)
			sameIndex(t, "added after settle", disk, mem, append(pool, absent...))
		})
	}
}

// countingStore counts the reads, whole or of a range, of objects under
// prefix.
type countingStore struct {
	objstore.Store
	prefix string
	n      *atomic.Int64
}

func (c countingStore) Get(ctx context.Context, name string) ([]byte, error) {
	if strings.HasPrefix(name, c.prefix) {
		c.n.Add(1)
	}
	return c.Store.Get(ctx, name)
}

func (c countingStore) GetRange(ctx context.Context, name string, off, length int64) ([]byte, error) {
	if strings.HasPrefix(name, c.prefix) {
		c.n.Add(1)
	}
	return c.Store.GetRange(ctx, name, off, length)
}

// TestLoadIndexCache: LoadIndex with Repo.IndexCache keeps the index
// objects on the local disk and reads them from there the next time,
// replaces a damaged copy, drops the copies of objects gone from the
// targets, leaves no run files behind in view, and still works, in
// memory, when the cache directory cannot be made.
func TestLoadIndexCache(t *testing.T) {
	ctx := context.Background()
	stores := memStores(3)
	w := initRepo(t, stores)
	var ids []chunk.ID
	for i := range 4 {
		ids = append(ids, storeChunks(t, w, []byte(fmt.Sprintf("chunk %d a", i)), []byte(fmt.Sprintf("chunk %d b", i)))...)
	}
	var gets atomic.Int64
	counted := make([]objstore.Store, len(stores))
	for i, s := range stores {
		counted[i] = countingStore{s, "index/", &gets}
	}
	open := func() *Repo {
		r, err := Open(ctx, counted, []byte("pw"))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// load loads r's index, checks that it finds every chunk, and that it
	// read downloads index objects from the targets.
	load := func(stage string, r *Repo, downloads int) *Index {
		t.Helper()
		gets.Store(0)
		x, err := r.LoadIndex(ctx)
		if err != nil {
			t.Fatalf("%s: %v", stage, err)
		}
		for _, id := range ids {
			if !x.Has(id) {
				t.Fatalf("%s: chunk %s not found", stage, id.Short())
			}
		}
		if got := gets.Load(); got != int64(downloads) {
			t.Fatalf("%s read %d index objects from the targets, want %d", stage, got, downloads)
		}
		return x
	}
	cache := t.TempDir()
	r := open()
	r.IndexCache = cache
	objects := count(t, stores[0], "index/")
	x := load("first load", r, objects)
	if len(x.runs) != 1 || len(x.chunks) != 0 {
		t.Fatalf("loaded: %d runs, %d entries in memory; want 1 and 0", len(x.runs), len(x.chunks))
	}
	dir := filepath.Join(cache, r.Config.ID, "index")
	cached, err := os.ReadDir(dir)
	if err != nil || len(cached) != objects {
		t.Fatalf("cache holds %d objects (%v), want %d", len(cached), err, objects)
	}

	// The next load reads nothing from the targets.
	r = open()
	r.IndexCache = cache
	load("cached load", r, 0)

	// Without the saved index (indexbase.go), a damaged copy is read
	// again from a target and replaced; the copy of an object no target
	// lists any more is removed.
	if err := os.Remove(filepath.Join(cache, r.Config.ID, stateName)); err != nil {
		t.Fatal(err)
	}
	damaged := filepath.Join(dir, cached[0].Name())
	good, _ := os.ReadFile(damaged)
	bad := append([]byte(nil), good...)
	bad[len(bad)/2] ^= 1
	if err := os.WriteFile(damaged, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, strings.Repeat("ab", 32))
	if err := os.WriteFile(stale, good, 0o600); err != nil {
		t.Fatal(err)
	}
	load("load with a damaged copy", r, 1)
	if now, _ := os.ReadFile(damaged); string(now) != string(good) {
		t.Fatal("the damaged copy was not replaced")
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("the copy of an object the targets do not list is still there: %v", err)
	}
	left, _ := os.ReadDir(filepath.Join(cache, r.Config.ID))
	for _, e := range left {
		if n := e.Name(); n != "index" && n != "segments" && n != stateName && n != usedMarker && !strings.HasPrefix(n, runPrefix) {
			t.Fatalf("cache directory holds %s", n)
		}
	}

	// What this machine writes is cached as it is written.
	ids = append(ids, storeChunks(t, r, []byte("written with the cache"))...)
	load("load after a write", r, 0)

	// A cache that cannot be made leaves the index in memory.
	blocked := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocked, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r = open()
	r.IndexCache = blocked
	x = load("no cache", r, count(t, stores[0], "index/"))
	if len(x.runs) != 0 {
		t.Fatalf("%d runs without a cache directory", len(x.runs))
	}
}

func TestIsIndexName(t *testing.T) {
	good := "index/" + strings.Repeat("0a", 32)
	for name, want := range map[string]bool{
		good:                      true,
		strings.ToUpper(good):     false,
		"index/../../etc/passwd":  false,
		"index/" + good[6:70]:     true,
		good + "0":                false,
		"index/" + good[7:] + "g": false,
		"snapshots/" + good[6:]:   false,
	} {
		if got := isIndexName(name); got != want {
			t.Errorf("isIndexName(%q) = %v, want %v", name, got, want)
		}
	}
}

// TestRunFilter: a run's Bloom filter answers yes for every ID the run
// holds and no for about 99% of others, so most lookups of new chunks
// read nothing.
func TestRunFilter(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const n = 20000
	f := newFilter(n)
	in := make([]chunk.ID, n)
	for i := range in {
		in[i] = randomID(rng)
		filterProbe(f, in[i], true)
	}
	for _, id := range in {
		if !filterProbe(f, id, false) {
			t.Fatalf("the filter lost %s", id.Short())
		}
	}
	yes := 0
	for range n {
		if filterProbe(f, randomID(rng), false) {
			yes++
		}
	}
	if rate := float64(yes) / n; rate > 0.02 {
		t.Fatalf("the filter lets %.1f%% of absent IDs through, want about 1%%", 100*rate)
	}
}

// TestDiskIndexConcurrent: lookups while packs are added, spilled and
// merged (as a backup's workers ask Has while WriteIndex adds) see every
// chunk added before they asked. Run it with -race.
func TestDiskIndexConcurrent(t *testing.T) {
	x := newDiskIndex(t.TempDir(), 50)
	const packs = 80
	added := make(chan []chunk.ID, packs)
	go func() {
		defer close(added)
		rng := rand.New(rand.NewPCG(5, 6))
		for p := range packs {
			added <- addTestPack(x, rng, p, 20)
		}
	}()
	var seen []chunk.ID
	for ids := range added {
		seen = append(seen, ids...)
		for _, id := range seen {
			if !x.Has(id) {
				t.Fatalf("chunk %x missing after %d chunks were added", id[:3], len(seen))
			}
		}
	}
	if len(x.runs) == 0 {
		t.Fatal("nothing was spilled")
	}
}

// TestDiskIndexSpillFails: when the directory goes away, the runs already
// made still answer, new entries stay in memory (settle keeps them), and
// nothing is lost.
func TestDiskIndexSpillFails(t *testing.T) {
	dir := t.TempDir()
	x := newDiskIndex(dir, 10)
	x.loading = true
	rng := rand.New(rand.NewPCG(7, 8))
	var ids []chunk.ID
	add := func(p int) { ids = append(ids, addTestPack(x, rng, p, 8)...) }
	for p := range 5 {
		add(p)
	}
	if len(x.runs) == 0 {
		t.Fatal("nothing was spilled")
	}
	if len(x.chunks) == 0 {
		t.Fatal("the map is empty before settle; the test needs entries there")
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	x.settle(0) // its spill fails
	if x.dir != "" {
		t.Fatalf("the index still uses %s after failing to write there", x.dir)
	}
	for p := 5; p < 10; p++ {
		add(p)
	}
	for _, id := range ids {
		if !x.Has(id) {
			t.Fatalf("chunk %x lost when the directory went away", id[:2])
		}
	}
}
