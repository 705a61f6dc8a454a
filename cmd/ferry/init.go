package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/chunk"
	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/repo"
)

func initCmd(g *globals) *cobra.Command {
	var scheme string
	var packMiB int
	var chunkSize string
	cmd := &cobra.Command{
		Use:   "init --repo REPO [--erasure K+M]",
		Short: "Create a repository on the targets",
		Long: `Create a repository. Every pack is split into K data and M parity shards;
shard i is stored on target i mod T. init refuses targets that already hold a
Ferry repository.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := erasure.ParseScheme(scheme)
			if err != nil {
				return usageError{fmt.Errorf("--erasure: %w", err)}
			}
			if packMiB < 1 || packMiB > 256 {
				return usageError{fmt.Errorf("--pack-size %d: want 1 to 256 MiB", packMiB)}
			}
			chunkBits := 0
			if chunkSize != "" {
				var err error
				if chunkBits, err = chunk.ParseAverage(chunkSize); err != nil {
					return usageError{fmt.Errorf("--chunk-size: %w", err)}
				}
			}
			pw, err := g.password()
			if err != nil {
				return err
			}
			stores, err := g.stores(cmd.Context(), true)
			if err != nil {
				return err
			}
			r, err := repo.Init(cmd.Context(), stores, pw, repo.Options{Erasure: s, PackSize: packMiB << 20, ChunkBits: chunkBits})
			if err != nil {
				return friendly(err)
			}
			t := len(r.Targets)
			fmt.Fprintf(cmd.OutOrStdout(), "created repository %s on %d target(s), erasure %s (storage %.2fx)\n",
				r.Config.ID, t, s, float64(s.Shards())/float64(s.K))
			p := r.Config.Chunking()
			fmt.Fprintf(cmd.OutOrStdout(), "chunks of %s to %s, %s on average beyond the minimum\n",
				human(int64(p.MinSize)), human(int64(p.MaxSize)), human(1<<p.AverageBits))
			fmt.Fprintf(cmd.OutOrStdout(), "survives the loss of any %d whole target(s); each pack survives %d lost or corrupt shard(s)\n",
				r.SurvivableTargetLosses(), s.M)
			if t > s.Shards() {
				fmt.Fprintf(cmd.OutOrStdout(), "note: only the first %d targets receive shards; the others hold metadata copies\n", s.Shards())
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&scheme, "erasure", "2+1", "erasure coding K+M: K data and M parity shards per pack")
	cmd.Flags().IntVar(&packMiB, "pack-size", repo.DefaultPackSize>>20, "target pack size in MiB, before erasure coding")
	cmd.Flags().StringVar(&chunkSize, "chunk-size", "", "average chunk size beyond the minimum, a power of two from 4K to 8M (min half of it, max eight times it); default: 256K min, 1M average, 4M max")
	return cmd
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q", cmd.Name(), args)}
	}
	return nil
}

func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s needs %s", cmd.Name(), what)}
		}
		return nil
	}
}
