package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/transport/erasure"
	"github.com/ferrydr/ferry/transport/repo"
)

func initCmd(g *globals) *cobra.Command {
	var scheme string
	var packMiB int
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
			pw, err := g.password()
			if err != nil {
				return err
			}
			stores, err := g.stores(cmd.Context(), true)
			if err != nil {
				return err
			}
			r, err := repo.Init(cmd.Context(), stores, pw, repo.Options{Erasure: s, PackSize: packMiB << 20})
			if err != nil {
				return friendly(err)
			}
			t := len(r.Targets)
			fmt.Fprintf(cmd.OutOrStdout(), "created repository %s on %d target(s), erasure %s (storage %.2fx)\n",
				r.Config.ID, t, s, float64(s.Shards())/float64(s.K))
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
