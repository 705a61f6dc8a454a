package verify

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
)

var (
	// ErrDegraded is wrapped by Report.Err when something is damaged but
	// every snapshot can still be restored (and repaired).
	ErrDegraded = errors.New("repository degraded but repairable")
	// ErrDataLost is wrapped by Report.Err when a snapshot cannot be
	// restored. It is restore's sentinel: the same condition a restore meets.
	ErrDataLost = restore.ErrDataLost
)

// Severity classifies a problem, and a whole report by its worst problem.
type Severity int

const (
	OK       Severity = iota
	Notice            // worth knowing, harms nothing (garbage for prune)
	Degraded          // repairable
	DataLost          // some snapshot cannot be restored
)

func (s Severity) String() string {
	switch s {
	case OK:
		return "ok"
	case Notice:
		return "notice"
	case Degraded:
		return "degraded"
	case DataLost:
		return "data lost"
	}
	return fmt.Sprintf("Severity(%d)", int(s))
}

// MarshalText makes JSON show the name.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Problem kinds.
const (
	KindTargetUnavailable    = "target-unavailable"
	KindObjectMissing        = "object-missing"   // a replicated object (config, keys, index, manifest) absent from a target
	KindObjectCorrupt        = "object-corrupt"   // a target's copy of a replicated object differs from the good copy, or does not open
	KindObjectForeign        = "object-foreign"   // a key object no target has a valid copy of, or one that opens to another master key
	KindIndexUnreadable      = "index-unreadable" // no target has a valid copy of an object under index/
	KindSnapshotLost         = "snapshot-lost"    // no target has a valid copy of an object under snapshots/, or a segment of its extents cannot be read
	KindShardMissing         = "shard-missing"
	KindShardSize            = "shard-size"            // listed size differs from header + ceil(packLen/k)
	KindShardCorrupt         = "shard-corrupt"         // the store's CRC32C differs from the index's, or a downloaded shard fails its checks
	KindChecksumUnchecked    = "checksum-unchecked"    // shards checked by size only where checksums were expected (Stat failed, or no checksum stored)
	KindPackLost             = "pack-lost"             // fewer than k intact shards
	KindPackNoShards         = "pack-no-shards"        // an index entry whose pack has no shard anywhere
	KindPackCorrupt          = "pack-corrupt"          // decoded pack does not hash to its ID, or its header does not open
	KindBlobCorrupt          = "blob-corrupt"          // a blob does not decrypt or hash to its chunk ID
	KindIndexMismatch        = "index-mismatch"        // the index disagrees with the pack header
	KindChunkUnindexed       = "chunk-unindexed"       // a snapshot's chunk or segment the index does not know
	KindUnreferencedPack     = "unreferenced-pack"     // shards of a pack no index knows
	KindStrayObject          = "stray-object"          // an object under data/ that is no shard of this layout
	KindDrillFailed          = "drill-failed"          // a drill found the snapshot unrestorable
	KindIndexRebuildable     = "index-rebuildable"     // chunks or segments missing from the index were found in pack headers
	KindSnapshotUnrestorable = "snapshot-unrestorable" // a snapshot that needs lost data
)

// Problem is one finding.
type Problem struct {
	Severity Severity `json:"severity"`
	Kind     string   `json:"kind"`
	Target   int      `json:"target,omitempty"` // 1-based
	Pack     string   `json:"pack,omitempty"`
	Shard    *int     `json:"shard,omitempty"`
	Object   string   `json:"object,omitempty"`
	Detail   string   `json:"detail"`
}

func (p Problem) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", p.Severity, p.Kind)
	if p.Target > 0 {
		fmt.Fprintf(&b, " target %d", p.Target)
	}
	if p.Pack != "" {
		fmt.Fprintf(&b, " pack %s", p.Pack[:min(8, len(p.Pack))])
	}
	if p.Shard != nil {
		fmt.Fprintf(&b, " shard %d", *p.Shard)
	}
	if p.Object != "" {
		fmt.Fprintf(&b, " %s", p.Object)
	}
	if p.Detail != "" {
		fmt.Fprintf(&b, ": %s", p.Detail)
	}
	return b.String()
}

// SnapshotRef names a snapshot for people: what was backed up, and from where.
type SnapshotRef struct {
	ID             string    `json:"id"`
	Name           string    `json:"name,omitempty"`
	Namespace      string    `json:"namespace,omitempty"`
	PVC            string    `json:"pvc,omitempty"`
	VolumeSnapshot string    `json:"volumesnapshot,omitempty"`
	Started        time.Time `json:"started,omitzero"`
	// Why lists the first few reasons (lost packs, corrupt chunks).
	Why []string `json:"why,omitempty"`
}

func refOf(s *repo.Snapshot) SnapshotRef {
	return SnapshotRef{ID: s.ID, Name: s.Name, Namespace: s.Volume.Namespace, PVC: s.Volume.PVC,
		VolumeSnapshot: s.Volume.VolumeSnapshot, Started: s.Started}
}

func (s SnapshotRef) String() string {
	out := s.ID[:min(12, len(s.ID))]
	if s.Name != "" {
		out += " " + s.Name
	}
	if s.Namespace != "" || s.VolumeSnapshot != "" {
		out += fmt.Sprintf(" (%s/%s", s.Namespace, s.VolumeSnapshot)
		if s.PVC != "" {
			out += ", pvc " + s.PVC
		}
		out += ")"
	}
	return out
}

// TargetStatus is what the listing found on one target.
type TargetStatus struct {
	Target    int    `json:"target"` // 1-based
	Location  string `json:"location"`
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
	Shards    int    `json:"shards"`
	Bytes     int64  `json:"bytes"`
}

// ReadStats describe the read-data level of one run.
type ReadStats struct {
	Percent    int    `json:"percent"`
	Packs      int    `json:"packs"`       // checked in this run
	TotalPacks int    `json:"total_packs"` // known to the index
	Bytes      int64  `json:"bytes"`       // shard bytes downloaded
	Cursor     string `json:"cursor"`      // last pack checked: the next run starts after it
	Wrapped    bool   `json:"wrapped"`     // this run reached the end and started over
	// Checked lists the packs read, in order.
	Checked []string `json:"-"`
}

// ShardChecks counts how the structural level checked the listed shards of
// the packs the index knows: by checksum (the CRC32C the store keeps,
// compared with the one the index recorded) or by listed size only, and
// why. Shards missing or of the wrong size are problems, not counted here.
type ShardChecks struct {
	Checksum int `json:"checksum"`
	SizeOnly int `json:"size_only"`
	// Why shards were checked by size only.
	NotRecorded  int `json:"not_recorded,omitempty"`   // the index has no CRCs for the pack (index version 1)
	StoreHasNone int `json:"store_has_none,omitempty"` // the store keeps no CRC32C for the object
	StatFailed   int `json:"stat_failed,omitempty"`    // the Stat request failed
	Skipped      int `json:"skipped,omitempty"`        // the checksum pass was not run (SizesOnly)
}

// Report is the outcome of a verification.
type Report struct {
	RepoID    string         `json:"repo_id"`
	Scheme    string         `json:"scheme"`
	Started   time.Time      `json:"started"`
	Duration  float64        `json:"duration_seconds"`
	Status    Severity       `json:"status"` // worst problem; notices count as ok
	Targets   []TargetStatus `json:"targets"`
	Snapshots int            `json:"snapshots"`
	// SnapshotIDs are the snapshots this run checked, sorted: what its
	// verdict speaks for (the lost and damaged ones are named below).
	SnapshotIDs []string    `json:"-"`
	IndexObjs   int         `json:"index_objects"`
	Packs       int         `json:"packs"`    // known to the index
	Chunks      int         `json:"chunks"`   // distinct chunks the manifests reference
	Segments    int         `json:"segments"` // distinct segments the manifests name (blobs in packs, as chunks are)
	Shards      ShardChecks `json:"shard_checks"`
	// HeadRequests counts the Stat requests made (S3 HEAD): one per shard
	// in the checksum pass, one per replicated object a listing lacked.
	HeadRequests int64         `json:"head_requests"`
	Read         *ReadStats    `json:"read_data,omitempty"`
	Drill        *DrillResult  `json:"drill,omitempty"`
	Lost         []SnapshotRef `json:"lost_snapshots,omitempty"`
	NeedRebuild  []SnapshotRef `json:"snapshots_needing_repair,omitempty"`
	Problems     []Problem     `json:"problems"`
}

// Err returns nil when the report is OK (notices included), else an error
// wrapping ErrDegraded or ErrDataLost that names the lost snapshots.
func (r *Report) Err() error {
	switch r.Status {
	case DataLost:
		var names []string
		for _, s := range r.Lost {
			names = append(names, s.String()+": "+strings.Join(s.Why, ", "))
		}
		if len(names) == 0 {
			return fmt.Errorf("%w (see the problems above)", ErrDataLost)
		}
		return fmt.Errorf("%w: %d snapshot(s) cannot be restored: %s", ErrDataLost, len(names), strings.Join(names, "; "))
	case Degraded:
		return fmt.Errorf("%w: run repair", ErrDegraded)
	}
	return nil
}

// ReadBytes is the shard bytes the run's read-data level downloaded.
func (r *Report) ReadBytes() int64 {
	if r.Read == nil {
		return 0
	}
	return r.Read.Bytes
}

// ReadDamaged returns the packs this run read (ReadDataPercent or Packs)
// that have a problem, sorted: what a check after a repair reads again.
func (r *Report) ReadDamaged() []pack.ID {
	if r.Read == nil {
		return nil
	}
	read := make(map[string]bool, len(r.Read.Checked))
	for _, id := range r.Read.Checked {
		read[id] = true
	}
	var out []pack.ID
	for _, p := range r.Problems {
		if !read[p.Pack] {
			continue
		}
		if id, err := pack.ParseID(p.Pack); err == nil && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	slices.SortFunc(out, comparePacks)
	return out
}

// AddDrill records a drill's outcome: its result, or, when err says the
// snapshot could not be restored (restore.ErrDataLost or ErrMismatch), a
// data-lost problem naming it. Any other error is returned unchanged: the
// drill could not be done, which proves nothing either way.
func (r *Report) AddDrill(s *repo.Snapshot, res *DrillResult, err error) error {
	switch {
	case err == nil:
		r.Drill = res
		return nil
	case errors.Is(err, restore.ErrDataLost), errors.Is(err, restore.ErrMismatch):
		ref := refOf(s)
		r.add(Problem{Severity: DataLost, Kind: KindDrillFailed, Object: "snapshots/" + s.ID, Detail: err.Error()})
		if !slices.ContainsFunc(r.Lost, func(l SnapshotRef) bool { return l.ID == s.ID }) {
			ref.Why = []string{"drill failed: " + err.Error()}
			r.Lost = append(r.Lost, ref)
		}
		return nil
	}
	return err
}

func (r *Report) add(p Problem) {
	r.Problems = append(r.Problems, p)
	if p.Severity > r.Status && p.Severity > Notice {
		r.Status = p.Severity
	}
}

// WriteText prints a human summary: the totals, the targets, problems
// grouped by kind (the first few of each), and the lost snapshots.
func (r *Report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "repository %s (%s over %d targets): %d snapshots, %d index objects, %d packs, %d chunks referenced\n",
		r.RepoID, r.Scheme, len(r.Targets), r.Snapshots, r.IndexObjs, r.Packs, r.Chunks)
	for _, t := range r.Targets {
		if t.Reachable {
			fmt.Fprintf(w, "  target %d %s: %d shards, %s\n", t.Target, t.Location, t.Shards, humanize.IBytes(uint64(t.Bytes)))
		} else {
			fmt.Fprintf(w, "  target %d %s: UNREACHABLE: %s\n", t.Target, t.Location, t.Error)
		}
	}
	fmt.Fprintf(w, "shards: %d checked by checksum, %d by size only%s; %d HEAD requests\n",
		r.Shards.Checksum, r.Shards.SizeOnly, r.Shards.sizeOnlyWhy(), r.HeadRequests)
	if r.Read != nil {
		wrapped := ""
		if r.Read.Wrapped {
			wrapped = ", completed a pass over every pack"
		}
		share := fmt.Sprintf("%d%% per run", r.Read.Percent)
		if r.Read.Percent == 0 {
			share = "those found damaged, read again"
		}
		fmt.Fprintf(w, "read data: %d of %d packs (%s), %s downloaded%s\n",
			r.Read.Packs, r.Read.TotalPacks, share, humanize.IBytes(uint64(r.Read.Bytes)), wrapped)
	}
	if d := r.Drill; d != nil {
		fmt.Fprintf(w, "drill: restored %s (%s) in %s, %s/s; digest verified\n",
			d.SnapshotID[:min(12, len(d.SnapshotID))], humanize.IBytes(uint64(d.BytesVolume)), d.Duration.Round(time.Millisecond), humanize.IBytes(uint64(d.BytesPerSecond)))
	}
	byKind := map[string][]Problem{}
	for _, p := range r.Problems {
		byKind[p.Kind] = append(byKind[p.Kind], p)
	}
	for _, k := range slices.Sorted(maps.Keys(byKind)) {
		ps := byKind[k]
		fmt.Fprintf(w, "%s: %d\n", k, len(ps))
		for i, p := range ps {
			if i == 5 {
				fmt.Fprintf(w, "  ... and %d more\n", len(ps)-5)
				break
			}
			fmt.Fprintf(w, "  %s\n", p)
		}
	}
	for _, s := range r.NeedRebuild {
		fmt.Fprintf(w, "REPAIRABLE: snapshot %s needs repair\n", s)
	}
	for _, s := range r.Lost {
		fmt.Fprintf(w, "LOST: snapshot %s cannot be restored: %s\n", s, strings.Join(s.Why, "; "))
	}
	switch r.Status {
	case OK:
		fmt.Fprintln(w, "status: ok")
	case Degraded:
		fmt.Fprintln(w, "status: DEGRADED, every snapshot still restorable; run repair")
	case DataLost:
		fmt.Fprintf(w, "status: DATA LOST, %d snapshot(s) cannot be restored\n", len(r.Lost))
	}
}

// sizeOnlyWhy says why shards were checked by size only, " (...)" or "".
func (s ShardChecks) sizeOnlyWhy() string {
	var why []string
	for _, c := range []struct {
		n    int
		what string
	}{
		{s.Skipped, "checksum pass skipped"},
		{s.NotRecorded, "no checksum in the index, version 1"},
		{s.StoreHasNone, "the store keeps no checksum"},
		{s.StatFailed, "HEAD failed"},
	} {
		if c.n > 0 {
			why = append(why, fmt.Sprintf("%d: %s", c.n, c.what))
		}
	}
	if len(why) == 0 {
		return ""
	}
	return " (" + strings.Join(why, ", ") + ")"
}

func intp(i int) *int { return &i }
