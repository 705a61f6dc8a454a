package main

import (
	"strings"
	"testing"
)

func TestParseCBTLine(t *testing.T) {
	// As BenchmarkIncrementalCSI logs it (csiBackup.String).
	line := "    csi_incremental_bench_test.go:152: iteration 2: " +
		"full 31.90 s (read 2950 MiB; ranges 0.12 s, expose 0.40 s, backup 31.38 s: first chunk after 0.30 s, last after 30.00 s), " +
		"incremental 3.80 s (read 224 MiB; ranges 0.90 s, expose 0.50 s, backup 2.40 s: first chunk after 0.20 s, last after 1.90 s), " +
		"reread 14.90 s (read 2984 MiB; ranges 0.10 s, expose 0.30 s, backup 14.50 s: first chunk after 0.10 s, last after 14.00 s)"
	it, ok := parseCBTLine(line)
	if !ok {
		t.Fatal("line not recognised")
	}
	want := cbtIteration{
		Full:   cbtBackup{Seconds: 31.9, ReadMiB: 2950, Ranges: 0.12, Expose: 0.4, Backup: 31.38, FirstChunk: 0.3, LastChunk: 30},
		Inc:    cbtBackup{Seconds: 3.8, ReadMiB: 224, Ranges: 0.9, Expose: 0.5, Backup: 2.4, FirstChunk: 0.2, LastChunk: 1.9},
		Reread: cbtBackup{Seconds: 14.9, ReadMiB: 2984, Ranges: 0.1, Expose: 0.3, Backup: 14.5, FirstChunk: 0.1, LastChunk: 14},
	}
	if it != want {
		t.Errorf("got %+v, want %+v", it, want)
	}
	if _, ok := parseCBTLine("volume 3584 MiB from base.img"); ok {
		t.Error("a line that is no iteration was taken for one")
	}
}

func TestEvaluate(t *testing.T) {
	w := func(v ...float64) []sample {
		var s []sample
		for _, x := range v {
			s = append(s, sample{Wall: x, MaxRSS: 200 << 20})
		}
		return s
	}
	r := &results{
		Runs:   3,
		Images: &images{Size: 3584 << 20, SmallSize: 358 << 20},
		Samples: map[string][]sample{
			"ferry full": w(10, 12, 30), "restic full": w(33, 30, 60), // 12/33: over 1/3
			"ferry second": w(4, 5, 6), "restic second": w(10, 12, 11),
			"ferry restore": w(5, 5, 5), "restic restore": w(10, 10, 10),
			"ferry degraded":     w(6, 7, 8),
			"ferry small backup": w(1), "ferry small restore": w(1),
		},
		FerryStored:  []int64{1500 << 20},
		ResticStored: []int64{1000 << 20},
		CBT:          &cbtResult{Iterations: []cbtIteration{{Inc: cbtBackup{Seconds: 1}}, {Inc: cbtBackup{Seconds: 1.2}}}},
	}
	r.Samples["ferry full"][2].MaxRSS = 300 << 20
	r.evaluate()
	got := map[string]bool{}
	for _, tg := range r.Targets {
		got[strings.SplitN(tg.Name, ":", 2)[0]] = tg.Pass
	}
	want := map[string]bool{
		"full backup": false, // 12 / 33
		"second backup with changed-block tracking (CSI)": true, // 1.1 / 11
		"second backup without changed-block tracking":    true, // 5 / 11
		"restore":                                         true,  // 5 / 10
		"restore with one of three targets down":          false, // 7 / 5
		"peak RSS, backup, small volume (358 MiB)":        true,
		"peak RSS, backup, volume 10x larger (3584 MiB)":  false,
		"peak RSS, restore, small volume (358 MiB)":       true,
		"peak RSS, restore, volume 10x larger (3584 MiB)": true,
		"stored bytes, two related volumes":               true, // 1500 / 1500
	}
	for k, v := range want {
		if p, ok := got[k]; !ok || p != v {
			t.Errorf("%s: pass %v (listed %v), want %v", k, p, ok, v)
		}
	}
	if tg := r.Targets[0]; tg.BestRatio != 10.0/30 {
		t.Errorf("full backup: ratio of the fastest runs %v, want 10/30", tg.BestRatio)
	}
	if md := r.markdown(); !strings.Contains(md, "**FAIL**") || !strings.Contains(md, "| ferry full | 10.0 / 0.0 / 200") {
		t.Errorf("markdown lacks a FAIL or the per-run table:\n%s", md)
	}
}
