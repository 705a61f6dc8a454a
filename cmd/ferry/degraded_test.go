package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	miniogo "github.com/minio/minio-go/v7"

	"github.com/ferrydr/ferry/testenv/faultproxy"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/testenv/volume"
)

// TestBackupDegraded: with one of three targets (2+1) refusing
// connections, ferry backup commits the snapshot, exits 0 and warns in
// one line what the target lacks; verify then calls the repository
// degraded (exit 4), repair brings the target back to full redundancy,
// and verify is clean.
func TestBackupDegraded(t *testing.T) {
	c := minio.StartCluster(t, 3, "ferry", "")
	var urls []string
	var proxies []*faultproxy.Proxy
	for _, s := range c.Servers {
		p := faultproxy.Start(t, s.Endpoint)
		proxies = append(proxies, p)
		urls = append(urls, "s3+http://"+p.Addr+"/ferry/degraded")
	}
	password := "degraded-test-password"
	env := append(s3Env(c, strings.Join(urls, ","), password), "FERRY_S3_STALL_TIMEOUT=2s")
	mustFerry(t, env, "init", "--erasure", "2+1", "--pack-size", "1")
	img := filepath.Join(t.TempDir(), "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 16 << 20, DataFrac: 0.7, Seed: 21}); err != nil {
		t.Fatal(err)
	}

	proxies[1].Set(faultproxy.Fault{Mode: faultproxy.Refuse})
	r := ferry(t, env, "backup", "--json", img)
	proxies[1].Set(faultproxy.Fault{Mode: faultproxy.Pass})
	if r.code != 0 {
		t.Fatalf("backup with target 2 down: exit %d: %s", r.code, r.stderr)
	}
	var sum struct {
		SnapshotID string `json:"snapshot_id"`
		Packs      int    `json:"packs"`
		Stored     int64  `json:"bytes_stored"`
		Degraded   []struct {
			Target  int `json:"target"`
			Shards  int `json:"shards_not_written"`
			Objects int `json:"objects_not_written"`
		} `json:"degraded"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &sum); err != nil {
		t.Fatalf("backup --json: %v: %s", err, r.stdout)
	}
	if len(sum.Degraded) != 1 || sum.Degraded[0].Target != 2 || sum.Degraded[0].Shards != sum.Packs || sum.Degraded[0].Objects < 2 {
		t.Errorf("degraded = %+v for %d packs, want target 2 without a shard of each and the index and manifest", sum.Degraded, sum.Packs)
	}
	// bytes_stored counts what is on the targets, nothing for target 2:
	// the shards, index object and manifest on targets 1 and 3.
	var onTargets int64
	for _, i := range []int{0, 2} {
		for o := range c.Servers[i].Client(t).ListObjects(t.Context(), "ferry", miniogo.ListObjectsOptions{Prefix: "degraded/", Recursive: true}) {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			name := strings.TrimPrefix(o.Key, "degraded/")
			if strings.HasPrefix(name, "data/") || strings.HasPrefix(name, "index/") || strings.HasPrefix(name, "snapshots/") {
				onTargets += o.Size
			}
		}
	}
	if sum.Stored != onTargets {
		t.Errorf("bytes_stored %d, but targets 1 and 3 hold %d bytes of shards, index and manifest", sum.Stored, onTargets)
	}
	var warned []string
	for _, l := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		if strings.HasPrefix(l, "ferry: warning: degraded: ") {
			warned = append(warned, l)
		}
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "target 2 ("+"s3+http://"+proxies[1].Addr) || !strings.Contains(warned[0], "ferry repair") ||
		!strings.Contains(warned[0], "refused") {
		t.Errorf("want one degraded warning naming target 2, why it was down, and repair, stderr:\n%s", r.stderr)
	}
	if n := linesWith(r.stderr, "target 2"); n != 1 {
		t.Errorf("%d lines of stderr tell about target 2, want the degraded warning alone:\n%s", n, r.stderr)
	}
	if strings.Contains(r.stdout+r.stderr, password) || strings.Contains(r.stdout+r.stderr, c.Env("AWS_SECRET_ACCESS_KEY")) {
		t.Error("a secret is in the output")
	}
	t.Logf("stderr:\n%s", r.stderr)

	if v := ferry(t, env, "verify"); v.code != exitDegraded {
		t.Fatalf("verify after a degraded backup: exit %d, want %d (degraded): %s", v.code, exitDegraded, v.stderr)
	}
	mustFerry(t, env, "repair")
	if v := ferry(t, env, "verify"); v.code != 0 {
		t.Fatalf("verify after repair: exit %d: %s%s", v.code, v.stdout, v.stderr)
	}
	out := filepath.Join(t.TempDir(), "out.img")
	proxies[0].Set(faultproxy.Fault{Mode: faultproxy.Refuse})
	rr := ferry(t, env, "restore", sum.SnapshotID, "--target", out)
	proxies[0].Set(faultproxy.Fault{Mode: faultproxy.Pass})
	if rr.code != 0 {
		t.Fatalf("restore with target 1 down: exit %d: %s", rr.code, rr.stderr)
	}
	sameFile(t, img, out)
	// One line about target 1: where it is, why it is down, and what the
	// restore did without it.
	if n := linesWith(rr.stderr, "target 1"); n != 1 || !strings.Contains(rr.stderr, "target 1 (s3+http://"+proxies[0].Addr) ||
		!strings.Contains(rr.stderr, "refused") || !strings.Contains(rr.stderr, "reconstructed from parity") {
		t.Errorf("restore with target 1 down: want one line naming it, why, and the shards reconstructed; stderr:\n%s", rr.stderr)
	}
}

// linesWith counts the lines of s that contain sub.
func linesWith(s, sub string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}
