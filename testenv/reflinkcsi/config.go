package reflinkcsi

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
)

// DriverName is the name GetPluginInfo reports.
const DriverName = "reflink.csi.ferry.dev"

// Version is the driver's vendor version.
const Version = "0.1.0"

// Config is the driver's configuration, filled from flags (see
// testenv/cmd/reflinkcsi) and checked once by Validate.
type Config struct {
	// Endpoint is the Unix socket to serve on: unix:///path/csi.sock.
	Endpoint string
	// Dir holds volumes, snapshots and records. It must be on an XFS
	// with reflink (mkfs.xfs -m reflink=1).
	Dir string
	// NodeID is this node's ID (NodeGetInfo, ControllerPublish).
	NodeID string
	// ControllerPublish makes the driver advertise and require
	// ControllerPublishVolume: NodeStageVolume refuses a volume not
	// published to this node.
	ControllerPublish bool
	// Capacity, when set, is the total size of the volumes the driver
	// may hold, counted in full although the files are sparse (as an LVM
	// volume group counts them): CreateVolume beyond it fails with
	// RESOURCE_EXHAUSTED. Zero: no limit.
	Capacity int64
	// Logger receives a line per call; nil means slog.Default().
	Logger *slog.Logger

	// Fault switches, for tests of the driver's clients; off in normal use.
	//
	// NoSnapshotMetadata hides the SnapshotMetadata service: it is not
	// advertised and its calls answer UNIMPLEMENTED, as a driver without
	// changed-block tracking would.
	NoSnapshotMetadata bool
	// BreakMetadataStreams makes the first N SnapshotMetadata streams
	// fail with UNAVAILABLE right after their first message, as a
	// connection reset would.
	BreakMetadataStreams int
}

// Validate checks the configuration and makes Dir absolute.
func (c *Config) Validate() error {
	var errs []error
	if _, err := socketPath(c.Endpoint); err != nil {
		errs = append(errs, err)
	}
	if c.Dir == "" {
		errs = append(errs, errors.New("dir is required"))
	} else if abs, err := filepath.Abs(c.Dir); err != nil {
		errs = append(errs, fmt.Errorf("dir: %w", err))
	} else {
		c.Dir = abs
	}
	if c.NodeID == "" {
		errs = append(errs, errors.New("node ID is required"))
	} else if len(c.NodeID) > 256 {
		errs = append(errs, errors.New("node ID is longer than 256 bytes"))
	}
	return errors.Join(errs...)
}

// socketPath returns the file name of a unix:// endpoint.
func socketPath(endpoint string) (string, error) {
	var p string
	switch {
	case strings.HasPrefix(endpoint, "unix://"):
		p = strings.TrimPrefix(endpoint, "unix://")
	case strings.HasPrefix(endpoint, "unix:"):
		p = strings.TrimPrefix(endpoint, "unix:")
	default:
		return "", fmt.Errorf("endpoint %q: want unix:///path/to/csi.sock", endpoint)
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("endpoint %q: socket path must be absolute", endpoint)
	}
	return p, nil
}
