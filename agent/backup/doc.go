// Package backup copies a volume into a repository.
//
// The pipeline runs under one errgroup with bounded queues:
//
//	split (1 goroutine: canonical chunking, holes skipped)
//	  -> hash, dedupe, compress, seal (GOMAXPROCS workers)
//	  -> collect in volume order (extents, digest, packing)
//	  -> erasure-code and upload packs (Uploads packs at a time, every shard in parallel)
//	  -> index objects, then the manifest (the commit point)
//
// Memory is bounded by the chunk buffers (2·Workers+2 of the chunker's
// maximum size), the sealed chunks queued for the collector, the pack being
// filled, and Uploads packs' shards in flight; nothing grows with the volume
// but the manifest's extent list (about 40 bytes per MiB).
package backup
