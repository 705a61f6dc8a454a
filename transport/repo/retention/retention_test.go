package retention

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// at parses "2006-01-02 15:04" in UTC.
func at(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestApply(t *testing.T) {
	// Series "db": two snapshots a day for ten days from Wednesday
	// 2026-01-07, at 06:00 and 18:00; plus one on 2025-12-31 and one on
	// 2025-11-30.
	var db []Item
	for d := 0; d < 10; d++ {
		for _, h := range []int{6, 18} {
			tm := at("2026-01-07 00:00").AddDate(0, 0, d).Add(time.Duration(h) * time.Hour)
			db = append(db, Item{ID: tm.Format("0102-15"), Series: "db", Time: tm})
		}
	}
	db = append(db, Item{ID: "1231-12", Series: "db", Time: at("2025-12-31 12:00")}, Item{ID: "1130-12", Series: "db", Time: at("2025-11-30 12:00")})

	for _, c := range []struct {
		name string
		p    Policy
		keep []string // newest first
		why  map[string][]string
	}{
		{"last 3", Policy{Last: 3}, []string{"0116-18", "0116-06", "0115-18"}, map[string][]string{"0116-18": {"last"}}},
		{"daily 3", Policy{Daily: 3}, []string{"0116-18", "0115-18", "0114-18"}, map[string][]string{"0115-18": {"daily 2026-01-15"}}},
		{"hourly 2: two hours that have snapshots", Policy{Hourly: 2}, []string{"0116-18", "0116-06"}, nil},
		// ISO weeks: 2026-W02 is Jan 5-11, W03 Jan 12-18; Dec 31 is in
		// 2026-W01, Nov 30 in 2025-W48.
		{"weekly 3", Policy{Weekly: 3}, []string{"0116-18", "0111-18", "1231-12"}, map[string][]string{"0111-18": {"weekly 2026-W02"}, "1231-12": {"weekly 2026-W01"}}},
		{"monthly 5: only three months have snapshots", Policy{Monthly: 5}, []string{"0116-18", "1231-12", "1130-12"}, nil},
		{"rules add up", Policy{Last: 1, Daily: 2, Monthly: 2}, []string{"0116-18", "0115-18", "1231-12"},
			map[string][]string{"0116-18": {"last", "daily 2026-01-16", "monthly 2026-01"}, "1231-12": {"monthly 2025-12"}}},
		{"more than there are", Policy{Last: 100}, nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			ds, err := Apply(slices.Clone(db), c.p)
			if err != nil {
				t.Fatal(err)
			}
			var kept []string
			for _, d := range ds {
				if d.Keep {
					kept = append(kept, d.ID)
				} else if len(d.Reasons) > 0 {
					t.Errorf("%s goes with reasons %v", d.ID, d.Reasons)
				}
				if want, ok := c.why[d.ID]; ok && !reflect.DeepEqual(d.Reasons, want) {
					t.Errorf("%s kept for %q, want %q", d.ID, d.Reasons, want)
				}
			}
			if c.keep == nil {
				if len(kept) != len(db) {
					t.Fatalf("kept %d of %d", len(kept), len(db))
				}
				return
			}
			if !reflect.DeepEqual(kept, c.keep) {
				t.Fatalf("kept %v, want %v", kept, c.keep)
			}
		})
	}
}

// Series are decided on their own, and the newest of each always stays.
func TestApplySeries(t *testing.T) {
	var items []Item
	for i := range 5 {
		for _, s := range []string{"a", "b/c"} {
			items = append(items, Item{ID: fmt.Sprintf("%s-%d", s, i), Series: s, Time: at("2026-02-01 10:00").Add(time.Duration(i) * time.Minute)})
		}
	}
	items = append(items, Item{ID: "lonely", Series: "old", Time: at("2020-01-01 00:00")})
	ds, err := Apply(items, Policy{Last: 2})
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, d := range ds {
		if d.Keep {
			kept = append(kept, d.ID)
		}
	}
	if want := []string{"a-4", "a-3", "b/c-4", "b/c-3", "lonely"}; !reflect.DeepEqual(kept, want) {
		t.Fatalf("kept %v, want %v", kept, want)
	}
	// Equal times are ordered by ID, so the same snapshot stays every time.
	same := []Item{{ID: "y", Series: "s", Time: at("2026-01-01 00:00")}, {ID: "x", Series: "s", Time: at("2026-01-01 00:00")}}
	ds, _ = Apply(same, Policy{Last: 1})
	if !ds[0].Keep || ds[0].ID != "x" {
		t.Fatalf("tie: %+v", ds)
	}
}

func TestPolicy(t *testing.T) {
	if _, err := Apply(nil, Policy{}); !errors.Is(err, ErrNoRule) {
		t.Fatalf("no rule: %v", err)
	}
	if err := (Policy{Daily: -1}).Validate(); err == nil || !strings.Contains(err.Error(), "daily") {
		t.Fatalf("negative: %v", err)
	}
	if s := (Policy{Last: 3, Weekly: 4}).String(); s != "keep last 3, weekly 4" {
		t.Fatalf("String: %q", s)
	}
}
