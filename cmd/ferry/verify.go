package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/verify"
)

func verifyCmd(g *globals) *cobra.Command {
	var (
		opts        verify.Options
		drill       string
		drillTarget string
		asJSON      bool
	)
	cmd := &cobra.Command{
		Use:   "verify --repo REPO [--sizes-only] [--read-data-percent N] [--drill SNAPSHOT|latest]",
		Short: "Check that every snapshot can be restored",
		Long: `Check the repository. Always, without downloading shard data: every
snapshot's chunks are in the index, the index and manifests are on every
target, and every pack has all its shards on their targets, each with the
right size and with the CRC32C checksum the index recorded when it was
written, compared with the one the target keeps (one HEAD request per shard
on S3; a file:// target keeps it in an extended attribute). A shard replaced
by other bytes of the same size is found this way. Shards without a recorded
or stored checksum are checked by size only, and the report counts them.
--sizes-only skips the HEAD requests and compares listed sizes only: the
cheapest check (one LIST request per 1000 objects), which misses a shard
replaced by bytes of the same size.
--read-data-percent N also downloads N% of the packs and checks them down to
every chunk's hash; successive runs continue where the last one stopped
(the cursor is kept in --state-file), so ceil(100/N) runs read everything.
--drill restores a snapshot into nothing (or --drill-target, a scratch file
that is removed afterwards, or a block device) and reports how long it took.

Exit status: 0 all good, 4 degraded but repairable (run repair), 3 data lost
(the snapshots that cannot be restored are named), 1 the check itself failed.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.ReadDataPercent < 0 || opts.ReadDataPercent > 100 {
				return usageError{fmt.Errorf("--read-data-percent %d: want 1..100", opts.ReadDataPercent)}
			}
			if opts.StatWorkers < 1 {
				return usageError{fmt.Errorf("--stat-workers %d: want at least 1", opts.StatWorkers)}
			}
			if drillTarget != "" && drill == "" {
				return usageError{errors.New("--drill-target needs --drill")}
			}
			ctx := cmd.Context()
			r, err := g.open(ctx)
			if err != nil {
				return err
			}
			if opts.ReadDataPercent > 0 && opts.StateFile == "" {
				if opts.StateFile, err = verify.DefaultStateFile(r.Config.ID); err != nil {
					return err
				}
			}
			// Key objects must open with it (see verify.Options.Password);
			// it opened the repository, so it can be read again.
			if opts.Password, err = g.password(); err != nil {
				return err
			}
			prog := &verify.Progress{}
			opts.Progress = prog
			stop := showProgress(prog.Total.Load, prog.Done.Load, "verify: read", asJSON)
			rep, err := verify.Run(ctx, r, opts)
			stop()
			if err != nil {
				return fmt.Errorf("verify: %w", err)
			}
			if drill != "" {
				if err := runDrill(cmd, g, rep, drill, drillTarget, asJSON); err != nil {
					return err
				}
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				rep.WriteText(cmd.OutOrStdout())
			}
			return rep.Err()
		},
	}
	f := cmd.Flags()
	f.IntVar(&opts.ReadDataPercent, "read-data-percent", 0, "download and fully check this share of the packs (1-100), continuing from the last run")
	f.StringVar(&opts.StateFile, "state-file", "", "where the read-data rotation is kept (default $XDG_STATE_HOME/ferry/verify-<repo>.json)")
	f.BoolVar(&opts.SizesOnly, "sizes-only", false, "check shards by listed size only, without a HEAD request per shard for its checksum (cheapest; misses a shard replaced by bytes of the same size)")
	f.IntVar(&opts.StatWorkers, "stat-workers", 16, "HEAD requests in flight per target for the shard checksums")
	f.IntVar(&opts.Workers, "workers", 4, "packs read at once")
	f.StringVar(&drill, "drill", "", "restore this snapshot (ID, prefix or latest) into nothing, check it and time it")
	f.StringVar(&drillTarget, "drill-target", "", "with --drill: write into this new scratch file (removed afterwards) or block device")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

// runDrill restores ref into the scratch destination and records the outcome.
func runDrill(cmd *cobra.Command, g *globals, rep *verify.Report, ref, target string, quiet bool) error {
	ctx := cmd.Context()
	r := g.opened
	snap, err := findSnapshot(ctx, r, ref, "")
	if err != nil {
		return fmt.Errorf("drill: %w", err)
	}
	w, done, err := openDrillTarget(target, snap.Size)
	if err != nil {
		return err
	}
	prog := &restore.Progress{}
	stop := showProgress(prog.Total.Load, prog.Written.Load, "drill", quiet)
	res, err := verify.Drill(ctx, r, snap, w, verify.DrillOptions{Progress: prog})
	stop()
	if derr := done(); err == nil && derr != nil {
		return fmt.Errorf("drill: %w", derr)
	}
	if res != nil {
		res.Destination = "discard"
		if target != "" {
			res.Destination = target
		}
	}
	return rep.AddDrill(snap, res, err)
}

// openDrillTarget returns the drill's destination and a func that syncs it
// and, for a scratch file it created, removes it. It never overwrites an
// existing regular file; a block device must be at least size bytes, and
// the drill zeroes what the snapshot reads as zeros on it, so that it
// ends holding the snapshot.
func openDrillTarget(path string, size int64) (io.WriterAt, func() error, error) {
	if path == "" {
		return verify.Discard, func() error { return nil }, nil
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("drill target: %w", err)
		}
		if err := f.Truncate(size); err != nil {
			f.Close()
			os.Remove(path)
			return nil, nil, fmt.Errorf("drill target: %w", err)
		}
		return f, func() error {
			err := f.Sync()
			f.Close()
			if rerr := os.Remove(path); err == nil {
				err = rerr
			}
			return err
		}, nil
	case err != nil:
		return nil, nil, fmt.Errorf("drill target: %w", err)
	case fi.Mode()&os.ModeDevice == 0:
		return nil, nil, usageError{fmt.Errorf("drill target %s exists and is not a block device; give a new file name", path)}
	}
	dev, err := restore.OpenDevice(path, size)
	if err != nil {
		return nil, nil, fmt.Errorf("drill target: %w", err)
	}
	return dev, dev.Close, nil
}
