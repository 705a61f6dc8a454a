// Package restore writes a snapshot back to a file or block device.
//
// Before anything is written it resolves every chunk through the index and
// checks, by listing the targets, that each pack needed still has at least
// k shards; a snapshot that cannot be restored fails there, naming what is
// lost. Packs are then fetched (Workers at a time, data shards first,
// parity only when a shard is missing or corrupt), every chunk is decrypted,
// its keyed hash checked, and written at its offset. Holes stay holes in a
// new file and are written as zeros into an existing file or device. The
// whole-volume digest is recomputed from what was written and compared.
//
// A new file is written under a temporary name beside the target and
// renamed into place only when everything matched, so a failed restore
// never leaves a file that looks complete.
package restore
