package objstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// tmpPrefix starts the name of the file store's temporary files; object
// names may not use it, so List can tell the two apart.
const tmpPrefix = ".tmp-"

// crcXattr holds an object's CRC32C (4 bytes, big-endian) on its file.
const crcXattr = "user.ferry.crc32c"

type fileStore struct {
	root string // absolute, symlinks resolved
	loc  string
}

// NewFile returns a Store keeping objects as files under the directory root,
// which must exist (ErrNoBucket otherwise; it is never created, so a missing
// mount shows up as an error rather than as an empty repository).
//
// Create writes a temporary file in the object's directory, fsyncs it,
// hard-links it to the final name (link(2) fails if the name exists, so an
// object is never overwritten), removes the temporary name and fsyncs the
// directory. The CRC32C is computed once in Create and kept in an extended
// attribute, so Stat and List return it without reading data; on file
// systems without user xattrs, and for files copied without them,
// HasCRC32C is false. One limit S3 does not have: names "a" and "a/b" cannot
// both exist, since "a" would be a file and a directory.
func NewFile(root string) (Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("file store %q: %w", root, err)
	}
	s := &fileStore{root: abs, loc: "file://" + abs}
	// Resolve symlinks once so walks start in the real directory.
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, s.err("open", "", osKind(err, ErrNoBucket), err)
	}
	if fi, err := os.Stat(real); err != nil || !fi.IsDir() {
		return nil, s.err("open", "", nil, errors.New("not a directory"))
	}
	s.root = real
	return s, nil
}

func (s *fileStore) Location() string { return s.loc }

func (s *fileStore) path(name string) string {
	return filepath.Join(s.root, filepath.FromSlash(name))
}

// osKind maps an OS error to a sentinel; notExist is what a missing path
// means for the call.
func osKind(err, notExist error) error {
	switch {
	case isNotExist(err):
		return notExist
	case errors.Is(err, fs.ErrPermission):
		return ErrPermission
	}
	return nil
}

// kind is osKind, except that a missing root always means ErrNoBucket.
func (s *fileStore) kind(err, notExist error) error {
	if isNotExist(err) {
		if _, rerr := os.Stat(s.root); errors.Is(rerr, fs.ErrNotExist) {
			return ErrNoBucket
		}
	}
	return osKind(err, notExist)
}

// isNotExist: no such file, or a path component is a file, so no object of
// that name can exist either.
func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

func (s *fileStore) err(op, name string, kind, cause error) error {
	// The *PathError's path repeats the location; keep only the errno.
	var perr *fs.PathError
	if errors.As(cause, &perr) {
		cause = fmt.Errorf("%s: %w", perr.Op, perr.Err)
	}
	if kind != nil && (isNotExist(cause) || errors.Is(cause, fs.ErrExist)) {
		cause = nil // the sentinel says it all
	}
	return &opError{op: op, name: name, loc: s.loc, kind: kind, cause: cause}
}

func (s *fileStore) Create(ctx context.Context, name string, data []byte) error {
	if err := checkName(name); err != nil {
		return s.err("create", name, nil, err)
	}
	if err := ctx.Err(); err != nil {
		return s.err("create", name, nil, err)
	}
	final := s.path(name)
	if err := s.mkdirs(filepath.Dir(final)); err != nil {
		return s.err("create", name, s.kind(err, ErrNoBucket), err)
	}
	tmp, err := s.writeTemp(filepath.Dir(final), data)
	if err != nil {
		return s.err("create", name, s.kind(err, ErrNoBucket), err)
	}
	if err := os.Link(tmp, final); err != nil {
		os.Remove(tmp)
		if errors.Is(err, fs.ErrExist) {
			if fi, serr := os.Lstat(final); serr == nil && fi.IsDir() {
				return s.err("create", name, nil, errors.New("name is a directory of other objects"))
			}
			return s.err("create", name, ErrExists, err)
		}
		return s.err("create", name, s.kind(err, ErrNoBucket), err)
	}
	// The object exists now; a leftover temporary name would only be clutter
	// that List skips, so its removal is not checked.
	os.Remove(tmp)
	if err := syncDir(filepath.Dir(final)); err != nil {
		return s.err("create", name, nil, err)
	}
	return nil
}

// writeTemp writes data with its CRC32C attribute to a new temporary file in
// dir and syncs it.
func (s *fileStore) writeTemp(dir string, data []byte) (string, error) {
	f, err := os.CreateTemp(dir, tmpPrefix+"*")
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if err == nil {
		var crc [4]byte
		binary.BigEndian.PutUint32(crc[:], crc32c(data))
		// Best effort: without xattrs the store just has no checksums.
		_ = unix.Fsetxattr(int(f.Fd()), crcXattr, crc[:], 0)
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// mkdirs creates dir and its missing parents below the root (never the root
// itself), syncing each parent so the new entries survive a crash.
func (s *fileStore) mkdirs(dir string) error {
	if dir == s.root {
		_, err := os.Stat(dir)
		return err
	}
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is an object, not a directory", strings.TrimPrefix(dir, s.root+"/"))
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if err := s.mkdirs(parent); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(parent)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// open opens an object's file. Like Stat and List, it takes only regular
// files as objects: a directory or a symlink counts as absent.
func (s *fileStore) open(op, name string) (*os.File, fs.FileInfo, error) {
	if err := checkName(name); err != nil {
		return nil, nil, s.err(op, name, nil, err)
	}
	f, err := os.OpenFile(s.path(name), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, nil, s.err(op, name, ErrNotFound, nil)
	}
	if err != nil {
		return nil, nil, s.err(op, name, s.kind(err, ErrNotFound), err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, s.err(op, name, nil, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, s.err(op, name, ErrNotFound, nil)
	}
	return f, fi, nil
}

func (s *fileStore) Get(ctx context.Context, name string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, s.err("get", name, nil, err)
	}
	f, fi, err := s.open("get", name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := checkObjectSize(fi.Size()); err != nil {
		return nil, s.err("get", name, nil, err)
	}
	buf := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, s.err("get", name, nil, err)
	}
	return buf, nil
}

func (s *fileStore) GetRange(ctx context.Context, name string, off, length int64) ([]byte, error) {
	if err := checkRange(off, length); err != nil {
		return nil, s.err("get range of", name, nil, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, s.err("get range of", name, nil, err)
	}
	f, fi, err := s.open("get range of", name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if off+length > fi.Size() {
		return nil, s.err("get range of", name, nil, fmt.Errorf("%w: [%d, %d) of %d bytes", errRange, off, off+length, fi.Size()))
	}
	buf := make([]byte, length)
	if _, err := f.ReadAt(buf, off); err != nil && !(errors.Is(err, io.EOF) && off+length == fi.Size()) {
		return nil, s.err("get range of", name, nil, err)
	}
	return buf, nil
}

func (s *fileStore) Stat(ctx context.Context, name string) (Info, error) {
	if err := checkName(name); err != nil {
		return Info{}, s.err("stat", name, nil, err)
	}
	if err := ctx.Err(); err != nil {
		return Info{}, s.err("stat", name, nil, err)
	}
	p := s.path(name)
	fi, err := os.Lstat(p)
	if err != nil {
		return Info{}, s.err("stat", name, s.kind(err, ErrNotFound), err)
	}
	if !fi.Mode().IsRegular() {
		return Info{}, s.err("stat", name, ErrNotFound, nil)
	}
	return fileInfo(p, name, fi.Size()), nil
}

func fileInfo(path, name string, size int64) Info {
	info := Info{Name: name, Size: size}
	var crc [4]byte
	if n, err := unix.Lgetxattr(path, crcXattr, crc[:]); err == nil && n == 4 {
		info.CRC32C, info.HasCRC32C = binary.BigEndian.Uint32(crc[:]), true
	}
	return info
}

func (s *fileStore) List(ctx context.Context, prefix string, fn func(Info) error) error {
	if err := checkPrefix(prefix); err != nil {
		return s.err("list", prefix, nil, err)
	}
	if _, err := os.Stat(s.root); err != nil {
		return s.err("list", prefix, s.kind(err, ErrNoBucket), err)
	}
	// Walk only the directory the prefix's complete segments name.
	dir := s.root
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		dir = s.path(prefix[:i])
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if isNotExist(err) {
				return nil // prefix directory absent, or removed while walking
			}
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if !d.Type().IsRegular() || strings.HasPrefix(d.Name(), tmpPrefix) {
			return nil
		}
		name := filepath.ToSlash(strings.TrimPrefix(p, s.root+string(filepath.Separator)))
		if !strings.HasPrefix(name, prefix) {
			return nil
		}
		fi, err := d.Info()
		if isNotExist(err) {
			return nil // deleted while walking
		}
		if err != nil {
			return err
		}
		if err := fn(fileInfo(p, name, fi.Size())); err != nil {
			return callbackError{err}
		}
		return nil
	})
	var cb callbackError
	if errors.As(err, &cb) {
		return cb.err
	}
	if err != nil {
		return s.err("list", prefix, s.kind(err, ErrNoBucket), err)
	}
	return nil
}

// callbackError carries fn's error out of a walk unchanged.
type callbackError struct{ err error }

func (c callbackError) Error() string { return c.err.Error() }

func (s *fileStore) Delete(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return s.err("delete", name, nil, err)
	}
	if err := ctx.Err(); err != nil {
		return s.err("delete", name, nil, err)
	}
	p := s.path(name)
	fi, err := os.Lstat(p)
	if err == nil && !fi.Mode().IsRegular() {
		return nil // a directory of other objects; no object of this name
	}
	if err == nil {
		err = os.Remove(p)
	}
	if err != nil {
		kind := s.kind(err, nil)
		if kind == nil && isNotExist(err) {
			return nil
		}
		return s.err("delete", name, kind, err)
	}
	return nil
}
