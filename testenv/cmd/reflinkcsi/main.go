// Command reflinkcsi runs Ferry's test CSI driver (package
// testenv/reflinkcsi): volumes are files on a reflink XFS, snapshots are
// reflink copies, block access goes through loop devices.
//
//	reflinkcsi --endpoint unix:///run/csi.sock --dir /mnt/xfs --node-id node-1 [--controller-publish]
//
// It serves until SIGINT or SIGTERM. Exit status 2 means bad flags, 1 a
// failure to start or serve.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ferrydr/ferry/testenv/reflinkcsi"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

func run(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("reflinkcsi", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg reflinkcsi.Config
	fs.StringVar(&cfg.Endpoint, "endpoint", "", "Unix socket to serve on, unix:///path/to/csi.sock")
	fs.StringVar(&cfg.Dir, "dir", "", "directory on an XFS with reflink (mkfs.xfs -m reflink=1) for volumes and snapshots")
	fs.StringVar(&cfg.NodeID, "node-id", "", "this node's ID")
	fs.BoolVar(&cfg.ControllerPublish, "controller-publish", false,
		"advertise and require ControllerPublishVolume: NodeStageVolume refuses volumes not published to this node")
	fs.Int64Var(&cfg.Capacity, "capacity", 0, "total bytes of volumes the driver may hold (0: no limit); beyond it CreateVolume fails with RESOURCE_EXHAUSTED")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "reflinkcsi: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "reflinkcsi: %v\n", err)
		return 2
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	d, err := reflinkcsi.New(cfg)
	if err == nil {
		err = d.Run(ctx)
	}
	if err != nil {
		fmt.Fprintf(stderr, "reflinkcsi: %v\n", err)
		return 1
	}
	return 0
}
