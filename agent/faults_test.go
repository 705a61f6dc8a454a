package agent_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/testenv/faultproxy"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/verify"
)

// faultRepo is a 2+1 repository on three MinIO servers, each reached
// through a fault proxy.
type faultRepo struct {
	proxies []*faultproxy.Proxy
	locs    []objstore.Location
	env     objstore.Env
}

// stall is how long a connection may move nothing before the request
// fails (FERRY_S3_STALL_TIMEOUT); short, so a hung target costs seconds.
const stall = "2s"

func startFaultRepo(t *testing.T) *faultRepo {
	t.Helper()
	c := minio.StartCluster(t, 3, "ferry", "faults")
	f := &faultRepo{}
	var urls []string
	for _, s := range c.Servers {
		p := faultproxy.Start(t, s.Endpoint)
		f.proxies = append(f.proxies, p)
		urls = append(urls, "s3+http://"+p.Addr+"/ferry/faults")
	}
	locs, err := objstore.ParseRepo(strings.Join(urls, ","))
	if err != nil {
		t.Fatal(err)
	}
	f.locs = locs
	f.env = func(k string) string {
		if k == "FERRY_S3_STALL_TIMEOUT" {
			return stall
		}
		return c.Env(k)
	}
	if _, err := repo.Init(t.Context(), f.stores(), []byte(password), repo.Options{
		Erasure: erasure.Scheme{K: 2, M: 1}, PackSize: 2 << 20, KDF: crypt.KDFParams{N: 1024, R: 8, P: 1},
	}); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *faultRepo) stores() []objstore.Store {
	return objstore.OpenAll(context.Background(), f.locs, f.env)
}

func (f *faultRepo) open(t *testing.T) *repo.Repo {
	t.Helper()
	r, err := repo.Open(t.Context(), f.stores(), []byte(password))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// duringTransfer sets fault on target 2's proxy once the transfer has
// moved some bytes (progress reports them), and clears it when the test
// ends.
func (f *faultRepo) duringTransfer(t *testing.T, progress func() int64, fault faultproxy.Fault) {
	t.Helper()
	go func() {
		for deadline := time.Now().Add(30 * time.Second); progress() < 4<<20 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		}
		f.proxies[1].Set(fault)
	}()
	t.Cleanup(func() { f.proxies[1].Set(faultproxy.Fault{Mode: faultproxy.Pass}) })
}

var targetFaults = []faultproxy.Fault{
	{Mode: faultproxy.Refuse},
	{Mode: faultproxy.Reset},
	{Mode: faultproxy.Slow, Latency: 20 * time.Millisecond, BytesPerSecond: 4 << 20},
	{Mode: faultproxy.Hang},
}

// TestRestoreTargetFaults: one of three targets refuses, resets, slows
// down or hangs in the middle of a restore; the restore finishes from the
// other two, bit-identical, in bounded time.
func TestRestoreTargetFaults(t *testing.T) {
	f := startFaultRepo(t)
	img := filepath.Join(t.TempDir(), "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 96 << 20, DataFrac: 0.5, Seed: 11}); err != nil {
		t.Fatal(err)
	}
	sum, err := backup.File(t.Context(), f.open(t), img, backup.Options{Name: "vol"})
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, fault := range targetFaults {
		t.Run(fault.Mode.String(), func(t *testing.T) {
			r := f.open(t)
			snap, err := r.FindSnapshot(t.Context(), sum.SnapshotID, "")
			if err != nil {
				t.Fatal(err)
			}
			prog := &restore.Progress{}
			f.duringTransfer(t, prog.Fetched.Load, fault)
			out := filepath.Join(t.TempDir(), "out.img")
			start := time.Now()
			if _, err := restore.Run(t.Context(), r, snap, out, restore.Options{Progress: prog}); err != nil {
				t.Fatalf("restore with target 2 %s: %v", fault.Mode, err)
			}
			took := time.Since(start)
			got, err := os.ReadFile(out)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("restore with target 2 %s differs: %v", fault.Mode, err)
			}
			t.Logf("target 2 %s mid-restore: restored in %s", fault.Mode, took.Round(time.Millisecond))
			if took > 90*time.Second {
				t.Errorf("restore took %s", took)
			}
		})
	}
}

// TestBackupTargetFaults: a target that resets connections, is slow or
// hangs for a while (less than the write retries last) is ridden out: the
// backup writes everything, degrades nothing, and restores.
func TestBackupTargetFaults(t *testing.T) {
	f := startFaultRepo(t)
	img := filepath.Join(t.TempDir(), "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 64 << 20, DataFrac: 0.6, Seed: 12}); err != nil {
		t.Fatal(err)
	}
	for i, fault := range []faultproxy.Fault{
		{Mode: faultproxy.Reset},
		{Mode: faultproxy.Slow, Latency: 10 * time.Millisecond, BytesPerSecond: 8 << 20},
		{Mode: faultproxy.Hang},
	} {
		t.Run("transient-"+fault.Mode.String(), func(t *testing.T) {
			if err := volume.Mutate(img, 8, 1<<20, uint64(i)); err != nil {
				t.Fatal(err)
			}
			prog := &backup.Progress{}
			f.duringTransfer(t, prog.Read.Load, fault)
			if fault.Mode != faultproxy.Slow {
				go func() { // the target comes back after a while
					for prog.Read.Load() < 4<<20 {
						time.Sleep(5 * time.Millisecond)
					}
					time.Sleep(1500 * time.Millisecond)
					f.proxies[1].Set(faultproxy.Fault{Mode: faultproxy.Pass})
				}()
			}
			sum, err := backup.File(t.Context(), f.open(t), img, backup.Options{Name: "vol", Progress: prog})
			if err != nil {
				t.Fatalf("backup with target 2 %s for a while: %v", fault.Mode, err)
			}
			if len(sum.Degraded) > 0 {
				t.Errorf("a target %s for 1.5 s degraded the backup: %s", fault.Mode, sum.DegradedMessage())
			}
			restoreEquals(t, f, sum.SnapshotID, img)
		})
	}
}

// TestBackupTargetDown documents the write policy for a target that stays
// down: the backup goes on without it (2+1 over three targets survives
// one loss), says what target 2 lacks, and commits a snapshot that
// verify calls degraded, not lost; once the target is back, repair writes
// what it lacks, and the snapshot restores without target 1, from the
// repaired shards.
func TestBackupTargetDown(t *testing.T) {
	f := startFaultRepo(t)
	img := filepath.Join(t.TempDir(), "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 64 << 20, DataFrac: 0.6, Seed: 13}); err != nil {
		t.Fatal(err)
	}
	// A first snapshot with every target up: target 2 keeps its objects.
	if _, err := backup.File(t.Context(), f.open(t), img, backup.Options{Name: "vol"}); err != nil {
		t.Fatal(err)
	}
	for i, fault := range []faultproxy.Fault{{Mode: faultproxy.Refuse}, {Mode: faultproxy.Reset}, {Mode: faultproxy.Hang}} {
		whole := i == 0 // down for the whole backup, else from the middle of it
		name := "mid-backup-" + fault.Mode.String()
		if whole {
			name = "whole-backup-" + fault.Mode.String()
		}
		t.Run(name, func(t *testing.T) {
			if err := volume.Mutate(img, 24, 1<<20, uint64(100+i)); err != nil {
				t.Fatal(err)
			}
			before := manifestsOn(t, f, 1)
			prog := &backup.Progress{}
			if whole {
				f.proxies[1].Set(fault)
				t.Cleanup(func() { f.proxies[1].Set(faultproxy.Fault{Mode: faultproxy.Pass}) })
			} else {
				f.duringTransfer(t, prog.Stored.Load, fault)
			}
			start := time.Now()
			sum, err := backup.File(t.Context(), f.open(t), img, backup.Options{Name: "vol", Progress: prog})
			took := time.Since(start)
			if err != nil {
				t.Fatalf("backup with target 2 %s: %v", fault.Mode, err)
			}
			msg := sum.DegradedMessage()
			t.Logf("backup with target 2 %s: %s, %d new packs, in %s; %s", fault.Mode, sum.SnapshotID[:12], sum.Packs, took.Round(time.Millisecond), msg)
			if len(sum.Degraded) != 1 || sum.Degraded[0].Target != 2 {
				t.Fatalf("degraded = %+v, want target 2 only", sum.Degraded)
			}
			d := sum.Degraded[0]
			if !strings.Contains(d.Location, f.proxies[1].Addr) || !strings.Contains(msg, f.proxies[1].Addr) {
				t.Errorf("the report does not name the target's location %s: %+v; %s", f.proxies[1].Addr, d, msg)
			}
			// One shard of each pack goes to target 2; the manifest and
			// at least one index object did not get there.
			if whole && d.Shards != int(sum.Packs) || d.Shards < 1 || d.Shards > int(sum.Packs) {
				t.Errorf("%d shards not written to target 2, for %d new packs", d.Shards, sum.Packs)
			}
			if d.Objects < 2 {
				t.Errorf("%d replicated objects not written to target 2, want the manifest and an index object at least", d.Objects)
			}
			if took > 90*time.Second {
				t.Errorf("backup took %s", took)
			}

			f.proxies[1].Set(faultproxy.Fault{Mode: faultproxy.Pass})
			if got := manifestsOn(t, f, 1); got != before {
				t.Fatalf("target 2 has %d manifests, had %d before the backup it missed", got, before)
			}
			rep, err := verify.Run(t.Context(), f.open(t), verify.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Status != verify.Degraded || !errors.Is(rep.Err(), verify.ErrDegraded) || len(rep.Lost) > 0 {
				t.Fatalf("verify after a degraded backup: %s (%v), lost %v; want degraded, repairable", rep.Status, rep.Err(), rep.Lost)
			}
			r := f.open(t)
			fixed, err := verify.Repair(t.Context(), r, rep)
			if err != nil {
				t.Fatalf("repair: %v (%+v)", err, fixed)
			}
			// A write that failed while the target hung may have been
			// stored: such a shard needs no repair.
			if len(fixed.Shards) == 0 || len(fixed.Shards) > d.Shards {
				t.Errorf("repair rebuilt %d shards, the backup skipped %d", len(fixed.Shards), d.Shards)
			}
			rep, err = verify.Run(t.Context(), f.open(t), verify.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Status > verify.Notice {
				t.Fatalf("verify after repair: %s: %v", rep.Status, rep.Problems)
			}
			if got := manifestsOn(t, f, 1); got != before+1 {
				t.Fatalf("target 2 has %d manifests after repair, want %d", got, before+1)
			}

			// Without target 1, every pack needs its shard on target 2.
			f.proxies[0].Set(faultproxy.Fault{Mode: faultproxy.Refuse})
			defer f.proxies[0].Set(faultproxy.Fault{Mode: faultproxy.Pass})
			restoreEquals(t, f, sum.SnapshotID, img)
		})
	}
}

// TestBackupTwoTargetsDown: with two of three targets down a 2+1 layout
// cannot hold a pack, so the backup fails with one line naming both, and
// commits nothing anywhere; the next backup, every target back, succeeds.
func TestBackupTwoTargetsDown(t *testing.T) {
	f := startFaultRepo(t)
	img := filepath.Join(t.TempDir(), "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 64 << 20, DataFrac: 0.6, Seed: 14}); err != nil {
		t.Fatal(err)
	}
	if _, err := backup.File(t.Context(), f.open(t), img, backup.Options{Name: "vol"}); err != nil {
		t.Fatal(err)
	}
	refuse := faultproxy.Fault{Mode: faultproxy.Refuse}
	for i, mid := range []bool{false, true} {
		name := "from-the-start"
		if mid {
			name = "second-mid-backup"
		}
		t.Run(name, func(t *testing.T) {
			if err := volume.Mutate(img, 8, 1<<20, uint64(200+i)); err != nil {
				t.Fatal(err)
			}
			var before [3]int
			for j := range before {
				before[j] = manifestsOn(t, f, j)
			}
			prog := &backup.Progress{}
			f.proxies[1].Set(refuse)
			if mid {
				go func() {
					for prog.Stored.Load() < 4<<20 {
						time.Sleep(5 * time.Millisecond)
					}
					// Reset, not refuse: objstore does not retry the
					// error a connection closed by a stopping server
					// gives (see the report), so it fails at once.
					f.proxies[2].Set(faultproxy.Fault{Mode: faultproxy.Reset})
				}()
			} else {
				f.proxies[2].Set(refuse)
			}
			start := time.Now()
			_, err := backup.File(t.Context(), f.open(t), img, backup.Options{Name: "vol", Progress: prog})
			took := time.Since(start)
			f.proxies[1].Set(faultproxy.Fault{Mode: faultproxy.Pass})
			f.proxies[2].Set(faultproxy.Fault{Mode: faultproxy.Pass})
			if err == nil {
				t.Fatal("a backup with two of three targets down succeeded")
			}
			t.Logf("backup with targets 2 and 3 down (%s): failed after %s: %v", name, took.Round(time.Millisecond), err)
			if !errors.Is(err, repo.ErrUnavailable) || strings.Contains(err.Error(), "\n") ||
				!strings.Contains(err.Error(), f.proxies[1].Addr) || !strings.Contains(err.Error(), f.proxies[2].Addr) {
				t.Errorf("want one line naming targets 2 and 3 as unavailable, got: %v", err)
			}
			if took > time.Minute {
				t.Errorf("gave up only after %s", took)
			}
			for j := range before {
				if n := manifestsOn(t, f, j); n != before[j] {
					t.Errorf("the failed backup left a manifest on target %d: %d, was %d", j+1, n, before[j])
				}
			}
			sum, err := backup.File(t.Context(), f.open(t), img, backup.Options{Name: "vol"})
			if err != nil {
				t.Fatalf("the next backup, targets back: %v", err)
			}
			if len(sum.Degraded) > 0 {
				t.Errorf("the next backup, targets back: %s", sum.DegradedMessage())
			}
			restoreEquals(t, f, sum.SnapshotID, img)
		})
	}
}

// manifestsOn counts the manifests target i (0-based) holds.
func manifestsOn(t *testing.T, f *faultRepo, i int) int {
	t.Helper()
	n := 0
	if err := f.stores()[i].List(t.Context(), "snapshots/", func(objstore.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func snapshotCount(t *testing.T, f *faultRepo) int {
	t.Helper()
	s, err := f.open(t).Snapshots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return len(s)
}

func restoreEquals(t *testing.T, f *faultRepo, id, img string) {
	t.Helper()
	r := f.open(t)
	snap, err := r.FindSnapshot(t.Context(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out.img")
	if _, err := restore.Run(t.Context(), r, snap, out, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(img)
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("snapshot %s does not restore to the image: %v", id[:12], err)
	}
}
