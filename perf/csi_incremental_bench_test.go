package perf

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/source"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/csi/expose"
	"github.com/ferrydr/ferry/csi/metadata"
	"github.com/ferrydr/ferry/testenv/csitest"
	"github.com/ferrydr/ferry/testenv/reflinkcsi"
	"github.com/ferrydr/ferry/testenv/xfs"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/repo"
)

// BenchmarkIncrementalCSI measures what changed-block tracking buys. A
// 3 GiB volume of the test CSI driver holds an ext4 filesystem with 2.2 GiB
// of real files (the Go toolchain, the Go module cache, system libraries);
// snapshot 1; then about 1.5% of the volume's data blocks are rewritten in
// place (files overwritten as a database rewrites pages) and a new file is
// added; snapshot 2. With FERRY_BENCH_CBT_IMAGES=BASE:CHANGED (two raw
// images of one size, as perf/compare makes) the volume is BASE written
// through the driver's block device instead, and snapshot 2 is CHANGED:
// only the 4 KiB blocks that differ are written. Each iteration backs up,
// into a fresh 2+1 repository over three MinIO servers:
//
//	full   snapshot 1, reading its allocated ranges (a first backup)
//	inc    snapshot 2, incremental: SnapshotMetadata delta against 1
//	reread snapshot 2 without changed-block tracking, as the agent backs up
//	       when the driver has no SnapshotMetadata: its allocated ranges
//	       read and compared with snapshot 1's chunks (backup.Options.Basis)
//
// and reports each one's bytes read and seconds (the metrics are the last
// iteration's; every iteration is logged).
func BenchmarkIncrementalCSI(b *testing.B) {
	ctx := context.Background()
	base, changedImg, fromImages := strings.Cut(os.Getenv(cbtImagesEnv), ":")
	size := int64(3 << 30)
	if fromImages {
		fi, err := os.Stat(base)
		if err != nil {
			b.Fatalf("%s: %v", cbtImagesEnv, err)
		}
		size = fi.Size()
	}
	dir := xfs.Mount(b, 4*size)
	drv := reflinkcsi.StartTest(b, reflinkcsi.Config{Dir: dir})
	conn := csitest.Dial(b, drv.Config().Endpoint)
	ctrl := csi.NewControllerClient(conn)
	vc := csitest.MountCap
	if fromImages {
		vc = csitest.BlockCap
	}
	cv, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "bench", CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: []*csi.VolumeCapability{vc}})
	if err != nil {
		b.Fatal(err)
	}
	volID := cv.GetVolume().GetVolumeId()
	snap := func(name string) string {
		s, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: volID, Name: name})
		if err != nil {
			b.Fatal(err)
		}
		return s.GetSnapshot().GetSnapshotId()
	}
	var s1, s2 string
	var changed int64
	if fromImages {
		csitest.WithBlock(b, conn, volID, func(dev *os.File) { writeImage(b, dev, base) })
		s1 = snap("s1")
		csitest.WithBlock(b, conn, volID, func(dev *os.File) { changed = writeChangedBlocks(b, dev, base, changedImg) })
		s2 = snap("s2")
		b.Logf("volume %d MiB from %s, %d MiB in changed blocks (%.1f%% of the volume)", size>>20, base, changed>>20, 100*float64(changed)/float64(size))
	} else {
		var files []string
		var total int64
		csitest.WithMounted(b, conn, volID, func(mnt string) {
			files, total = csitest.CopyFiles(b, mnt, 2200<<20, runtime.GOROOT(), filepath.Join(os.Getenv("HOME"), "go", "pkg", "mod"), "/usr/lib", "/usr/share")
		})
		if total < 2<<30 {
			b.Fatalf("only %d bytes of real files found to copy", total)
		}
		s1 = snap("s1")
		csitest.WithMounted(b, conn, volID, func(mnt string) { changed = rewriteFiles(b, mnt, files, total) })
		s2 = snap("s2")
		b.Logf("volume 3 GiB, %d MiB of files, %d MiB rewritten (%.1f%%)", total>>20, changed>>20, 100*float64(changed)/float64(total))
	}

	stores := minioStores(b, 3)
	expCfg := expose.Config{Driver: conn, NodeID: drv.Config().NodeID, Dir: filepath.Join(b.TempDir(), "expose")}
	// run times one backup of snapshot id, from asking for its ranges
	// (opts) to the committed manifest, and its phases. Its CPU samples
	// carry the label backup=name, so that a profile of the benchmark can
	// be cut by it (go tool pprof -tagfocus backup=incremental).
	run := func(name string, r *repo.Repo, id string, opts func() backup.Options) (res csiBackup) {
		pprof.Do(ctx, pprof.Labels("backup", name), func(ctx context.Context) {
			start := time.Now()
			o := opts()
			res.ranges = time.Since(start)
			v, err := expose.Expose(ctx, expCfg, id, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer v.Release(ctx)
			res.expose = time.Since(start) - res.ranges
			o.Progress = &backup.Progress{}
			stop := watchProgress(o.Progress, &res.firstChunk, &res.lastChunk)
			res.sum, err = backup.Run(ctx, r, v, v.Size, o)
			stop()
			if err != nil {
				b.Fatal(err)
			}
			res.total = time.Since(start)
		})
		return res
	}
	holesOf := func(id string) []chunk.Range {
		md, err := metadata.Allocated(ctx, conn, id)
		if err != nil {
			b.Fatal(err)
		}
		var holes []chunk.Range
		var at int64
		for _, r := range md.Ranges {
			if r.Off > at {
				holes = append(holes, chunk.Range{Off: at, Len: r.Off - at})
			}
			at = r.Off + r.Len
		}
		if at < md.Capacity {
			holes = append(holes, chunk.Range{Off: at, Len: md.Capacity - at})
		}
		return holes
	}
	var full, inc, reread csiBackup
	for i := 1; b.Loop(); i++ {
		r := newRepo(b, stores(b), benchParams(b), erasure.Scheme{K: 2, M: 1})
		full = run("full", r, s1, func() backup.Options { return backup.Options{Holes: holesOf(s1)} })
		parent, err := r.FindSnapshot(ctx, full.sum.SnapshotID, "")
		if err != nil {
			b.Fatal(err)
		}
		stopTrace := startTrace(b)
		inc = run("incremental", r, s2, func() backup.Options {
			delta, err := metadata.Delta(ctx, conn, s1, s2)
			if err != nil {
				b.Fatal(err)
			}
			return backup.Options{Parent: parent, Changed: delta.Ranges}
		})
		stopTrace()
		reread = run("reread", r, s2, func() backup.Options { return backup.Options{Holes: holesOf(s2), Basis: parent} })
		b.Logf("iteration %d: full %s, incremental %s, reread %s", i, full, inc, reread)
	}
	b.ReportMetric(float64(full.sum.BytesRead)/(1<<20), "full-read-MiB")
	b.ReportMetric(full.total.Seconds(), "full-s")
	b.ReportMetric(float64(inc.sum.BytesRead)/(1<<20), "inc-read-MiB")
	b.ReportMetric(inc.total.Seconds(), "inc-s")
	b.ReportMetric(float64(reread.sum.BytesRead)/(1<<20), "reread-read-MiB")
	b.ReportMetric(reread.total.Seconds(), "reread-s")
	b.ReportMetric(float64(inc.sum.BytesRead)/float64(changed), "inc-read/changed")
}

// csiBackup is one backup through CSI: what it did and how long it took
// in all and in its phases (asking for the ranges to read, exposing the
// snapshot as a block device, the backup itself).
// Within the backup, firstChunk and lastChunk are when the first and the
// last chunk of the volume were done (hashed and sealed, or reused), from
// the start of backup.Run: before the first, it loads the index and the
// parent; after the last, it uploads the last packs and commits.
type csiBackup struct {
	sum                   *backup.Summary
	total, ranges, expose time.Duration
	firstChunk, lastChunk time.Duration
}

func (c csiBackup) String() string {
	return fmt.Sprintf("%.2f s (read %d MiB; ranges %.2f s, expose %.2f s, backup %.2f s: first chunk after %.2f s, last after %.2f s)",
		c.total.Seconds(), c.sum.BytesRead>>20, c.ranges.Seconds(), c.expose.Seconds(), (c.total - c.ranges - c.expose).Seconds(),
		c.firstChunk.Seconds(), c.lastChunk.Seconds())
}

// watchProgress notes, every 5 ms until stop is called, when p first and
// last moved past a chunk.
func watchProgress(p *backup.Progress, first, last *time.Duration) (stop func()) {
	start := time.Now()
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		var seen int64
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			if d := p.Done.Load(); d > seen {
				if seen == 0 {
					*first = time.Since(start)
				}
				seen = d
				*last = time.Since(start)
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// cbtImagesEnv names the variable that makes BenchmarkIncrementalCSI back
// up two given images (perf/compare sets it).
const cbtImagesEnv = "FERRY_BENCH_CBT_IMAGES"

// rewriteFiles overwrites the first MiB of randomly chosen files (of the
// total bytes of files) with random bytes until 1.5% of total changed, and
// adds an 8 MiB file; it returns the bytes written.
func rewriteFiles(b *testing.B, mnt string, files []string, total int64) int64 {
	var changed int64
	r := rand.New(rand.NewPCG(9, 9))
	for changed < total*3/200 {
		p := filepath.Join(mnt, files[r.IntN(len(files))])
		fi, err := os.Stat(p)
		if err != nil || fi.Size() < 4096 {
			continue
		}
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, min(fi.Size(), 1<<20))
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		if _, err := f.WriteAt(buf, 0); err != nil {
			b.Fatal(err)
		}
		f.Close()
		changed += int64(len(buf))
	}
	big := make([]byte, 8<<20)
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(filepath.Join(mnt, "new.bin"), big, 0o644); err != nil {
		b.Fatal(err)
	}
	return changed + int64(len(big))
}

// writeImage copies the data ranges of the image at path (its holes
// skipped, so the volume is allocated where the image is) to dev.
func writeImage(b *testing.B, dev *os.File, path string) {
	img, err := source.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	holes, err := img.Holes()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4<<20)
	copyRange := func(off, end int64) {
		for ; off < end; off += int64(len(buf)) {
			n := min(int64(len(buf)), end-off)
			if _, err := img.ReadAt(buf[:n], off); err != nil {
				b.Fatal(err)
			}
			if _, err := dev.WriteAt(buf[:n], off); err != nil {
				b.Fatal(err)
			}
		}
	}
	var at int64
	for _, h := range holes {
		copyRange(at, h.Off)
		at = h.End()
	}
	copyRange(at, img.Size())
}

// writeChangedBlocks writes to dev the 4 KiB blocks of changed that differ
// from base, and returns their bytes.
func writeChangedBlocks(b *testing.B, dev *os.File, base, changed string) int64 {
	const block = 4096
	open := func(p string) (*os.File, int64) {
		f, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { f.Close() })
		fi, err := f.Stat()
		if err != nil {
			b.Fatal(err)
		}
		return f, fi.Size()
	}
	fx, size := open(base)
	fy, ysize := open(changed)
	if ysize != size {
		b.Fatalf("%s is %d bytes, %s %d", base, size, changed, ysize)
	}
	x, y := make([]byte, 4<<20), make([]byte, 4<<20)
	var n int64
	for off := int64(0); off < size; off += int64(len(x)) {
		m := int(min(int64(len(x)), size-off))
		if _, err := fx.ReadAt(x[:m], off); err != nil {
			b.Fatal(err)
		}
		if _, err := fy.ReadAt(y[:m], off); err != nil {
			b.Fatal(err)
		}
		for i := 0; i < m; i += block {
			j := min(i+block, m)
			if !bytes.Equal(x[i:j], y[i:j]) {
				if _, err := dev.WriteAt(y[i:j], off+int64(i)); err != nil {
					b.Fatal(err)
				}
				n += int64(j - i)
			}
		}
	}
	return n
}

// startTrace starts an execution trace into the file FERRY_BENCH_TRACE
// names, for go tool trace (the last iteration's is kept): of the
// incremental backup in BenchmarkIncrementalCSI, of the restore in
// BenchmarkChunkSizeImages. Without it, it does nothing.
func startTrace(b *testing.B) (stop func()) {
	path := os.Getenv("FERRY_BENCH_TRACE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := trace.Start(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		trace.Stop()
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
