// Package verify proves that a repository's snapshots can be restored, and
// says precisely what is wrong when they cannot.
//
// Three levels, each a superset of the cost of the one before:
//
//   - Structural (always): lists config, keys/, snapshots/, index/ and
//     data/ on every target (in that order, each prefix on all targets
//     before the next: the reverse of a backup's commit order, so a backup
//     running meanwhile shows up as unreferenced shards at worst), reads
//     every target's copy of every key object, index object and manifest,
//     and its config (a copy that differs from the authenticated one is
//     corrupt; with Options.Password, key objects must open with it to the
//     repository's master key), and checks manifest -> index -> pack ->
//     shards: every segment of a segmented snapshot's extents (a blob in a
//     pack, as a chunk is) and every chunk its extents name is in the
//     index, every pack the index names has all k+m shard objects on their
//     targets with the size the pack length implies (64-byte header +
//     ceil(packLen/k)), and every replicated object (config, keys, index
//     objects, manifests) is on every target (one that a listing lacks is
//     looked up again, since a backup may have been writing it). A
//     segmented snapshot's segments are read from their packs (the blob's
//     range, or the whole pack rebuilt from any k shards) and must hold the
//     extents the manifest says; one that cannot be read loses its
//     snapshot. Then the checksum pass (unless SizesOnly): every shard of
//     the right size is looked up with Stat, StatWorkers per target at
//     once, and the CRC32C the store keeps is compared with the one the
//     index recorded; a mismatch is a corrupt shard, found without a
//     download. Shards of packs indexed without CRCs (index version 1), or
//     that the store keeps no checksum for, are checked by size only and
//     counted (Report.Shards). Shards of packs no index knows are reported
//     as unreferenced (garbage for prune, or a backup still running),
//     unless a snapshot needs segments or chunks the index lost: then their
//     pack headers are read to tell a rebuildable index from lost data
//     (twice when both segments and chunks are lost: a snapshot's chunks are
//     known once its segments are read). Cost: one LIST per prefix and
//     target (about one request per 1000 objects), the index and manifests
//     from every target (T times about 45 bytes per chunk or segment
//     indexed plus 40 per chunk of each snapshot that keeps its extents in
//     its manifest), a segmented snapshot's segments (40 bytes per chunk)
//     from their packs once, twice where a loss must be attributed, and one
//     HEAD per shard (Report.HeadRequests); no other shard data is
//     downloaded.
//   - Read data (ReadDataPercent N): downloads every shard of N% of the
//     packs the index knows and checks each shard's header and CRC-32C, the
//     decoded pack against its ID, the pack header, that the index agrees
//     with it, and that every blob decrypts and hashes to its chunk ID;
//     each shard's CRC32C is also compared with the index's record, and
//     every shard with the decoded pack's erasure re-encoding, so a shard
//     that passes its own checks but is not the one written (forged: CRC32C
//     is no MAC) is found too, parity included; a pack that does not match
//     its ID is decoded again without each shard in turn. The
//     packs are taken in pack-ID order from a cursor kept in a state file,
//     so ceil(100/N) runs cover every pack and then start over. Cost: N% of
//     the stored bytes ((k+m)/k times the packed data) per run. Memory:
//     Workers × about (3 + 2m/k) pack sizes (the shards, the pack, its
//     re-encoding).
//   - Drill: restores one snapshot into an io.WriterAt (Discard, or a scratch
//     file or device), checks every chunk hash and the whole-volume digest,
//     and measures the time it took: the RTO evidence. Cost: the snapshot's
//     packs, k shards each (parity only where shards are bad).
//
// Manifests, index objects and packs that a deletion record names (a
// forget or prune at work, or interrupted) are not checked; problems that
// a forget or prune running meanwhile explains (a record names the object
// or pack by the end, or no target has it any more) are dropped, and so is
// a snapshot forgotten meanwhile whose segments can no longer be read.
//
// Every problem is classified: Notice (harmless, such as garbage shards),
// Degraded (repairable: every pack still has at least k intact shards, lost
// index objects can be rebuilt from pack headers, replicated objects survive
// on some target) or DataLost (a pack with fewer than k intact shards, a
// corrupt blob, a manifest that no target can give, a segment of one that
// cannot be read). Data loss names the snapshots it affects.
package verify
