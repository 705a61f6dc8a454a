// Package perf holds Ferry's benchmarks: chunking, hashing, packing,
// erasure coding, and whole backups and restores against in-memory stores
// and real MinIO servers on loopback. Run them with `make bench`; the last
// figures and the commands that produced them are in README.md.
package perf
