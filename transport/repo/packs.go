package repo

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
)

// ShardName is the object name of shard i of pack id.
func ShardName(id pack.ID, i int) string {
	h := id.String()
	return fmt.Sprintf("data/%s/%s.%d", h[:2], h, i)
}

// TargetOf returns the target that holds shard i.
func (r *Repo) TargetOf(shard int) *Target {
	return r.Targets[erasure.TargetFor(shard, len(r.Targets))]
}

// ShardCRC is the CRC32C (Castagnoli) of a whole shard object, header
// included: the checksum a store keeps for it and the index records.
func ShardCRC(obj []byte) uint32 { return crc32.Checksum(obj, castagnoli) }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// encode erasure-codes pack id into its shard objects and their CRCs.
// Encoding is deterministic: the same pack always gives the same objects.
func (r *Repo) encode(id pack.ID, p []byte) ([][]byte, []uint32, error) {
	shards, err := r.Coder.Encode(id, p)
	if err != nil {
		return nil, nil, fmt.Errorf("erasure-code pack %s: %w", id.Short(), err)
	}
	return shards, objectCRCs(shards), nil
}

// objectCRCs returns the CRCs of the shard objects of an encoded pack, from
// their headers.
func objectCRCs(objs [][]byte) []uint32 {
	crcs := make([]uint32, len(objs))
	for i, obj := range objs {
		crcs[i] = erasure.ObjectCRC(obj)
	}
	return crcs
}

// Shards are a pack erasure-coded into its shard objects, ready to be
// written. A writer that keeps one Shards for all its packs allocates its
// buffers once.
type Shards struct {
	ID   pack.ID
	objs [][]byte
}

// EncodePack is encode into s, reusing its buffers: the pack's buffer is
// free for reuse once it returns.
func (r *Repo) EncodePack(s *Shards, id pack.ID, p []byte) error {
	if s.objs == nil {
		s.objs = r.shardBuffers()
	}
	objs, err := r.Coder.EncodeTo(s.objs, id, p)
	if err != nil {
		return fmt.Errorf("erasure-code pack %s: %w", id.Short(), err)
	}
	s.ID, s.objs = id, objs
	return nil
}

// PackBufferSize is the capacity a pack writer's buffer needs. A pack
// closes once its blobs reach the pack size, so the last blob may add a
// chunk (sealed) more; the header is small unless the chunks compress very
// well, when the buffer grows.
func (r *Repo) PackBufferSize() int {
	return r.Config.PackSize + int(r.Config.Chunking().MaxSize) + 64<<10
}

// shardBuffers returns empty buffers for the shard objects of a pack of
// PackBufferSize, so that a Shards is allocated once, not as packs grow.
func (r *Repo) shardBuffers() [][]byte {
	k := r.Config.Erasure.K
	largest := r.PackBufferSize()
	objs := make([][]byte, r.Config.Erasure.Shards())
	for i := range objs {
		objs[i] = make([]byte, 0, erasure.HeaderSize+(largest+k-1)/k)
	}
	return objs
}

// WritePack erasure-codes a pack and writes shard i to target i mod T, all
// in parallel. It returns the bytes written. Every shard must be written: a
// shard that already exists (the same pack written before) counts. The
// shards' CRCs are kept for the pack's index entry (see WriteIndex).
func (r *Repo) WritePack(ctx context.Context, id pack.ID, p []byte) (int64, error) {
	var s Shards
	if err := r.EncodePack(&s, id, p); err != nil {
		return 0, err
	}
	return r.WriteShards(ctx, &s)
}

// WriteShards is the writing half of WritePack.
func (r *Repo) WriteShards(ctx context.Context, s *Shards) (int64, error) {
	id := s.ID
	g, gctx := errgroup.WithContext(ctx)
	var stored int64
	for i, obj := range s.objs {
		stored += int64(len(obj))
		t := r.TargetOf(i)
		g.Go(func() error {
			err := t.Store.Create(gctx, ShardName(id, i), obj)
			if err != nil && !errors.Is(err, objstore.ErrExists) {
				return fmt.Errorf("upload shard %d of pack %s to target %d (%s): %w", i, id.Short(), t.Index+1, t.Store.Location(), err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	r.unindexed.Store(id, objectCRCs(s.objs))
	return stored, nil
}

// ShardProblem describes one shard a read found missing or corrupt.
type ShardProblem struct {
	Pack   pack.ID
	Shard  int
	Target int // 1-based, for people
	Reason string
}

func (p ShardProblem) String() string {
	return fmt.Sprintf("pack %s shard %d on target %d: %s", p.Pack.Short(), p.Shard, p.Target, p.Reason)
}

// ReasonTargetUnavailable is the reason given for a shard that was not read
// because its target is down.
const ReasonTargetUnavailable = "not read: target unavailable"

// ErrPackLost means fewer than k intact shards of a pack remain.
var ErrPackLost = errors.New("pack lost")

// ReadPack fetches a pack: the data shards first, then parity shards only
// as needed to replace missing or corrupt ones. It returns the pack bytes
// and the shards it had to do without.
func (r *Repo) ReadPack(ctx context.Context, id pack.ID) ([]byte, []ShardProblem, error) {
	var d erasure.Decoded
	problems, err := r.FetchPack(ctx, id, &d)
	if err != nil {
		return nil, problems, err
	}
	p, err := d.Bytes(0, d.Len())
	if err != nil {
		return nil, problems, err
	}
	if pack.Sum(p) != id {
		return nil, problems, fmt.Errorf("pack %s: reconstructed bytes do not match the pack ID: %w", id, ErrPackLost)
	}
	return p, problems, nil
}

// FetchPack is ReadPack into d, for a restore: d holds the pack as its data
// shards, as they were read or reconstructed, without copying them
// together. Unlike ReadPack it does not compare the pack with its ID, a
// SHA-256 over all of it that would cost as much as decrypting it: the
// caller must authenticate every blob it takes from d (Codec.OpenBlob and
// Opener do), which proves more. Each shard's data is read once, for its
// CRC.
func (r *Repo) FetchPack(ctx context.Context, id pack.ID, d *erasure.Decoded) ([]ShardProblem, error) {
	scheme := r.Config.Erasure
	n := scheme.Shards()
	objs := make([][]byte, n)
	reasons := make([]string, n)
	var mu sync.Mutex
	fetch := func(ctx context.Context, idxs []int) {
		var wg sync.WaitGroup
		for _, i := range idxs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				t := r.TargetOf(i)
				obj, err := t.Store.Get(ctx, ShardName(id, i))
				if err == nil {
					err = erasure.Check(id, i, scheme, obj)
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					reasons[i] = reasonFor(err)
					if !errors.Is(err, objstore.ErrNotFound) && isTargetFailure(err) {
						t.MarkDown(err)
					}
					return
				}
				objs[i] = obj
			}()
		}
		wg.Wait()
	}
	// Data shards first (no decoding needed), then parity, then shards on
	// targets marked down (they may be back); each round fetches only as
	// many as are still missing.
	var order, later []int
	for i := 0; i < n; i++ {
		if r.TargetOf(i).Down() != nil {
			later = append(later, i)
		} else {
			order = append(order, i)
		}
	}
	order = append(order, later...)
	healthy := 0
	for next := 0; healthy < scheme.K && next < len(order); {
		batch := order[next:min(len(order), next+scheme.K-healthy)]
		next += len(batch)
		fetch(ctx, batch)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		healthy = 0
		for _, o := range objs {
			if o != nil {
				healthy++
			}
		}
	}
	for i := 0; i < scheme.K; i++ {
		if objs[i] == nil && reasons[i] == "" {
			reasons[i] = ReasonTargetUnavailable
		}
	}
	rep, err := r.Coder.DecodeVerified(d, id, objs)
	var problems []ShardProblem
	for i := 0; i < n; i++ {
		reason := reasons[i]
		if reason == "" && i < len(rep.States) && rep.States[i] == erasure.Corrupt {
			reason = rep.Reasons[i]
		}
		if reason != "" {
			problems = append(problems, ShardProblem{Pack: id, Shard: i, Target: r.TargetOf(i).Index + 1, Reason: reason})
		}
	}
	if err != nil {
		var parts []string
		for _, p := range problems {
			parts = append(parts, fmt.Sprintf("shard %d on target %d: %s", p.Shard, p.Target, p.Reason))
		}
		return problems, fmt.Errorf("pack %s: %w: only %d of %d shards intact, %d needed (%s)", id, ErrPackLost, n-len(problems), n, scheme.K, strings.Join(parts, "; "))
	}
	return problems, nil
}

func reasonFor(err error) string {
	switch {
	case errors.Is(err, objstore.ErrNotFound):
		return "missing"
	case errors.Is(err, objstore.ErrNoBucket):
		return "bucket missing"
	default:
		return err.Error()
	}
}

// isTargetFailure tells a target that failed from one object that is bad.
func isTargetFailure(err error) bool {
	return errors.Is(err, objstore.ErrNoBucket) || errors.Is(err, objstore.ErrPermission) || objstore.IsTransient(err)
}

// ReadRange returns the bytes [off, off+n) of pack id, whose length is
// packLen (from the index), reading only them: from the data shards that
// hold them, one ranged GET per shard, or, for a shard whose target is
// down, rebuilt from the same range of k other shards. A restore that needs
// some of a pack's blobs reads just those, in pieces no larger than it
// chooses. problems lists the shards it did without. A shard that is
// missing or cannot be read for another reason fails the read.
//
// Nothing checks these bytes (a shard's CRC covers all of it): the caller
// must authenticate every blob it takes from them, and read the pack with
// FetchPack, which checks each shard and tries the others, if that fails.
func (r *Repo) ReadRange(ctx context.Context, id pack.ID, packLen, off, n int64) ([]byte, []ShardProblem, error) {
	k := int64(r.Config.Erasure.K)
	if off < 0 || n < 0 || off > packLen-n {
		return nil, nil, fmt.Errorf("pack %s: range [%d,+%d) outside its %d bytes", id.Short(), off, n, packLen)
	}
	shardLen := (packLen + k - 1) / k
	var out []byte
	var problems []ShardProblem
	for end := off + n; off < end; {
		s := off / shardLen
		piece := min(end, (s+1)*shardLen) - off
		b, p, err := r.readShardRange(ctx, id, int(s), off-s*shardLen, piece)
		if err != nil {
			return nil, problems, err
		}
		problems = append(problems, p...)
		if out == nil && piece == n {
			return b, problems, nil // within one shard: no copy
		}
		if out == nil {
			out = make([]byte, 0, n)
		}
		out = append(out, b...)
		off += piece
	}
	return out, problems, nil
}

// readShardRange reads n bytes at rel in the data of data shard s, or
// rebuilds them from the same range of other shards.
func (r *Repo) readShardRange(ctx context.Context, id pack.ID, s int, rel, n int64) ([]byte, []ShardProblem, error) {
	get := func(i int) ([]byte, error) {
		t := r.TargetOf(i)
		if err := t.Down(); err != nil {
			return nil, err
		}
		b, err := t.Store.GetRange(ctx, ShardName(id, i), erasure.HeaderSize+rel, n)
		if err != nil && !errors.Is(err, objstore.ErrNotFound) && isTargetFailure(err) {
			t.MarkDown(err)
		}
		return b, err
	}
	b, err := get(s)
	switch {
	case err == nil:
		return b, nil, nil
	case ctx.Err() != nil:
		return nil, nil, ctx.Err()
	case r.TargetOf(s).Down() == nil:
		// A shard that is missing or damaged is for FetchPack to judge.
		return nil, nil, err
	}
	problems := []ShardProblem{{Pack: id, Shard: s, Target: r.TargetOf(s).Index + 1, Reason: ReasonTargetUnavailable}}
	// The other shards' parts, each read on its own goroutine, until k
	// have arrived.
	scheme := r.Config.Erasure
	parts := make([][]byte, scheme.Shards())
	var order []int
	for i := range parts {
		if i != s && r.TargetOf(i).Down() == nil {
			order = append(order, i)
		}
	}
	have := 0
	for next := 0; have < scheme.K && next < len(order); {
		batch := order[next:min(len(order), next+scheme.K-have)]
		next += len(batch)
		var wg sync.WaitGroup
		for _, i := range batch {
			wg.Go(func() {
				if b, err := get(i); err == nil {
					parts[i] = b
				}
			})
		}
		wg.Wait()
		if ctx.Err() != nil {
			return nil, problems, ctx.Err()
		}
		have = 0
		for _, p := range parts {
			if p != nil {
				have++
			}
		}
	}
	if have < scheme.K {
		return nil, problems, fmt.Errorf("pack %s: %w: %d of %d shards readable, %d needed", id.Short(), ErrPackLost, have, scheme.Shards(), scheme.K)
	}
	b, err = r.Coder.ReconstructRange(parts, s)
	return b, problems, err
}
