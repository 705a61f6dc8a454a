// Package repo is a Ferry repository spread over T targets (object stores).
//
// Objects on target t (names relative to the target's prefix):
//
//	keys/<id>                    key objects (crypt), on every target
//	config                       sealed Config, on every target; Target = t
//	data/<pp>/<pack>.<i>         shard i of a pack, on target i mod T (erasure)
//	index/<id>                   sealed index objects (chunk -> pack, and each shard's CRC32C), on every target
//	snapshots/<id>               sealed snapshot manifests, on every target
//	locks/<id>                   sealed locks of running backups and prunes (lock.go), on every target
//	plans/<id>                   sealed prune plans: packs marked unreferenced (plan.go), on every target
//	deletions/<id>               sealed deletion records of forget and prune (deletion.go), on every target
//
// <pack> is the pack's ID (SHA-256 of its bytes), <pp> its first two hex
// digits; the other IDs are the SHA-256 of the sealed object. Every object
// is written once and never overwritten. A large snapshot's extents are
// blobs in packs too (segments, segment.go). A backup commits in the order
// shards -> index -> manifest: the manifest is the commit point, so a crash
// before it leaves unreferenced objects for prune, never a manifest that
// points at missing data (SaveSnapshot checks). Forget deletes manifests;
// Prune deletes the packs no manifest refers to, in two phases safe
// against backups running meanwhile (prune.go).
package repo
