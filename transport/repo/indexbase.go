package repo

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/pack"
)

// The saved index. Rebuilding the index from the copies of its objects
// costs every command time in proportion to the whole repository (0.86 s
// at 1.5 million chunks): a backup of a few changed megabytes would pay
// for every chunk ever stored. So LoadIndex keeps, beside the copies,
//
//	index-state    sealed (associated data "ferry index cache v1"): the
//	               index objects it covers, the packs, and its runs
//	index-run-*    those runs: sorted records, as in memory (indexrun.go)
//
// and the next load starts from them, reading only the index objects
// listed since. The state holds, for each run, its file's name, its
// record count, the SHA-256 of its records (checked when loaded), its
// blocks' first IDs and its Bloom filter.
//
// A state is used only as it was made: with the same marked packs and the
// same deletions (its basis, since they decide which copy of a chunk a
// merge keeps and which packs are left out), and when every index object
// it covers is still listed. Otherwise, or when anything of it does not
// read, authenticate or match, LoadIndex builds the index afresh, as it
// did before there were states; a state costs at most the time to find
// that out. After a prune, each machine therefore rebuilds once.
//
// Files are never rewritten: a new state is written beside the old one and
// renamed over it, and its runs are new files. The runs of the state it
// replaced that it does not keep are removed then; a process that opened
// them keeps reading them, and one about to open them rebuilds. Other runs
// no state names (a process stopped before it saved, or whose state was
// replaced) are removed once they are an hour old: younger, they may
// belong to a state about to be written.
const (
	stateName   = "index-state"
	runPrefix   = "index-run-"
	stateFormat = 1
	// orphanAge is how old a run file no state names must be to be removed.
	orphanAge = time.Hour
)

var stateAD = []byte("ferry index cache v1")

// indexState is what a state file holds.
type indexState struct {
	basis   [32]byte
	objects []string // index object names, sorted
	packs   []PackInfo
	runs    []*run // open only once loadState checked them
}

// stateBasis digests what decides how an index is built besides its
// objects: the packs prune plans mark, and the index objects and packs
// that deletion records name.
func stateBasis(marks map[pack.ID]Mark, gone *Deleting) [32]byte {
	h := sha256.New()
	ids := func(tag byte, ps []pack.ID) {
		slices.SortFunc(ps, func(a, b pack.ID) int { return bytes.Compare(a[:], b[:]) })
		h.Write([]byte{tag})
		h.Write(binary.AppendUvarint(nil, uint64(len(ps))))
		for _, id := range ps {
			h.Write(id[:])
		}
	}
	marked := make([]pack.ID, 0, len(marks))
	for id := range marks {
		marked = append(marked, id)
	}
	ids('m', marked)
	var gonePacks []pack.ID
	var goneObjects []string
	if gone != nil {
		for id := range gone.Packs {
			gonePacks = append(gonePacks, id)
		}
		for o := range gone.Objects {
			if strings.HasPrefix(o, "index/") { // not the manifests forget deletes
				goneObjects = append(goneObjects, o)
			}
		}
	}
	ids('p', gonePacks)
	slices.Sort(goneObjects)
	h.Write([]byte{'o'})
	for _, o := range goneObjects {
		h.Write([]byte(o))
		h.Write([]byte{0})
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

func (s *indexState) marshal() []byte {
	out := []byte{stateFormat}
	out = append(out, s.basis[:]...)
	out = binary.AppendUvarint(out, uint64(len(s.objects)))
	for _, o := range s.objects {
		id, _ := hex.DecodeString(strings.TrimPrefix(o, "index/"))
		out = append(out, id...)
	}
	packs := (&IndexBatch{Packs: s.packs, Entries: make([][]pack.Entry, len(s.packs))}).marshal(nil)
	out = binary.AppendUvarint(out, uint64(len(packs)))
	out = append(out, packs...)
	out = binary.AppendUvarint(out, uint64(len(s.runs)))
	for _, r := range s.runs {
		out = binary.AppendUvarint(out, uint64(len(r.name)))
		out = append(out, r.name...)
		out = binary.AppendUvarint(out, uint64(r.n))
		out = append(out, r.sum[:]...)
		out = binary.AppendUvarint(out, uint64(len(r.filter)))
		for _, w := range r.filter {
			out = binary.LittleEndian.AppendUint64(out, w)
		}
		for _, id := range r.firsts {
			out = append(out, id[:]...)
		}
	}
	return out
}

var errStateFormat = errors.New("malformed index state")

func parseState(b []byte) (*indexState, error) {
	r := &reader{b: b}
	if v := r.bytes(1); r.err == nil && v[0] != stateFormat {
		return nil, fmt.Errorf("index state format %d: %w", v[0], errStateFormat)
	}
	s := &indexState{}
	copy(s.basis[:], r.bytes(32))
	no := r.uvarint(uint64(len(b)) / 32)
	for range no {
		if id := r.bytes(32); id != nil {
			s.objects = append(s.objects, "index/"+hex.EncodeToString(id))
		}
	}
	if pb := r.bytes(int(r.uvarint(uint64(len(b))))); r.err == nil {
		batch, err := ParseIndexBatch(pb)
		if err != nil {
			return nil, err
		}
		s.packs = batch.Packs
	}
	nr := r.uvarint(64)
	for range nr {
		run := &run{name: string(r.bytes(int(r.uvarint(64))))}
		run.n = int(r.uvarint(uint64(len(b))))
		copy(run.sum[:], r.bytes(32))
		nw := r.uvarint(uint64(len(r.b)) / 8)
		if r.err != nil {
			break
		}
		if !strings.HasPrefix(run.name, runPrefix) || filepath.Base(run.name) != run.name || nw != uint64(filterWords(run.n)) {
			return nil, errStateFormat
		}
		run.filter = make([]uint64, nw)
		for i := range run.filter {
			if w := r.bytes(8); w != nil {
				run.filter[i] = binary.LittleEndian.Uint64(w)
			}
		}
		nb := (run.n + blockRecs - 1) / blockRecs
		if nb*32 > len(r.b) {
			return nil, errStateFormat
		}
		run.firsts = make([]chunk.ID, nb)
		for i := range run.firsts {
			copy(run.firsts[i][:], r.bytes(32))
		}
		s.runs = append(s.runs, run)
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = errStateFormat
	}
	if r.err != nil {
		return nil, errStateFormat
	}
	return s, nil
}

// loadState reads the state in dir and opens its runs, if it was made on
// basis. A run whose records are not those the state describes (its size,
// its SHA-256, the first IDs of its blocks, their order) fails it.
func (r *Repo) loadState(dir string, basis [32]byte) (*indexState, error) {
	s, err := r.readState(dir)
	if err != nil {
		return nil, err
	}
	if s.basis != basis {
		return nil, errors.New("index state made before the latest prune")
	}
	for i, run := range s.runs {
		if err := openRun(dir, run, len(s.packs)); err != nil {
			for _, opened := range s.runs[:i] {
				opened.f.Close()
			}
			return nil, err
		}
	}
	return s, nil
}

// readState reads and parses the state in dir, without opening its runs.
func (r *Repo) readState(dir string) (*indexState, error) {
	sealed, err := os.ReadFile(filepath.Join(dir, stateName))
	if err != nil {
		return nil, err
	}
	plain, err := r.key.Open(nil, sealed, stateAD)
	if err != nil {
		return nil, fmt.Errorf("index state: %w", err)
	}
	return parseState(plain)
}

// openRun opens a run's file and checks its records against what the
// state says of them, reading it once (which also brings it into the page
// cache for the lookups to come).
func openRun(dir string, run *run, packs int) error {
	f, err := os.Open(filepath.Join(dir, run.name))
	if err != nil {
		return err
	}
	bad := func(why string) error {
		f.Close()
		return fmt.Errorf("index state: run %s %s", run.name, why)
	}
	h := sha256.New()
	rr := &runReader{r: bufio.NewReaderSize(f, 256<<10), left: run.n}
	var prev chunk.ID
	for i := 0; ; i++ {
		ok, err := rr.next()
		if err != nil {
			f.Close()
			return err
		}
		if !ok {
			break
		}
		h.Write(rr.rec[:])
		if (i > 0 && bytes.Compare(prev[:], rr.id[:]) >= 0) || rr.l.pack < 0 || int(rr.l.pack) >= packs {
			return bad("holds a record out of order or of an unknown pack")
		}
		if i%blockRecs == 0 && run.firsts[i/blockRecs] != rr.id {
			return bad("does not start its blocks where the state says")
		}
		prev = rr.id
	}
	if _, err := f.Read(make([]byte, 1)); err != io.EOF {
		return bad("is longer than the state says")
	}
	if !bytes.Equal(h.Sum(nil), run.sum[:]) {
		return bad("does not hold the records the state names")
	}
	run.f = f
	return nil
}

// saveState writes the state of x, which covers objects, in place of the
// state in dir, and removes the runs the replaced state named that x does
// not keep, and the old runs no state names. Failing costs the next load
// a rebuild only.
func (r *Repo) saveState(dir string, basis [32]byte, x *Index, objects []string) error {
	replaced, _ := r.readState(dir)
	x.mu.RLock()
	s := &indexState{basis: basis, objects: slices.Sorted(slices.Values(objects)), packs: x.packs, runs: x.runs}
	for _, run := range s.runs {
		if run.name == "" {
			x.mu.RUnlock()
			return errors.New("a run of the index is not kept")
		}
	}
	plain := s.marshal()
	x.mu.RUnlock()
	if err := writeRenamed(filepath.Join(dir, stateName), ".tmp-state-*", r.key.Seal(nil, plain, stateAD)); err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, run := range s.runs {
		keep[run.name] = true
	}
	if replaced != nil {
		// A process that opened them reads on; one about to rebuilds.
		for _, run := range replaced.runs {
			if !keep[run.name] {
				os.Remove(filepath.Join(dir, run.name))
			}
		}
	}
	removeOrphanRuns(dir, keep)
	return nil
}

// removeOrphanRuns removes the run files in dir that keep does not name,
// and the temporary states of processes that stopped, once they are
// orphanAge old.
func removeOrphanRuns(dir string, keep map[string]bool) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !(strings.HasPrefix(name, runPrefix) || strings.HasPrefix(name, ".tmp-state-")) || keep[name] {
			continue
		}
		if info, err := e.Info(); err != nil || time.Since(info.ModTime()) < orphanAge {
			continue
		}
		os.Remove(filepath.Join(dir, name))
	}
}

// close closes the runs of a state that is not used; s may be nil.
func (s *indexState) close() {
	if s == nil {
		return
	}
	for _, run := range s.runs {
		run.f.Close()
	}
}
