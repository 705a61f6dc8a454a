// Package retention decides which snapshots keep rules keep: the newest N
// of a series, and the newest of each of the last N hours, days, weeks and
// months that have snapshots. It only decides; repo.Forget deletes.
//
// A series is the snapshots of one name (a volume: the ferry.dev/name of
// its class, NAMESPACE/PVC, or the backup's --name). Rules apply to each
// series on its own. Periods are calendar hours, days, ISO weeks and
// months in UTC, so that every agent and every operator's command agree.
// A snapshot counts at the time its backup started. A snapshot kept by no
// rule goes; with at least one rule the newest snapshot of every series
// stays.
package retention

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Policy is a set of keep rules; zero rules keep nothing by themselves.
type Policy struct {
	Last    int `json:"last,omitempty"`
	Hourly  int `json:"hourly,omitempty"`
	Daily   int `json:"daily,omitempty"`
	Weekly  int `json:"weekly,omitempty"`
	Monthly int `json:"monthly,omitempty"`
}

// IsZero reports whether the policy has no rule: it keeps everything
// (Apply refuses it rather than forget every snapshot).
func (p Policy) IsZero() bool { return p == Policy{} }

// ErrNoRule means a policy without any rule was applied.
var ErrNoRule = errors.New("no keep rule given: refusing to forget every snapshot")

// Validate checks that no rule is negative.
func (p Policy) Validate() error {
	for _, r := range p.rules() {
		if r.n < 0 {
			return fmt.Errorf("keep %s %d: want 0 or more", r.name, r.n)
		}
	}
	return nil
}

func (p Policy) String() string {
	var parts []string
	for _, r := range p.rules() {
		if r.n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", r.name, r.n))
		}
	}
	if len(parts) == 0 {
		return "no rule"
	}
	return "keep " + strings.Join(parts, ", ")
}

type rule struct {
	name   string
	n      int
	bucket func(time.Time) string // "" for keep-last: every snapshot is its own
}

func (p Policy) rules() []rule {
	return []rule{
		{"last", p.Last, nil},
		{"hourly", p.Hourly, func(t time.Time) string { return t.Format("2006-01-02T15") }},
		{"daily", p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{"weekly", p.Weekly, func(t time.Time) string {
			y, w := t.ISOWeek()
			return fmt.Sprintf("%04d-W%02d", y, w)
		}},
		{"monthly", p.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
	}
}

// Item is one snapshot as the rules see it.
type Item struct {
	ID     string
	Series string
	Time   time.Time
}

// Decision says whether an item is kept, and by which rules: "last",
// "hourly 2026-02-12T09", "daily 2026-02-12", "weekly 2026-W07",
// "monthly 2026-02".
type Decision struct {
	Item
	Keep    bool
	Reasons []string
}

// Apply decides for every item, per series. The result is ordered by
// series, then newest first.
func Apply(items []Item, p Policy) ([]Decision, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if p.IsZero() {
		return nil, ErrNoRule
	}
	out := make([]Decision, len(items))
	for i, it := range items {
		it.Time = it.Time.UTC()
		out[i] = Decision{Item: it}
	}
	slices.SortFunc(out, func(a, b Decision) int {
		return cmp.Or(strings.Compare(a.Series, b.Series), b.Time.Compare(a.Time), strings.Compare(a.ID, b.ID))
	})
	for start := 0; start < len(out); {
		end := start + 1
		for end < len(out) && out[end].Series == out[start].Series {
			end++
		}
		series := out[start:end]
		for _, r := range p.rules() {
			kept, last := 0, ""
			for i := range series {
				if kept == r.n {
					break
				}
				b := ""
				if r.bucket != nil {
					if b = r.bucket(series[i].Time); b == last {
						continue // an older snapshot of a period already kept
					}
				}
				last = b
				kept++
				series[i].Keep = true
				series[i].Reasons = append(series[i].Reasons, strings.TrimSpace(r.name+" "+b))
			}
		}
		start = end
	}
	return out, nil
}
