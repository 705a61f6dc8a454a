package repo

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
)

// TestLoadIndexState: LoadIndex with a cache saves the index it built and
// the next load starts from it, reading only the index objects written
// since, and answers every lookup as an index built afresh in memory
// does. It builds afresh, and answers alike, when a prune plan marks
// another pack (one that holds the only copy the saved index kept of a
// chunk stored twice), when a deletion record names a pack, when an
// object the state covers is gone, and when the state or a run is
// damaged. Runs no state names are removed once old.
func TestLoadIndexState(t *testing.T) {
	// Spills and merges at every few chunks: loads that add to a state
	// make runs and merge them with its own.
	defer func(n int) { loadSpillAt = n }(loadSpillAt)
	loadSpillAt = 3
	ctx := context.Background()
	stores := memStores(3)
	w := initRepo(t, stores) // writes without a cache
	var ids []chunk.ID
	store := func(data ...string) pack.ID {
		var bs [][]byte
		for _, d := range data {
			bs = append(bs, []byte(d))
		}
		got, p := storePack(t, w, bs...)
		ids = append(ids, got...)
		return p
	}
	// "twice" is stored in two packs: a plan marking the pack of the copy
	// a load kept makes the other the one to use.
	store("twice", "a")
	store("twice", "b")
	twice := ids[0]
	for i := range 5 {
		store(fmt.Sprintf("chunk %d", i), fmt.Sprintf("chunk %d'", i))
	}
	var gets atomic.Int64
	counted := make([]objstore.Store, len(stores))
	for i, s := range stores {
		counted[i] = countingStore{s, "index/", &gets}
	}
	cache := t.TempDir()
	var dir string
	strayRuns := false
	// stateRuns returns the paths of the runs the state names.
	stateRuns := func() []string {
		sealed, err := os.ReadFile(filepath.Join(dir, stateName))
		if err != nil {
			t.Fatal(err)
		}
		plain, err := w.key.Open(nil, sealed, stateAD)
		if err != nil {
			t.Fatal(err)
		}
		s, err := parseState(plain)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range s.runs {
			out = append(out, filepath.Join(dir, r.name))
		}
		return out
	}
	// load loads the index through a fresh Repo with the cache and checks
	// it against one built in memory; it returns the index and how many
	// index objects it downloaded.
	load := func(stage string) (*Index, int64) {
		t.Helper()
		r, err := Open(ctx, counted, []byte("pw"))
		if err != nil {
			t.Fatal(err)
		}
		r.IndexCache = cache
		dir = filepath.Join(cache, r.Config.ID)
		gets.Store(0)
		x, err := r.LoadIndex(ctx)
		if err != nil {
			t.Fatalf("%s: %v", stage, err)
		}
		n := gets.Load()
		mem, err := Open(ctx, stores, []byte("pw"))
		if err != nil {
			t.Fatal(err)
		}
		want, err := mem.LoadIndex(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if x.Len() != want.Len() {
			t.Fatalf("%s: %d chunks, want %d", stage, x.Len(), want.Len())
		}
		// On the disk: the state's runs, and no others unless a state
		// that named them did not open.
		named := map[string]bool{}
		for _, p := range stateRuns() {
			named[filepath.Base(p)] = true
		}
		es, _ := os.ReadDir(dir)
		for _, e := range es {
			if n := e.Name(); strings.HasPrefix(n, runPrefix) && !named[n] && !strayRuns {
				t.Fatalf("%s: run file %s left that the state does not name (state: %v)", stage, n, named)
			}
		}
		for _, id := range ids {
			// Of a chunk's copies, which one an index keeps depends on
			// the order the objects were read in: the same chunk, in a
			// pack as marked or not as the one the other keeps.
			gp, ge, gok := x.Lookup(id)
			wp, we, wok := want.Lookup(id)
			_, gm := x.Marked(gp.ID)
			_, wm := want.Marked(wp.ID)
			if gok != wok || ge.ID != we.ID || gm != wm || x.Has(id) != want.Has(id) {
				t.Fatalf("%s: Lookup(%s) = %s %v (marked %v), want %s %v (marked %v)", stage, id.Short(), gp.ID.Short(), gok, gm, wp.ID.Short(), wok, wm)
			}
		}
		return x, n
	}
	objects := int64(count(t, stores[0], "index/"))
	if x, n := load("first load"); x.saved != 0 || n != objects {
		t.Fatalf("first load: %d entries from a state, %d of %d objects downloaded", x.saved, n, objects)
	}
	if _, err := os.Stat(filepath.Join(dir, stateName)); err != nil {
		t.Fatalf("no state saved: %v", err)
	}
	x, n := load("from the state")
	if x.saved != x.Len() || n != 0 {
		t.Fatalf("load from the state: %d of %d entries from it, %d objects downloaded", x.saved, x.Len(), n)
	}

	// Objects written since are read, and the next state covers them.
	store("later", "later'")
	store("later still")
	if x, n := load("two objects more"); x.saved == 0 || n != 2 {
		t.Fatalf("load with two new objects: %d entries from the state, %d objects downloaded, want 2", x.saved, n)
	}
	if x, _ = load("and again"); x.saved != x.Len() {
		t.Fatalf("the state does not cover the new objects: %d of %d entries from it", x.saved, x.Len())
	}

	// rebuilt loads once more and checks that it built afresh, and that
	// the load after it used the new state.
	rebuilt := func(stage string) {
		t.Helper()
		if x, _ := load(stage); x.saved != 0 {
			t.Fatalf("%s: %d entries from an outdated state", stage, x.saved)
		}
		if x, _ := load(stage + ", then"); x.saved != x.Len() {
			t.Fatalf("%s, then: %d of %d entries from the state", stage, x.saved, x.Len())
		}
	}
	kept, _, _ := x.Lookup(twice)
	if _, err := w.writePlan(ctx, &Plan{Created: time.Now(), Marks: map[pack.ID]Mark{kept.ID: {Marked: time.Now(), Deletable: time.Now().Add(time.Hour)}}}); err != nil {
		t.Fatal(err)
	}
	rebuilt("the pack of a kept copy marked")
	gonePack := store("in a pack a deletion record names")
	load("before the deletion record")
	if _, err := w.writeDeletion(ctx, &Deletion{Created: time.Now(), Packs: []string{gonePack.String()}}); err != nil {
		t.Fatal(err)
	}
	rebuilt("a deletion record")

	// An index object the state covers deleted everywhere, as by hand.
	var victim string
	if err := stores[0].List(ctx, "index/", func(i objstore.Info) error { victim = i.Name; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, s := range stores {
		if err := s.Delete(ctx, victim); err != nil {
			t.Fatal(err)
		}
	}
	rebuilt("an object gone")

	// Damage: a flipped byte in a run, a run cut short, a run missing, a
	// state that does not open. Each is rebuilt.
	for _, damage := range []struct {
		name string
		do   func(path string) error
	}{
		{"a byte of a run flipped", func(path string) error {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			b[len(b)/2] ^= 1
			return os.WriteFile(path, b, 0o600)
		}},
		{"a run cut short", func(path string) error { return os.Truncate(path, recSize) }},
		{"a run gone", os.Remove},
		{"the state damaged", func(string) error {
			strayRuns = true // its runs are left for removeOrphanRuns
			path := filepath.Join(dir, stateName)
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			b[len(b)-1] ^= 1
			return os.WriteFile(path, b, 0o600)
		}},
	} {
		rs := stateRuns()
		if len(rs) != 1 {
			t.Fatalf("before %s: %d run files, want the state's one", damage.name, len(rs))
		}
		if err := damage.do(rs[0]); err != nil {
			t.Fatal(err)
		}
		rebuilt(damage.name)
	}

	// A run no state names is removed once it is an hour old, not before.
	old, young := filepath.Join(dir, runPrefix+"old"), filepath.Join(dir, runPrefix+"young")
	for _, p := range []string{old, young} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	hourAgo := time.Now().Add(-orphanAge - time.Minute)
	if err := os.Chtimes(old, hourAgo, hourAgo); err != nil {
		t.Fatal(err)
	}
	store("one more")
	load("saving a new state")
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Fatalf("an old run no state names is still there: %v", err)
	}
	if _, err := os.Stat(young); err != nil {
		t.Fatalf("a young run was removed: %v", err)
	}
}

// FuzzParseState: a state's plaintext is authenticated before it is
// parsed, but a malformed one (a bug, a format change) must be an error,
// never a panic, and what parses marshals to a state that parses alike.
func FuzzParseState(f *testing.F) {
	x := newDiskIndex(f.TempDir(), 2)
	x.keep = true
	for p := range 3 {
		es := []pack.Entry{{ID: chunk.ID{byte(p), 1}, Length: 1, RawLength: 1}, {ID: chunk.ID{byte(p), 2}, Length: 1, RawLength: 1}}
		x.AddPack(PackInfo{ID: pack.ID{byte(p)}, Length: 10, ShardCRC: []uint32{1, 2, 3}}, es)
	}
	x.settle(0)
	s := &indexState{basis: [32]byte{9}, objects: []string{"index/" + strings.Repeat("ab", 32)}, packs: x.packs, runs: x.runs}
	f.Add(s.marshal())
	f.Add((&indexState{}).marshal())
	f.Add([]byte{stateFormat})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseState(b)
		if err != nil {
			return
		}
		again, err := parseState(s.marshal())
		if err != nil || again.basis != s.basis || len(again.objects) != len(s.objects) || len(again.packs) != len(s.packs) || len(again.runs) != len(s.runs) {
			t.Fatalf("re-parse: %v", err)
		}
		for i, r := range s.runs {
			if a := again.runs[i]; a.name != r.name || a.n != r.n || a.sum != r.sum || len(a.filter) != len(r.filter) || len(a.firsts) != len(r.firsts) {
				t.Fatalf("run %d re-parsed as %+v, was %+v", i, a, r)
			}
		}
	})
}
