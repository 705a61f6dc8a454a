// Package hook is a transparent gRPC proxy in front of a CSI driver's socket.
//
// Every call of every service (Identity, Controller, Node, SnapshotMetadata,
// and any other) is forwarded as raw bytes, with its metadata, headers,
// trailers, streams and status, so the driver cannot tell the hook is there.
// The one exception is Controller.CreateSnapshot: its ferry.dev/ parameters
// (package params) are validated — a bad one fails the call with
// INVALID_ARGUMENT before the driver sees it — and removed, and once the
// driver has cut the snapshot a replication job is queued durably before
// the response goes back. Queueing is idempotent per snapshot ID, so the
// external-snapshotter's retries never queue twice. Secrets in requests are
// never logged.
package hook
