// Package kube runs real Kubernetes control planes on loopback for tests:
// etcd, kube-apiserver and kube-controller-manager per Cluster, and, for a
// CSI driver under test, the external-snapshotter sidecars.
//
// The programs are built from the Go module proxy at pinned versions
// (KubernetesVersion, EtcdVersion, SnapshotterVersion) and cached next to
// MinIO's binary, each named <program>-<version>, so only the first run on
// a machine pays for the build: `go run ./testenv/cmd/ferry-testenv
// install` does it ahead of `go test`.
//
// Start gives a test its own cluster: certificates made for it, etcd's data
// in the test's temporary directory, free ports, an admin kubeconfig, and
// the VolumeSnapshot CRDs installed. Several clusters in one test, such as a
// primary and a DR cluster, share nothing. There are no nodes and no
// kubelet: pods never run, but PersistentVolumeClaims bind, namespaces are
// deleted, owned objects are collected and service accounts get tokens.
package kube
