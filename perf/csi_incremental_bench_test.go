package perf

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ferrydr/ferry/agent/backup"
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
// added; snapshot 2. Each iteration backs up, into a fresh 2+1 repository
// over three MinIO servers:
//
//	full   snapshot 1, reading its allocated ranges (a first backup)
//	inc    snapshot 2, incremental: SnapshotMetadata delta against 1
//	reread snapshot 2 without changed-block tracking (allocated ranges again)
//
// and reports each one's bytes read and seconds.
func BenchmarkIncrementalCSI(b *testing.B) {
	ctx := context.Background()
	dir := xfs.Mount(b, 12<<30)
	drv := reflinkcsi.StartTest(b, reflinkcsi.Config{Dir: dir})
	conn := csitest.Dial(b, drv.Config().Endpoint)
	ctrl := csi.NewControllerClient(conn)
	cv, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "bench", CapacityRange: &csi.CapacityRange{RequiredBytes: 3 << 30}, VolumeCapabilities: []*csi.VolumeCapability{csitest.MountCap}})
	if err != nil {
		b.Fatal(err)
	}
	volID := cv.GetVolume().GetVolumeId()
	var files []string
	var total int64
	csitest.WithMounted(b, conn, volID, func(mnt string) {
		files, total = csitest.CopyFiles(b, mnt, 2200<<20, runtime.GOROOT(), filepath.Join(os.Getenv("HOME"), "go", "pkg", "mod"), "/usr/lib", "/usr/share")
	})
	if total < 2<<30 {
		b.Fatalf("only %d bytes of real files found to copy", total)
	}
	snap := func(name string) string {
		s, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: volID, Name: name})
		if err != nil {
			b.Fatal(err)
		}
		return s.GetSnapshot().GetSnapshotId()
	}
	s1 := snap("s1")
	var changed int64
	csitest.WithMounted(b, conn, volID, func(mnt string) {
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
		changed += int64(len(big))
	})
	s2 := snap("s2")
	b.Logf("volume 3 GiB, %d MiB of files, %d MiB rewritten (%.1f%%)", total>>20, changed>>20, 100*float64(changed)/float64(total))

	stores := minioStores(b, 3)
	expCfg := expose.Config{Driver: conn, NodeID: drv.Config().NodeID, Dir: filepath.Join(b.TempDir(), "expose")}
	run := func(r *repo.Repo, id string, opts backup.Options) (*backup.Summary, time.Duration) {
		start := time.Now()
		v, err := expose.Expose(ctx, expCfg, id, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer v.Release(ctx)
		sum, err := backup.Run(ctx, r, v, v.Size, opts)
		if err != nil {
			b.Fatal(err)
		}
		return sum, time.Since(start)
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
	var full, inc, reread *backup.Summary
	var tFull, tInc, tReread time.Duration
	for b.Loop() {
		r := newRepo(b, stores(b), chunk.DefaultParams(benchPol), erasure.Scheme{K: 2, M: 1})
		full, tFull = run(r, s1, backup.Options{Holes: holesOf(s1)})
		parent, err := r.FindSnapshot(ctx, full.SnapshotID, "")
		if err != nil {
			b.Fatal(err)
		}
		delta, err := metadata.Delta(ctx, conn, s1, s2)
		if err != nil {
			b.Fatal(err)
		}
		inc, tInc = run(r, s2, backup.Options{Parent: parent, Changed: delta.Ranges})
		reread, tReread = run(r, s2, backup.Options{Holes: holesOf(s2)})
	}
	b.ReportMetric(float64(full.BytesRead)/(1<<20), "full-read-MiB")
	b.ReportMetric(tFull.Seconds(), "full-s")
	b.ReportMetric(float64(inc.BytesRead)/(1<<20), "inc-read-MiB")
	b.ReportMetric(tInc.Seconds(), "inc-s")
	b.ReportMetric(float64(reread.BytesRead)/(1<<20), "reread-read-MiB")
	b.ReportMetric(tReread.Seconds(), "reread-s")
	b.ReportMetric(float64(inc.BytesRead)/float64(changed), "inc-read/changed")
}
