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
	crcs := make([]uint32, len(shards))
	for i, s := range shards {
		crcs[i] = ShardCRC(s)
	}
	return shards, crcs, nil
}

// WritePack erasure-codes a pack and writes shard i to target i mod T, all
// in parallel. It returns the bytes written. Every shard must be written: a
// shard that already exists (the same pack written before) counts. The
// shards' CRCs are kept for the pack's index entry (see WriteIndex).
func (r *Repo) WritePack(ctx context.Context, id pack.ID, p []byte) (int64, error) {
	shards, crcs, err := r.encode(id, p)
	if err != nil {
		return 0, err
	}
	g, gctx := errgroup.WithContext(ctx)
	var stored int64
	for i, s := range shards {
		stored += int64(len(s))
		t := r.TargetOf(i)
		g.Go(func() error {
			err := t.Store.Create(gctx, ShardName(id, i), s)
			if err != nil && !errors.Is(err, objstore.ErrExists) {
				return fmt.Errorf("upload shard %d of pack %s to target %d (%s): %w", i, id.Short(), t.Index+1, t.Store.Location(), err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	r.unindexed.Store(id, crcs)
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
			return nil, nil, ctx.Err()
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
	p, rep, err := r.Coder.Decode(id, objs)
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
		return nil, problems, fmt.Errorf("pack %s: %w: only %d of %d shards intact, %d needed (%s)", id, ErrPackLost, n-len(problems), n, scheme.K, strings.Join(parts, "; "))
	}
	if pack.Sum(p) != id {
		return nil, problems, fmt.Errorf("pack %s: reconstructed bytes do not match the pack ID: %w", id, ErrPackLost)
	}
	return p, problems, nil
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
