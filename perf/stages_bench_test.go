package perf

import (
	"testing"

	"github.com/ferrydr/ferry/transport/erasure"
)

// BenchmarkStages runs the stages `ferry bench` measures, on the same
// 64 MiB of generated data, one core each. Bytes are each stage's own input.
func BenchmarkStages(b *testing.B) {
	st, err := NewStages(SampleData(1, 64<<20), erasure.Scheme{K: 2, M: 1})
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range st.List {
		b.Run(s.Name, func(b *testing.B) {
			b.SetBytes(s.Bytes)
			for b.Loop() {
				if err := s.Run(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
