package repo

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
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
// or, for a volume of more extents than one segment holds (segment.go),
//
//	"FRYM" || version (2) || meta length (uvarint) || meta (JSON) || segments (uvarint) || segments × segment
//	segment: extents (uvarint) || bytes of the volume (uvarint) || ID (32: the keyed hash of the segment's plaintext)
//
// Extents are consecutive from offset 0 and cover the volume's size
// exactly; so do segments, each holding the extents of its bytes, and
// each stored as a blob in a pack (segment.go).
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
//
// A segmented manifest (version 2) names its Segments; its Extents are
// nil until read (Repo.Extents, Repo.WithExtents).
type Manifest struct {
	Meta
	Extents  []Extent
	Segments []Segment
}

// Snapshot is a manifest with its ID.
//
// A Snapshot from Snapshots carries the manifest's metadata only: its
// Extents are nil, so that a listing costs memory per snapshot and not per
// chunk of every volume in the repository. WithExtents reads them.
type Snapshot struct {
	ID string
	*Manifest
	metaOnly bool
}

// MetaOnly reports whether s was read without its extents (see WithExtents).
func (s *Snapshot) MetaOnly() bool { return s.metaOnly }

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
	zenc, _             = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(manifestWindow))
	// zdecs holds streaming decoders (*zstd.Decoder; with concurrency 1
	// they start no goroutines): decoding as a stream, memory follows the
	// bytes a frame really holds, not the content size its header claims.
	zdecs sync.Pool
)

const (
	// maxManifestSize bounds a manifest's plaintext, uncompressed: about
	// 36 bytes per data extent, so some 30 million chunks, a volume of
	// about 30 TiB at the default 1 MiB average chunk size (7 TiB should
	// every chunk be cut at the 256 KiB minimum). SaveSnapshot refuses a
	// larger manifest; ParseManifest stops decompressing at this size.
	maxManifestSize = 1 << 30
	// manifestWindow is the zstd window manifests are written with, and the
	// largest a manifest frame may ask the decoder to keep.
	manifestWindow = 8 << 20
)

func (m *Manifest) marshal() ([]byte, error) {
	meta, err := json.Marshal(m.Meta)
	if err != nil {
		return nil, err
	}
	b := append([]byte("FRYM"), 1)
	b = binary.AppendUvarint(b, uint64(len(meta)))
	b = append(b, meta...)
	if m.Segments != nil {
		b[4] = 2
		b = binary.AppendUvarint(b, uint64(len(m.Segments)))
		for _, sg := range m.Segments {
			b = binary.AppendUvarint(b, uint64(sg.Extents))
			b = binary.AppendUvarint(b, uint64(sg.Len))
			b = append(b, sg.ID[:]...)
		}
		return zenc.EncodeAll(b, nil), nil
	}
	b = binary.AppendUvarint(b, uint64(len(m.Extents)))
	for _, e := range m.Extents {
		b = appendExtent(b, e)
	}
	if len(b) > maxManifestSize {
		return nil, fmt.Errorf("manifest of %d extents takes %d bytes, more than the %d a manifest may hold: back the volume up with larger chunks", len(m.Extents), len(b), maxManifestSize)
	}
	return zenc.EncodeAll(b, nil), nil
}

// appendExtent appends e's encoding: kind, length, and a data extent's ID.
func appendExtent(b []byte, e Extent) []byte {
	if e.Zero {
		b = append(b, 1)
		return binary.AppendUvarint(b, uint64(e.Len))
	}
	b = append(b, 0)
	b = binary.AppendUvarint(b, uint64(e.Len))
	return append(b, e.ID[:]...)
}

// parseExtents parses n extents from r, the first at off, none reaching
// past end, and returns them with the offset after the last.
func parseExtents(r *reader, n uint64, off, end int64) ([]Extent, int64) {
	out := make([]Extent, 0, min(n, uint64(len(r.b))/2))
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
		if l > end-off {
			r.err = errManifestFormat
		}
		off += l
		out = append(out, e)
	}
	return out, off
}

func newManifestDecoder() (*zstd.Decoder, error) {
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(maxManifestSize), zstd.WithDecoderMaxWindow(manifestWindow),
		zstd.WithDecodeBuffersBelow(0)) // never DecodeAll, which allocates the claimed size
}

// decompress decompresses a manifest's zstd frame(s), refusing output
// beyond maxManifestSize and windows beyond manifestWindow. A frame's
// content size is never allocated up front: the output grows as it is
// decoded, and the decoder keeps at most a window besides.
func decompress(z []byte) ([]byte, error) {
	var b []byte
	err := decoding(z, func(d io.Reader) error {
		var err error
		b, err = io.ReadAll(io.LimitReader(d, maxManifestSize+1))
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(b) > maxManifestSize {
		return nil, fmt.Errorf("more than %d bytes uncompressed", maxManifestSize)
	}
	return b, nil
}

// decoding calls read with a pooled streaming decoder of z.
func decoding(z []byte, read func(io.Reader) error) error {
	d, _ := zdecs.Get().(*zstd.Decoder)
	if d == nil {
		var err error
		if d, err = newManifestDecoder(); err != nil {
			return err
		}
	}
	defer func() {
		d.Reset(nil) // drop the input
		zdecs.Put(d)
	}()
	if err := d.Reset(bytes.NewReader(z)); err != nil {
		return err
	}
	return read(d)
}

// parseMeta parses the metadata at the start of a manifest's compressed
// plaintext and decompresses nothing after it.
// A segmented manifest (version 2) is small: it is parsed whole, segment
// list included.
func parseMeta(z []byte) (*Manifest, error) {
	var metaJSON []byte
	segmented := false
	err := decoding(z, func(d io.Reader) error {
		br := bufio.NewReaderSize(d, 512)
		var h [5]byte
		if _, err := io.ReadFull(br, h[:]); err != nil || string(h[:4]) != "FRYM" || h[4] != 1 && h[4] != 2 {
			return errors.New("bad magic or version")
		}
		if segmented = h[4] == 2; segmented {
			return nil
		}
		n, err := binary.ReadUvarint(br)
		if err != nil || n > maxManifestSize {
			return errors.New("bad metadata length")
		}
		if metaJSON, err = io.ReadAll(io.LimitReader(br, int64(n))); err != nil || uint64(len(metaJSON)) != n {
			return errors.New("metadata cut short")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errManifestFormat, err)
	}
	if segmented {
		return ParseManifest(z)
	}
	m := &Manifest{}
	if err := json.Unmarshal(metaJSON, &m.Meta); err != nil {
		return nil, fmt.Errorf("%w: %v", errManifestFormat, err)
	}
	if m.Size < 0 {
		return nil, fmt.Errorf("%w: negative size", errManifestFormat)
	}
	return m, nil
}

// ParseManifest parses a manifest's compressed plaintext.
func ParseManifest(z []byte) (*Manifest, error) {
	b, err := decompress(z)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errManifestFormat, err)
	}
	r := &reader{b: b}
	h := r.bytes(5)
	if r.err != nil || string(h[:4]) != "FRYM" || h[4] != 1 && h[4] != 2 {
		return nil, fmt.Errorf("%w: bad magic or version", errManifestFormat)
	}
	version := h[4]
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
	if version == 2 {
		if m.Segments = parseSegmentRefs(r, m.Size); r.err != nil || len(r.b) != 0 {
			return nil, fmt.Errorf("%w: segments do not cover the volume", errManifestFormat)
		}
		return m, nil
	}
	var off int64
	m.Extents, off = parseExtents(r, r.uvarint(uint64(len(r.b))/2), 0, m.Size)
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
//
// m holds its extents; SnapshotWriter commits those of a large volume
// without holding them all.
func (r *Repo) SaveSnapshot(ctx context.Context, m *Manifest) (string, int64, error) {
	if m.Segments != nil {
		return "", 0, errors.New("SaveSnapshot takes a manifest with its extents")
	}
	return r.commit(ctx, m, eachIn(m))
}

// commit checks the extents each gives (see checkCommit), then writes
// manifest m.
func (r *Repo) commit(ctx context.Context, m *Manifest, each func(func(Extent) error) error) (string, int64, error) {
	if err := r.checkCommit(ctx, m.Segments, each); err != nil {
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
	return id, int64(len(obj) * r.copies(ctx)), nil
}

func (r *Repo) loadSnapshot(ctx context.Context, id string) (*Snapshot, error) {
	return r.readSnapshot(ctx, id, ParseManifest)
}

// readSnapshot reads manifest id from any target that has a valid copy and
// parses its plaintext with parse: ParseManifest, or parseMeta for the
// metadata alone.
func (r *Repo) readSnapshot(ctx context.Context, id string, parse func([]byte) (*Manifest, error)) (*Snapshot, error) {
	var m *Manifest
	err := r.getAny(ctx, "snapshots/"+id, func(b []byte) error {
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != id {
			return fmt.Errorf("content does not match its name")
		}
		plain, err := r.key.Open(nil, b, manifestAD)
		if err != nil {
			return err
		}
		m, err = parse(plain)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &Snapshot{ID: id, Manifest: m}, nil
}

// WithExtents returns s with its extents: s itself when it has them, or
// the snapshot read again whole when it came from Snapshots.
//
// WithExtents of a segmented manifest reads every segment: memory in
// proportion to the volume. Repo.Extents reads one at a time.
func (r *Repo) WithExtents(ctx context.Context, s *Snapshot) (*Snapshot, error) {
	if s.Segments != nil && s.Extents == nil {
		var all []Extent
		err := r.Extents(ctx, s, func(exts []Extent) error {
			all = append(all, exts...)
			return nil
		})
		if err != nil {
			return nil, err
		}
		m := *s.Manifest
		m.Extents = all
		return &Snapshot{ID: s.ID, Manifest: &m}, nil
	}
	if !s.metaOnly {
		return s, nil
	}
	full, err := r.loadSnapshot(ctx, s.ID)
	if errors.Is(err, objstore.ErrNotFound) {
		return nil, fmt.Errorf("snapshot %s: %w (deleted since it was listed)", s.ID, ErrSnapshotNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", s.ID, err)
	}
	return full, nil
}

// Snapshots returns every snapshot, oldest first, without its extents
// (see Snapshot): each manifest is read and only its metadata kept, eight
// at a time. Snapshots that a
// deletion record names (forgotten, maybe still on some targets) are left
// out, and so are those deleted since the listing and, with a warning,
// objects under snapshots/ that no target has a valid copy of
// (ErrNoValidCopy). A target that fails to answer fails the listing, as its
// copy might be the newest snapshot's only good one.
func (r *Repo) Snapshots(ctx context.Context) ([]*Snapshot, error) {
	out, skipped, err := r.snapshots(ctx)
	for _, sk := range skipped {
		// What a provider could do as well by deleting a manifest: it
		// costs that snapshot, not the others.
		slog.Warn("skipping a manifest that no target has a valid copy of; ferry verify reports it", "object", sk.name, "error", sk.err)
	}
	return out, err
}

// skippedManifest is a manifest Snapshots left out: no valid copy.
type skippedManifest struct {
	name string
	err  error
}

func (r *Repo) snapshots(ctx context.Context) ([]*Snapshot, []skippedManifest, error) {
	names, err := r.listAll(ctx, "snapshots/")
	if err != nil {
		return nil, nil, err
	}
	gone, err := r.Deleting(ctx)
	if err != nil {
		return nil, nil, err
	}
	var skipped []skippedManifest
	var mu sync.Mutex
	var out []*Snapshot
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, n := range names {
		if gone.Objects[n] {
			continue
		}
		g.Go(func() error {
			s, err := r.readSnapshot(ctx, strings.TrimPrefix(n, "snapshots/"), parseMeta)
			if s != nil {
				s.metaOnly = true
			}
			switch {
			case errors.Is(err, objstore.ErrNotFound):
				return nil
			case errors.Is(err, ErrNoValidCopy):
				mu.Lock()
				skipped = append(skipped, skippedManifest{n, err})
				mu.Unlock()
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
		return nil, nil, err
	}
	slices.SortFunc(out, func(a, b *Snapshot) int {
		if c := a.Started.Compare(b.Started); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	slices.SortFunc(skipped, func(a, b skippedManifest) int { return strings.Compare(a.name, b.name) })
	return out, skipped, nil
}

// FindSnapshot resolves "latest", a full ID or a unique ID prefix (at least
// 4 hex digits). name, when set, restricts "latest" to snapshots of that name.
// The snapshot comes with its extents, unless its manifest is segmented:
// then Extents reads them a segment at a time (WithExtents all at once).
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
	all, skipped, err := r.snapshots(ctx)
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
	// A manifest without a valid copy might have been the one asked for
	// (the newest, or the one with that prefix): say so.
	var also string
	if len(skipped) > 0 {
		also = fmt.Sprintf("; %d manifest(s) skipped: %v", len(skipped), skipped[0].err)
	}
	switch len(match) {
	case 0:
		if ref == "latest" && name != "" {
			return nil, fmt.Errorf("%w: no snapshot named %q%s", ErrSnapshotNotFound, name, also)
		}
		return nil, fmt.Errorf("%w: %s%s", ErrSnapshotNotFound, ref, also)
	case 1:
		if also != "" {
			slog.Warn("found the snapshot, but a manifest no target has a valid copy of might have been a newer one; ferry verify reports it", "snapshot", match[0].ID[:12], "skipped", also[2:])
		}
		if match[0].Segments != nil {
			return match[0], nil // its extents are read as they are used
		}
		return r.WithExtents(ctx, match[0])
	default:
		return nil, fmt.Errorf("snapshot prefix %q is ambiguous (%d matches)", ref, len(match))
	}
}
