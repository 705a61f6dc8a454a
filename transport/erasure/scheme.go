package erasure

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// maxShards bounds k+m: Reed-Solomon over GF(2^8) has at most 256 shards.
const maxShards = 256

// Scheme is an erasure-coding layout: K data shards and M parity shards.
type Scheme struct{ K, M int }

// ParseScheme parses "k+m", for example "4+2" or "1+0".
func ParseScheme(s string) (Scheme, error) {
	ks, ms, ok := strings.Cut(s, "+")
	if !ok {
		return Scheme{}, fmt.Errorf("erasure scheme %q: want data+parity shards, for example 4+2", s)
	}
	k, err := parseCount(ks)
	if err != nil {
		return Scheme{}, fmt.Errorf("erasure scheme %q: data shards: %w", s, err)
	}
	m, err := parseCount(ms)
	if err != nil {
		return Scheme{}, fmt.Errorf("erasure scheme %q: parity shards: %w", s, err)
	}
	sc := Scheme{K: k, M: m}
	if err := sc.Validate(); err != nil {
		return Scheme{}, fmt.Errorf("erasure scheme %q: %w", s, err)
	}
	return sc, nil
}

// parseCount accepts plain decimal digits only, so that "+1", "-1" and " 1"
// are rejected rather than read as numbers.
func parseCount(s string) (int, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a non-negative integer", s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > maxShards {
		return 0, fmt.Errorf("%q is more than %d", s, maxShards)
	}
	return n, nil
}

// Validate reports whether the scheme is usable: k >= 1, m >= 0, k <= 255, k+m <= 256.
func (s Scheme) Validate() error {
	switch {
	case s.K < 1:
		return fmt.Errorf("need at least 1 data shard, got %d", s.K)
	case s.M < 0:
		return fmt.Errorf("parity shards must not be negative, got %d", s.M)
	case s.K > 255:
		// The header stores k in one byte.
		return fmt.Errorf("at most 255 data shards, got %d", s.K)
	case s.K+s.M > maxShards:
		return fmt.Errorf("at most %d shards in all, got %d+%d = %d", maxShards, s.K, s.M, s.K+s.M)
	}
	return nil
}

// String returns the scheme as "k+m".
func (s Scheme) String() string { return fmt.Sprintf("%d+%d", s.K, s.M) }

// Shards returns the number of shards per pack, k+m.
func (s Scheme) Shards() int { return s.K + s.M }

// TargetFor returns the target that stores a shard: shard mod targets.
// targets must be positive.
func TargetFor(shard, targets int) int { return shard % targets }

// SurvivableTargetLosses returns how many whole targets may be lost, in the
// worst case, without losing a pack: the largest t such that any t of the
// targets together hold at most s.M of a pack's shards, with shard i on
// target TargetFor(i, targets). It is 0 when s.M is 0 or targets < 1.
func SurvivableTargetLosses(s Scheme, targets int) int {
	if targets < 1 || s.M <= 0 {
		return 0
	}
	// Target j holds n/T shards, plus one for j < n%T. The worst t targets
	// to lose are the t fullest ones.
	counts := make([]int, targets)
	for i := range s.Shards() {
		counts[TargetFor(i, targets)]++
	}
	slices.Sort(counts)
	slices.Reverse(counts)
	lost, t := 0, 0
	for t < targets && lost+counts[t] <= s.M {
		lost += counts[t]
		t++
	}
	return t
}
