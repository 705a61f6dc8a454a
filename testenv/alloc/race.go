//go:build race

package alloc

// RaceEnabled reports whether the race detector is on. Its runtime
// allocates on its own and makes sync.Pool drop a share of what is put in
// it, so allocation counts under it mean nothing.
const RaceEnabled = true
