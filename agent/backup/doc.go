// Package backup copies a volume into a repository.
//
// The pipeline runs under one errgroup with bounded queues:
//
//	split (chunk.Parallel: canonical cuts found by Workers goroutines, one
//	  segment each; chunk.Incremental for an incremental backup)
//	  -> read, hash, dedupe, compress, seal (Workers goroutines: each reads
//	     its chunk's bytes itself, into its own pack.Sealer, and puts new
//	     blobs into the pack being filled, in volume order)
//	  -> erasure-code and upload full packs (Uploads at once, every shard
//	     in parallel)
//	  -> collect chunk IDs in volume order (extents, digest, progress)
//	  -> index objects, then the manifest (the commit point)
//
// The cut finders look at the volume's bytes to place the cuts and keep
// none; a worker reads a chunk's bytes again when it hashes it, usually
// from the page cache, in parallel with the others. Stats.BytesRead counts
// each byte of the volume read once.
//
// Memory is fixed by the repository's parameters, not the volume: per
// worker two chunk buffers (the Sealer's) and a cut finder's chunk buffer
// and read blocks, two pack buffers (one filling, one being erasure-coded),
// and Uploads packs' shards (a repo.Shards per uploader). Nothing else is
// allocated per chunk but its small bookkeeping; the extents wait on the
// local disk for the commit (repo.SnapshotWriter), which reads them back a
// segment at a time.
package backup
