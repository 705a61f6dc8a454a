// Package reflinkcsi is a small but real CSI driver for Ferry's tests:
// volumes are files on a reflink-capable XFS, snapshots are reflink copies
// of them, raw block access goes through loop devices, and the
// SnapshotMetadata service reports allocated and changed ranges from the
// files' extents (FIEMAP). One process serves the Identity, Controller,
// Node and SnapshotMetadata services on one Unix socket, for one node.
//
// Layout of the driver's directory (Config.Dir), which must be on an XFS
// made with `mkfs.xfs -m reflink=1`:
//
//	volumes/<id>         the volume's bytes, a sparse file of its size
//	volumes/<id>.json    its record: name, size, parameters, content source,
//	                     creation time, ControllerPublish attachments
//	snapshots/<id>       a reflink copy of the source volume's file
//	snapshots/<id>.json  its record: name, source volume, size, creation
//	                     time, readyToUse
//	node/<id>.json       how volume <id> is staged and published on this node
//
// Snapshots are crash-consistent: FICLONE copies what the volume's file
// holds, so data written through a loop device and not yet flushed (fsync
// the device, or sync or freeze the filesystem on it) may be missing.
//
// A record is written after its data file (tmp, fsync, rename, fsync of the
// directory) and removed before it, so a record always names complete data
// and a restarted driver knows every volume and snapshot. IDs are derived
// from names ("vol-" or "snap-" and 32 hex digits of a SHA-256), which makes
// CreateVolume and CreateSnapshot idempotent across restarts.
package reflinkcsi
