//go:build !race

package alloc

// RaceEnabled reports whether the race detector is on (see race.go).
const RaceEnabled = false
