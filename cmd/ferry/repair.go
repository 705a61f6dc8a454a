package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/verify"
)

func repairCmd(g *globals) *cobra.Command {
	var readPercent int
	var stateFile string
	cmd := &cobra.Command{
		Use:   "repair --repo REPO [--read-data-percent N]",
		Short: "Rebuild lost or corrupt shards, index objects and metadata copies from the survivors",
		Long: `Repair runs verify (structural, with the shard checksums the targets keep;
plus --read-data-percent to find corrupt shards by reading them), then fixes
what it found: replicated objects (keys, config, index objects, manifests)
are copied to targets that lack them, including a bucket recreated empty;
packs that hold chunks a snapshot needs but no index names get an index
object rebuilt from their headers; every pack with missing or corrupt shards
is rebuilt from at least k intact ones and written back, each rebuilt shard
checked against the checksum the index recorded for it. Shards of packs no
index knows are left alone: a backup still running writes its index after
its shards. Each step is idempotent, safe to interrupt (run repair again to
finish) and safe while backups run. It then verifies again (the structural
level, and the packs reading found damaged, read again) and exits like
verify: 0 when all is well, 4 when something is still damaged or could not
be repaired, 3 when data is lost.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			r, err := g.open(ctx)
			if err != nil {
				return err
			}
			pw, err := g.password()
			if err != nil {
				return err
			}
			opts := verify.Options{ReadDataPercent: readPercent, StateFile: stateFile, Password: pw}
			if readPercent > 0 && stateFile == "" {
				if opts.StateFile, err = verify.DefaultStateFile(r.Config.ID); err != nil {
					return err
				}
			}
			rep, err := verify.Run(ctx, r, opts)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			// Failures are listed; the verify run below decides the exit status.
			done, _ := verify.Repair(ctx, r, rep)
			for _, c := range done.Copied {
				fmt.Fprintf(out, "copied %s\n", c)
			}
			if done.Indexed > 0 {
				fmt.Fprintf(out, "rebuilt the index of %d pack(s) from their headers\n", done.Indexed)
			}
			for _, f := range done.Shards {
				fmt.Fprintf(out, "rebuilt %s\n", f)
			}
			for _, f := range done.Failed {
				fmt.Fprintf(out, "could not repair: %s\n", f)
			}
			// Verify again: the structural level (checksums included), and
			// the packs reading found damaged, read again.
			after, err := verify.Recheck(ctx, r, rep, pw)
			if err != nil {
				return err
			}
			after.WriteText(out)
			if err := after.Err(); err != nil || len(done.Failed) == 0 {
				return err
			}
			return fmt.Errorf("%w: %d repair(s) could not be done (see above)", verify.ErrDegraded, len(done.Failed))
		},
	}
	cmd.Flags().IntVar(&readPercent, "read-data-percent", 0, "also download and check this share of the packs to find corrupt shards (1-100)")
	cmd.Flags().StringVar(&stateFile, "state-file", "", "verify's rotation state (default: as verify)")
	return cmd
}
