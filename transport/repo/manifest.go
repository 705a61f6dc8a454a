package repo

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/objstore"
)

// A snapshot manifest (sealed, associated data "ferry manifest v1") is the
// zstd-compressed plaintext
//
//	"FRYM" || version (1) || meta length (uvarint) || meta (JSON) || extents (uvarint) || extents × extent
//	extent: kind (1: 0 = data, 1 = zero) || length (uvarint) || chunk ID (32, data only)
//
// Extents are consecutive from offset 0 and cover the volume's size exactly.
var manifestAD = []byte("ferry manifest v1")

// Volume identifies where a snapshot came from.
type Volume struct {
	Source    string `json:"source,omitempty"` // path or device read
	Host      string `json:"host,omitempty"`
	Cluster   string `json:"cluster,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	PVC       string `json:"pvc,omitempty"`

	// For CSI snapshots: the driver's handles, and the Kubernetes objects
	// the external-snapshotter named.
	Driver                string `json:"driver,omitempty"`
	CSIVolumeID           string `json:"csi_volume_id,omitempty"`
	CSISnapshotID         string `json:"csi_snapshot_id,omitempty"`
	VolumeSnapshot        string `json:"volumesnapshot,omitempty"`
	VolumeSnapshotContent string `json:"volumesnapshotcontent,omitempty"`
}

// Stats are a backup's measured costs.
type Stats struct {
	BytesRead   int64 `json:"bytes_read"`
	BytesNew    int64 `json:"bytes_new"`
	BytesStored int64 `json:"bytes_stored"`
	BytesZero   int64 `json:"bytes_zero"`
	Chunks      int64 `json:"chunks"`
	NewChunks   int64 `json:"new_chunks"`
	Packs       int64 `json:"packs"`
}

// Meta is a manifest without its extents.
type Meta struct {
	Name     string            `json:"name"`
	Volume   Volume            `json:"volume"`
	Size     int64             `json:"size"`
	Digest   string            `json:"digest"` // hex, see VolumeDigest
	Parent   string            `json:"parent,omitempty"`
	Started  time.Time         `json:"started"`
	Finished time.Time         `json:"finished"`
	Params   map[string]string `json:"params,omitempty"`
	Stats    Stats             `json:"stats"`
}

// Extent is one run of the volume: a chunk, or zeros.
type Extent struct {
	Off, Len int64
	Zero     bool
	ID       chunk.ID
}

// Manifest is a snapshot: metadata and the ordered extents of the volume.
type Manifest struct {
	Meta
	Extents []Extent
}

// Snapshot is a manifest with its ID.
type Snapshot struct {
	ID string
	*Manifest
}

// VolumeDigest accumulates the whole-volume digest: SHA-256 over every
// extent's offset, length and keyed chunk hash (all zero for zero extents),
// in order. Restore recomputes it from the bytes it writes.
type VolumeDigest struct{ h hash.Hash }

// NewVolumeDigest returns an empty digest.
func NewVolumeDigest() *VolumeDigest { return &VolumeDigest{h: sha256.New()} }

// Add adds the next extent.
func (d *VolumeDigest) Add(e Extent) {
	var b [16 + 32]byte
	binary.LittleEndian.PutUint64(b[0:], uint64(e.Off))
	binary.LittleEndian.PutUint64(b[8:], uint64(e.Len))
	if !e.Zero {
		copy(b[16:], e.ID[:])
	}
	d.h.Write(b[:])
}

// Hex returns the digest.
func (d *VolumeDigest) Hex() string { return hex.EncodeToString(d.h.Sum(nil)) }

var (
	errManifestFormat = errors.New("malformed manifest")
	// ErrSnapshotNotFound means no snapshot matches the given ID or name.
	ErrSnapshotNotFound = errors.New("snapshot not found")
	zenc, _             = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	zdec, _             = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<30))
)

func (m *Manifest) marshal() ([]byte, error) {
	meta, err := json.Marshal(m.Meta)
	if err != nil {
		return nil, err
	}
	b := append([]byte("FRYM"), 1)
	b = binary.AppendUvarint(b, uint64(len(meta)))
	b = append(b, meta...)
	b = binary.AppendUvarint(b, uint64(len(m.Extents)))
	for _, e := range m.Extents {
		if e.Zero {
			b = append(b, 1)
			b = binary.AppendUvarint(b, uint64(e.Len))
		} else {
			b = append(b, 0)
			b = binary.AppendUvarint(b, uint64(e.Len))
			b = append(b, e.ID[:]...)
		}
	}
	return zenc.EncodeAll(b, nil), nil
}

// ParseManifest parses a manifest's compressed plaintext.
func ParseManifest(z []byte) (*Manifest, error) {
	b, err := zdec.DecodeAll(z, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errManifestFormat, err)
	}
	r := &reader{b: b}
	if h := r.bytes(5); r.err != nil || string(h[:4]) != "FRYM" || h[4] != 1 {
		return nil, fmt.Errorf("%w: bad magic or version", errManifestFormat)
	}
	m := &Manifest{}
	metaJSON := r.bytes(int(r.uvarint(uint64(len(b)))))
	if r.err != nil {
		return nil, errManifestFormat
	}
	if err := json.Unmarshal(metaJSON, &m.Meta); err != nil {
		return nil, fmt.Errorf("%w: %v", errManifestFormat, err)
	}
	if m.Size < 0 {
		return nil, fmt.Errorf("%w: negative size", errManifestFormat)
	}
	n := r.uvarint(uint64(len(r.b)) / 2)
	m.Extents = make([]Extent, 0, n)
	var off int64
	for i := uint64(0); i < n && r.err == nil; i++ {
		kind := r.bytes(1)
		l := int64(r.uvarint(1 << 62))
		if r.err != nil {
			break
		}
		e := Extent{Off: off, Len: l, Zero: kind[0] == 1}
		switch {
		case kind[0] > 1 || l <= 0:
			r.err = errManifestFormat
		case !e.Zero:
			copy(e.ID[:], r.bytes(32))
		}
		if l > m.Size-off {
			r.err = errManifestFormat
		}
		off += l
		m.Extents = append(m.Extents, e)
	}
	if r.err != nil || len(r.b) != 0 || off != m.Size {
		return nil, fmt.Errorf("%w: extents do not cover the volume", errManifestFormat)
	}
	return m, nil
}

// SaveSnapshot seals m and writes it to every target: the commit point of a
// backup. It returns the snapshot ID and the bytes written. It refuses
// (ErrLockLost, ErrConflict) a manifest that names a chunk no index object
// holds, or one only in a pack that a prune may be deleting (see
// checkCommit).
func (r *Repo) SaveSnapshot(ctx context.Context, m *Manifest) (string, int64, error) {
	if err := r.checkCommit(ctx, m); err != nil {
		return "", 0, err
	}
	plain, err := m.marshal()
	if err != nil {
		return "", 0, err
	}
	obj := r.key.Seal(nil, plain, manifestAD)
	sum := sha256.Sum256(obj)
	id := hex.EncodeToString(sum[:])
	if err := r.putEverywhere(ctx, "snapshots/"+id, func(*Target) ([]byte, error) { return obj, nil }); err != nil {
		return "", 0, err
	}
	return id, int64(len(obj) * len(r.Targets)), nil
}

func (r *Repo) loadSnapshot(ctx context.Context, id string) (*Snapshot, error) {
	var m *Manifest
	err := r.getAny(ctx, "snapshots/"+id, func(b []byte) error {
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != id {
			return fmt.Errorf("content does not match its name")
		}
		plain, err := r.key.Open(nil, b, manifestAD)
		if err != nil {
			return err
		}
		m, err = ParseManifest(plain)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &Snapshot{ID: id, Manifest: m}, nil
}

// Snapshots returns every snapshot, oldest first. Snapshots that a
// deletion record names (forgotten, maybe still on some targets) are left
// out, and so are those deleted since the listing.
func (r *Repo) Snapshots(ctx context.Context) ([]*Snapshot, error) {
	names, err := r.listAll(ctx, "snapshots/")
	if err != nil {
		return nil, err
	}
	gone, err := r.Deleting(ctx)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var out []*Snapshot
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, n := range names {
		if gone.Objects[n] {
			continue
		}
		g.Go(func() error {
			s, err := r.loadSnapshot(ctx, strings.TrimPrefix(n, "snapshots/"))
			if errors.Is(err, objstore.ErrNotFound) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("snapshot %s: %w", strings.TrimPrefix(n, "snapshots/"), err)
			}
			mu.Lock()
			out = append(out, s)
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b *Snapshot) int {
		if c := a.Started.Compare(b.Started); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// FindSnapshot resolves "latest", a full ID or a unique ID prefix (at least
// 4 hex digits). name, when set, restricts "latest" to snapshots of that name.
func (r *Repo) FindSnapshot(ctx context.Context, ref, name string) (*Snapshot, error) {
	if len(ref) == 64 {
		gone, err := r.Deleting(ctx)
		if err != nil {
			return nil, err
		}
		if gone.Objects["snapshots/"+ref] {
			return nil, fmt.Errorf("%w: %s (forgotten)", ErrSnapshotNotFound, ref)
		}
		s, err := r.loadSnapshot(ctx, ref)
		if errors.Is(err, objstore.ErrNotFound) {
			return nil, fmt.Errorf("%w: %s", ErrSnapshotNotFound, ref)
		}
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", ref, err)
		}
		return s, nil
	}
	if ref != "latest" && len(ref) < 4 {
		return nil, fmt.Errorf("snapshot %q: give at least 4 hex digits of the ID, or \"latest\"", ref)
	}
	all, err := r.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	var match []*Snapshot
	for _, s := range all {
		switch {
		case ref == "latest" && (name == "" || s.Name == name):
			match = []*Snapshot{s}
		case ref != "latest" && strings.HasPrefix(s.ID, ref):
			match = append(match, s)
		}
	}
	switch len(match) {
	case 0:
		if ref == "latest" && name != "" {
			return nil, fmt.Errorf("%w: no snapshot named %q", ErrSnapshotNotFound, name)
		}
		return nil, fmt.Errorf("%w: %s", ErrSnapshotNotFound, ref)
	case 1:
		return match[0], nil
	default:
		return nil, fmt.Errorf("snapshot prefix %q is ambiguous (%d matches)", ref, len(match))
	}
}
