package repo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
)

// A deletion record (deletions/<id>, on every target; sealed JSON,
// associated data "ferry deletion v1") names the manifests, index objects
// and packs that forget or prune is deleting. It is written to every
// target before any of them is deleted anywhere, so from that moment every
// reader treats them as gone whatever each target still holds: Snapshots
// and LoadIndex skip them, verify does not report them half-deleted, and
// repair does not copy them back. A later forget or prune finishes what an
// interrupted one left. Forget deletes its record when done; prune leaves
// its record to the next prune, so that a verify that ran meanwhile can
// still tell packs prune deleted from packs that were lost.
var deletionAD = []byte("ferry deletion v1")

// Deletion is the content of a deletion record.
type Deletion struct {
	Created   time.Time `json:"created"`
	Snapshots []string  `json:"snapshots,omitempty"` // manifest IDs
	Index     []string  `json:"index,omitempty"`     // index object IDs
	Packs     []string  `json:"packs,omitempty"`     // pack IDs (hex), every shard of each
}

// ParseDeletion parses and checks a deletion record's plaintext.
func ParseDeletion(b []byte) (*Deletion, error) {
	var d Deletion
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("malformed deletion record: %w", err)
	}
	for _, ids := range [][]string{d.Snapshots, d.Index, d.Packs} {
		for _, id := range ids {
			if _, err := pack.ParseID(id); err != nil {
				return nil, fmt.Errorf("malformed deletion record: object ID %q", id)
			}
		}
	}
	return &d, nil
}

// packIDs returns the record's packs.
func (d *Deletion) packIDs() []pack.ID {
	out := make([]pack.ID, 0, len(d.Packs))
	for _, s := range d.Packs {
		id, _ := pack.ParseID(s) // checked by ParseDeletion, or made from a pack.ID
		out = append(out, id)
	}
	return out
}

// objects returns the replicated objects the record deletes.
func (d *Deletion) objects() []string {
	var out []string
	for _, id := range d.Snapshots {
		out = append(out, "snapshots/"+id)
	}
	for _, id := range d.Index {
		out = append(out, "index/"+id)
	}
	return out
}

// writeDeletion seals d and writes it to every target; it returns its name.
func (r *Repo) writeDeletion(ctx context.Context, d *Deletion) (string, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return "", err
	}
	obj := r.key.Seal(nil, b, deletionAD)
	sum := sha256.Sum256(obj)
	name := "deletions/" + hex.EncodeToString(sum[:])
	return name, r.putEverywhere(ctx, name, func(*Target) ([]byte, error) { return obj, nil })
}

// deletions reads every deletion record, by name. A record removed since
// the listing is skipped.
func (r *Repo) deletions(ctx context.Context) (map[string]*Deletion, error) {
	out := map[string]*Deletion{}
	err := r.loadEach(ctx, "deletions/", func(name string, b []byte) error {
		plain, err := r.openNamed(name, b, deletionAD)
		if err != nil {
			return err
		}
		d, err := ParseDeletion(plain)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		out[name] = d
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read deletion records: %w", err)
	}
	return out, nil
}

// carryOut deletes everything d names from every target: manifests and
// index objects, then every shard of the packs (index objects first, so
// that no index object ever names a pack whose shards are gone). Deleting
// what is already gone succeeds, so it can run any number of times.
func (r *Repo) carryOut(ctx context.Context, d *Deletion) error {
	if err := r.deleteAll(ctx, d.objects()); err != nil {
		return err
	}
	var shards []shardRef
	for _, id := range d.packIDs() {
		for i := range r.Config.Erasure.Shards() {
			shards = append(shards, shardRef{id, i})
		}
	}
	return r.deleteShards(ctx, shards)
}

// deleteAll deletes replicated objects from every target, 16 at a time.
func (r *Repo) deleteAll(ctx context.Context, names []string) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, name := range names {
		g.Go(func() error { return r.deleteEverywhere(gctx, name) })
	}
	return g.Wait()
}

type shardRef struct {
	pack  pack.ID
	shard int
}

// deleteShards deletes each shard from the target holding it, 16 at a time.
func (r *Repo) deleteShards(ctx context.Context, shards []shardRef) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for _, s := range shards {
		g.Go(func() error {
			t := r.TargetOf(s.shard)
			name := ShardName(s.pack, s.shard)
			if err := t.Store.Delete(gctx, name); err != nil && !errors.Is(err, objstore.ErrNotFound) {
				return fmt.Errorf("delete %s from target %d (%s): %w", name, t.Index+1, t.Store.Location(), err)
			}
			return nil
		})
	}
	return g.Wait()
}

// Deleting is what the deletion records on the targets name: objects and
// packs on their way out, which readers treat as gone.
type Deleting struct {
	Objects map[string]bool // "snapshots/<id>", "index/<id>"
	Packs   map[pack.ID]bool
}

// Deleting reads the deletion records.
func (r *Repo) Deleting(ctx context.Context) (*Deleting, error) {
	recs, err := r.deletions(ctx)
	if err != nil {
		return nil, err
	}
	return deletingOf(recs), nil
}

func deletingOf(recs map[string]*Deletion) *Deleting {
	out := &Deleting{Objects: map[string]bool{}, Packs: map[pack.ID]bool{}}
	for _, d := range recs {
		for _, o := range d.objects() {
			out.Objects[o] = true
		}
		for _, id := range d.packIDs() {
			out.Packs[id] = true
		}
	}
	return out
}
