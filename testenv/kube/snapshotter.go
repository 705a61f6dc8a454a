package kube

import (
	"fmt"
	"os"
	"testing"
)

// StartSnapshotter makes VolumeSnapshots of the cluster work for the CSI
// driver serving csiEndpoint ("unix:///path/csi.sock" or the socket's
// path), as the external-snapshotter sidecars at SnapshotterVersion do it
// in a real cluster: csi-snapshotter calls the driver's CreateSnapshot and
// DeleteSnapshot (with --extra-create-metadata, so the parameters carry
// csi.storage.k8s.io/volumesnapshot/name and the rest) until the test
// ends, and the cluster's snapshot-controller, started by the first call,
// runs until the cluster stops. The driver's name comes from its
// GetPluginInfo. Both run with the admin kubeconfig, without leader
// election, and without VolumeGroupSnapshots (whose CRDs are not
// installed). They start in the background: a sidecar that exits is
// reported, with its log, when the test or the cluster stops.
func StartSnapshotter(t testing.TB, c *Cluster, csiEndpoint string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.snapshotController == nil {
		p, err := startProcess("snapshot-controller", c.logFile("snapshot-controller"), c.bins.SnapshotController,
			"--kubeconfig="+c.Kubeconfig,
			"--leader-election=false",
			"--feature-gates=CSIVolumeGroupSnapshot=false",
			"--v=3",
		)
		if err != nil {
			t.Fatalf("cluster %s: %v", c.Name, err)
		}
		c.snapshotController = p
		c.procs = append(c.procs, p)
	}
	name := "csi-snapshotter"
	for i := 2; ; i++ { // one log per driver
		if _, err := os.Stat(c.logFile(name)); os.IsNotExist(err) {
			break
		}
		name = fmt.Sprintf("csi-snapshotter-%d", i)
	}
	p, err := startProcess(name, c.logFile(name), c.bins.CSISnapshotter,
		"--kubeconfig="+c.Kubeconfig,
		"--csi-address="+csiEndpoint,
		"--extra-create-metadata",
		"--leader-election=false",
		"--feature-gates=CSIVolumeGroupSnapshot=false",
		"--v=3",
	)
	if err != nil {
		t.Fatalf("cluster %s: %v", c.Name, err)
	}
	c.procs = append(c.procs, p)
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if err := p.stop(); err != nil {
			t.Errorf("cluster %s: %v", c.Name, err)
		}
	})
}
