package alloc_test

import (
	"testing"

	"github.com/ferrydr/ferry/testenv/alloc"
)

var sink []byte

func TestBytes(t *testing.T) {
	if alloc.RaceEnabled {
		t.Skip("allocations are not counted under the race detector")
	}
	if n := alloc.Bytes(func() { sink = make([]byte, 1<<20) }); n < 1<<20 || n > 1<<20+64<<10 {
		t.Fatalf("a 1 MiB allocation measured as %d bytes", n)
	}
	if n := alloc.Bytes(func() {}); n > 64<<10 {
		t.Fatalf("nothing measured as %d bytes", n)
	}
}
