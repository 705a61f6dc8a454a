package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
)

// imageVersion changes whenever the way images are made changes, so that a
// cached image of an older recipe is not reused.
const imageVersion = 1

// blockSize is the unit in which changed blocks are counted (ext4's).
const blockSize = 4096

// images are the volumes the comparison backs up: base, the same
// filesystem after some of its files changed, and a small volume a tenth of
// base's size for the memory target. They are kept in a cache directory
// between runs; info.json is written last and says what they hold.
type images struct {
	Version   int    `json:"version"`
	Base      string `json:"base"`
	Changed   string `json:"changed"`
	Small     string `json:"small"`
	Size      int64  `json:"size"`       // of base and changed
	SmallSize int64  `json:"small_size"` // of small
	Files     int    `json:"files"`      // in base
	FileBytes int64  `json:"file_bytes"` // in base
	Allocated int64  `json:"allocated"`  // bytes of base's data blocks (the rest are holes)
	// The change: bytes written into files, and 4 KiB blocks of the image
	// that differ between base and changed (file data, ext4 metadata and
	// journal).
	ChangeWritten int64 `json:"change_written"`
	ChangedBlocks int64 `json:"changed_blocks"`
	SmallFiles    int   `json:"small_files"`
	SmallBytes    int64 `json:"small_file_bytes"`
}

// tree is a source of real files copied into an image: a directory (less
// the subdirectory skip), under which name in the image, up to a share of
// the bytes to copy, and whether the copy is a variant (an older or newer
// version of the same tree).
type tree struct {
	src, skip, name string
	share           float64
	variant         bool
}

// trees returns what fills an image: the Go toolchain three times (once as
// is, twice as variants, as a node holding several versions of it would),
// Go module sources, part of them again as a variant, module zips, system
// libraries and data. Shares add up to 1.
func trees() []tree {
	goroot := runtime.GOROOT()
	modcache := goEnv("GOMODCACHE")
	return []tree{
		{goroot, "", "go1", 0.10, false},
		{modcache, "cache", "mod", 0.35, false},
		{goroot, "", "go2", 0.10, true},
		{"/usr/lib", "", "lib", 0.20, false},
		{modcache, "cache", "mod2", 0.10, true},
		{filepath.Join(modcache, "cache", "download"), "", "zips", 0.05, false},
		{goroot, "", "go3", 0.05, true},
		{"/usr/share", "", "share", 0.05, false},
	}
}

func goEnv(key string) string {
	out, err := exec.Command("go", "env", key).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// ensureImages returns the cached images for size, making them first if
// they are missing (or rebuild is set). fill is the share of the image to
// fill with files, change the share of its blocks to change.
func ensureImages(dir string, size int64, fill, change float64, rebuild bool) (*images, error) {
	dir = filepath.Join(dir, fmt.Sprintf("v%d-%dMiB-fill%.0f-change%.1f", imageVersion, size>>20, fill*100, change*100))
	infoPath := filepath.Join(dir, "info.json")
	if !rebuild {
		if b, err := os.ReadFile(infoPath); err == nil {
			var im images
			if err := json.Unmarshal(b, &im); err == nil && im.Version == imageVersion {
				logf("reusing the images cached in %s (-rebuild makes them anew)", dir)
				return &im, nil
			}
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	im := &images{
		Version: imageVersion, Size: size, SmallSize: size / 10,
		Base: filepath.Join(dir, "base.img"), Changed: filepath.Join(dir, "changed.img"), Small: filepath.Join(dir, "small.img"),
	}
	logf("making %s: ext4 of %s holding %.0f%% of real files (a few minutes, once)", im.Base, mib(size), fill*100)
	var err error
	if im.Files, im.FileBytes, err = makeImage(im.Base, size, int64(fill*float64(size))); err != nil {
		return nil, err
	}
	if im.Allocated, err = allocated(im.Base); err != nil {
		return nil, err
	}
	logf("making %s: ext4 of %s for the memory target", im.Small, mib(im.SmallSize))
	if im.SmallFiles, im.SmallBytes, err = makeImage(im.Small, im.SmallSize, int64(fill*float64(im.SmallSize))); err != nil {
		return nil, err
	}
	logf("making %s: %s with %.1f%% of its blocks changed by rewriting files", im.Changed, filepath.Base(im.Base), change*100)
	if err := run("cp", "--sparse=always", im.Base, im.Changed); err != nil {
		return nil, err
	}
	if im.ChangeWritten, err = changeImage(im.Changed, int64(change*float64(size))); err != nil {
		return nil, err
	}
	if im.ChangedBlocks, err = changedBlocks(im.Base, im.Changed); err != nil {
		return nil, err
	}
	b, _ := json.MarshalIndent(im, "", "  ")
	if err := os.WriteFile(infoPath, b, 0o644); err != nil {
		return nil, err
	}
	return im, nil
}

// makeImage formats an ext4 filesystem of size bytes in a new sparse file
// at path and fills it with about fill bytes of real files.
func makeImage(path string, size, fill int64) (files int, copied int64, err error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, 0, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return 0, 0, err
	}
	f.Close()
	// Inode tables and journal written now, not by the kernel in the
	// background after each mount, so the image holds only what we put.
	if err := run("mkfs.ext4", "-q", "-F", "-L", "ferry-vol", "-E", "lazy_itable_init=0,lazy_journal_init=0", path); err != nil {
		return 0, 0, err
	}
	err = withMounted(path, func(mnt string) error {
		r := rand.New(rand.NewPCG(1, uint64(size)))
		for _, t := range trees() {
			if t.src == "" {
				continue
			}
			n, b, err := copyTree(t, filepath.Join(mnt, t.name), int64(t.share*float64(fill)), r)
			if err != nil {
				return err
			}
			files += n
			copied += b
		}
		return nil
	})
	return files, copied, err
}

// copyTree copies regular files of t to dst in lexical order until budget
// bytes are copied. A variant copy leaves out one file in 16 and changes
// one in 8 by inserting a short line at a random place, as a later version
// of the same files would.
func copyTree(t tree, dst string, budget int64, r *rand.Rand) (files int, copied int64, err error) {
	skip := ""
	if t.skip != "" {
		skip = filepath.Join(t.src, t.skip)
	}
	src, variant := t.src, t.variant
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if copied >= budget {
			return filepath.SkipAll
		}
		if p == skip {
			return filepath.SkipDir
		}
		if err != nil || !d.Type().IsRegular() {
			return nil // unreadable parts of a system tree are skipped
		}
		rel, _ := filepath.Rel(src, p)
		mutate := false
		if variant {
			switch r.IntN(16) {
			case 0:
				return nil
			case 1, 2:
				mutate = true
			}
		}
		n, err := copyFile(p, filepath.Join(dst, rel), mutate, r)
		if err != nil {
			return err
		}
		if n > 0 {
			files++
			copied += n
		}
		return nil
	})
	return files, copied, err
}

func copyFile(from, to string, mutate bool, r *rand.Rand) (int64, error) {
	in, err := os.Open(from)
	if err != nil {
		return 0, nil // vanished or unreadable: not ours to copy
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return 0, err
	}
	out, err := os.Create(to)
	if err != nil {
		return 0, err
	}
	var n int64
	if fi, serr := in.Stat(); mutate && serr == nil && fi.Size() > 0 && fi.Size() < 64<<20 {
		var b []byte
		if b, err = io.ReadAll(in); err == nil {
			at := r.IntN(len(b))
			b = slices.Insert(b, at, []byte(fmt.Sprintf("\n// variant %d\n", r.Uint32()))...)
			var m int
			m, err = out.Write(b)
			n = int64(m)
		}
	} else {
		n, err = io.Copy(out, in)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// changeImage mounts the image and changes files in it until about want
// bytes were written, as a working application would between two
// snapshots: parts of files rewritten in place (70%), files replaced by a
// new version (20%) and new files (10%). The new bytes come from other
// files of the same filesystem, so they compress as real data does.
func changeImage(path string, want int64) (written int64, err error) {
	// ext4 also rewrites metadata blocks and its journal for each change;
	// aim the file writes a little lower so the blocks changed come out
	// near want.
	target := want * 85 / 100
	err = withMounted(path, func(mnt string) error {
		var files []string
		var sizes []int64
		filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if fi, err := d.Info(); err == nil && fi.Size() >= 64<<10 {
					files = append(files, p)
					sizes = append(sizes, fi.Size())
				}
			}
			return nil
		})
		if len(files) < 100 {
			return fmt.Errorf("change %s: only %d files of 64 KiB or more", path, len(files))
		}
		r := rand.New(rand.NewPCG(2, 2))
		donor := func(n int) ([]byte, error) {
			i := r.IntN(len(files))
			f, err := os.Open(files[i])
			if err != nil {
				return nil, err
			}
			defer f.Close()
			b := make([]byte, n)
			off := r.Int64N(max(1, sizes[i]-int64(n)))
			m, err := f.ReadAt(b, off)
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			return b[:m], nil
		}
		for newFiles := 0; written < target; {
			i := r.IntN(len(files))
			switch p := r.IntN(10); {
			case p < 7: // a range rewritten in place
				n := min(sizes[i], int64(4+r.IntN(253))*blockSize)
				off := r.Int64N(max(1, sizes[i]-n+1)) &^ (blockSize - 1)
				b, err := donor(int(n))
				if err != nil {
					return err
				}
				if err := writeAt(files[i], b, off); err != nil {
					return err
				}
				written += int64(len(b))
			case p < 9: // a new version of a file of at most 8 MiB
				if sizes[i] > 8<<20 {
					continue
				}
				b, err := os.ReadFile(files[i])
				if err != nil {
					return err
				}
				at := r.IntN(len(b))
				b = slices.Insert(b, at, []byte(fmt.Sprintf("\n// changed %d\n", r.Uint32()))...)
				if err := os.WriteFile(files[i], b, 0o644); err != nil {
					return err
				}
				written += int64(len(b))
			default: // a new file
				b, err := donor(blockSize * (64 + r.IntN(960)))
				if err != nil {
					return err
				}
				newFiles++
				name := filepath.Join(mnt, "new", fmt.Sprintf("f%04d", newFiles))
				if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
					return err
				}
				if err := os.WriteFile(name, b, 0o644); err != nil {
					return err
				}
				written += int64(len(b))
			}
		}
		return nil
	})
	return written, err
}

func writeAt(path string, b []byte, off int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(b, off); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// withMounted loop-mounts the ext4 image, runs fn on the mount point, and
// unmounts it (which also detaches the loop device).
func withMounted(image string, fn func(mnt string) error) error {
	mnt, err := os.MkdirTemp("", "ferry-compare-mnt-")
	if err != nil {
		return err
	}
	defer os.Remove(mnt)
	if err := run("mount", "-o", "loop,noatime", image, mnt); err != nil {
		return err
	}
	ferr := fn(mnt)
	if err := run("umount", mnt); err != nil {
		return errors.Join(ferr, err)
	}
	return ferr
}

// allocated returns the bytes of path's data blocks.
func allocated(path string) (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// changedBlocks counts the 4 KiB blocks that differ between two images of
// the same size.
func changedBlocks(a, b string) (int64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return 0, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return 0, err
	}
	defer fb.Close()
	var n int64
	err = compareFiles(fa, fb, func(x, y []byte) {
		for i := 0; i < len(x); i += blockSize {
			if !bytes.Equal(x[i:min(i+blockSize, len(x))], y[i:min(i+blockSize, len(y))]) {
				n++
			}
		}
	})
	return n, err
}

// compareFiles reads two files of the same size side by side in 4 MiB
// pieces and calls fn on each pair.
func compareFiles(a, b *os.File, fn func(x, y []byte)) error {
	sa, err := a.Stat()
	if err != nil {
		return err
	}
	sb, err := b.Stat()
	if err != nil {
		return err
	}
	if sa.Size() != sb.Size() {
		return fmt.Errorf("%s is %d bytes, %s %d", a.Name(), sa.Size(), b.Name(), sb.Size())
	}
	x, y := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); off < sa.Size(); off += int64(len(x)) {
		n := int(min(int64(len(x)), sa.Size()-off))
		if _, err := a.ReadAt(x[:n], off); err != nil {
			return err
		}
		if _, err := b.ReadAt(y[:n], off); err != nil {
			return err
		}
		fn(x[:n], y[:n])
	}
	return nil
}

// sameContent reports whether two files hold the same bytes.
func sameContent(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	differ := false
	if err := compareFiles(fa, fb, func(x, y []byte) { differ = differ || !bytes.Equal(x, y) }); err != nil {
		return err
	}
	if differ {
		return fmt.Errorf("%s differs from %s", b, a)
	}
	return nil
}
