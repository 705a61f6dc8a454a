//go:build race

package pack

// raceEnabled: the race detector is on. It drops a share of what is put
// into a sync.Pool, so code that allocates nothing in a normal build
// allocates under it.
const raceEnabled = true
