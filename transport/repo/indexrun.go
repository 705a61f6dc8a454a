package repo

import (
	"bufio"
	"bytes"
	"container/heap"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/ferrydr/ferry/chunk"
)

// The index on the local disk. As a Go map the index takes about 100 bytes
// of heap per chunk of the whole repository, whatever the volume at hand,
// so an Index given a directory (Repo.IndexCache) keeps most of its
// entries in runs instead: sorted tables of fixed-size records in files
// there, which cost page cache rather than heap. A run's file is unlinked
// as soon as it is created, so it lives exactly as long as the run and
// never outlives the process, however that ends.
//
// A lookup reads one block of 4080 bytes per run that may hold the chunk
// (a Bloom filter per run says which may), found by a binary search of
// the blocks' first IDs: a run keeps in memory those (32 bytes per 85
// chunks) and the filter (1.25 bytes per chunk). New entries go to the
// in-memory map; at spillAt entries it is written out as a run, and the
// newest runs merge while the older of two holds no more entries than the
// newer, as a binary counter does, so there are at most about
// log2(chunks/spillAt) runs and every entry is rewritten that many times.
// LoadIndex, which looks nothing up until it is done, spills without
// merging and ends with one merge of every run.
const (
	recSize   = 48 // chunk ID (32) || pack (int32) || offset, length, raw (uint32), little-endian
	blockRecs = 85
	blockSize = recSize * blockRecs

	// defaultSpillAt bounds the in-memory part of an Index with a
	// directory: about 13 MiB at 100 bytes per entry.
	defaultSpillAt = 128 << 10
)

// run is one immutable sorted table of index records, without duplicate IDs.
type run struct {
	f      *os.File
	n      int
	firsts []chunk.ID // first ID of each block
	filter []uint64   // a Bloom filter of its IDs (see filterBits)
	// name is the file's name in the cache directory when the run is
	// kept there for later processes (indexbase.go), "" when unlinked;
	// sum is then the SHA-256 of its records. adopted means it came from
	// a saved state.
	name    string
	sum     [32]byte
	adopted bool
}

// A run's Bloom filter spares the read of a block for most chunks it does
// not hold: a backup asks for every chunk it makes, most of them new. With
// 10 bits per ID and 7 probes, 1% of absent IDs still cost a read; the
// filter costs 1.25 bytes of memory per chunk. The probes come from the
// ID's own bytes: chunk IDs are keyed hashes, as good as random.
const (
	filterBits   = 10
	filterProbes = 7
)

func newFilter(n int) []uint64 { return make([]uint64, filterWords(n)) }

// filterWords is the length of the filter of a run of n records.
func filterWords(n int) int { return max(1, (n*filterBits+63)/64) }

func filterProbe(f []uint64, id chunk.ID, set bool) bool {
	m := uint64(len(f)) * 64
	h1 := binary.LittleEndian.Uint64(id[8:])
	h2 := binary.LittleEndian.Uint64(id[16:]) | 1
	for i := range uint64(filterProbes) {
		b := (h1 + i*h2) % m
		if set {
			f[b/64] |= 1 << (b % 64)
		} else if f[b/64]&(1<<(b%64)) == 0 {
			return false
		}
	}
	return true
}

func putRec(b []byte, id chunk.ID, l loc) {
	copy(b, id[:])
	binary.LittleEndian.PutUint32(b[32:], uint32(l.pack))
	binary.LittleEndian.PutUint32(b[36:], l.offset)
	binary.LittleEndian.PutUint32(b[40:], l.length)
	binary.LittleEndian.PutUint32(b[44:], l.raw)
}

func getRec(b []byte) (id chunk.ID, l loc) {
	copy(id[:], b)
	l.pack = int32(binary.LittleEndian.Uint32(b[32:]))
	l.offset = binary.LittleEndian.Uint32(b[36:])
	l.length = binary.LittleEndian.Uint32(b[40:])
	l.raw = binary.LittleEndian.Uint32(b[44:])
	return id, l
}

// runWriter writes records, in ascending ID order, into a new run.
type runWriter struct {
	r   *run
	w   *bufio.Writer
	h   hash.Hash // of the records, for a kept run
	rec [recSize]byte
}

// newRunWriter starts a run of at most n records. A kept run's file stays
// in dir under its name (runPrefix); any other is unlinked at once.
func newRunWriter(dir string, n int, keep bool) (*runWriter, error) {
	f, err := os.CreateTemp(dir, runPrefix+"*")
	if err != nil {
		return nil, err
	}
	w := &runWriter{r: &run{f: f, filter: newFilter(n)}, w: bufio.NewWriterSize(f, 256<<10)}
	if keep {
		w.r.name = filepath.Base(f.Name())
		w.h = sha256.New()
	} else if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

func (w *runWriter) add(id chunk.ID, l loc) error {
	if w.r.n%blockRecs == 0 {
		w.r.firsts = append(w.r.firsts, id)
	}
	w.r.n++
	filterProbe(w.r.filter, id, true)
	putRec(w.rec[:], id, l)
	if w.h != nil {
		w.h.Write(w.rec[:])
	}
	_, err := w.w.Write(w.rec[:])
	return err
}

func (w *runWriter) finish() (*run, error) {
	if err := w.w.Flush(); err != nil {
		w.abort()
		return nil, err
	}
	if w.h != nil {
		w.h.Sum(w.r.sum[:0])
	}
	return w.r, nil
}

func (w *runWriter) abort() {
	w.r.f.Close()
	if w.r.name != "" {
		os.Remove(w.r.f.Name())
	}
}

var blockPool = sync.Pool{New: func() any { return new([blockSize]byte) }}

// find returns id's record in the run.
func (r *run) find(id chunk.ID) (loc, bool, error) {
	if !filterProbe(r.filter, id, false) {
		return loc{}, false, nil
	}
	// The block is the last one whose first ID is not above id.
	b := sort.Search(len(r.firsts), func(i int) bool { return bytes.Compare(r.firsts[i][:], id[:]) > 0 }) - 1
	if b < 0 {
		return loc{}, false, nil
	}
	n := min(blockRecs, r.n-b*blockRecs)
	buf := blockPool.Get().(*[blockSize]byte)
	defer blockPool.Put(buf)
	blk := buf[:n*recSize]
	if _, err := r.f.ReadAt(blk, int64(b)*blockSize); err != nil {
		return loc{}, false, err
	}
	i := sort.Search(n, func(i int) bool { return bytes.Compare(blk[i*recSize:i*recSize+32], id[:]) >= 0 })
	if i == n || !bytes.Equal(blk[i*recSize:i*recSize+32], id[:]) {
		return loc{}, false, nil
	}
	_, l := getRec(blk[i*recSize:])
	return l, true, nil
}

// runReader reads a run's records in order.
type runReader struct {
	r    *bufio.Reader
	left int
	id   chunk.ID
	l    loc
	rec  [recSize]byte
	age  int // position of the run, oldest first
}

// next moves to the next record; false at the end.
func (rr *runReader) next() (bool, error) {
	if rr.left == 0 {
		return false, nil
	}
	if _, err := io.ReadFull(rr.r, rr.rec[:]); err != nil {
		return false, err
	}
	rr.left--
	rr.id, rr.l = getRec(rr.rec[:])
	return true, nil
}

// mergeRuns writes the records of runs, given oldest first, into one new
// run in dir. Of records with the same ID it keeps the oldest, unless
// replaces(kept, later) says a later one is better.
func mergeRuns(dir string, runs []*run, keep bool, replaces func(kept, later loc) bool) (*run, error) {
	h := &mergeHeap{}
	for i, r := range runs {
		rr := &runReader{r: bufio.NewReaderSize(io.NewSectionReader(r.f, 0, int64(r.n)*recSize), 64<<10), left: r.n, age: i}
		ok, err := rr.next()
		if err != nil {
			return nil, err
		}
		if ok {
			h.rs = append(h.rs, rr)
		}
	}
	heap.Init(h)
	n := 0
	for _, r := range runs {
		n += r.n
	}
	w, err := newRunWriter(dir, n, keep)
	if err != nil {
		return nil, err
	}
	for h.Len() > 0 {
		// The heap yields equal IDs oldest run first.
		id, kept := h.rs[0].id, h.rs[0].l
		first := true
		for h.Len() > 0 && h.rs[0].id == id {
			rr := h.rs[0]
			if !first && replaces(kept, rr.l) {
				kept = rr.l
			}
			first = false
			ok, err := rr.next()
			if err != nil {
				w.abort()
				return nil, err
			}
			if ok {
				heap.Fix(h, 0)
			} else {
				heap.Pop(h)
			}
		}
		if err := w.add(id, kept); err != nil {
			w.abort()
			return nil, err
		}
	}
	return w.finish()
}

// mergeHeap orders run readers by their current ID, then by run age.
type mergeHeap struct{ rs []*runReader }

func (h *mergeHeap) Len() int { return len(h.rs) }
func (h *mergeHeap) Less(i, j int) bool {
	if c := bytes.Compare(h.rs[i].id[:], h.rs[j].id[:]); c != 0 {
		return c < 0
	}
	return h.rs[i].age < h.rs[j].age
}
func (h *mergeHeap) Swap(i, j int) { h.rs[i], h.rs[j] = h.rs[j], h.rs[i] }
func (h *mergeHeap) Push(x any)    { h.rs = append(h.rs, x.(*runReader)) }
func (h *mergeHeap) Pop() any {
	rr := h.rs[len(h.rs)-1]
	h.rs = h.rs[:len(h.rs)-1]
	return rr
}
