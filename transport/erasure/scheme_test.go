package erasure

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseScheme(t *testing.T) {
	for _, in := range []string{"1+0", "1+1", "2+1", "4+2", "10+4", "255+1", "1+255", "128+128"} {
		s, err := ParseScheme(in)
		if err != nil {
			t.Errorf("ParseScheme(%q): %v", in, err)
			continue
		}
		if s.String() != in {
			t.Errorf("ParseScheme(%q).String() = %q", in, s)
		}
		if _, err := NewCoder(s); err != nil {
			t.Errorf("NewCoder(%v): %v", s, err)
		}
	}
	if s, _ := ParseScheme("4+2"); s != (Scheme{K: 4, M: 2}) || s.Shards() != 6 {
		t.Errorf("ParseScheme(4+2) = %+v, %d shards", s, s.Shards())
	}

	for in, want := range map[string]string{
		"3":                      "want data+parity",
		"":                       "want data+parity",
		"0+1":                    "at least 1 data shard",
		"2+-1":                   `"-1" is not a non-negative integer`,
		"200+100":                "at most 256 shards in all, got 200+100 = 300",
		"256+0":                  "at most 255 data shards",
		"+1":                     `data shards: "" is not`,
		"2+":                     `parity shards: "" is not`,
		"+2+1":                   "data shards",
		"2++1":                   `"+1" is not`,
		"2+1+1":                  `"1+1" is not`,
		" 2+1":                   "data shards",
		"2+1 ":                   "parity shards",
		"a+b":                    `"a" is not`,
		"99999999999999999999+1": "is more than 256",
		"1+300":                  "is more than 256",
	} {
		_, err := ParseScheme(in)
		if err == nil {
			t.Errorf("ParseScheme(%q) succeeded", in)
			continue
		}
		if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), fmt.Sprintf("%q", in)) {
			t.Errorf("ParseScheme(%q) = %q, want it to quote the input and say %q", in, err, want)
		}
	}
}

func TestNewCoderRejectsBadScheme(t *testing.T) {
	for _, s := range []Scheme{{0, 1}, {2, -1}, {256, 0}, {200, 100}} {
		if _, err := NewCoder(s); err == nil {
			t.Errorf("NewCoder(%+v) succeeded", s)
		}
	}
}

func TestSurvivableTargetLosses(t *testing.T) {
	for _, tc := range []struct {
		s       Scheme
		targets int
		want    int
	}{
		{Scheme{2, 1}, 3, 1},
		{Scheme{2, 1}, 1, 0},
		{Scheme{2, 1}, 2, 0},
		{Scheme{2, 1}, 5, 1},
		{Scheme{4, 2}, 6, 2},
		{Scheme{4, 2}, 3, 1},
		{Scheme{4, 2}, 2, 0},
		{Scheme{4, 2}, 4, 1},
		{Scheme{2, 2}, 2, 1},
		{Scheme{1, 0}, 1, 0},
		{Scheme{4, 0}, 4, 0},
		{Scheme{10, 4}, 14, 4},
		{Scheme{10, 4}, 7, 2},
		{Scheme{10, 4}, 0, 0},
	} {
		if got := SurvivableTargetLosses(tc.s, tc.targets); got != tc.want {
			t.Errorf("SurvivableTargetLosses(%v, %d) = %d, want %d", tc.s, tc.targets, got, tc.want)
		}
	}
}

// TestSurvivableTargetLossesBruteForce checks the closed form against every
// subset of lost targets.
func TestSurvivableTargetLossesBruteForce(t *testing.T) {
	for k := 1; k <= 7; k++ {
		for m := 0; m <= 4; m++ {
			s := Scheme{K: k, M: m}
			for targets := 1; targets <= 12; targets++ {
				// worst[t] = most shards any t lost targets hold.
				worst := make([]int, targets+1)
				for set := 0; set < 1<<targets; set++ {
					lost, size := 0, 0
					for tg := range targets {
						if set&(1<<tg) != 0 {
							size++
						}
					}
					for i := range s.Shards() {
						if set&(1<<TargetFor(i, targets)) != 0 {
							lost++
						}
					}
					worst[size] = max(worst[size], lost)
				}
				want := 0
				for size := 1; size <= targets && worst[size] <= m; size++ {
					want = size
				}
				if got := SurvivableTargetLosses(s, targets); got != want {
					t.Errorf("SurvivableTargetLosses(%v, %d) = %d, brute force says %d", s, targets, got, want)
				}
			}
		}
	}
}
