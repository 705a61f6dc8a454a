package repo_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydr/ferry/agent/backup"
	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/testenv/volume"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/transport/repo/retention"
	"github.com/ferrydr/ferry/verify"
)

var (
	prunePassword = []byte("prune test password")
	smallChunks   = chunk.Params{Pol: 0x3DA3358B4DC173, MinSize: 64 << 10, MaxSize: 512 << 10, AverageBits: 17}
)

// pruneRepo is a 2+1 repository over the three MinIO servers of a
// cluster, under its own prefix, and the images its snapshots came from.
type pruneRepo struct {
	c      *minio.Cluster
	prefix string
	dir    string
	images map[string]string // snapshot ID -> image
}

func newPruneRepo(t *testing.T, c *minio.Cluster, prefix string) *pruneRepo {
	t.Helper()
	p := &pruneRepo{c: c, prefix: prefix, dir: t.TempDir(), images: map[string]string{}}
	_, err := repo.Init(context.Background(), p.stores(t), prunePassword, repo.Options{
		Erasure: erasure.Scheme{K: 2, M: 1}, PackSize: 1 << 20, Chunking: &smallChunks,
		KDF: crypt.KDFParams{N: 1024, R: 8, P: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *pruneRepo) urls() string {
	var urls []string
	for _, s := range p.c.Servers {
		urls = append(urls, s.URL("ferry", p.prefix))
	}
	return strings.Join(urls, ",")
}

func (p *pruneRepo) stores(t testing.TB) []objstore.Store {
	locs, err := objstore.ParseRepo(p.urls())
	if err != nil {
		t.Fatal(err)
	}
	return objstore.OpenAll(context.Background(), locs, p.c.Env)
}

// open opens the repository afresh, as another process would.
func (p *pruneRepo) open(t testing.TB) *repo.Repo {
	t.Helper()
	r, err := repo.Open(context.Background(), p.stores(t), prunePassword)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// image writes a sample image: size bytes from seed, then each of
// patches (offset, length, seed) overwritten with other data.
func (p *pruneRepo) image(t *testing.T, name string, size int64, seed uint64, patches ...[3]int64) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := volume.Write(path, volume.Spec{Size: size, DataFrac: 0.7, Seed: seed}); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, pt := range patches {
		if _, err := f.WriteAt(volume.Data(rand.New(rand.NewPCG(uint64(pt[2]), 1)), int(pt[1])), pt[0]); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func (p *pruneRepo) backup(t *testing.T, r *repo.Repo, name, image string) string {
	t.Helper()
	sum, err := backup.File(context.Background(), r, image, backup.Options{Name: name})
	if err != nil {
		t.Fatalf("backup %s: %v", name, err)
	}
	p.images[sum.SnapshotID] = image
	return sum.SnapshotID
}

// check verifies the repository (nothing but notices allowed, or nothing
// at all with clean) and restores every snapshot, comparing it with the
// image it came from.
func (p *pruneRepo) check(t *testing.T, clean bool) {
	t.Helper()
	ctx := context.Background()
	r := p.open(t)
	rep, err := verify.Run(ctx, r, verify.Options{})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	for _, pr := range rep.Problems {
		if clean || pr.Severity > verify.Notice {
			t.Errorf("verify: %s", pr)
		}
	}
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range snaps {
		out := filepath.Join(t.TempDir(), "restored")
		if _, err := restore.Run(ctx, r, s, out, restore.Options{}); err != nil {
			t.Fatalf("restore %s (%s): %v", s.ID[:12], s.Name, err)
		}
		sameFile(t, out, p.images[s.ID])
	}
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		t.Fatalf("%s differs from %s", a, b)
	}
}

// packsOnTargets returns the packs that have at least one shard.
func (p *pruneRepo) packsOnTargets(t *testing.T) map[pack.ID]bool {
	t.Helper()
	out := map[pack.ID]bool{}
	for _, s := range p.stores(t) {
		err := s.List(context.Background(), "data/", func(i objstore.Info) error {
			if id, _, ok := repo.ParseShardName(i.Name); ok {
				out[id] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// packsOf returns the packs holding the chunks of the given snapshots.
func packsOf(t *testing.T, r *repo.Repo, ids ...string) map[pack.ID]bool {
	t.Helper()
	ctx := context.Background()
	idx, err := r.LoadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[pack.ID]bool{}
	for _, id := range ids {
		s, err := r.FindSnapshot(ctx, id, "")
		if err != nil {
			t.Fatal(err)
		}
		err = r.Extents(ctx, s, func(exts []repo.Extent) error {
			for _, e := range exts {
				if !e.Zero {
					p, _, ok := idx.Lookup(e.ID)
					if !ok {
						t.Fatalf("chunk %s of %s is not indexed", e.ID.Short(), id[:12])
					}
					out[p.ID] = true
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func prune(t *testing.T, r *repo.Repo, grace time.Duration) *repo.PruneReport {
	t.Helper()
	rep, err := r.Prune(context.Background(), repo.PruneOptions{Grace: grace})
	if err != nil {
		t.Fatalf("prune: %v", err)
	}
	return rep
}

// TestForgetAndPrune: keep rules forget the older snapshots of two
// series; two prune runs (the second listing by directory) free exactly
// the packs no remaining snapshot refers to; every remaining snapshot restores bit for bit and the
// repository verifies without a single notice.
func TestForgetAndPrune(t *testing.T) {
	ctx := context.Background()
	p := newPruneRepo(t, minio.StartCluster(t, 3, "ferry", ""), "repo")
	r := p.open(t)
	a1 := p.image(t, "a1", 16<<20, 1)
	a2 := p.image(t, "a2", 16<<20, 1, [3]int64{4 << 20, 3 << 20, 11})
	a3 := p.image(t, "a3", 16<<20, 1, [3]int64{4 << 20, 3 << 20, 11}, [3]int64{10 << 20, 3 << 20, 12})
	b1 := p.image(t, "b1", 8<<20, 2)
	b2 := p.image(t, "b2", 8<<20, 2, [3]int64{1 << 20, 2 << 20, 21})
	var ids []string
	for _, s := range []struct{ name, image string }{{"a", a1}, {"b", b1}, {"a", a2}, {"b", b2}, {"a", a3}} {
		ids = append(ids, p.backup(t, r, s.name, s.image))
	}
	snaps, err := r.Snapshots(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := retention.Forget(ctx, r, snaps, retention.Policy{Last: 1}, false)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, d := range ds {
		if d.Keep {
			kept = append(kept, d.ID)
		}
	}
	if want := []string{ids[4], ids[3]}; !slices.Equal(kept, want) {
		t.Fatalf("kept %v, want a3 and b2 %v", kept, want)
	}
	if snaps, _ := r.Snapshots(ctx); len(snaps) != 2 {
		t.Fatalf("%d snapshots after forget", len(snaps))
	}

	live := packsOf(t, r, kept...)
	before := p.packsOnTargets(t)
	if len(before) <= len(live) {
		t.Fatalf("nothing to prune: %d packs, %d live", len(before), len(live))
	}
	first := prune(t, p.open(t), 0)
	if len(first.Deleted) != 0 || first.Marked != len(before)-len(live) || first.Referenced != len(live) {
		t.Fatalf("first run: %+v (want %d marked)", first, len(before)-len(live))
	}
	// The second run lists the shards directory by directory, as in a
	// large repository (a listing request taken to return one name).
	byDir := p.open(t)
	byDir.ListPage = 1
	second := prune(t, byDir, 0)
	if len(second.Deleted) != len(before)-len(live) {
		t.Fatalf("second run deleted %d packs, want %d", len(second.Deleted), len(before)-len(live))
	}
	var bytes int64
	for _, b := range second.BytesDeleted {
		bytes += b
	}
	if bytes <= 0 {
		t.Fatalf("bytes deleted per target: %v", second.BytesDeleted)
	}
	after := p.packsOnTargets(t)
	for id := range before {
		if after[id] != live[id] {
			t.Errorf("pack %s: on the targets %v, referenced %v", id.Short(), after[id], live[id])
		}
	}
	p.check(t, true)
	if third := prune(t, p.open(t), 0); third.Unreferenced != 0 || len(third.Deleted) != 0 || third.Marked != 0 {
		t.Fatalf("third run: %+v", third)
	}
}

// gatedStore blocks the first Create of an object under prefix until open
// is closed: with "index/", a backup stopped between its shards and its
// index; with "snapshots/", after its commit check, before its manifest.
type gatedStore struct {
	objstore.Store
	prefix  string
	reached chan struct{}
	open    chan struct{}
	once    *sync.Once
}

// openGated opens p's repository through a gatedStore over each target,
// all sharing one gate on prefix.
func (p *pruneRepo) openGated(t *testing.T, prefix string) (*repo.Repo, gatedStore) {
	t.Helper()
	gate := gatedStore{prefix: prefix, reached: make(chan struct{}), open: make(chan struct{}), once: &sync.Once{}}
	var gated []objstore.Store
	for _, s := range p.stores(t) {
		g := gate
		g.Store = s
		gated = append(gated, g)
	}
	r, err := repo.Open(context.Background(), gated, prunePassword)
	if err != nil {
		t.Fatal(err)
	}
	return r, gate
}

func (s gatedStore) Create(ctx context.Context, name string, data []byte) error {
	if strings.HasPrefix(name, s.prefix) {
		s.once.Do(func() { close(s.reached) })
		select {
		case <-s.open:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return s.Store.Create(ctx, name, data)
}

// TestPruneDuringBackup runs prune rounds with no grace while a backup has
// written its packs and not yet its index. The backup (holding a lock)
// stores again the data of a pack marked long ago (which prune deletes
// meanwhile), refers to a pack that becomes garbage and is marked only
// after it started (which prune holds back), and its own packs are marked
// and held back too. It commits a manifest whose data is all there.
// (backup.Run takes the lock itself, so a lockless backup, whose commit is
// refused, is left to the in-memory commit tests.)
func TestPruneDuringBackup(t *testing.T) {
	c := minio.StartCluster(t, 3, "ferry", "")
	for _, locked := range []bool{true} {
		t.Run(fmt.Sprintf("locked=%v", locked), func(t *testing.T) {
			ctx := context.Background()
			p := newPruneRepo(t, c, fmt.Sprintf("locked-%v", locked))
			r := p.open(t)
			oldImg := p.image(t, "old", 8<<20, 31)
			newImg := p.image(t, "new", 8<<20, 32)
			keepImg := p.image(t, "keep", 4<<20, 33)
			old := p.backup(t, r, "old", oldImg)
			oldPacks := packsOf(t, r, old)
			p.backup(t, r, "keep", keepImg)
			newer := p.backup(t, r, "new", newImg)
			newPacks := packsOf(t, r, newer)
			// "old" was forgotten and marked long ago; "new" is forgotten
			// now, and marked only once the backup below has started.
			if err := r.Forget(ctx, []string{old, newer}); err != nil {
				t.Fatal(err)
			}
			if err := r.MarkForTest(ctx, time.Now().Add(-time.Hour), slices.Collect(maps.Keys(oldPacks))...); err != nil {
				t.Fatal(err)
			}

			// The backup's volume holds both old and new data, and more.
			bigImg := filepath.Join(p.dir, "big")
			var big []byte
			for _, f := range []string{oldImg, newImg} {
				b, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				big = append(big, b...)
			}
			big = append(big, volume.Data(rand.New(rand.NewPCG(34, 1)), 6<<20)...)
			if err := os.WriteFile(bigImg, big, 0o600); err != nil {
				t.Fatal(err)
			}
			w, gate := p.openGated(t, "index/")
			done := make(chan error, 1)
			var sum *backup.Summary
			go func() {
				if locked {
					release, err := w.Lock(ctx)
					if err != nil {
						done <- err
						return
					}
					defer release()
				}
				var err error
				sum, err = backup.File(ctx, w, bigImg, backup.Options{Name: "big"})
				done <- err
			}()
			select {
			case <-gate.reached:
			case err := <-done:
				t.Fatalf("backup ended before its index: %v", err)
			}

			rounds := []*repo.PruneReport{prune(t, p.open(t), time.Millisecond)}
			time.Sleep(10 * time.Millisecond)
			rounds = append(rounds, prune(t, p.open(t), time.Millisecond))
			deleted := map[string]bool{}
			for _, rep := range rounds {
				for _, d := range rep.Deleted {
					deleted[d.ID] = true
				}
			}
			for id := range oldPacks {
				if !deleted[id.String()] {
					t.Errorf("pack %s, marked long ago, not deleted", id.Short())
				}
			}
			if locked {
				if len(deleted) != len(oldPacks) {
					t.Errorf("deleted %d packs, want only the %d marked long ago", len(deleted), len(oldPacks))
				}
				if rounds[1].HeldBack == 0 || len(rounds[1].Writers) != 1 {
					t.Errorf("second round held nothing back: %+v", rounds[1])
				}
			} else {
				for id := range newPacks {
					if !deleted[id.String()] {
						t.Errorf("pack %s not deleted: no lock holds it back", id.Short())
					}
				}
			}

			close(gate.open)
			err := <-done
			if !locked {
				if !errors.Is(err, repo.ErrConflict) {
					t.Fatalf("a lockless backup whose data was pruned: %v", err)
				}
				if snaps, _ := p.open(t).Snapshots(ctx); len(snaps) != 1 {
					t.Fatalf("%d snapshots: the refused backup committed", len(snaps))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			p.images[sum.SnapshotID] = bigImg
			after := prune(t, p.open(t), time.Millisecond)
			if len(after.Deleted) != 0 || after.Unreferenced != 0 {
				t.Fatalf("after the backup: %+v", after)
			}
			for id := range newPacks {
				if !p.packsOnTargets(t)[id] {
					t.Errorf("pack %s, which the backup refers to, is gone", id.Short())
				}
			}
			p.check(t, true)
		})
	}
}

// TestConcurrentBackups: two processes back up volumes that share most of
// their data into one repository at once; both restore, the repository
// verifies, and prune finds nothing to delete but the duplicate packs one
// of them wrote and no snapshot refers to.
func TestConcurrentBackups(t *testing.T) {
	p := newPruneRepo(t, minio.StartCluster(t, 3, "ferry", ""), "repo")
	x := p.image(t, "x", 24<<20, 41)
	y := p.image(t, "y", 24<<20, 41, [3]int64{2 << 20, 2 << 20, 42})
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, img := range []string{x, y} {
		r := p.open(t)
		wg.Go(func() {
			release, err := r.Lock(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			defer release()
			sum, err := backup.File(context.Background(), r, img, backup.Options{Name: filepath.Base(img)})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			p.images[sum.SnapshotID] = img
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	p.check(t, false)
	prune(t, p.open(t), 0)
	prune(t, p.open(t), 0)
	p.check(t, true)
}
