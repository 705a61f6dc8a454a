package verify_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/verify"
)

// TestSegmentedSnapshots: snapshots whose extents are in segments verify
// clean. A segment missing from one target and changed on another is
// repairable, and repair puts it back; one that no target has a valid copy
// of loses its snapshot, named as a lost manifest's would be. The segments
// of a forgotten snapshot are garbage, which prune deletes.
func TestSegmentedSnapshots(t *testing.T) {
	f := setupSegments(t, 16)
	ctx := context.Background()
	r := f.open(t)
	db, logs := mustSnapshot(t, r, f.db.SnapshotID), mustSnapshot(t, r, f.logs.SnapshotID)
	if len(db.Segments) < 3 || len(logs.Segments) < 2 {
		t.Fatalf("db has %d segments, logs %d: want several", len(db.Segments), len(logs.Segments))
	}
	rep := f.run(t, verify.Options{})
	if rep.Status != verify.OK || len(rep.Problems) != 0 || rep.Segments != len(db.Segments)+len(logs.Segments) {
		t.Fatalf("segmented snapshots: %s, %d segments: %v", rep.Status, rep.Segments, rep.Problems)
	}

	// Missing from target 2, another object's bytes on target 3.
	seg := db.Segments[1].Name()
	f.remove(t, 1, seg)
	f.put(t, 2, seg, f.get(t, f.Servers[2].Client(t), "repo/"+db.Segments[0].Name()))
	rep = f.run(t, verify.Options{})
	var got []string
	for _, p := range rep.Problems {
		got = append(got, fmt.Sprintf("%s %s %d", p.Kind, p.Object, p.Target))
	}
	want := []string{fmt.Sprintf("%s %s 3", verify.KindObjectCorrupt, seg), fmt.Sprintf("%s %s 2", verify.KindObjectMissing, seg)}
	slices.Sort(got)
	if rep.Status != verify.Degraded || len(rep.Lost) != 0 || !slices.Equal(got, want) {
		t.Fatalf("segment damaged on two targets: %s, want %v, got %v", rep.Status, want, rep.Problems)
	}
	done, err := verify.Repair(ctx, f.open(t), rep)
	if err != nil || !slices.Contains(done.Copied, "target 2: "+seg) || !slices.Contains(done.Copied, "target 3: "+seg) {
		t.Fatalf("repair: %v (%+v)", err, done)
	}
	if rep := f.run(t, verify.Options{}); rep.Status != verify.OK || len(rep.Problems) != 0 {
		t.Fatalf("after repair: %s: %v", rep.Status, rep.Problems)
	}
	if _, err := verify.Drill(ctx, f.open(t), db, verify.Discard, verify.DrillOptions{}); err != nil {
		t.Fatalf("drill after repair: %v", err)
	}

	// No valid copy anywhere: a flipped byte on targets 1 and 2, gone
	// from target 3.
	seg = logs.Segments[len(logs.Segments)-1].Name()
	orig := f.get(t, f.Servers[0].Client(t), "repo/"+seg)
	for i := range 2 {
		b := slices.Clone(orig)
		b[len(b)/2] ^= 1
		f.put(t, i, seg, b)
	}
	f.remove(t, 2, seg)
	rep = f.run(t, verify.Options{})
	if rep.Status != verify.DataLost || !errors.Is(rep.Err(), verify.ErrDataLost) {
		t.Fatalf("segment lost: %s: %v", rep.Status, rep.Problems)
	}
	if len(rep.Lost) != 1 {
		t.Fatalf("want only logs lost, got %+v", rep.Lost)
	}
	if l := rep.Lost[0]; l.ID != logs.ID || l.Name != "logs" || l.Namespace != "ops" || l.PVC != "logs" || l.VolumeSnapshot != "logs-snap-1" ||
		len(l.Why) != 1 || !strings.Contains(l.Why[0], seg) {
		t.Fatalf("lost snapshot named wrongly: %+v", l)
	}
	lost := problems(rep, verify.KindSnapshotLost)
	if len(lost) != 1 || lost[0].Object != seg || !strings.Contains(lost[0].Detail, "target 1:") || !strings.Contains(lost[0].Detail, "target 2:") ||
		!strings.Contains(lost[0].Detail, "ops/logs-snap-1") || len(rep.Problems) != 1 {
		t.Fatalf("want the segment reported lost, and nothing else: %v", rep.Problems)
	}
	if msg := rep.Err().Error(); !strings.Contains(msg, "ops/logs-snap-1") || !strings.Contains(msg, seg) {
		t.Fatalf("error does not name the snapshot and segment: %s", msg)
	}
	if done, err := verify.Repair(ctx, f.open(t), rep); err != nil || len(done.Copied) != 0 {
		t.Fatalf("repair spread a bad copy: %v (%+v)", err, done)
	}
	if _, err := verify.Drill(ctx, f.open(t), logs, verify.Discard, verify.DrillOptions{}); !errors.Is(err, restore.ErrDataLost) {
		t.Fatalf("drill of the lost snapshot: want ErrDataLost, got %v", err)
	}
	for i := range f.Servers {
		f.put(t, i, seg, orig)
	}
	if rep := f.run(t, verify.Options{}); rep.Status != verify.OK || len(rep.Problems) != 0 {
		t.Fatalf("segment put back: %s: %v", rep.Status, rep.Problems)
	}

	// Forgotten, logs leaves its segments as garbage.
	if err := r.Forget(ctx, []string{logs.ID}); err != nil {
		t.Fatal(err)
	}
	delete(f.images, logs.ID)
	rep = f.run(t, verify.Options{})
	var garbage []string
	for _, p := range problems(rep, verify.KindUnreferencedSegment) {
		if p.Severity != verify.Notice || !strings.Contains(p.Detail, "prune deletes it") {
			t.Errorf("garbage segment reported as %s: %s", p.Severity, p)
		}
		garbage = append(garbage, p.Object)
	}
	var segs []string
	for _, sg := range logs.Segments {
		segs = append(segs, sg.Name())
	}
	slices.Sort(segs)
	if rep.Status != verify.OK || !slices.Equal(garbage, segs) || len(rep.Problems) != len(segs) || rep.Segments != len(db.Segments) {
		t.Fatalf("forgotten snapshot's segments: %s, %d segments, want notices for %v: %v", rep.Status, rep.Segments, segs, rep.Problems)
	}
	pr, err := f.open(t).Prune(ctx, repo.PruneOptions{Grace: time.Hour})
	if err != nil || !slices.Equal(pr.SegmentsDeleted, segs) {
		t.Fatalf("prune: %v, deleted segments %v, want %v", err, pr.SegmentsDeleted, segs)
	}
	if left := f.list(t, 0, "extents/"); len(left) != len(db.Segments) {
		t.Fatalf("after prune target 1 holds %d segments, want db's %d", len(left), len(db.Segments))
	}
	if rep := f.run(t, verify.Options{}); rep.Status != verify.OK || len(rep.Problems) != 0 {
		t.Fatalf("after prune: %s: %v", rep.Status, rep.Problems)
	}
	f.restoresAll(t)
}
