package repo

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/pack"
)

// An index object (sealed, associated data "ferry index v1") lists where
// chunks live. Plaintext:
//
//	version (1) || packs (uvarint) || packs × (pack ID (32) || pack length (uvarint) || entries (uvarint) || entries × entry)
//	entry: flags (1: bit 0 = zstd) || chunk ID (32) || offset, length, raw length (uvarints)
var indexAD = []byte("ferry index v1")

// PackInfo describes one pack known to the index.
type PackInfo struct {
	ID     pack.ID
	Length int64
}

// Location says where a chunk's blob lives.
type Location struct {
	Pack  int32 // position in Index.Packs
	Entry pack.Entry
}

// Index maps chunk IDs to their blobs. It is safe for concurrent use.
// Memory: about 100 bytes per chunk (map entry, ID, location).
type Index struct {
	mu     sync.RWMutex
	packs  []PackInfo
	byPack map[pack.ID]int32
	chunks map[chunk.ID]Location
}

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{byPack: map[pack.ID]int32{}, chunks: map[chunk.ID]Location{}}
}

// Lookup returns where chunk id is stored.
func (x *Index) Lookup(id chunk.ID) (PackInfo, pack.Entry, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	l, ok := x.chunks[id]
	if !ok {
		return PackInfo{}, pack.Entry{}, false
	}
	return x.packs[l.Pack], l.Entry, true
}

// Has reports whether chunk id is stored.
func (x *Index) Has(id chunk.ID) bool {
	x.mu.RLock()
	_, ok := x.chunks[id]
	x.mu.RUnlock()
	return ok
}

// Len is the number of chunks indexed.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.chunks)
}

// Packs returns the packs the index knows.
func (x *Index) Packs() []PackInfo {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return append([]PackInfo(nil), x.packs...)
}

// AddPack records the entries of one pack.
func (x *Index) AddPack(p PackInfo, entries []pack.Entry) {
	x.mu.Lock()
	defer x.mu.Unlock()
	pi, ok := x.byPack[p.ID]
	if !ok {
		pi = int32(len(x.packs))
		x.packs = append(x.packs, p)
		x.byPack[p.ID] = pi
	}
	for _, e := range entries {
		if _, dup := x.chunks[e.ID]; !dup {
			x.chunks[e.ID] = Location{Pack: pi, Entry: e}
		}
	}
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

func (b *IndexBatch) marshal() []byte {
	out := []byte{1}
	out = binary.AppendUvarint(out, uint64(len(b.Packs)))
	for i, p := range b.Packs {
		out = append(out, p.ID[:]...)
		out = binary.AppendUvarint(out, uint64(p.Length))
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

// ParseIndexBatch parses an index object's plaintext.
func ParseIndexBatch(b []byte) (*IndexBatch, error) {
	r := &reader{b: b}
	if v := r.bytes(1); r.err == nil && v[0] != 1 {
		return nil, fmt.Errorf("index version %d: %w", v[0], errIndexFormat)
	}
	// Every pack takes at least 35 bytes, every entry 37: counts beyond
	// what the bytes can hold are rejected before allocating.
	np := r.uvarint(uint64(len(b)) / 35)
	batch := &IndexBatch{}
	for i := uint64(0); i < np && r.err == nil; i++ {
		var p PackInfo
		copy(p.ID[:], r.bytes(32))
		p.Length = int64(r.uvarint(1 << 40))
		ne := r.uvarint(uint64(len(r.b)) / 37)
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

// WriteIndex seals batch and writes it to every target. It returns the
// bytes written over all targets.
func (r *Repo) WriteIndex(ctx context.Context, batch *IndexBatch) (int64, error) {
	obj := r.key.Seal(nil, batch.marshal(), indexAD)
	sum := sha256.Sum256(obj)
	name := "index/" + hex.EncodeToString(sum[:])
	if err := r.putEverywhere(ctx, name, func(*Target) ([]byte, error) { return obj, nil }); err != nil {
		return 0, err
	}
	return int64(len(obj) * len(r.Targets)), nil
}

// LoadIndex reads every index object (from any target that has it).
func (r *Repo) LoadIndex(ctx context.Context) (*Index, error) {
	names, err := r.listAll(ctx, "index/")
	if err != nil {
		return nil, err
	}
	x := NewIndex()
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	var mu sync.Mutex
	var bad []string
	for _, name := range names {
		g.Go(func() error {
			var batch *IndexBatch
			err := r.getAny(ctx, name, func(b []byte) error {
				plain, err := r.key.Open(nil, b, indexAD)
				if err != nil {
					return err
				}
				batch, err = ParseIndexBatch(plain)
				return err
			})
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				mu.Lock()
				bad = append(bad, err.Error())
				mu.Unlock()
				return nil
			}
			for i, p := range batch.Packs {
				x.AddPack(p, batch.Entries[i])
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("unreadable index objects: %s", strings.Join(bad, "; "))
	}
	return x, nil
}
