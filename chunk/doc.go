// Package chunk splits a volume into content-defined chunks, canonically.
//
// The canonical chunking of a volume is a function of its bytes alone:
// unallocated ranges (holes) read as zeros, and the cuts are exactly those of
// github.com/restic/chunker (v0.4.0) run from offset 0 over the whole volume
// byte stream with the Params' polynomial, size bounds and average bits.
// Knowing where the holes are only makes chunking cheaper, never different,
// so two snapshots of the same bytes chunk alike whatever their allocation
// maps say, and a chunking restarted at any canonical cut continues exactly
// as a single pass would (restic/chunker resets at every cut; see DESIGN.md,
// "Incremental CDC with resynchronisation").
//
// Zero chunks. A chunk whose bytes are all zero is reported with Zero set and
// no data; it is stored as a hole and never uploaded. The window of the
// Rabin fingerprint over zeros hashes to zero, so a chunk that starts in a
// run of zeros at least S bytes long is exactly S bytes long, where S, the
// zero stride, depends on the Params only (ZeroStride; S == MinSize with
// v0.4.0). The Splitter therefore never scans long zero runs: it reports each
// maximal sequence of consecutive all-zero canonical chunks as ONE merged
// Zero chunk. A merged Zero chunk of length n*S stands for n canonical chunks
// of length S, i.e. it has implicit cuts at Off + k*S; only a Zero chunk that
// ends the volume may also carry a final canonical chunk shorter than S.
// Merging is canonical too: the chunk list is identical whether a zero run
// was declared as a hole or found by reading zeros.
//
// Incremental chunking (Incremental). Given the previous snapshot's chunk
// list and the ranges that changed, only the chunks around the changes are
// re-chunked, from the old cut before a change to the first new cut that is
// also an old cut after it; every other chunk is reused unread, and the
// result is identical to a Splitter over the whole new volume. The caller
// must list every byte that changed (the SnapshotMetadata delta does).
// Within a re-chunked chunk, the positions the old chunking proves are no
// cuts (past an old chunk's MinSize, before its end, with an unchanged
// window) are skipped unhashed, so the chunker hashes mostly from the
// change on.
//
// Parallel chunking (Parallel). Several goroutines chunk segments of the
// volume from their first byte on; where a segment's cuts meet the
// canonical chain coming from before, its chunks are canonical from there
// (the same resynchronisation), so the output is identical to a Splitter's.
// Its chunks come without data: the caller reads each chunk's bytes
// (ReadData) where it needs them.
//
// Reads go to the source in aligned blocks of 1 MiB (minus declared holes,
// which are never read), through a small cache, so each allocated byte is
// read once; memory is about 2.5 MiB per Splitter plus the caller's buffer.
package chunk
