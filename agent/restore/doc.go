// Package restore writes a snapshot back to a file or block device.
//
// Before anything is written it resolves every chunk through the index and
// checks, by listing the targets, that each pack needed still has at least
// k shards; a snapshot that cannot be restored fails there, naming what is
// lost. Workers then read the blobs the snapshot uses, a few MiB at a time
// (neighbours in a pack together), from the data shards that hold them; a
// range in a shard whose target is down is rebuilt from the same range of
// the other shards. Every chunk is decrypted, its keyed hash checked, and
// written at its offset. A range that cannot be read or does not
// authenticate makes the worker read its whole pack instead, checking each
// shard and reconstructing bad ones from parity. Holes stay holes in a new
// file and are written as zeros into an existing file or device. The
// whole-volume digest is recomputed from what was written and compared.
//
// A new file is written under a temporary name beside the target and
// renamed into place only when everything matched, so a failed restore
// never leaves a file that looks complete.
package restore
