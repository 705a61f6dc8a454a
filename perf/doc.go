// Package perf holds Ferry's benchmarks: chunking, hashing, packing,
// erasure coding, and whole backups and restores against in-memory stores
// and real MinIO servers on loopback. Run them with `make bench`; the last
// figures and the commands that produced them are in README.md.
//
// Stages measures the CPU-bound steps of a backup one by one on generated
// data; `ferry bench` and BenchmarkStages both run it. perf/compare sets
// Ferry against restic on this machine for the targets of issue 6.
package perf
