package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	miniogo "github.com/minio/minio-go/v7"

	"github.com/ferrydr/ferry/testenv/minio"
)

const (
	// password opens both tools' throwaway repositories.
	password     = "ferry-compare-only"
	ferryBucket  = "ferry"
	resticBucket = "restic"
	// resticServer holds restic's repository; downServer is stopped for
	// the degraded restore. Target 1 receives data shard 0 of every pack,
	// so with it gone every pack is rebuilt from parity.
	resticServer = 2
	downServer   = 0
	erasure      = "2+1"
)

// tools runs the two programs against the three servers.
type tools struct {
	ferry, restic string
	resticSparse  bool // restic restore has --sparse
	servers       []*minio.Server
	work          string
	chunkSize     string   // ferry init --chunk-size, when set
	commands      []string // the commands of the first round, as printed
	// last is the repository of the last round, and its second snapshot.
	last struct{ prefix, snap string }
}

func (t *tools) makeBuckets(ctx context.Context) error {
	for i, s := range t.servers {
		c, err := client(s)
		if err != nil {
			return err
		}
		buckets := []string{ferryBucket}
		if i == resticServer {
			buckets = append(buckets, resticBucket)
		}
		for _, b := range buckets {
			if err := c.MakeBucket(ctx, b, miniogo.MakeBucketOptions{}); err != nil {
				return fmt.Errorf("create bucket %s on %s: %w", b, s.Endpoint, err)
			}
		}
	}
	out, _ := exec.Command(t.restic, "restore", "--help").Output()
	t.resticSparse = bytes.Contains(out, []byte("--sparse"))
	return nil
}

func (t *tools) ferryRepo(prefix string) string {
	var urls []string
	for _, s := range t.servers {
		urls = append(urls, s.URL(ferryBucket, prefix))
	}
	return strings.Join(urls, ",")
}

func (t *tools) resticRepo(prefix string) string {
	return "s3:http://" + t.servers[resticServer].Endpoint + "/" + resticBucket + "/" + prefix
}

func credentialsEnv() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + minio.RootUser, "AWS_SECRET_ACCESS_KEY=" + minio.RootPassword}
}

// ferryJob runs bin/ferry on the repository under prefix; it is shown
// with $FERRY_REPO, which each round prints.
func (t *tools) ferryJob(prefix string, args ...string) job {
	return job{
		name: t.ferry, args: args,
		env:  append(credentialsEnv(), "FERRY_REPO="+t.ferryRepo(prefix), "FERRY_PASSWORD="+password),
		show: "bin/ferry " + strings.Join(args, " "),
	}
}

// ferryInit is the job that creates Ferry's repository under prefix.
func (t *tools) ferryInit(prefix string) job {
	args := []string{"init", "--erasure", erasure}
	if t.chunkSize != "" {
		args = append(args, "--chunk-size", t.chunkSize)
	}
	return t.ferryJob(prefix, args...)
}

func (t *tools) resticJob(prefix, stdin string, args ...string) job {
	args = append([]string{"-r", t.resticRepo(prefix), "--cache-dir", filepath.Join(t.work, "restic-cache"), "--compression", "auto"}, args...)
	show := "restic " + strings.Join(args, " ")
	if stdin != "" {
		show += " < " + stdin
	}
	return job{name: t.restic, args: args, env: append(credentialsEnv(), "RESTIC_PASSWORD="+password), stdin: stdin, show: show}
}

// plain runs a job that is not measured (repository creation).
func (t *tools) plain(ctx context.Context, j job) ([]byte, error) {
	fmt.Printf("  $ %s\n", j.show)
	cmd := exec.CommandContext(ctx, j.name, j.args...)
	cmd.Env = append(os.Environ(), j.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s: %w\n%s", j.show, err, tail(out))
	}
	return out, nil
}

// round is one measurement of each kind, Ferry then restic, into fresh
// repositories.
func (t *tools) round(ctx context.Context, res *results, im *images, i int) error {
	prefix := fmt.Sprintf("run%d", i)
	logf("round %d of %d", i, res.Runs)
	show := func(s string) {
		fmt.Printf("  $ %s\n", s)
		if i == 1 {
			t.commands = append(t.commands, s)
		}
	}
	timedJob := func(key string, j job) ([]byte, error) {
		if i == 1 {
			t.commands = append(t.commands, j.show)
		}
		s, out, err := timed(ctx, t.servers, j)
		if err != nil {
			return nil, err
		}
		res.Samples[key] = append(res.Samples[key], s)
		return out, nil
	}
	plainJob := func(j job) ([]byte, error) {
		if i == 1 {
			t.commands = append(t.commands, j.show)
		}
		return t.plain(ctx, j)
	}
	show(fmt.Sprintf("export AWS_ACCESS_KEY_ID=%s AWS_SECRET_ACCESS_KEY=... FERRY_PASSWORD=... RESTIC_PASSWORD=...", minio.RootUser))
	show("export FERRY_REPO=" + t.ferryRepo(prefix))
	if _, err := plainJob(t.ferryInit(prefix)); err != nil {
		return err
	}
	if _, err := plainJob(t.resticJob(prefix, "", "init", "--repository-version", "2")); err != nil {
		return err
	}

	var ferrySnap, resticSnap string
	for _, step := range []struct{ key, image string }{{"full", im.Base}, {"second", im.Changed}} {
		logf("round %d: %s backup", i, step.key)
		// Both tools read the image from the page cache: the first reader
		// would otherwise pay for the disk.
		if err := warm(step.image); err != nil {
			return err
		}
		out, err := timedJob("ferry "+step.key, t.ferryJob(prefix, "backup", "--json", "--name", "vol", step.image))
		if err != nil {
			return err
		}
		var sum struct {
			ID string `json:"snapshot_id"`
		}
		if err := json.Unmarshal(out, &sum); err != nil || sum.ID == "" {
			return fmt.Errorf("ferry backup --json printed %q: %v", out, err)
		}
		ferrySnap = sum.ID
		if i == 1 {
			res.Summaries["ferry "+step.key] = json.RawMessage(out)
		}
		if err := warm(step.image); err != nil {
			return err
		}
		out, err = timedJob("restic "+step.key, t.resticJob(prefix, step.image, "backup", "--stdin", "--stdin-filename", "vol.img", "--json", "--quiet"))
		if err != nil {
			return err
		}
		if resticSnap, err = resticSnapshot(out); err != nil {
			return err
		}
		if i == 1 {
			res.Summaries["restic "+step.key] = json.RawMessage(lastLine(out))
		}
	}

	var fs int64
	for _, s := range t.servers {
		n, err := bucketBytes(ctx, s, ferryBucket, prefix)
		if err != nil {
			return err
		}
		fs += n
	}
	rs, err := bucketBytes(ctx, t.servers[resticServer], resticBucket, prefix)
	if err != nil {
		return err
	}
	res.FerryStored = append(res.FerryStored, fs)
	res.ResticStored = append(res.ResticStored, rs)
	logf("round %d: stored after both backups: Ferry %s on three servers, restic %s", i, mib(fs), mib(rs))
	if i == 1 {
		out, err := plainJob(t.resticJob(prefix, "", "stats", "--mode", "raw-data", "--json"))
		if err != nil {
			return err
		}
		res.ResticRawData = json.RawMessage(bytes.TrimSpace(lastLine(out)))
	}

	logf("round %d: restore of the second snapshot", i)
	ferryOut := filepath.Join(t.work, "ferry-restored.img")
	resticOut := filepath.Join(t.work, "restic-restored")
	if _, err := timedJob("ferry restore", t.ferryJob(prefix, "restore", ferrySnap, "--target", ferryOut)); err != nil {
		return err
	}
	rargs := []string{"restore", resticSnap, "--target", resticOut}
	if t.resticSparse {
		rargs = append(rargs, "--sparse")
	}
	if _, err := timedJob("restic restore", t.resticJob(prefix, "", rargs...)); err != nil {
		return err
	}
	// Ferry's restore ends once the image is on disk (fsync); restic's
	// ends with it in the page cache. Time what finishing that takes,
	// right after.
	synced := filepath.Join(resticOut, "vol.img")
	show("sync " + synced)
	start := time.Now()
	if err := run("sync", synced); err != nil {
		return err
	}
	res.Samples["restic restore sync"] = append(res.Samples["restic restore sync"], sample{Wall: time.Since(start).Seconds()})
	if i == 1 {
		for _, p := range []string{ferryOut, filepath.Join(resticOut, "vol.img")} {
			if err := sameContent(im.Changed, p); err != nil {
				return fmt.Errorf("restored image: %w", err)
			}
		}
		logf("round 1: both restored images are identical to the changed volume")
	}
	if err := removeAll(ferryOut, resticOut); err != nil {
		return err
	}

	logf("round %d: restore with MinIO server %d (target %d) stopped", i, downServer+1, downServer+1)
	t.servers[downServer].Stop()
	_, err = timedJob("ferry degraded", t.ferryJob(prefix, "restore", ferrySnap, "--target", ferryOut))
	if rerr := t.servers[downServer].Relaunch(); err == nil {
		err = rerr
	}
	if err != nil {
		return err
	}
	if err := removeAll(ferryOut); err != nil {
		return err
	}

	logf("round %d: small volume (memory)", i)
	small := prefix + "-small"
	if _, err := plainJob(t.ferryInit(small)); err != nil {
		return err
	}
	if _, err := timedJob("ferry small backup", t.ferryJob(small, "backup", "--name", "small", im.Small)); err != nil {
		return err
	}
	if _, err := timedJob("ferry small restore", t.ferryJob(small, "restore", "latest", "--target", ferryOut)); err != nil {
		return err
	}
	t.last.prefix, t.last.snap = prefix, ferrySnap
	return removeAll(ferryOut)
}

// resticSnapshot finds the snapshot ID in the summary `restic backup
// --json` prints last.
func resticSnapshot(out []byte) (string, error) {
	var sum struct {
		Type string `json:"message_type"`
		ID   string `json:"snapshot_id"`
	}
	if err := json.Unmarshal(lastLine(out), &sum); err != nil || sum.Type != "summary" || sum.ID == "" {
		return "", fmt.Errorf("restic backup --json printed no summary: %q", tail(out))
	}
	return sum.ID, nil
}

func lastLine(b []byte) []byte {
	b = bytes.TrimSpace(b)
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		return b[i+1:]
	}
	return b
}

func removeAll(paths ...string) error {
	for _, p := range paths {
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	return nil
}

// warm reads the file at path, so that it is in the page cache.
func warm(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(io.Discard, f)
	return err
}
