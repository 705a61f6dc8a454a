package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/transport/repo"
)

type snapshotJSON struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Source   string    `json:"source,omitempty"`
	Host     string    `json:"host,omitempty"`
	Size     int64     `json:"size"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Digest   string    `json:"digest"`
	Stored   int64     `json:"bytes_stored"`
	Volume   any       `json:"volume"`
}

func snapshotsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "snapshots --repo REPO",
		Short: "List the snapshots in the repository, oldest first",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := g.open(cmd.Context())
			if err != nil {
				return err
			}
			snaps, err := r.Snapshots(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				list := make([]snapshotJSON, 0, len(snaps))
				for _, s := range snaps {
					list = append(list, snapshotJSON{ID: s.ID, Name: s.Name, Source: s.Volume.Source, Host: s.Volume.Host,
						Size: s.Size, Started: s.Started, Finished: s.Finished, Digest: s.Digest, Stored: s.Stats.BytesStored, Volume: s.Volume})
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(list)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tTIME\tNAME\tSIZE\tNEW\tSOURCE")
			for _, s := range snaps {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.ID[:12], s.Started.Local().Format("2006-01-02 15:04:05"),
					s.Name, human(s.Size), human(s.Stats.BytesNew), origin(s.Volume))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// origin says where a snapshot came from: the VolumeSnapshot for CSI
// snapshots, else the path read.
func origin(v repo.Volume) string {
	if v.VolumeSnapshot != "" {
		return "volumesnapshot " + v.Namespace + "/" + v.VolumeSnapshot
	}
	if v.CSISnapshotID != "" {
		return "csi snapshot " + v.CSISnapshotID
	}
	return v.Source
}
