package chunk

import "bytes"

// zeros is compared against with bytes.Equal, which the runtime vectorises.
var zeros [16 << 10]byte

// IsZero reports whether every byte of b is zero.
func IsZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// firstNonZero returns the index of the first non-zero byte of b, or len(b).
func firstNonZero(b []byte) int {
	const step = 4 << 10
	for i := 0; i < len(b); i += step {
		piece := b[i:min(i+step, len(b))]
		if bytes.Equal(piece, zeros[:len(piece)]) {
			continue
		}
		for j, c := range piece {
			if c != 0 {
				return i + j
			}
		}
	}
	return len(b)
}
