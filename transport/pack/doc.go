// Package pack builds and parses packs: many encrypted chunks in one object.
//
// A pack is
//
//	blob_0 || blob_1 || ... || blob_{n-1} || header || headerLen (u32 LE) || "FRYP"
//
// Each blob is one chunk, compressed with zstd when that shrinks it, then
// sealed (crypt.Seal, associated data "ferry blob v1" || chunk ID). The header
// is sealed too (associated data "ferry pack header v1"); its plaintext is
//
//	version (1) || count (uvarint) || count × entry
//	entry: flags (1: bit 0 = zstd) || chunk ID (32) || offset, length, raw length (uvarints)
//
// so the index can be rebuilt from the packs alone. A pack's ID is the
// SHA-256 of its bytes, which reveals nothing about the plaintext.
package pack
