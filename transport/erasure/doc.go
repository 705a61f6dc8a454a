// Package erasure splits a pack into k data and m parity shards (Reed-Solomon,
// github.com/klauspost/reedsolomon) and puts it back together from any k
// intact ones, so that a pack survives lost or corrupted shard objects and,
// with shard i stored on target i mod T, the loss of whole targets.
//
// A shard object, as stored on a target, is a 64-byte header followed by the
// shard data:
//
//	offset size field
//	     0    4 magic "FRYS"
//	     4    1 version, 1
//	     5    1 k, data shards (1..255)
//	     6    1 m, parity shards (k+m <= 256)
//	     7    1 index of this shard, 0..k+m-1 (data shards first)
//	     8    8 packLen, bytes in the pack (u64 LE, at most MaxPackLen)
//	    16    8 shardLen = ceil(packLen/k) (u64 LE)
//	    24   32 packID
//	    56    4 dataCRC, CRC-32C (Castagnoli) of the shard data (u32 LE)
//	    60    4 headerCRC, CRC-32C of bytes 0..59 (u32 LE)
//	    64    shardLen bytes of shard data
//
// Data shard i holds pack bytes [i*shardLen, (i+1)*shardLen), the last one
// zero-padded; parity shards hold the Reed-Solomon parity of the data shards.
// With m = 0 the pack is plainly striped and every shard is needed.
//
// Encoding is deterministic and Rebuild regenerates a shard byte-identical
// to what Encode wrote: the repository records each shard object's CRC32C
// in its index and relies on a repaired shard matching it.
//
// Each shard is checked on its own (header CRC, packID, k, m, index, length,
// data CRC); a shard that fails any check is treated like a missing one and
// rebuilt from the others. Whether intact shards agree with each other is
// not verified beyond their geometry: the pack layer's own authentication
// catches what a shard checksum cannot. A reader that authenticates all it
// takes from a pack may skip the checksums and read ranges of shards: Reed-
// Solomon works byte position by byte position, so a range of a lost data
// shard is rebuilt from the same range of k others (ReconstructRange).
package erasure
