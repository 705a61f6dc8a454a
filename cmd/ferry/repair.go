package main

import (
	"fmt"
	"slices"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/transport/pack"
	"github.com/ferrydr/ferry/verify"
)

func repairCmd(g *globals) *cobra.Command {
	var readPercent int
	var stateFile string
	cmd := &cobra.Command{
		Use:   "repair --repo REPO [--read-data-percent N]",
		Short: "Rebuild lost or corrupt shards, index objects and metadata copies from the survivors",
		Long: `Repair runs verify (structural, plus --read-data-percent to find corrupt
shards by reading them), then fixes what it found: replicated objects
(keys, config, index objects, manifests) are copied to targets that lack
them, including a bucket recreated empty; packs no index knows get an index
object rebuilt from their headers; every pack with missing or corrupt shards
is rebuilt from at least k intact ones and written back. Each step is
idempotent and safe to interrupt: run repair again to finish. It then
verifies again and exits like verify.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			r, err := g.open(ctx)
			if err != nil {
				return err
			}
			opts := verify.Options{ReadDataPercent: readPercent, StateFile: stateFile}
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
			var packs []pack.ID
			metadata, index := false, false
			for _, p := range rep.Problems {
				switch p.Kind {
				case verify.KindObjectMissing, verify.KindObjectCorrupt:
					metadata = true
				case verify.KindIndexRebuildable, verify.KindUnreferencedPack, verify.KindChunkUnindexed:
					index = true
				case verify.KindShardMissing, verify.KindShardSize, verify.KindShardCorrupt:
					id, err := pack.ParseID(p.Pack)
					if err == nil && !slices.Contains(packs, id) {
						packs = append(packs, id)
					}
				}
			}
			if metadata {
				wrote, err := r.RepairMetadata(ctx)
				for _, w := range wrote {
					fmt.Fprintf(out, "copied %s\n", w)
				}
				if err != nil {
					return fmt.Errorf("repair metadata: %w", err)
				}
			}
			if index {
				done, err := r.RebuildIndex(ctx)
				fmt.Fprintf(out, "rebuilt the index of %d pack(s) from their headers\n", len(done))
				if err != nil {
					return fmt.Errorf("rebuild index: %w", err)
				}
			}
			var failed []string
			for _, id := range packs {
				fixed, err := r.RepairPack(ctx, id)
				for _, f := range fixed {
					fmt.Fprintf(out, "rebuilt %s\n", f)
				}
				if err != nil {
					failed = append(failed, err.Error())
				}
			}
			if len(failed) > 0 {
				fmt.Fprintf(out, "could not repair: %v\n", failed)
			}
			// Corrupt shards are only found by reading: verify again at
			// the structural level to show what is left.
			after, err := verify.Run(ctx, r, verify.Options{})
			if err != nil {
				return err
			}
			after.WriteText(out)
			return after.Err()
		},
	}
	cmd.Flags().IntVar(&readPercent, "read-data-percent", 0, "also download and check this share of the packs to find corrupt shards (1-100)")
	cmd.Flags().StringVar(&stateFile, "state-file", "", "verify's rotation state (default: as verify)")
	return cmd
}
