// Package alloc measures what a function allocates, so that fuzz targets
// can assert that a parser's memory is bounded by the size of its input
// and not by a length field inside it.
package alloc

import "runtime"

// Bytes returns the heap bytes allocated while fn ran. It stops the world
// twice (runtime.ReadMemStats), so it counts exactly but is slow: fuzz
// targets call it once per input. Allocations by other goroutines in the
// meantime count too; callers bound the result loosely. Under the race
// detector (RaceEnabled) it runs fn and returns 0: the plain test run
// checks the bounds.
func Bytes(fn func()) uint64 {
	if RaceEnabled {
		fn()
		return 0
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}
