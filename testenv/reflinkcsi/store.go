package reflinkcsi

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Conditions that the RPCs map to gRPC codes at the server boundary
// (statusError); everything else is INTERNAL.
var (
	errNotFound     = errors.New("not found")
	errExists       = errors.New("already exists with other parameters")
	errPrecondition = errors.New("failed precondition")
	errOutOfRange   = errors.New("out of range")
	errInvalid      = errors.New("invalid argument")
	errExhausted    = errors.New("resource exhausted")
)

// volume is the record of volumes/<id>.json.
type volume struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Size    int64             `json:"size"`
	Params  map[string]string `json:"params,omitempty"`
	Source  source            `json:"source,omitzero"`
	Created time.Time         `json:"created"`
	// Published holds the ControllerPublish attachments: node ID to
	// read-only.
	Published map[string]bool `json:"published,omitempty"`
}

// source is a volume's content source; at most one field is set.
type source struct {
	Snapshot string `json:"snapshot,omitempty"`
	Volume   string `json:"volume,omitempty"`
}

// snapshot is the record of snapshots/<id>.json.
type snapshot struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Volume  string            `json:"volume"`
	Size    int64             `json:"size"`
	Params  map[string]string `json:"params,omitempty"`
	Created time.Time         `json:"created"`
	Ready   bool              `json:"readyToUse"`
}

// staging is the record of node/<volume id>.json: a volume staged on this
// node, and where it is published.
type staging struct {
	Volume     string   `json:"volume"`
	Path       string   `json:"path"`
	Block      bool     `json:"block"`
	FsType     string   `json:"fsType,omitempty"`
	MountFlags []string `json:"mountFlags,omitempty"`
	ReadOnly   bool     `json:"readOnly"`
	Device     string   `json:"device"`
	// Targets maps each NodePublish target path to its publication.
	Targets map[string]publication `json:"targets,omitempty"`
}

type publication struct {
	ReadOnly bool `json:"readOnly"`
	// Device is a read-only loop device attached for this publication
	// alone (a read-only block publication of a writable staging).
	Device string `json:"device,omitempty"`
}

const (
	volumePrefix   = "vol-"
	snapshotPrefix = "snap-"
	idHexLen       = 32
)

func volumeID(name string) string   { return makeID(volumePrefix, name) }
func snapshotID(name string) string { return makeID(snapshotPrefix, name) }

func makeID(prefix, name string) string {
	sum := sha256.Sum256([]byte("reflinkcsi\x00" + prefix + name))
	return prefix + hex.EncodeToString(sum[:])[:idHexLen]
}

// validID reports whether id has the form makeID gives, so that only such
// IDs ever become file names.
func validID(prefix, id string) bool {
	h, ok := strings.CutPrefix(id, prefix)
	if !ok || len(h) != idHexLen {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil && strings.ToLower(h) == h
}

// store reads and writes the records and data files under one directory.
// It does no locking; the driver serialises calls.
type store struct{ dir string }

func (s store) open() error {
	for _, sub := range []string{"volumes", "snapshots", "node"} {
		d := filepath.Join(s.dir, sub)
		if err := os.MkdirAll(d, 0o750); err != nil {
			return err
		}
		// Leftovers of writes a crash interrupted.
		tmps, _ := filepath.Glob(filepath.Join(d, ".tmp-*"))
		for _, t := range tmps {
			os.Remove(t)
		}
	}
	return nil
}

func (s store) volumeFile(id string) string   { return filepath.Join(s.dir, "volumes", id) }
func (s store) snapshotFile(id string) string { return filepath.Join(s.dir, "snapshots", id) }
func (s store) stagingFile(id string) string  { return filepath.Join(s.dir, "node", id+".json") }

func (s store) volume(id string) (*volume, error) {
	if !validID(volumePrefix, id) {
		return nil, fmt.Errorf("volume %q: %w", id, errNotFound)
	}
	return readRecord[volume](s.volumeFile(id)+".json", "volume "+id)
}

func (s store) snapshot(id string) (*snapshot, error) {
	if !validID(snapshotPrefix, id) {
		return nil, fmt.Errorf("snapshot %q: %w", id, errNotFound)
	}
	return readRecord[snapshot](s.snapshotFile(id)+".json", "snapshot "+id)
}

// staging returns the volume's staging on this node, or nil.
func (s store) staging(id string) (*staging, error) {
	if !validID(volumePrefix, id) {
		return nil, nil
	}
	st, err := readRecord[staging](s.stagingFile(id), "staging of "+id)
	if errors.Is(err, errNotFound) {
		return nil, nil
	}
	return st, err
}

func (s store) putVolume(v *volume) error      { return writeRecord(s.volumeFile(v.ID)+".json", v) }
func (s store) putSnapshot(sn *snapshot) error { return writeRecord(s.snapshotFile(sn.ID)+".json", sn) }
func (s store) putStaging(st *staging) error   { return writeRecord(s.stagingFile(st.Volume), st) }

func (s store) deleteStaging(id string) error { return removeIfExists(s.stagingFile(id)) }

// deleteVolume removes the record first, so a crash leaves at most an
// orphaned data file that the next CreateVolume of that name replaces.
func (s store) deleteVolume(id string) error {
	if err := removeIfExists(s.volumeFile(id) + ".json"); err != nil {
		return err
	}
	return removeIfExists(s.volumeFile(id))
}

func (s store) deleteSnapshot(id string) error {
	if err := removeIfExists(s.snapshotFile(id) + ".json"); err != nil {
		return err
	}
	return removeIfExists(s.snapshotFile(id))
}

// volumes returns every volume, sorted by ID.
func (s store) volumes() ([]*volume, error) {
	return readAll[volume](filepath.Join(s.dir, "volumes"), volumePrefix)
}

// snapshots returns every snapshot, sorted by ID.
func (s store) snapshots() ([]*snapshot, error) {
	return readAll[snapshot](filepath.Join(s.dir, "snapshots"), snapshotPrefix)
}

func readAll[T any](dir, prefix string) ([]*T, error) {
	names, err := filepath.Glob(filepath.Join(dir, prefix+"*.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var recs []*T
	for _, n := range names {
		r, err := readRecord[T](n, n)
		if errors.Is(err, errNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		recs = append(recs, r)
	}
	return recs, nil
}

func readRecord[T any](path, what string) (*T, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", what, errNotFound)
	}
	if err != nil {
		return nil, err
	}
	var r T
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("read record %s: %w", path, err)
	}
	return &r, nil
}

// writeRecord replaces path atomically and durably.
func writeRecord(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return replaceFile(path, func(f *os.File) error {
		_, err := f.Write(append(b, '\n'))
		return err
	})
}

// replaceFile writes a temporary file in path's directory with fill, then
// fsyncs it, renames it to path and fsyncs the directory.
func replaceFile(path string, fill func(*os.File) error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := fill(f); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	ok = true
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// makeDataFile creates path as a reflink copy of src (none if src is
// empty), grown to size bytes.
func makeDataFile(path, src string, size int64) error {
	return replaceFile(path, func(f *os.File) error {
		if src != "" {
			sf, err := os.Open(src)
			if err != nil {
				return err
			}
			defer sf.Close()
			if err := unix.IoctlFileClone(int(f.Fd()), int(sf.Fd())); err != nil {
				return fmt.Errorf("reflink %s: %w", src, err)
			}
		}
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if fi.Size() < size {
			return f.Truncate(size)
		}
		return nil
	})
}
