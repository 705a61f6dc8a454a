package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/transport/repo"
)

func pruneCmd(g *globals) *cobra.Command {
	var (
		opts   repo.PruneOptions
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "prune --repo REPO [--grace 1h] [--dry-run]",
		Short: "Delete the data no snapshot refers to, safely while backups run",
		Long: `Prune deletes the packs (every shard, on every target) that no snapshot
refers to, and their index entries. It works in two phases, each run doing
both: a run marks the packs it finds unreferenced in a prune plan; a later
run deletes those still unreferenced once they have been marked for
--grace, unless a backup that started before the marking is still running
(backups announce themselves with a lock object, refreshed every 5
minutes). So run it regularly (the agent does, see --prune-interval), or
twice, --grace apart.

--grace must exceed the longest backup that holds no lock (older Ferry
versions); the clocks of the machines writing to the repository must
agree within 5 minutes. With --grace 0 a second run deletes at once what
the first marked: only when no backup without a lock can be running.

Prune is idempotent and safe to interrupt: a run killed at any point
leaves a repository that verifies (with unreferenced packs at worst), and
the next run finishes what it left. Only one prune runs at a time; prune
deletes nothing while an index object cannot be read or a snapshot needs
a chunk no index object holds (run verify and repair first).
--dry-run reports what a run would mark and delete, and writes nothing.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.Grace < 0 {
				return usageError{fmt.Errorf("--grace %s: want 0 or more", opts.Grace)}
			}
			ctx := cmd.Context()
			r, err := g.open(ctx)
			if err != nil {
				return err
			}
			opts.Progress = func(step string) { slog.Info("prune", "step", step) }
			rep, err := r.Prune(ctx, opts)
			if err != nil {
				return fmt.Errorf("prune: %w", err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			printPrune(cmd, r, rep)
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&opts.Grace, "grace", time.Hour, "how long a pack stays marked unreferenced before a later prune may delete it")
	f.BoolVar(&opts.DryRun, "dry-run", false, "report what would be marked and deleted; write nothing")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printPrune(cmd *cobra.Command, r *repo.Repo, rep *repo.PruneReport) {
	out := cmd.OutOrStdout()
	would := ""
	if rep.DryRun {
		would = "would be "
	}
	fmt.Fprintf(out, "%d snapshots; %d packs: %d referenced, %d unreferenced\n", rep.Snapshots, rep.Packs, rep.Referenced, rep.Unreferenced)
	if rep.Finished > 0 {
		fmt.Fprintf(out, "finished %d deletion(s) an interrupted forget or prune left\n", rep.Finished)
	}
	for _, c := range rep.Completed {
		fmt.Fprintf(out, "copied %s to the targets that lacked it\n", c)
	}
	if rep.Marked > 0 {
		fmt.Fprintf(out, "%d pack(s) newly unreferenced: %smarked for deletion\n", rep.Marked, would)
	}
	if rep.Waiting > 0 {
		fmt.Fprintf(out, "%d marked pack(s) wait for their grace to end\n", rep.Waiting)
	}
	if rep.HeldBack > 0 {
		fmt.Fprintf(out, "%d marked pack(s) held back by backups running since before they were marked\n", rep.HeldBack)
	}
	for _, w := range rep.Writers {
		fmt.Fprintf(out, "  backup running: %s\n", w)
	}
	if !rep.NextDeletion.IsZero() {
		fmt.Fprintf(out, "the next prune may delete marked packs from %s\n", rep.NextDeletion.Local().Format(time.DateTime))
	}
	var total int64
	for i, p := range rep.Deleted {
		total += p.Bytes
		switch {
		case i < 50:
			fmt.Fprintf(out, "%sdeleted pack %s (%s, marked %s)\n", would, p.ID[:12], human(p.Bytes), p.Marked.Local().Format(time.DateTime))
		case i == 50:
			fmt.Fprintf(out, "... and %d more (--json lists them all)\n", len(rep.Deleted)-50)
		}
	}
	fmt.Fprintf(out, "%d pack(s) %sdeleted, %s", len(rep.Deleted), would, human(total))
	for i, b := range rep.BytesDeleted {
		sep := ": "
		if i > 0 {
			sep = ", "
		}
		fmt.Fprintf(out, "%s%s on target %d (%s)", sep, human(b), i+1, r.Targets[i].Store.Location())
	}
	fmt.Fprintln(out)
	if rep.IndexDeleted > 0 {
		fmt.Fprintf(out, "index: %d object(s) replaced by %d\n", rep.IndexDeleted, rep.IndexWritten)
	}
}
