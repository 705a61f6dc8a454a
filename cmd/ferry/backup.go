package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/agent/backup"
)

func backupCmd(g *globals) *cobra.Command {
	var name string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "backup --repo REPO [--name NAME] SOURCE",
		Short: "Back up a block device or raw image file; prints the snapshot ID",
		Args:  exactArgs(1, "one SOURCE (a block device or image file)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.open(cmd.Context())
			if err != nil {
				return err
			}
			prog := &backup.Progress{}
			stopProgress := showProgress(prog.Total.Load, prog.Covered, "backup", asJSON)
			sum, err := backup.File(cmd.Context(), r, args[0], backup.Options{Name: name, Progress: prog})
			stopProgress()
			if err != nil {
				return fmt.Errorf("backup %s: %w", args[0], err)
			}
			// Committed and restorable: a warning, not a failure.
			if msg := sum.DegradedMessage(); msg != "" {
				fmt.Fprintf(os.Stderr, "ferry: warning: %s\n", msg)
				for _, d := range sum.Degraded {
					g.describe(d.Target)
				}
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(sum)
			}
			fmt.Fprintln(cmd.OutOrStdout(), sum.SnapshotID)
			if isTerminal(os.Stderr) {
				fmt.Fprintf(os.Stderr, "%s of %s read, %s new, %s stored, in %s\n",
					human(sum.BytesRead), human(sum.BytesVolume), human(sum.BytesNew), human(sum.BytesStored), sum.Duration.Round(100e6))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name of the volume in the repository (default: the source's file name)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON summary instead of the snapshot ID")
	return cmd
}
