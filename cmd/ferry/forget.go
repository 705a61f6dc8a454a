package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/transport/repo/retention"
)

type forgetJSON struct {
	DryRun    bool               `json:"dry_run"`
	Policy    *retention.Policy  `json:"policy,omitempty"`
	Snapshots []forgetSnapshotJS `json:"snapshots"`
	Forget    int                `json:"forget"` // snapshots forgotten (with dry_run: that would be)
}

type forgetSnapshotJS struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Started time.Time `json:"started"`
	Keep    bool      `json:"keep"`
	Reasons []string  `json:"reasons,omitempty"`
}

func forgetCmd(g *globals) *cobra.Command {
	var (
		p      retention.Policy
		name   string
		dryRun bool
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "forget --repo REPO --keep-last N|--keep-daily N|... [--name NAME] [--dry-run] | forget --repo REPO ID...",
		Short: "Forget snapshots by keep rules, or by ID; prune then frees their data",
		Long: `Forget deletes snapshot manifests, never data: run prune afterwards to
delete the packs no snapshot refers to any more.

Keep rules apply to each series (the snapshots of one name) on its own:
--keep-last N keeps the N newest; --keep-hourly, --keep-daily, --keep-weekly
and --keep-monthly N keep the newest snapshot of each of the last N hours,
days, ISO weeks or months (UTC) that have snapshots. A snapshot any rule
keeps stays; the others are forgotten. The newest snapshot of every series
always stays. --name restricts the rules to one series. --dry-run lists
what would be forgotten, and which rules keep the rest.

With IDs (full, or unique prefixes of at least 4 hex digits) instead of
rules, exactly those snapshots are forgotten.

A forget interrupted half-way leaves the snapshots forgotten for every
reader; the next forget or prune finishes deleting them.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := p.Validate(); err != nil {
				return usageError{err}
			}
			switch {
			case len(args) > 0 && (!p.IsZero() || name != ""):
				return usageError{errors.New("give snapshot IDs or keep rules (with --name), not both")}
			case len(args) == 0 && p.IsZero():
				return usageError{errors.New("no keep rule: give --keep-last, --keep-hourly, --keep-daily, --keep-weekly or --keep-monthly (or snapshot IDs)")}
			}
			ctx := cmd.Context()
			r, err := g.open(ctx)
			if err != nil {
				return err
			}
			var ds []retention.Decision
			if len(args) > 0 {
				ds, err = byID(cmd, r, args, dryRun)
			} else {
				var snaps []*repo.Snapshot
				if snaps, err = r.Snapshots(ctx); err != nil {
					return err
				}
				if name != "" {
					snaps = slices.DeleteFunc(snaps, func(s *repo.Snapshot) bool { return s.Name != name })
					if len(snaps) == 0 {
						return fmt.Errorf("%w: no snapshot named %q", repo.ErrSnapshotNotFound, name)
					}
				}
				ds, err = retention.Forget(ctx, r, snaps, p, dryRun)
			}
			if err != nil {
				return err
			}
			return printForget(cmd, ds, p, dryRun, asJSON)
		},
	}
	f := cmd.Flags()
	f.IntVar(&p.Last, "keep-last", 0, "keep the N newest snapshots of each series")
	f.IntVar(&p.Hourly, "keep-hourly", 0, "keep the newest snapshot of each of the last N hours that have one")
	f.IntVar(&p.Daily, "keep-daily", 0, "keep the newest snapshot of each of the last N days (UTC) that have one")
	f.IntVar(&p.Weekly, "keep-weekly", 0, "keep the newest snapshot of each of the last N ISO weeks that have one")
	f.IntVar(&p.Monthly, "keep-monthly", 0, "keep the newest snapshot of each of the last N months that have one")
	f.StringVar(&name, "name", "", "apply the rules to the snapshots of this name only")
	f.BoolVar(&dryRun, "dry-run", false, "list what would be forgotten, forget nothing")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// byID resolves refs to snapshots and forgets them.
func byID(cmd *cobra.Command, r *repo.Repo, refs []string, dryRun bool) ([]retention.Decision, error) {
	var ds []retention.Decision
	var ids []string
	for _, ref := range refs {
		if ref == "latest" {
			return nil, usageError{errors.New("forget takes snapshot IDs, not latest")}
		}
		s, err := r.FindSnapshot(cmd.Context(), ref, "")
		if err != nil {
			return nil, err
		}
		ds = append(ds, retention.Decision{Item: retention.Item{ID: s.ID, Series: s.Name, Time: s.Started}})
		ids = append(ids, s.ID)
	}
	if dryRun {
		return ds, nil
	}
	return ds, r.Forget(cmd.Context(), ids)
}

func printForget(cmd *cobra.Command, ds []retention.Decision, p retention.Policy, dryRun, asJSON bool) error {
	out := cmd.OutOrStdout()
	forgotten := 0
	for _, d := range ds {
		if !d.Keep {
			forgotten++
		}
	}
	if asJSON {
		j := forgetJSON{DryRun: dryRun, Snapshots: []forgetSnapshotJS{}, Forget: forgotten}
		if !p.IsZero() {
			j.Policy = &p
		}
		for _, d := range ds {
			j.Snapshots = append(j.Snapshots, forgetSnapshotJS{ID: d.ID, Name: d.Series, Started: d.Time, Keep: d.Keep, Reasons: d.Reasons})
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(j)
	}
	verb := "forgot"
	if dryRun {
		verb = "would forget"
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	series := ""
	for _, d := range ds {
		if d.Series != series && !p.IsZero() {
			series = d.Series
			fmt.Fprintf(tw, "%s (%s):\n", series, p)
		}
		what, why := verb, ""
		if d.Keep {
			what, why = "keep", strings.Join(d.Reasons, ", ")
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", what, d.ID[:12], d.Time.Local().Format("2006-01-02 15:04:05"), d.Series, why)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if p.IsZero() {
		// By ID: the snapshots not named were not looked at.
		fmt.Fprintf(out, "%s %d snapshot(s)\n", verb, forgotten)
	} else {
		fmt.Fprintf(out, "%s %d snapshot(s), kept %d\n", verb, forgotten, len(ds)-forgotten)
	}
	if forgotten > 0 && !dryRun {
		fmt.Fprintln(out, "run ferry prune to delete the data only they referred to")
	}
	return nil
}
