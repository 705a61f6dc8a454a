// Command ferry-testenv prepares the real parts the tests run on loopback.
//
//	ferry-testenv install   install the Debian packages the loop-mounted XFS and the
//	                        test CSI driver need (xfsprogs, ...) and gcc (cgo, for
//	                        the race detector), build MinIO, etcd,
//	                        kube-apiserver, kube-controller-manager and the CSI
//	                        snapshot sidecars into the cache (once) and print their
//	                        paths
//
// `make test` runs it before `go test` so no test waits for a build.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/ferrydr/ferry/testenv/kube"
	"github.com/ferrydr/ferry/testenv/minio"
	"github.com/ferrydr/ferry/testenv/xfs"
)

func main() {
	if len(os.Args) != 2 || os.Args[1] != "install" {
		fmt.Fprintln(os.Stderr, "usage: ferry-testenv install")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := xfs.EnsureTools(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-testenv:", err)
		os.Exit(1)
	}
	// cgo needs a C compiler for make test's run under the race detector.
	if err := xfs.EnsureCommands(ctx, map[string]string{"gcc": "gcc"}); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-testenv:", err)
		os.Exit(1)
	}
	if minio.Cached() == "" {
		fmt.Fprintf(os.Stderr, "building MinIO %s@%s (a few minutes)...\n", minio.Module, minio.Version)
	}
	path, err := minio.Binary(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferry-testenv:", err)
		os.Exit(1)
	}
	fmt.Println(path)
	bins, err := kube.Install(ctx, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferry-testenv:", err)
		os.Exit(1)
	}
	for _, p := range []string{bins.Etcd, bins.APIServer, bins.ControllerManager, bins.SnapshotController, bins.CSISnapshotter} {
		fmt.Println(p)
	}
}
