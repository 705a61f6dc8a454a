package repo

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

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
// in parallel. It returns the bytes written. Every shard must be written,
// or, under DegradedWrites, every shard on a target that is not down: a
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
	d := degradedFrom(ctx)
	g, gctx := errgroup.WithContext(ctx)
	var stored, written atomic.Int64
	for i, obj := range s.objs {
		t := r.TargetOf(i)
		if d != nil && t.Down() != nil {
			d.skip(t, 1, 0)
			continue
		}
		g.Go(func() error {
			err := t.Store.Create(gctx, ShardName(id, i), obj)
			switch {
			case err == nil || errors.Is(err, objstore.ErrExists):
				stored.Add(int64(len(obj)))
				written.Add(1)
				return nil
			case d != nil && gctx.Err() == nil && isTargetFailure(err):
				t.MarkDown(err)
				d.skip(t, 1, 0)
				return nil
			}
			return fmt.Errorf("upload shard %d of pack %s to target %d (%s): %w", i, id.Short(), t.Index+1, t.Store.Location(), err)
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	if d != nil {
		// Shards are skipped only on down targets, so while the layout
		// survives their loss at least k are written; counting them states
		// the rule instead of leaving it to SurvivableTargetLosses.
		if err := r.RequireWritable(); err != nil {
			return 0, fmt.Errorf("pack %s: %w", id.Short(), err)
		}
		if k := r.Config.Erasure.K; written.Load() < int64(k) {
			return 0, fmt.Errorf("pack %s: %d shards written, %d needed: %w", id.Short(), written.Load(), k, ErrUnavailable)
		}
	}
	r.unindexed.Store(id, objectCRCs(s.objs))
	return stored.Load(), nil
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

// ReasonNotAuthentic is the reason given for a shard that passes its own
// checks (header, CRC32Cs) but without which alone the pack matches its ID:
// forged, or rewritten by something else with valid checksums.
const ReasonNotAuthentic = "passes its checksums, but the pack is authentic only without it"

// ReadPack fetches a pack: the data shards first, then parity shards only
// as needed to replace missing or corrupt ones (see FetchPack). It returns
// the pack bytes, checked against the pack ID, and the shards it had to do
// without.
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
	return p, problems, nil
}

// FetchPack is ReadPack into d: d holds the pack as its data shards, as
// they were read or reconstructed, without copying them together. Each
// shard's data is read once for its CRC and once for the SHA-256 that
// compares the pack with its ID. A shard can pass its CRCs and still be
// wrong (CRC32C is no MAC: a provider can forge a shard that passes), so
// when the pack does not match its ID, FetchPack reads every shard and
// decodes again without each one in turn; the one whose absence gives the
// right pack is reported with ReasonNotAuthentic. A restore reads ranges
// (ReadRange) and comes here only when that fails, so the hash costs it
// nothing on the way that works.
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
				addFetched(ctx, obj)
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
	next := 0
	for healthy < scheme.K && next < len(order) {
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
	rep, err := r.Coder.DecodeVerified(d, id, objs)
	forged := -1
	if !errors.Is(err, erasure.ErrTooFewShards) && (err != nil || decodedSum(d) != id) {
		fetch(ctx, order[next:])
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		next = len(order)
		forged, rep, err = leaveOneOut(objs, func(objs [][]byte) (erasure.Report, bool) {
			rep, err := r.Coder.DecodeVerified(d, id, objs)
			return rep, err == nil && decodedSum(d) == id
		})
	}
	for i := 0; i < scheme.K; i++ {
		if objs[i] == nil && reasons[i] == "" {
			reasons[i] = ReasonTargetUnavailable
		}
	}
	var problems []ShardProblem
	for i := 0; i < n; i++ {
		reason := reasons[i]
		switch {
		case i == forged:
			reason = ReasonNotAuthentic
		case reason == "" && i < len(rep.States) && rep.States[i] == erasure.Corrupt:
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
		if errors.Is(err, errNotAuthentic) {
			return problems, fmt.Errorf("pack %s: %w: %v (%s)", id, ErrPackLost, err, strings.Join(parts, "; "))
		}
		return problems, fmt.Errorf("pack %s: %w: only %d of %d shards intact, %d needed (%s)", id, ErrPackLost, n-len(problems), n, scheme.K, strings.Join(parts, "; "))
	}
	return problems, nil
}

// errNotAuthentic means no shard set tried decodes to the pack its ID names.
var errNotAuthentic = errors.New("the shards pass their checksums but do not make the pack its ID names, nor do they with any one of them left out")

// leaveOneOut finds the shard whose absence makes decode (which decodes
// the given shard objects and tells whether the result is the authentic
// pack) succeed, trying each shard present in turn: at most k+m decodes,
// done only when the whole set failed. It returns that shard and decode's
// report, or errNotAuthentic; two bad shards that pass their checks are
// not looked for (that would take C(k+m, 2) decodes).
func leaveOneOut(objs [][]byte, decode func([][]byte) (erasure.Report, bool)) (int, erasure.Report, error) {
	without := slices.Clone(objs)
	var rep erasure.Report
	for i, obj := range objs {
		if obj == nil {
			continue
		}
		without[i] = nil
		var ok bool
		rep, ok = decode(without)
		without[i] = obj
		if ok {
			return i, rep, nil
		}
	}
	return -1, rep, errNotAuthentic
}

// decodedSum is the SHA-256 of the pack in d: its ID, if authentic.
func decodedSum(d *erasure.Decoded) pack.ID {
	h := sha256.New()
	d.WriteTo(h)
	var id pack.ID
	h.Sum(id[:0])
	return id
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
// FetchPack if that fails: FetchPack checks each shard, compares the pack
// with its ID, and finds a shard forged with valid checksums.
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
	b, err := r.getShardRange(ctx, id, s, rel, n)
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
	scheme := r.Config.Erasure
	parts := make([][]byte, scheme.Shards())
	var order []int
	for i := range parts {
		if i != s && r.TargetOf(i).Down() == nil {
			order = append(order, i)
		}
	}
	r.readParts(ctx, id, rel, n, parts, order, scheme.K)
	if ctx.Err() != nil {
		return nil, problems, ctx.Err()
	}
	if have := countParts(parts); have < scheme.K {
		return nil, problems, fmt.Errorf("pack %s: %w: %d of %d shards readable, %d needed", id.Short(), ErrPackLost, have, scheme.Shards(), scheme.K)
	}
	b, err = r.Coder.ReconstructRange(parts, s)
	return b, problems, err
}

// ReadStripe returns the bytes [rel, rel+n) of every data shard of pack
// id, whose length is packLen (from the index): data[i] is data shard i's.
// It is ReadRange for a reader that wants the same range of several data
// shards while one of them is on a target that is down: it reads that
// range of k shards, data shards first, one ranged GET each, and rebuilds
// the others' from them, where ReadRange would read k shards to rebuild
// the lost one's part and then read the others' own parts again: a
// restore that wants all of such a pack reads the pack's bytes instead of
// (2k-1)/k times them (2+1: one and a half). problems lists the shards it did
// without. A shard that cannot be read on a target that is up fails the
// read, as in ReadRange, and nothing checks the bytes.
func (r *Repo) ReadStripe(ctx context.Context, id pack.ID, packLen, rel, n int64) ([][]byte, []ShardProblem, error) {
	scheme := r.Config.Erasure
	k := int64(scheme.K)
	shardLen := (packLen + k - 1) / k
	if rel < 0 || n <= 0 || rel > shardLen-n {
		return nil, nil, fmt.Errorf("pack %s: stripe [%d,+%d) outside its shards of %d bytes", id.Short(), rel, n, shardLen)
	}
	parts := make([][]byte, scheme.Shards())
	var order []int // data shards first
	for i := range parts {
		if r.TargetOf(i).Down() == nil {
			order = append(order, i)
		}
	}
	errs := r.readParts(ctx, id, rel, n, parts, order, scheme.K)
	if ctx.Err() != nil {
		return nil, nil, ctx.Err()
	}
	for i, err := range errs {
		if err != nil && r.TargetOf(i).Down() == nil {
			// A shard that is missing or damaged is for FetchPack to judge.
			return nil, nil, err
		}
	}
	var problems []ShardProblem
	var lost []int
	for i := range scheme.K {
		if parts[i] == nil {
			lost = append(lost, i)
			problems = append(problems, ShardProblem{Pack: id, Shard: i, Target: r.TargetOf(i).Index + 1, Reason: ReasonTargetUnavailable})
		}
	}
	if have := countParts(parts); have < scheme.K {
		return nil, problems, fmt.Errorf("pack %s: %w: %d of %d shards readable, %d needed", id.Short(), ErrPackLost, have, scheme.Shards(), scheme.K)
	}
	if len(lost) > 0 {
		if err := r.Coder.ReconstructRanges(parts, lost); err != nil {
			return nil, problems, err
		}
	}
	clear(parts[scheme.K:]) // the parity read goes now, not with the data
	return parts[:scheme.K], problems, nil
}

// readParts reads the bytes [rel, rel+n) of shards of pack id into parts,
// taking the shards in order, as many at once as are still wanted, until
// want parts are in hand or order runs out. A read that fails leaves its
// part nil and its error in errs (by shard); the target is marked down
// when the failure is the target's.
func (r *Repo) readParts(ctx context.Context, id pack.ID, rel, n int64, parts [][]byte, order []int, want int) (errs []error) {
	errs = make([]error, len(parts))
	for next := 0; next < len(order); {
		have := countParts(parts)
		if have >= want {
			break
		}
		batch := order[next:min(len(order), next+want-have)]
		next += len(batch)
		var wg sync.WaitGroup
		for _, i := range batch {
			wg.Go(func() {
				b, err := r.getShardRange(ctx, id, i, rel, n)
				if err == nil {
					parts[i] = b
				}
				errs[i] = err
			})
		}
		wg.Wait()
		if ctx.Err() != nil {
			break
		}
	}
	return errs
}

// getShardRange reads n bytes at rel in the data of shard i, marking its
// target down when the target fails.
func (r *Repo) getShardRange(ctx context.Context, id pack.ID, i int, rel, n int64) ([]byte, error) {
	t := r.TargetOf(i)
	if err := t.Down(); err != nil {
		return nil, err
	}
	b, err := t.Store.GetRange(ctx, ShardName(id, i), erasure.HeaderSize+rel, n)
	if err != nil && !errors.Is(err, objstore.ErrNotFound) && isTargetFailure(err) {
		t.MarkDown(err)
	}
	addFetched(ctx, b)
	return b, err
}

// fetchedKey is the context key of CountFetched's counter.
type fetchedKey struct{}

// CountFetched returns a context under which the shard bytes the
// repository receives are added to n: by ReadRange and ReadStripe
// (including the other shards read to rebuild a range whose target is
// down), and by FetchPack and ReadPack (every shard fetched, good or not),
// so that a restore can report what it downloaded.
func CountFetched(ctx context.Context, n *atomic.Int64) context.Context {
	return context.WithValue(ctx, fetchedKey{}, n)
}

func addFetched(ctx context.Context, b []byte) {
	if n, ok := ctx.Value(fetchedKey{}).(*atomic.Int64); ok && len(b) > 0 {
		n.Add(int64(len(b)))
	}
}

func countParts(parts [][]byte) int {
	n := 0
	for _, p := range parts {
		if p != nil {
			n++
		}
	}
	return n
}
