package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	miniogo "github.com/minio/minio-go/v7"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydr/ferry/csi/params"
	"github.com/ferrydr/ferry/testenv/csitest"
	"github.com/ferrydr/ferry/testenv/loop"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/testenv/reflinkcsi"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/crypt"
)

// multiRepo is one repository on the three servers of a cluster, under its
// own prefix.
type multiRepo struct {
	urls []string
	id   string
}

func (m multiRepo) repo() string { return strings.Join(m.urls, ",") }

func initRepo(t *testing.T, c *minio.Cluster, prefix, password string) multiRepo {
	t.Helper()
	var m multiRepo
	for _, s := range c.Servers {
		m.urls = append(m.urls, s.URL("ferry", prefix))
	}
	out := mustFerry(t, s3Env(c, m.repo(), password), "init", "--erasure", "2+1", "--pack-size", "1")
	if _, err := fmt.Sscanf(out, "created repository %s", &m.id); err != nil {
		t.Fatalf("init printed %q", out)
	}
	return m
}

func s3Env(c *minio.Cluster, repo, password string) []string {
	return []string{"FERRY_REPO=" + repo, "FERRY_PASSWORD=" + password,
		"AWS_ACCESS_KEY_ID=" + c.Env("AWS_ACCESS_KEY_ID"), "AWS_SECRET_ACCESS_KEY=" + c.Env("AWS_SECRET_ACCESS_KEY")}
}

// expectOneLine checks a failed command: its exit code, and that stderr is
// exactly one line, want, with no secret in it.
func expectOneLine(t *testing.T, r result, code int, want string, secrets ...string) {
	t.Helper()
	if r.code != code || r.stderr != want+"\n" {
		t.Errorf("exit %d, stderr:\n%s\nwant exit %d, stderr:\n%s", r.code, r.stderr, code, want)
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(r.stdout+r.stderr, s) {
			t.Errorf("a secret is in the output: %q", r.stderr)
		}
	}
}

// TestBadInput gives the command bad input, case by case, against
// repositories on three MinIO servers and checks the exit code and the one
// line it prints, word for word: wrong passwords, targets and repositories
// of another cluster, a manifest tampered with, a snapshot bigger than the
// device it is restored into, erasure schemes this Ferry does not know, and
// malformed parameters.
func TestBadInput(t *testing.T) {
	c := minio.StartCluster(t, 3, "ferry", "")
	const (
		password      = "correct horse battery"
		otherPassword = "other cluster's password"
	)
	secret := c.Env("AWS_SECRET_ACCESS_KEY")
	work := t.TempDir()
	img := filepath.Join(work, "vol.img")
	if err := volume.Write(img, volume.Spec{Size: 8 << 20, DataFrac: 0.5, Seed: 11}); err != nil {
		t.Fatal(err)
	}
	a := initRepo(t, c, "cluster-a", password)
	b := initRepo(t, c, "cluster-b", password)      // another cluster, same password
	o := initRepo(t, c, "cluster-c", otherPassword) // another cluster, its own password
	snapA := strings.TrimSpace(mustFerry(t, s3Env(c, a.repo(), password), "backup", "--name", "db", img))
	mustFerry(t, s3Env(c, b.repo(), password), "backup", "--name", "web", img)

	// A manifest tampered with and stored under the SHA-256 of its new
	// bytes, as a provider who knows the naming rule would: only the
	// authentication tag can tell.
	tm := initRepo(t, c, "tampered", password)
	snapT := strings.TrimSpace(mustFerry(t, s3Env(c, tm.repo(), password), "backup", "--name", "db", img))
	var forged string
	for _, s := range c.Servers {
		obj := getObject(t, s, "tampered/snapshots/"+snapT)
		obj[len(obj)/2] ^= 0x01
		forged = sha256Hex(obj)
		putObject(t, s, "tampered/snapshots/"+forged, obj)
		removeObject(t, s, "tampered/snapshots/"+snapT)
	}

	// Repositories as a newer Ferry might write them: a config of version
	// 2 with a new kind of erasure scheme, and a version 1 config with a
	// scheme out of this Ferry's range. Both sealed with the right key.
	newer := initRepo(t, c, "newer", password)
	rewriteConfigs(t, c, "newer", password, func(cfg map[string]any) {
		cfg["version"] = 2
		cfg["erasure"] = "lrc-6+2+2"
	})
	wide := initRepo(t, c, "wide", password)
	rewriteConfigs(t, c, "wide", password, func(cfg map[string]any) {
		cfg["erasure"] = map[string]int{"K": 300, "M": 0}
	})

	env := func(repo string, pw string) []string { return s3Env(c, repo, pw) }
	restore := func(ref string) []string {
		return []string{"restore", ref, "--target", filepath.Join(t.TempDir(), "out.img")}
	}
	mixed := func(urls ...string) string { return strings.Join(urls, ",") }
	cases := []struct {
		name string
		env  []string
		args []string
		code int
		want string
	}{
		{name: "wrong password", env: env(a.repo(), "wrong horse battery"), args: restore("latest"), code: 1,
			want: "ferry: wrong password: no key in the repository opens with it"},

		// A repository from another cluster: one target of it among ours,
		// or all of --repo.
		{name: "last target of another repository, same password", env: env(mixed(a.urls[0], a.urls[1], b.urls[2]), password), args: restore("latest"), code: 1,
			want: fmt.Sprintf("ferry: target 3 (%s) belongs to another repository than target 1 (%s): its config does not open with that target's key: target does not match the repository", b.urls[2], a.urls[0])},
		{name: "last target of another repository, other password", env: env(mixed(a.urls[0], a.urls[1], o.urls[2]), password), args: restore("latest"), code: 1,
			want: fmt.Sprintf("ferry: target 3 (%s) belongs to another repository than target 1 (%s): its config does not open with that target's key: target does not match the repository", o.urls[2], a.urls[0])},
		{name: "first target of another repository, same password", env: env(mixed(b.urls[0], a.urls[1], a.urls[2]), password), args: restore("latest"), code: 1,
			want: fmt.Sprintf("ferry: target 2 (%s) belongs to another repository than target 1 (%s): its config does not open with that target's key: target does not match the repository", a.urls[1], b.urls[0])},
		{name: "first target of another repository, other password", env: env(mixed(o.urls[0], a.urls[1], a.urls[2]), password), args: restore("latest"), code: 1,
			want: fmt.Sprintf("ferry: target 1 (%s) belongs to another repository than target 2 (%s): its config does not open with that target's key: target does not match the repository", o.urls[0], a.urls[1])},
		{name: "targets out of order", env: env(mixed(a.urls[1], a.urls[0], a.urls[2]), password), args: restore("latest"), code: 1,
			want: fmt.Sprintf("ferry: target 1 (%s) is target 2 of this repository; give the targets in their original order: target does not match the repository", a.urls[1])},
		{name: "a target missing", env: env(mixed(a.urls[0], a.urls[1]), password), args: restore("latest"), code: 1,
			want: "ferry: the repository has 3 targets, 2 given: target does not match the repository"},
		{name: "snapshot prefix of another repository", env: env(b.repo(), password), args: restore(snapA[:12]), code: 1,
			want: fmt.Sprintf("ferry: snapshot not found: %s in repository %s", snapA[:12], b.id)},
		{name: "snapshot ID of another repository", env: env(b.repo(), password), args: restore(snapA), code: 1,
			want: fmt.Sprintf("ferry: snapshot not found: %s in repository %s", snapA, b.id)},
		{name: "snapshot name of another repository", env: env(b.repo(), password), args: append(restore("latest"), "--name", "db"), code: 1,
			want: fmt.Sprintf("ferry: snapshot not found: no snapshot named \"db\" in repository %s", b.id)},

		{name: "tampered manifest, latest", env: env(tm.repo(), password), args: restore("latest"), code: 1,
			want: fmt.Sprintf("ferry: snapshot not found: latest; 1 manifest(s) skipped: read snapshots/%[1]s: no target has a valid copy (target 1: authentication failed; target 2: authentication failed; target 3: authentication failed) in repository %[2]s", forged, tm.id)},
		{name: "tampered manifest, by ID", env: env(tm.repo(), password), args: restore(forged), code: 1,
			want: fmt.Sprintf("ferry: snapshot %[1]s: read snapshots/%[1]s: no target has a valid copy (target 1: authentication failed; target 2: authentication failed; target 3: authentication failed)", forged)},
		{name: "tampered manifest, verify", env: env(tm.repo(), password), args: []string{"verify", "--sizes-only"}, code: 3,
			want: fmt.Sprintf("ferry: data lost: 1 snapshot(s) cannot be restored: %s: manifest unreadable on every target", forged[:12])},

		{name: "erasure scheme without parity count", env: env(mixed(c.Servers[0].URL("ferry", "new")), password), args: []string{"init", "--erasure", "4"}, code: 2,
			want: `ferry: --erasure: erasure scheme "4": want data+parity shards, for example 4+2`},
		{name: "erasure scheme of another tool", env: env(mixed(c.Servers[0].URL("ferry", "new")), password), args: []string{"init", "--erasure", "rs(4,2)"}, code: 2,
			want: `ferry: --erasure: erasure scheme "rs(4,2)": want data+parity shards, for example 4+2`},
		{name: "erasure scheme beyond Reed-Solomon over GF(2^8)", env: env(mixed(c.Servers[0].URL("ferry", "new")), password), args: []string{"init", "--erasure", "200+100"}, code: 2,
			want: `ferry: --erasure: erasure scheme "200+100": at most 256 shards in all, got 200+100 = 300`},
		{name: "erasure scheme without data shards", env: env(mixed(c.Servers[0].URL("ferry", "new")), password), args: []string{"init", "--erasure", "0+2"}, code: 2,
			want: `ferry: --erasure: erasure scheme "0+2": need at least 1 data shard, got 0`},
		{name: "repository with an erasure scheme out of range", env: env(wide.repo(), password), args: restore("latest"), code: 1,
			want: fmt.Sprintf("ferry: target 1 (%s): config: at most 255 data shards, got 300", wide.urls[0])},
		{name: "repository of a newer format", env: env(newer.repo(), password), args: restore("latest"), code: 1,
			want: fmt.Sprintf("ferry: target 1 (%s): config: unsupported repository version 2; this Ferry reads version 1", newer.urls[0])},

		{name: "credentials in a target URL", env: env(mixed(a.urls[0], "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI@127.0.0.1:9/ferry", a.urls[2]), password), args: restore("latest"), code: 2,
			want: "ferry: --repo: repository: target 2: target URL: credentials in the URL are not allowed; use ?profile=NAME or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"},
		{name: "unknown target scheme", env: env(mixed(a.urls[0], "https://127.0.0.1:9/ferry"), password), args: restore("latest"), code: 2,
			want: `ferry: --repo: repository: target 2: target URL: unknown scheme "https": want s3, s3+http or file`},
		{name: "empty target", env: env(a.urls[0]+",,"+a.urls[1], password), args: restore("latest"), code: 2,
			want: "ferry: --repo: repository: target 2 is empty"},
		{name: "target twice", env: env(mixed(a.urls[0], strings.Replace(a.urls[0], "s3+http", "s3", 1)), password), args: restore("latest"), code: 2,
			want: fmt.Sprintf("ferry: --repo: repository: target 2 (%s) repeats target 1", strings.Replace(a.urls[0], "s3+http", "s3", 1))},
		{name: "ca for plain http", env: env(a.urls[0]+"?ca=/etc/ssl/ca.pem", password), args: restore("latest"), code: 2,
			want: "ferry: --repo: repository: target 1: target URL: ca= needs TLS: use s3://, not s3+http://"},
		{name: "pack size out of range", env: env(mixed(c.Servers[0].URL("ferry", "new")), password), args: []string{"init", "--pack-size", "0"}, code: 2,
			want: "ferry: --pack-size 0: want 1 to 256 MiB"},
		{name: "read-data-percent out of range", env: env(a.repo(), password), args: []string{"verify", "--read-data-percent", "101"}, code: 2,
			want: "ferry: --read-data-percent 101: want 1..100"},
		{name: "finished jobs kept for seconds", env: env(a.repo(), password),
			args: []string{"agent", "--kube", "--namespace", "ferry-system", "--csi-driver", "unix:///run/csi/driver.sock", "--keep-finished-jobs", "10s"}, code: 2,
			want: "ferry: --keep-finished-jobs 10s: at least 1m, so that restore-to-cluster --wait can read a finished job's result (negative keeps them all)"},
		{name: "profiling without a metrics address", env: env(a.repo(), password),
			args: []string{"agent", "--profiling", "--metrics-listen=", "--csi-listen", "unix:///run/ferry/hook.sock", "--csi-driver", "unix:///run/csi/driver.sock",
				"--state-dir", filepath.Join(work, "state")}, code: 2,
			want: "ferry: --profiling needs --metrics-listen: the profiles are served on the metrics address"},
		{name: "profiling without a metrics address, hook", env: env(a.repo(), password),
			args: []string{"hook", "--kube", "--namespace", "ferry-system", "--profiling", "--metrics-listen=", "--csi-listen", "unix:///csi/csi.sock", "--csi-driver", "unix:///csi/driver.sock",
				"--state-dir", filepath.Join(work, "state")}, code: 2,
			want: "ferry: --profiling needs --metrics-listen: the profiles are served on the metrics address"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := ferry(t, tc.env, tc.args...)
			expectOneLine(t, r, tc.code, tc.want, password, otherPassword, secret, "wJalrXUtnFEMI")
		})
	}

	t.Run("snapshot bigger than the target device", func(t *testing.T) {
		small := filepath.Join(t.TempDir(), "small.img")
		garbage := bytes.Repeat([]byte{0xEE}, 4<<20)
		if err := os.WriteFile(small, garbage, 0o600); err != nil {
			t.Fatal(err)
		}
		dev := loop.Attach(t, small, false)
		r := ferry(t, env(a.repo(), password), "restore", snapA, "--target", dev)
		expectOneLine(t, r, 1, fmt.Sprintf("ferry: restore %s: target is smaller than the snapshot: %s has %d bytes, the snapshot %d", snapA[:12], dev, 4<<20, 8<<20), password)
		if got, _ := os.ReadFile(small); !bytes.Equal(got, garbage) {
			t.Fatal("the refused restore wrote to the device")
		}
	})
}

func getObject(t *testing.T, s *minio.Server, name string) []byte {
	t.Helper()
	o, err := s.Client(t).GetObject(t.Context(), "ferry", name, miniogo.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(o); err != nil {
		t.Fatalf("get %s from %s: %v", name, s.Endpoint, err)
	}
	return buf.Bytes()
}

func putObject(t *testing.T, s *minio.Server, name string, b []byte) {
	t.Helper()
	if _, err := s.Client(t).PutObject(t.Context(), "ferry", name, bytes.NewReader(b), int64(len(b)), miniogo.PutObjectOptions{}); err != nil {
		t.Fatalf("put %s on %s: %v", name, s.Endpoint, err)
	}
}

func removeObject(t *testing.T, s *minio.Server, name string) {
	t.Helper()
	if err := s.Client(t).RemoveObject(t.Context(), "ferry", name, miniogo.RemoveObjectOptions{}); err != nil {
		t.Fatalf("remove %s on %s: %v", name, s.Endpoint, err)
	}
}

// configAD is the associated data a config is sealed with (see
// docs/repository-format.md), for the tests that write configs as another
// Ferry would.
var configAD = []byte("ferry config v1")

// rewriteConfigs replaces the config on every target of the repository
// under prefix with one edited by edit and sealed with the repository's
// key, as a Ferry of another version would write it.
func rewriteConfigs(t *testing.T, c *minio.Cluster, prefix, password string, edit func(map[string]any)) {
	t.Helper()
	key := repoKey(t, c.Servers[0], prefix, password)
	for _, s := range c.Servers {
		plain, err := key.Open(nil, getObject(t, s, prefix+"/config"), configAD)
		if err != nil {
			t.Fatal(err)
		}
		var cfg map[string]any
		if err := json.Unmarshal(plain, &cfg); err != nil {
			t.Fatal(err)
		}
		edit(cfg)
		b, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		putObject(t, s, prefix+"/config", key.Seal(nil, b, configAD))
	}
}

// repoKey opens the master key of the repository under prefix on s.
func repoKey(t *testing.T, s *minio.Server, prefix, password string) *crypt.Key {
	t.Helper()
	for o := range s.Client(t).ListObjects(t.Context(), "ferry", miniogo.ListObjectsOptions{Prefix: prefix + "/keys/"}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		k, err := crypt.Unwrap(getObject(t, s, o.Key), []byte(password))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	t.Fatalf("no key object under %s/keys/ on %s", prefix, s.Endpoint)
	return nil
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestBadParameters runs `ferry hook` in front of the test CSI driver and
// sends it CreateSnapshot calls whose ferry.dev/ parameters (from a
// VolumeSnapshotClass) are malformed: each is refused with
// INVALID_ARGUMENT and one line naming the parameter, word for word, and
// none reaches the driver.
func TestBadParameters(t *testing.T) {
	drv := reflinkcsi.StartTest(t, reflinkcsi.Config{})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	ctrl, vol := startHook(t, ctx, drv, "--secrets-dir", filepath.Join(t.TempDir(), "secrets"))
	good := map[string]string{
		params.KeyRepository: "s3://s3.zone-a.example/ferry-dr,s3://s3.zone-b.example/ferry-dr,s3://s3.zone-c.example/ferry-dr", params.KeySecretName: "ferry-dr",
		params.KeySecretNamespace: "ferry-system", params.KeySnapshotName: "snap", params.KeySnapshotNamespace: "db", params.KeySnapshotContentName: "content-1",
	}
	const keys = "repository, secret-name, secret-namespace, name, replicate, keep-last, keep-hourly, keep-daily, keep-weekly, keep-monthly"
	for _, c := range []struct {
		name string
		set  map[string]string // "" deletes the key
		want string
	}{
		{"misspelt key", map[string]string{params.Prefix + "repositry": "file:///r"},
			"parameter ferry.dev/repositry: unknown Ferry parameter (known: " + keys + ")"},
		{"replicate not a boolean", map[string]string{params.KeyReplicate: "yes"},
			`parameter ferry.dev/replicate: "yes": want true or false`},
		{"credentials in the repository", map[string]string{params.KeyRepository: "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI@s3.example/ferry-dr"},
			"parameter ferry.dev/repository: repository: target 1: target URL: credentials in the URL are not allowed; use ?profile=NAME or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"},
		{"empty target in the repository", map[string]string{params.KeyRepository: "s3://s3.zone-a.example/ferry-dr,,s3://s3.zone-c.example/ferry-dr"},
			"parameter ferry.dev/repository: repository: target 2 is empty"},
		{"no repository", map[string]string{params.KeyRepository: ""},
			"parameter ferry.dev/repository: required"},
		{"secret name not a DNS name", map[string]string{params.KeySecretName: "Ferry_DR"},
			`parameter ferry.dev/secret-name: "Ferry_DR": want lower-case letters, digits, inner '-' and '.'`},
		{"no secret name", map[string]string{params.KeySecretName: ""},
			"parameter ferry.dev/secret-name: required"},
		{"series name with a newline", map[string]string{params.KeyName: "db\ndata"},
			"parameter ferry.dev/name: want 1 to 253 printable characters"},
		// Without --kube the hook has no agents' namespace to default
		// to, and the VolumeSnapshot's is never the default.
		{"no namespace for the secret", map[string]string{params.KeySecretNamespace: ""},
			"parameter ferry.dev/secret-namespace: required: a hook without --kube knows no agents' namespace to default to"},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := maps.Clone(good)
			for k, v := range c.set {
				if v == "" {
					delete(in, k)
				} else {
					in[k] = v
				}
			}
			_, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{SourceVolumeId: vol, Name: "bad", Parameters: in})
			if st := status.Convert(err); st.Code() != codes.InvalidArgument || st.Message() != c.want {
				t.Errorf("got %v\nwant InvalidArgument: %s", err, c.want)
			}
			if strings.Contains(fmt.Sprint(err), "wJalrXUtnFEMI") {
				t.Errorf("the secret is in the message: %v", err)
			}
		})
	}
	ls, err := csi.NewControllerClient(csitest.Dial(t, drv.Config().Endpoint)).ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	if err != nil || len(ls.GetEntries()) != 0 {
		t.Fatalf("refused snapshots reached the driver: %v, %v", ls.GetEntries(), err)
	}
}
