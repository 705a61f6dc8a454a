package repo

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/ferrydr/ferry/transport/pack"
)

// A prune plan (plans/<id>, on every target; sealed, associated data
// "ferry prune plan v1") marks the packs a prune found unreferenced, each
// with the time it was first marked and the time from which prune may
// delete it (marked + grace):
//
//	version (1) || created (unix ms, uvarint) || packs (uvarint) || packs × mark
//	mark: pack ID (32) || marked (unix ms, uvarint) || deletable - marked (ms, uvarint)
//
// Each prune run replaces the plans it read by one new plan (written
// before the old ones are deleted, so a pack stays marked from its first
// marking until it is deleted or referenced again). See prune.go for what
// the marks promise.
var planAD = []byte("ferry prune plan v1")

// Mark is a pack's entry in a prune plan.
type Mark struct {
	Marked    time.Time // when a plan first marked the pack (the writing prune's clock)
	Deletable time.Time // prune deletes it no earlier than this
}

// Plan is the content of one prune plan object.
type Plan struct {
	Created time.Time
	Marks   map[pack.ID]Mark
}

// maxUnixMilli bounds the times a plan may hold (the year 10000), so that
// no parsed time overflows.
const maxUnixMilli = 253402300800000

// maxWaitMilli bounds a mark's grace period so that it converts to a
// time.Duration without overflow (about 292 years).
const maxWaitMilli = math.MaxInt64 / int64(time.Millisecond)

func (p *Plan) marshal() []byte {
	out := []byte{1}
	out = binary.AppendUvarint(out, uint64(p.Created.UnixMilli()))
	out = binary.AppendUvarint(out, uint64(len(p.Marks)))
	ids := slices.SortedFunc(maps.Keys(p.Marks), func(a, b pack.ID) int { return strings.Compare(string(a[:]), string(b[:])) })
	for _, id := range ids {
		m := p.Marks[id]
		out = append(out, id[:]...)
		out = binary.AppendUvarint(out, uint64(m.Marked.UnixMilli()))
		out = binary.AppendUvarint(out, uint64(max(m.Deletable.Sub(m.Marked).Milliseconds(), 0)))
	}
	return out
}

var errPlanFormat = errors.New("malformed prune plan")

// ParsePlan parses a prune plan's plaintext.
func ParsePlan(b []byte) (*Plan, error) {
	r := &reader{b: b}
	if v := r.bytes(1); r.err != nil || v[0] != 1 {
		return nil, fmt.Errorf("%w: bad version", errPlanFormat)
	}
	p := &Plan{Created: time.UnixMilli(int64(r.uvarint(maxUnixMilli))).UTC()}
	// A mark takes at least 34 bytes.
	n := r.uvarint(uint64(len(r.b)) / 34)
	p.Marks = make(map[pack.ID]Mark, n)
	for i := uint64(0); i < n && r.err == nil; i++ {
		var id pack.ID
		copy(id[:], r.bytes(32))
		marked := int64(r.uvarint(maxUnixMilli))
		wait := int64(r.uvarint(uint64(maxWaitMilli)))
		if _, dup := p.Marks[id]; dup && r.err == nil {
			r.err = errPlanFormat
		}
		m := time.UnixMilli(marked).UTC()
		p.Marks[id] = Mark{Marked: m, Deletable: m.Add(time.Duration(wait) * time.Millisecond)}
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = errPlanFormat
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: %v", errPlanFormat, r.err)
	}
	return p, nil
}

// writePlan seals p and writes it to every target; it returns its name.
func (r *Repo) writePlan(ctx context.Context, p *Plan) (string, error) {
	obj := r.key.Seal(nil, p.marshal(), planAD)
	sum := sha256.Sum256(obj)
	name := "plans/" + hex.EncodeToString(sum[:])
	return name, r.putEverywhere(ctx, name, func(*Target) ([]byte, error) { return obj, nil })
}

// openNamed authenticates the sealed object name (dir/<sha256 of b>),
// sealed with associated data ad, and returns its plaintext.
func (r *Repo) openNamed(name string, b, ad []byte) ([]byte, error) {
	dir, _, _ := strings.Cut(name, "/")
	if sum := sha256.Sum256(b); dir+"/"+hex.EncodeToString(sum[:]) != name {
		return nil, fmt.Errorf("%s: content does not match its name", name)
	}
	plain, err := r.key.Open(nil, b, ad)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return plain, nil
}

// openPlan authenticates and parses the plan object name.
func (r *Repo) openPlan(name string, b []byte) (*Plan, error) {
	plain, err := r.openNamed(name, b, planAD)
	if err != nil {
		return nil, err
	}
	p, err := ParsePlan(plain)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return p, nil
}

// Plans returns every prune plan, by name (see loadPlans).
func (r *Repo) Plans(ctx context.Context) (map[string]*Plan, error) { return r.loadPlans(ctx) }

// loadPlans reads every prune plan, by name. A plan deleted since the
// listing (a prune replaced it) is skipped.
func (r *Repo) loadPlans(ctx context.Context) (map[string]*Plan, error) {
	out := map[string]*Plan{}
	err := r.loadEach(ctx, "plans/", func(name string, b []byte) error {
		p, err := r.openPlan(name, b)
		if err == nil {
			out[name] = p
		}
		return err
	})
	return out, err
}

// mergeMarks returns the marks of all plans; a pack in several keeps the
// earliest marking, and the latest deletable time, which is what any of
// them promised.
func mergeMarks(plans map[string]*Plan) map[pack.ID]Mark {
	out := map[pack.ID]Mark{}
	for _, p := range plans {
		for id, m := range p.Marks {
			if cur, ok := out[id]; ok {
				if cur.Marked.Before(m.Marked) {
					m.Marked = cur.Marked
				}
				if cur.Deletable.After(m.Deletable) {
					m.Deletable = cur.Deletable
				}
			}
			out[id] = m
		}
	}
	return out
}
