package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/transport/repo"
)

// rotation is the state file's content: where the read-data level goes on.
type rotation struct {
	RepoID  string    `json:"repo_id"`
	Cursor  string    `json:"cursor"` // last pack ID checked, hex; "" before the first run
	Updated time.Time `json:"updated"`
}

// DefaultStateFile is $XDG_STATE_HOME/ferry/verify-<repoID>.json, or
// ~/.local/state/ferry/verify-<repoID>.json without XDG_STATE_HOME.
func DefaultStateFile(repoID string) (string, error) {
	dir := os.Getenv("XDG_STATE_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("state file: %w", err)
		}
		dir = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(dir, "ferry", "verify-"+repoID+".json"), nil
}

// loadRotation reads the cursor. A missing file starts at the beginning; so
// does an unreadable one or one of another repository (with a warning), so
// that a damaged state file costs one repeated pass, not verification.
func loadRotation(path, repoID string) (rotation, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return rotation{RepoID: repoID}, nil
	}
	if err != nil {
		return rotation{}, fmt.Errorf("read state file: %w", err)
	}
	var st rotation
	if err := json.Unmarshal(b, &st); err != nil {
		slog.Warn("verify state file unreadable, starting the rotation over", "path", path, "error", err)
		return rotation{RepoID: repoID}, nil
	}
	if st.RepoID != repoID {
		slog.Warn("verify state file belongs to another repository, starting the rotation over", "path", path, "repo", st.RepoID)
		return rotation{RepoID: repoID}, nil
	}
	return st, nil
}

// save writes the state durably: temporary file, fsync, rename, fsync of
// the directory, so a crash leaves the old or the new cursor, never a torn one.
func (st rotation) save(path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state file directory: %w", err)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write state file %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return fmt.Errorf("sync state directory %s: %w", dir, err)
		}
	}
	return nil
}

// selectPacks returns ceil(len(all)*percent/100) packs of all (sorted by ID)
// that follow cursor, wrapping around at the end, and whether it wrapped.
func selectPacks(all []pack.ID, cursor string, percent int) ([]pack.ID, bool) {
	if len(all) == 0 {
		return nil, false
	}
	n := (len(all)*percent + 99) / 100
	start := sort.Search(len(all), func(i int) bool { return all[i].String() > cursor })
	out := make([]pack.ID, 0, n)
	for i := range n {
		out = append(out, all[(start+i)%len(all)])
	}
	return out, start+n >= len(all)
}

func (c *checker) readData(ctx context.Context, opts Options) error {
	st, err := loadRotation(opts.StateFile, c.r.Config.ID)
	if err != nil {
		return err
	}
	all := make([]pack.ID, 0, len(c.packLen))
	for _, p := range c.idx.Packs() {
		all = append(all, p.ID)
	}
	slices.SortFunc(all, comparePacks)
	sel, wrapped := selectPacks(all, st.Cursor, opts.ReadDataPercent)
	if err := c.readPacks(ctx, opts, sel); err != nil {
		return err
	}
	rs := c.rep.Read
	rs.Percent, rs.TotalPacks, rs.Wrapped, rs.Cursor = opts.ReadDataPercent, len(all), wrapped, st.Cursor
	if len(sel) > 0 {
		st.Cursor = sel[len(sel)-1].String()
		rs.Cursor = st.Cursor
	}
	st.Updated = time.Now().UTC()
	return st.save(opts.StateFile)
}

// readPacks fully checks the packs sel (deepCheck), Workers at a time, and
// records them in the report's read-data section.
func (c *checker) readPacks(ctx context.Context, opts Options, sel []pack.ID) error {
	rs := &ReadStats{Packs: len(sel), TotalPacks: c.idx.PackCount()}
	c.rep.Read = rs
	if opts.Progress != nil {
		var total int64
		for _, id := range sel {
			total += int64(c.n) * (int64(erasure.HeaderSize) + (c.packLen[id]+int64(c.k)-1)/int64(c.k))
		}
		opts.Progress.Total.Store(total)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Workers)
	var mu sync.Mutex
	for _, id := range sel {
		g.Go(func() error {
			n, err := c.deepCheck(gctx, id)
			mu.Lock()
			rs.Bytes += n
			mu.Unlock()
			if opts.Progress != nil {
				opts.Progress.Done.Add(n)
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, id := range sel {
		rs.Checked = append(rs.Checked, id.String())
	}
	return nil
}

// deepCheck downloads every shard of a pack and checks everything down to
// the chunk hashes. It returns the bytes downloaded; problems go into the
// report, and only a cancelled context is an error.
func (c *checker) deepCheck(ctx context.Context, id pack.ID) (int64, error) {
	objs := make([][]byte, c.n)
	var read int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range c.n {
		t := erasure.TargetFor(i, c.T)
		if !c.reachable[t] {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			obj, err := c.r.Targets[t].Store.Get(ctx, repo.ShardName(id, i))
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, objstore.ErrNotFound) {
					c.reportShard(id, i, t, KindShardCorrupt, "read: "+err.Error())
				} else if ctx.Err() == nil {
					c.reportShard(id, i, t, KindShardMissing, "missing")
				}
				return
			}
			mu.Lock()
			read += int64(len(obj))
			mu.Unlock()
			if err := erasure.Check(id, i, c.r.Config.Erasure, obj); err != nil {
				c.reportShard(id, i, t, KindShardCorrupt, err.Error())
				return
			}
			// A shard can pass its own checks and still not be the one
			// written (its header's CRCs made to match other data): the
			// index's record tells, and decoding must not use it.
			if crcs := c.crcs[id]; crcs != nil {
				if got := repo.ShardCRC(obj); got != crcs[i] {
					c.reportShard(id, i, t, KindShardCorrupt, fmt.Sprintf("downloaded shard has CRC32C %08x, the index recorded %08x", got, crcs[i]))
					return
				}
			}
			objs[i] = obj
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return read, err
	}
	// The shards left pass their checksums, which a forger can make them
	// do: the pack must match its ID, and each shard its re-encoding.
	p, bad, err := c.r.DecodeAuthentic(id, objs)
	switch {
	case errors.Is(err, erasure.ErrTooFewShards):
		intact := 0
		for _, o := range objs {
			if o != nil {
				intact++
			}
		}
		c.markLost(id, KindPackLost, fmt.Sprintf("%d of %d shards pass their checks, %d needed", intact, c.n, c.k))
		return read, nil
	case err != nil:
		c.markLost(id, KindPackCorrupt, "no set of the shards decodes to the pack its ID names: "+err.Error())
		return read, nil
	}
	for i, why := range bad {
		if why != "" {
			c.reportShard(id, i, erasure.TargetFor(i, c.T), KindShardCorrupt, why)
		}
	}
	entries, err := c.r.Codec.ParseHeader(p)
	if err != nil {
		c.markLost(id, KindPackCorrupt, "pack header: "+err.Error())
		return read, nil
	}
	c.compareIndex(id, entries)
	var buf []byte
	for _, e := range entries {
		buf, err = c.r.Codec.OpenBlob(buf[:0], p, e)
		why := ""
		switch {
		case err != nil:
			why = err.Error()
		case c.r.IDKey.Sum(buf) != e.ID:
			why = "plaintext does not hash to the chunk ID"
		}
		if why != "" {
			c.mu.Lock()
			c.badChunks[e.ID] = why
			c.rep.add(Problem{Severity: DataLost, Kind: KindBlobCorrupt, Pack: id.String(),
				Detail: fmt.Sprintf("chunk %s at pack offset %d: %s", e.ID.Short(), e.Offset, why)})
			c.mu.Unlock()
		}
	}
	return read, nil
}

// compareIndex reports index entries the pack header does not back.
func (c *checker) compareIndex(id pack.ID, header []pack.Entry) {
	have := make(map[pack.Entry]bool, len(header))
	for _, e := range header {
		have[e] = true
	}
	bad := 0
	for _, e := range c.entries[id] {
		if !have[e] {
			bad++
		}
	}
	if bad > 0 {
		c.add(Problem{Severity: Degraded, Kind: KindIndexMismatch, Pack: id.String(),
			Detail: fmt.Sprintf("%d index entr(ies) differ from the pack header (index objects are authenticated: a writer's bug, not damage in storage); "+
				"restores of the chunks they name may fail, and repair does not rewrite index entries", bad)})
	}
}
