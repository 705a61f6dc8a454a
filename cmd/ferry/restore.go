package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/transport/repo"
)

func restoreCmd(g *globals) *cobra.Command {
	var target, name string
	var asJSON bool
	var workers int
	cmd := &cobra.Command{
		Use:   "restore --repo REPO SNAPSHOT|latest --target PATH",
		Short: "Restore a snapshot into a file (created sparse) or a block device",
		Long: `Restore a snapshot. SNAPSHOT is an ID, a unique prefix of one (4+ hex digits),
or "latest" (with --name, the latest of that name). A new file is created
sparse and appears only when the restore verified; an existing file or block
device is overwritten in place, holes written as zeros.`,
		Args: exactArgs(1, "one SNAPSHOT (an ID, a prefix of one, or latest)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if target == "" {
				return usageError{fmt.Errorf("restore needs --target PATH")}
			}
			if workers < 1 || workers > maxRestoreWorkers {
				return usageError{fmt.Errorf("--workers %d: want 1 to %d", workers, maxRestoreWorkers)}
			}
			r, err := g.openWith(cmd.Context(), repo.OpenForRestore)
			if err != nil {
				return err
			}
			snap, err := findSnapshot(cmd.Context(), r, args[0], name)
			if err != nil {
				return err
			}
			prog := &restore.Progress{}
			stopProgress := showProgress(prog.Total.Load, prog.Written.Load, "restore", asJSON)
			sum, err := restore.Run(cmd.Context(), r, snap, target, restore.Options{Progress: prog, Workers: workers})
			stopProgress()
			if err != nil {
				return fmt.Errorf("restore %s: %w", snap.ID[:12], err)
			}
			reportRepaired(g, r, sum.Repaired)
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(sum)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored %s (%s, %s of data, %s downloaded) to %s in %s; digest verified\n",
				snap.ID[:12], human(sum.BytesVolume), human(sum.BytesWritten), human(sum.BytesFetched), target, sum.Duration.Round(100e6))
			return nil
		},
	}
	cmd.Flags().StringVar(&target, "target", "", "file or block device to restore into (an existing file is overwritten in place)")
	cmd.Flags().StringVar(&name, "name", "", "with latest: the latest snapshot of this name")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON summary")
	cmd.Flags().IntVar(&workers, "workers", 4, "packs read and written at once; more hide more round trips to targets in another region, at up to 12 MiB of memory each")
	return cmd
}

// maxRestoreWorkers bounds --workers: 64 workers hold up to about 770 MiB.
const maxRestoreWorkers = 64

// reportRepaired tells what the restore had to reconstruct: one line per
// unavailable target, with why it is unavailable, and the first few
// damaged shards one by one.
func reportRepaired(g *globals, r *repo.Repo, problems []repo.ShardProblem) {
	perTarget := map[int]int{}
	shown := 0
	for _, p := range problems {
		if p.Reason == repo.ReasonTargetUnavailable {
			perTarget[p.Target]++
			continue
		}
		if shown++; shown <= 5 {
			fmt.Fprintf(os.Stderr, "ferry: reconstructed from parity: %s\n", p)
		}
	}
	if shown > 5 {
		fmt.Fprintf(os.Stderr, "ferry: ... and %d more damaged shards reconstructed from parity\n", shown-5)
	}
	for _, t := range slices.Sorted(maps.Keys(perTarget)) {
		where, why := "", ""
		if t >= 1 && t <= len(r.Targets) {
			tg := r.Targets[t-1]
			where = " (" + tg.Store.Location() + ")"
			if err := tg.Down(); err != nil {
				why = " (" + err.Error() + ")"
			}
		}
		fmt.Fprintf(os.Stderr, "ferry: warning: target %d%s unavailable%s; %d shard(s) reconstructed from parity\n", t, where, why, perTarget[t])
		g.describe(t)
	}
}
