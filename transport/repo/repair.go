package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
)

// Repairs never overwrite a good object: a missing shard is created, a
// corrupt one is deleted first and then created with the rebuilt bytes
// (content-addressed names, so the new object is what the name promised).
// Every step is idempotent and safe to interrupt; running it again finishes
// the job.

// RepairPack reads every shard of pack p, rebuilds the missing and corrupt
// ones from the intact ones (at least k) and writes them back to their
// targets. Shards on targets that cannot be reached are left for a later
// run. It returns the shards it rewrote.
//
// A shard can pass its own checks (header and data CRC32C, even the CRC32C
// the index recorded: CRC32C is no MAC) and still not be the one written,
// so the pack is decoded and compared with its ID first, leaving out one
// shard at a time should that fail (see FetchPack), and every shard is
// then compared with the pack's erasure re-encoding: encoding is
// deterministic, so that is the shard first written. Nothing is rebuilt
// from shards that do not make the authentic pack. With the shard CRCs the
// index recorded (p.ShardCRC), a shard whose bytes differ from the record
// is left out of the decoding, and a rebuilt shard is written only if it
// matches the record. Memory: the shards read, the pack, and its
// re-encoding, about (2(k+m)/k + 1) times the pack.
func (r *Repo) RepairPack(ctx context.Context, p PackInfo) ([]ShardProblem, error) {
	id := p.ID
	scheme := r.Config.Erasure
	n := scheme.Shards()
	if p.ShardCRC != nil && len(p.ShardCRC) != n {
		return nil, fmt.Errorf("pack %s: %d shard CRCs for %d shards", id.Short(), len(p.ShardCRC), n)
	}
	objs := make([][]byte, n)
	unreachable := make([]error, n)
	g, gctx := errgroup.WithContext(ctx)
	for i := range n {
		g.Go(func() error {
			obj, err := r.TargetOf(i).Store.Get(gctx, ShardName(id, i))
			switch {
			case err == nil:
				objs[i] = obj
			case errors.Is(err, objstore.ErrNotFound), errors.Is(err, objstore.ErrNoBucket):
			case gctx.Err() != nil:
				return gctx.Err()
			default:
				unreachable[i] = err
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	// Decoding checks each shard on its own; the record finds shards that
	// pass those checks but are not what was written.
	reasons := make([]string, n)
	use := slices.Clone(objs)
	for i, obj := range objs {
		if obj == nil || p.ShardCRC == nil {
			continue
		}
		if got := ShardCRC(obj); got != p.ShardCRC[i] && erasure.Check(id, i, scheme, obj) == nil {
			reasons[i] = fmt.Sprintf("CRC32C %08x, the index recorded %08x", got, p.ShardCRC[i])
			use[i] = nil
		}
	}
	_, want, crcs, bad, err := r.decodeAuthentic(id, use)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w: %v", id.Short(), ErrPackLost, err)
	}
	for i := range n {
		if reasons[i] == "" {
			reasons[i] = bad[i]
		}
	}
	var fixed []ShardProblem
	var errs []string
	for i := range n {
		if objs[i] != nil && bytes.Equal(objs[i], want[i]) {
			continue
		}
		t := r.TargetOf(i)
		if unreachable[i] != nil {
			errs = append(errs, fmt.Sprintf("shard %d: target %d unreachable: %v", i, t.Index+1, unreachable[i]))
			continue
		}
		if p.ShardCRC != nil && crcs[i] != p.ShardCRC[i] {
			errs = append(errs, fmt.Sprintf("shard %d: the authentic pack encodes it with CRC32C %08x, the index recorded %08x: not written", i, crcs[i], p.ShardCRC[i]))
			continue
		}
		name := ShardName(id, i)
		reason := "missing"
		if objs[i] != nil {
			reason = reasons[i]
			if err := t.Store.Delete(ctx, name); err != nil {
				errs = append(errs, fmt.Sprintf("shard %d: delete the corrupt copy on target %d: %v", i, t.Index+1, err))
				continue
			}
		}
		if err := t.Store.Create(ctx, name, want[i]); err != nil && !errors.Is(err, objstore.ErrExists) {
			errs = append(errs, fmt.Sprintf("shard %d: write to target %d: %v", i, t.Index+1, err))
			continue
		}
		fixed = append(fixed, ShardProblem{Pack: id, Shard: i, Target: t.Index + 1, Reason: reason})
	}
	if len(errs) > 0 {
		return fixed, fmt.Errorf("pack %s: %s", id.Short(), strings.Join(errs, "; "))
	}
	return fixed, nil
}

// CopyRef names one target's copy of a replicated object, or, with
// Target -1, an object that is not this repository's (verify found a key
// object that opens to another master key): copied nowhere.
type CopyRef struct {
	Target int // 0-based
	Name   string
}

// ReasonNotEncoded is the reason given for a shard that passes its own
// checks but differs from what the authentic pack encodes to.
const ReasonNotEncoded = "differs from the shard the authentic pack encodes to"

// decodeAuthentic decodes pack id from its shard objects (nil where
// missing; each is checked, see Coder.Decode) and compares it with its ID,
// leaving out one shard at a time should that fail (see FetchPack). It
// returns the pack, its erasure encoding (deterministic: the shard objects
// first written) and their CRCs, and by shard index why each given object
// that differs from its encoding is bad ("" for the others). Memory: the
// pack (once per decoding tried) and its encoding.
func (r *Repo) decodeAuthentic(id pack.ID, objs [][]byte) (plain []byte, want [][]byte, crcs []uint32, bad []string, err error) {
	plain, rep, err := r.Coder.Decode(id, objs)
	forged := -1
	if !errors.Is(err, erasure.ErrTooFewShards) && (err != nil || pack.Sum(plain) != id) {
		forged, rep, err = leaveOneOut(objs, func(objs [][]byte) (erasure.Report, bool) {
			var rep erasure.Report
			var err error
			plain, rep, err = r.Coder.Decode(id, objs)
			return rep, err == nil && pack.Sum(plain) == id
		})
	}
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if want, crcs, err = r.encode(id, plain); err != nil {
		return nil, nil, nil, nil, err
	}
	bad = make([]string, len(objs))
	for i, obj := range objs {
		switch {
		case obj == nil || bytes.Equal(obj, want[i]):
		case i == forged:
			bad[i] = ReasonNotAuthentic
		case rep.States[i] == erasure.Corrupt:
			bad[i] = rep.Reasons[i]
		default:
			bad[i] = ReasonNotEncoded
		}
	}
	return plain, want, crcs, bad, nil
}

// DecodeAuthentic is for verify: it decodes pack id from its shard objects
// (nil where missing) as RepairPack does, and returns the pack and by
// shard index why each given object is not the one the pack encodes to
// ("" for the good ones). A shard forged with valid checksums is found
// whether the decoding used it or not.
func (r *Repo) DecodeAuthentic(id pack.ID, objs [][]byte) ([]byte, []string, error) {
	p, _, _, bad, err := r.decodeAuthentic(id, objs)
	return p, bad, err
}

// RepairMetadata copies the replicated objects (keys, index objects,
// manifests) to every reachable target that lacks them, and
// writes the config of a target that has none (a bucket that came back
// empty). The copies named in corrupt (found by verify) are read again
// and, if they still differ from a good copy, deleted and written anew. It
// returns the names it wrote, as "target N: name". Objects that a deletion
// record names (forget or prune is deleting them) are not copied, nor are
// those deleted from every target since the listing, nor those no target
// has a valid copy of, nor foreign ones (not this repository's: only a
// person can delete them).
// A config is never overwritten: one that does not check may be another
// repository's.
func (r *Repo) RepairMetadata(ctx context.Context, corrupt ...CopyRef) ([]string, error) {
	var mu sync.Mutex
	var wrote []string
	have := make([]map[string]bool, len(r.Targets))
	for _, t := range r.Targets {
		have[t.Index] = map[string]bool{}
		for _, prefix := range []string{"keys/", "index/", "snapshots/", "config"} {
			err := t.Store.List(ctx, prefix, func(i objstore.Info) error {
				have[t.Index][i.Name] = true
				return nil
			})
			if errors.Is(err, objstore.ErrNoBucket) {
				return nil, fmt.Errorf("target %d (%s): the bucket does not exist; create it (empty) and run repair again", t.Index+1, t.Store.Location())
			}
			if err != nil {
				return nil, fmt.Errorf("target %d (%s): %w", t.Index+1, t.Store.Location(), err)
			}
		}
	}
	// Read after the listings: a deletion the listings saw half done was
	// recorded before it started.
	gone, err := r.Deleting(ctx)
	if err != nil {
		return nil, err
	}
	all := map[string]bool{}
	for _, h := range have {
		for name := range h {
			if name != "config" && !gone.Objects[name] {
				all[name] = true
			}
		}
	}
	for _, c := range corrupt {
		if c.Target < 0 {
			delete(all, c.Name)
		}
	}
	replace := make([]map[string]bool, len(r.Targets))
	for _, c := range corrupt {
		if c.Target < 0 || c.Target >= len(r.Targets) || !all[c.Name] || !have[c.Target][c.Name] {
			continue
		}
		if replace[c.Target] == nil {
			replace[c.Target] = map[string]bool{}
		}
		replace[c.Target][c.Name] = true
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, t := range r.Targets {
		if !have[t.Index]["config"] {
			g.Go(func() error {
				c := r.Config
				c.Target = t.Index
				b, err := json.Marshal(c)
				if err != nil {
					return err
				}
				if err := t.Store.Create(gctx, "config", r.key.Seal(nil, b, configAD)); err != nil && !errors.Is(err, objstore.ErrExists) {
					return fmt.Errorf("target %d: write config: %w", t.Index+1, err)
				}
				mu.Lock()
				wrote = append(wrote, fmt.Sprintf("target %d: config", t.Index+1))
				mu.Unlock()
				return nil
			})
		}
		for name := range all {
			if have[t.Index][name] && !replace[t.Index][name] {
				continue
			}
			g.Go(func() error {
				var obj []byte
				// Copies are checked before they spread: keys by their
				// name, the rest by their authentication tag and name.
				err := r.getAny(gctx, name, func(b []byte) error {
					if err := r.checkReplicated(name, b); err != nil {
						return err
					}
					obj = b
					return nil
				})
				switch {
				case errors.Is(err, objstore.ErrNotFound):
					return nil // deleted since the listing
				case errors.Is(err, ErrNoValidCopy):
					return nil // nothing to copy; verify reports it
				case err != nil:
					return err
				}
				if have[t.Index][name] {
					old, err := t.Store.Get(gctx, name)
					switch {
					case err == nil && bytes.Equal(old, obj):
						return nil // repaired meanwhile
					case err != nil && !errors.Is(err, objstore.ErrNotFound):
						return fmt.Errorf("target %d: read %s: %w", t.Index+1, name, err)
					}
					if err := t.Store.Delete(gctx, name); err != nil && !errors.Is(err, objstore.ErrNotFound) {
						return fmt.Errorf("target %d: delete the corrupt copy of %s: %w", t.Index+1, name, err)
					}
				}
				if err := t.Store.Create(gctx, name, obj); err != nil && !errors.Is(err, objstore.ErrExists) {
					return fmt.Errorf("target %d: write %s: %w", t.Index+1, name, err)
				}
				mu.Lock()
				wrote = append(wrote, fmt.Sprintf("target %d: %s", t.Index+1, name))
				mu.Unlock()
				return nil
			})
		}
	}
	return wrote, g.Wait()
}

// checkReplicated verifies a copy of a replicated object before repair
// spreads it: content-addressed names must match, sealed objects must open.
func (r *Repo) checkReplicated(name string, b []byte) error {
	dir, id, _ := strings.Cut(name, "/")
	if pack.Sum(b).String() != id {
		return fmt.Errorf("%s: content does not match its name", name)
	}
	switch dir {
	case "index":
		_, err := r.openIndex(b)
		return err
	case "snapshots":
		_, err := r.key.Open(nil, b, manifestAD)
		return err
	}
	return nil // keys: the name is the hash of the content
}

// RebuildIndex reads packs ids, which have shards on the targets but no
// index entry (their index object was lost from every target), and writes
// one index object for them, built from their headers. Each pack's shard
// CRCs are those of its erasure re-encoding, not of the shards as stored:
// the pack's bytes are checked against its ID, so the record says what
// every shard must be, and a stored shard that differs is found by the next
// verify and rewritten by RepairPack. It returns what it indexed.
//
// Only packs a snapshot needs should be given: shards of packs no index
// knows are also those of a backup still running (it writes its index after
// its shards), whose own index would duplicate this one, or of a crashed
// backup (garbage for prune).
func (r *Repo) RebuildIndex(ctx context.Context, ids []pack.ID) ([]PackInfo, error) {
	batch := &IndexBatch{}
	var errs []string
	for _, id := range ids {
		p, _, err := r.ReadPack(ctx, id)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		entries, err := r.Codec.ParseHeader(p)
		if err != nil {
			errs = append(errs, fmt.Sprintf("pack %s: %v", id.Short(), err))
			continue
		}
		_, crcs, err := r.encode(id, p)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		batch.Add(PackInfo{ID: id, Length: int64(len(p)), ShardCRC: crcs}, entries)
	}
	if len(batch.Packs) > 0 {
		if _, err := r.WriteIndex(ctx, batch); err != nil {
			return nil, err
		}
	}
	if len(errs) > 0 {
		return batch.Packs, fmt.Errorf("packs not indexed: %s", strings.Join(errs, "; "))
	}
	return batch.Packs, nil
}
