package backup

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/repo"
)

// Changes found by comparison. Without changed-block tracking, a backup of
// a volume that has an earlier snapshot (its basis) need not chunk it all
// again: it reads each of the basis's chunks where it was and computes its
// keyed hash. A chunk whose hash is the basis's has the same bytes, so it
// is unchanged; the others, with the bytes past the basis's end, are the
// changed ranges, which chunk.Incremental then re-chunks from the last cut
// before each to where the chunkings meet again. The result is identical to
// chunking the whole volume (chunk.Incremental's contract only asks that
// the changed ranges cover every byte that differs), at the cost of one read
// and one hash of the data instead of a read, a chunking pass, a second
// read and a hash: chunking is the dearest stage of a backup (perf/README.md).
//
// A Zero chunk of the basis is unchanged where the volume has a hole or
// reads as zeros there.

// basisBatch is how many of the basis's extents a worker compares at a time.
const basisBatch = 64

// findChanges compares the volume src[0:size) with exts, extents of the
// basis (a segment at a time), and returns the ranges that may differ and
// the bytes it read. It runs a worker per buffer in bufs, each of the
// largest chunk's size.
func findChanges(ctx context.Context, src io.ReaderAt, size int64, holes []chunk.Range, exts []repo.Extent, ids *chunk.IDKey, bufs [][]byte, prog *Progress) ([]chunk.Range, int64, error) {
	var (
		mu      sync.Mutex
		changed []chunk.Range
		read    atomic.Int64
		next    atomic.Int64 // first extent of the next batch
	)
	g, gctx := errgroup.WithContext(ctx)
	for _, buf := range bufs {
		g.Go(func() error {
			var mine []chunk.Range
			for {
				lo := int(next.Add(basisBatch)) - basisBatch
				if lo >= len(exts) {
					break
				}
				if err := gctx.Err(); err != nil {
					return err
				}
				for _, e := range exts[lo:min(lo+basisBatch, len(exts))] {
					prog.Compared.Add(max(min(e.Off+e.Len, size)-e.Off, 0))
					if e.Off+e.Len > size {
						continue // past the new end: chunk.Incremental re-chunks it
					}
					same, n, err := compareExtent(src, holes, e, buf, ids)
					if err != nil {
						return err
					}
					read.Add(n)
					prog.Read.Add(n)
					if !same {
						mine = append(mine, chunk.Range{Off: e.Off, Len: e.Len})
					}
				}
			}
			mu.Lock()
			changed = append(changed, mine...)
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, read.Load(), err
	}
	return changed, read.Load(), nil
}

// compareExtent reports whether the volume still holds extent e's bytes,
// and how many bytes it read to tell.
func compareExtent(src io.ReaderAt, holes []chunk.Range, e repo.Extent, buf []byte, ids *chunk.IDKey) (bool, int64, error) {
	if !e.Zero {
		if e.Len > int64(len(buf)) {
			return false, 0, nil // not a chunk of these parameters: re-chunk it
		}
		b := buf[:e.Len]
		if _, err := src.ReadAt(b, e.Off); err != nil {
			return false, 0, fmt.Errorf("read at offset %d: %w", e.Off, err)
		}
		return ids.Sum(b) == e.ID, e.Len, nil
	}
	var read int64
	for _, r := range dataIn(holes, e.Off, e.Off+e.Len) {
		for off := r.Off; off < r.End(); {
			n := min(r.End()-off, int64(len(buf)))
			b := buf[:n]
			if _, err := src.ReadAt(b, off); err != nil {
				return false, read, fmt.Errorf("read at offset %d: %w", off, err)
			}
			read += n
			if !chunk.IsZero(b) {
				return false, read, nil
			}
			off += n
		}
	}
	return true, read, nil
}

// dataIn returns the parts of [a,b) that holes (sorted, disjoint) leave.
func dataIn(holes []chunk.Range, a, b int64) []chunk.Range {
	var out []chunk.Range
	i := sort.Search(len(holes), func(i int) bool { return holes[i].End() > a })
	for pos := a; pos < b; i++ {
		if i == len(holes) || holes[i].Off >= b {
			out = append(out, chunk.Range{Off: pos, Len: b - pos})
			break
		}
		if h := holes[i]; h.Off > pos {
			out = append(out, chunk.Range{Off: pos, Len: h.Off - pos})
		}
		pos = max(pos, holes[i].End())
	}
	return out
}
