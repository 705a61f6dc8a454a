package objstore_test

import (
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/objstore/objstoretest"
)

func newFile(t *testing.T) (objstore.Store, string) {
	t.Helper()
	root := t.TempDir()
	s, err := objstore.NewFile(root)
	if err != nil {
		t.Fatal(err)
	}
	return s, root
}

func TestFile(t *testing.T) {
	objstoretest.Run(t, func(t *testing.T) objstore.Store {
		s, _ := newFile(t)
		return s
	})
}

func TestFileLayout(t *testing.T) {
	s, root := newFile(t)
	ctx := t.Context()
	if err := s.Create(ctx, "data/ab/obj", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "data", "ab", "obj"))
	if err != nil || string(b) != "hello" {
		t.Fatalf("object file: %q, %v", b, err)
	}
	fi, err := os.Stat(filepath.Join(root, "data", "ab", "obj"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("object file mode %v, want 0600", fi.Mode().Perm())
	}
	entries, err := os.ReadDir(filepath.Join(root, "data", "ab"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after Create, want only the object (no temporary file)", len(entries))
	}
	if s.Location() != "file://"+root {
		t.Errorf("Location() = %q", s.Location())
	}
}

// A crash between writing and linking leaves a temporary file; List must
// not report it, and it must not block Create.
func TestFileListSkipsTemporaries(t *testing.T) {
	s, root := newFile(t)
	ctx := t.Context()
	if err := s.Create(ctx, "d/obj", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "d", ".tmp-12345"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	var names []string
	if err := s.List(ctx, "", func(i objstore.Info) error { names = append(names, i.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != "d/obj" {
		t.Fatalf("List = %v, want [d/obj]", names)
	}
}

func TestFileCRC32CInXattr(t *testing.T) {
	s, root := newFile(t)
	probe := filepath.Join(root, "probe")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(probe, "user.probe", []byte{1}, 0); err != nil {
		t.Skipf("file system under %s has no user xattrs: %v", root, err)
	}
	os.Remove(probe)
	data := []byte("checksummed")
	if err := s.Create(t.Context(), "c", data); err != nil {
		t.Fatal(err)
	}
	info, err := s.Stat(t.Context(), "c")
	if err != nil {
		t.Fatal(err)
	}
	want := crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))
	if !info.HasCRC32C || info.CRC32C != want {
		t.Fatalf("Stat = %+v, want CRC32C %08x", info, want)
	}
	// A copy without xattrs has no checksum, and says so.
	b, _ := os.ReadFile(filepath.Join(root, "c"))
	if err := os.WriteFile(filepath.Join(root, "copied"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if info, err := s.Stat(t.Context(), "copied"); err != nil || info.HasCRC32C {
		t.Fatalf("Stat of a file without the xattr = %+v, %v; want HasCRC32C false", info, err)
	}
}

func TestFileMissingRoot(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	if _, err := objstore.NewFile(missing); !errors.Is(err, objstore.ErrNoBucket) {
		t.Fatalf("NewFile(missing) = %v, want ErrNoBucket", err)
	}

	s, root := newFile(t)
	if err := os.Remove(root); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := s.Create(ctx, "a/b", []byte("x")); !errors.Is(err, objstore.ErrNoBucket) {
		t.Errorf("Create after root removed = %v, want ErrNoBucket", err)
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Create recreated the root directory (%v)", err)
	}
	if _, err := s.Get(ctx, "a/b"); !errors.Is(err, objstore.ErrNoBucket) {
		t.Errorf("Get after root removed = %v, want ErrNoBucket", err)
	}
	if _, err := s.Stat(ctx, "a/b"); !errors.Is(err, objstore.ErrNoBucket) {
		t.Errorf("Stat after root removed = %v, want ErrNoBucket", err)
	}
	if err := s.List(ctx, "", func(objstore.Info) error { return nil }); !errors.Is(err, objstore.ErrNoBucket) {
		t.Errorf("List after root removed = %v, want ErrNoBucket", err)
	}
	if err := s.Delete(ctx, "a/b"); !errors.Is(err, objstore.ErrNoBucket) {
		t.Errorf("Delete after root removed = %v, want ErrNoBucket", err)
	}
}

func TestFileNotADirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := objstore.NewFile(f); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("NewFile(regular file) = %v", err)
	}
}

// The file store cannot hold "a" and "a/b" at once; it must say so rather
// than claim the object exists or overwrite anything.
func TestFileNameIsDirectory(t *testing.T) {
	s, _ := newFile(t)
	ctx := t.Context()
	if err := s.Create(ctx, "a/b", []byte("x")); err != nil {
		t.Fatal(err)
	}
	err := s.Create(ctx, "a", []byte("y"))
	if err == nil || errors.Is(err, objstore.ErrExists) {
		t.Fatalf("Create over a directory = %v, want a plain error", err)
	}
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatalf("Delete of a directory name = %v, want nil (no such object)", err)
	}
	if b, err := s.Get(ctx, "a/b"); err != nil || string(b) != "x" {
		t.Fatalf("a/b after: %q, %v", b, err)
	}
	if err := s.Create(ctx, "a/b/c", []byte("z")); err == nil {
		t.Fatal("Create below an object succeeded")
	}
}

func TestFileSymlinkedRoot(t *testing.T) {
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	s, err := objstore.NewFile(link)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Create(t.Context(), "x/y", []byte("1")); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := s.List(t.Context(), "", func(objstore.Info) error { n++; return nil }); err != nil || n != 1 {
		t.Fatalf("List through a symlinked root: %d objects, %v", n, err)
	}
}

// Only regular files are objects: a symlink planted in the repository must
// not lead reads outside it.
func TestFileSymlinkIsNotAnObject(t *testing.T) {
	s, root := newFile(t)
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("outside"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(t.Context(), "link"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("Get of a symlink: %v, want ErrNotFound", err)
	}
	if _, err := s.GetRange(t.Context(), "link", 0, 1); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("GetRange of a symlink: %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(t.Context(), "link"); !errors.Is(err, objstore.ErrNotFound) {
		t.Errorf("Stat of a symlink: %v, want ErrNotFound", err)
	}
	n := 0
	s.List(t.Context(), "", func(objstore.Info) error { n++; return nil })
	if n != 0 {
		t.Errorf("List reported %d objects, want none", n)
	}
}
