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

// TestBackupTargetFaults documents the write policy: a pack counts as
// written only when all k+m shards are, each request retried (5 attempts,
// backoff to 2 s; a request that moves nothing for the stall timeout
// counts as failed). A target that resets connections or is slow for a
// while is ridden out; one that stays down fails the backup with an error
// naming it, writes no manifest, and the next backup, once the target is
// back, succeeds and restores.
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
			restoreEquals(t, f, sum.SnapshotID, img)
		})
	}

	t.Run("down", func(t *testing.T) {
		if err := volume.Mutate(img, 8, 1<<20, 99); err != nil {
			t.Fatal(err)
		}
		before := snapshotCount(t, f)
		prog := &backup.Progress{}
		f.duringTransfer(t, prog.Read.Load, faultproxy.Fault{Mode: faultproxy.Refuse})
		start := time.Now()
		_, err := backup.File(t.Context(), f.open(t), img, backup.Options{Name: "vol", Progress: prog})
		if err == nil {
			t.Fatal("a backup with a target down for good succeeded")
		}
		t.Logf("backup with target 2 down: failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
		if !strings.Contains(err.Error(), f.proxies[1].Addr) {
			t.Errorf("the error does not name the target: %v", err)
		}
		if !objstore.IsTransient(errors.Unwrap(err)) && !strings.Contains(err.Error(), "refused") {
			t.Errorf("the error does not say the target is unreachable: %v", err)
		}
		if time.Since(start) > time.Minute {
			t.Errorf("gave up only after %s", time.Since(start))
		}
		f.proxies[1].Set(faultproxy.Fault{Mode: faultproxy.Pass})
		if n := snapshotCount(t, f); n != before {
			t.Fatalf("the failed backup left a manifest: %d snapshots, was %d", n, before)
		}
		sum, err := backup.File(t.Context(), f.open(t), img, backup.Options{Name: "vol"})
		if err != nil {
			t.Fatalf("the next backup, target back: %v", err)
		}
		restoreEquals(t, f, sum.SnapshotID, img)
	})
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
