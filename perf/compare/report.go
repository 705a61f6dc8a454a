package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strings"
)

// results is everything one comparison measured.
type results struct {
	Date    string  `json:"date"`
	Machine string  `json:"machine"`
	Go      string  `json:"go"`
	Restic  string  `json:"restic"`
	Runs    int     `json:"runs"`
	Images  *images `json:"images"`
	// Samples by measurement ("ferry full", "restic full", ...), in run order.
	Samples map[string][]sample `json:"samples"`
	// Bytes in the buckets after both backups, per run: Ferry's three
	// prefixes together, restic's one.
	FerryStored   []int64         `json:"ferry_stored"`
	ResticStored  []int64         `json:"restic_stored"`
	ResticRawData json.RawMessage `json:"restic_raw_data,omitempty"`
	// Summaries are what the backups of run 1 printed (--json).
	Summaries   map[string]json.RawMessage `json:"summaries"`
	Commands    []string                   `json:"commands"`
	CBT         *cbtResult                 `json:"cbt,omitempty"`
	Targets     []target                   `json:"targets"`
	Profiles    []profile                  `json:"profiles,omitempty"`
	Memory      []memoryRun                `json:"memory,omitempty"`
	MemoryPeaks []memoryPeak               `json:"memory_peaks,omitempty"`
	// Tree is the commit measured and the files changed in the working
	// tree (other work in progress is part of what was measured).
	Tree string `json:"tree"`
}

// target is one goal of the issue: Ferry's figure over a reference at
// most Limit.
type target struct {
	Name      string  `json:"name"`
	Ferry     string  `json:"ferry"`
	Reference string  `json:"reference"`
	Ratio     float64 `json:"ratio"`
	Limit     float64 `json:"limit"`
	Pass      bool    `json:"pass"`
	// Op is the Ferry operation behind the figure, profiled when it fails.
	Op string `json:"op,omitempty"`
	// BestRatio is the ratio of the fastest runs (time targets).
	BestRatio float64 `json:"best_ratio,omitempty"`
	// CPUFloor is the least wall time the CPU work of Ferry's runs
	// allows here: the median of (Ferry's CPU + the MinIO servers' CPU)
	// over the cores; 0 when not measured.
	CPUFloor float64 `json:"cpu_floor_s,omitempty"`
}

// opSamples names the samples of each profiled operation.
var opSamples = map[string]string{"full": "ferry full", "second": "ferry second", "restore": "ferry restore", "degraded": "ferry degraded"}

// order is how measurements are listed.
var order = []string{"ferry full", "restic full", "ferry second", "restic second", "ferry restore", "restic restore", "ferry degraded", "ferry small backup", "ferry small restore"}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// walls returns the wall times of a measurement's runs.
func (r *results) walls(key string) []float64 {
	var v []float64
	for _, s := range r.Samples[key] {
		v = append(v, s.Wall)
	}
	return v
}

func (r *results) maxRSS(keys ...string) int64 {
	var m int64
	for _, k := range keys {
		for _, s := range r.Samples[k] {
			m = max(m, s.MaxRSS)
		}
	}
	return m
}

const memoryLimit = 256 << 20

// evaluate computes the targets from the medians.
func (r *results) evaluate() {
	add := func(name, op string, ferry, ref float64, refName string, limit float64, unit string) *target {
		t := target{Name: name, Op: op, Limit: limit,
			Ferry: fmt.Sprintf("%.1f %s", ferry, unit), Reference: fmt.Sprintf("%s %.1f %s", refName, ref, unit)}
		if ref > 0 {
			t.Ratio = ferry / ref
		}
		t.Pass = ref > 0 && t.Ratio <= limit
		r.Targets = append(r.Targets, t)
		return &r.Targets[len(r.Targets)-1]
	}
	// A time target compares medians; on a shared machine, where other
	// work only ever adds time, the fastest runs are shown too.
	timed := func(name, op string, ferry, ref []float64, refName string, limit float64) {
		t := add(name, op, median(ferry), median(ref), refName, limit, "s")
		if len(ferry) > 0 && len(ref) > 0 {
			t.BestRatio = slices.Min(ferry) / slices.Min(ref)
		}
		var floor []float64
		for _, s := range r.Samples[opSamples[op]] {
			floor = append(floor, (s.CPU()+s.MinIOCPU)/float64(runtime.NumCPU()))
		}
		t.CPUFloor = median(floor)
	}
	timed("full backup: at most 1/3 of restic's time", "full", r.walls("ferry full"), r.walls("restic full"), "restic", 1.0/3)
	if r.CBT != nil {
		var inc []float64
		for _, it := range r.CBT.Iterations {
			inc = append(inc, it.Inc.Seconds)
		}
		timed("second backup with changed-block tracking (CSI): at most 1/10 of restic's second backup", "cbt", inc, r.walls("restic second"), "restic", 0.1)
	}
	timed("second backup without changed-block tracking: at least 2x faster than restic", "second", r.walls("ferry second"), r.walls("restic second"), "restic", 0.5)
	timed("restore: at most 1/2 of restic's time", "restore", r.walls("ferry restore"), r.walls("restic restore"), "restic", 0.5)
	// Like for like: restic's restore with its image synced to disk, as
	// Ferry's restore ends (run by run).
	var synced []float64
	for i, w := range r.walls("restic restore") {
		if s := r.Samples["restic restore sync"]; i < len(s) {
			synced = append(synced, w+s[i].Wall)
		}
	}
	if len(synced) > 0 {
		timed("restore, restic's image synced to disk as Ferry's is: at most 1/2", "restore", r.walls("ferry restore"), synced, "restic + sync", 0.5)
	}
	timed("restore with one of three targets down: at most 1.25x Ferry's own", "degraded", r.walls("ferry degraded"), r.walls("ferry restore"), "Ferry, all up:", 1.25)
	mem := func(name, op string, keys ...string) {
		m := float64(r.maxRSS(keys...)) / (1 << 20)
		add(name, op, m, memoryLimit>>20, "limit", 1, "MiB")
	}
	mem(fmt.Sprintf("peak RSS, backup, small volume (%s)", mib(r.Images.SmallSize)), "memory-backup", "ferry small backup")
	mem(fmt.Sprintf("peak RSS, backup, volume 10x larger (%s)", mib(r.Images.Size)), "memory-backup", "ferry full", "ferry second")
	mem(fmt.Sprintf("peak RSS, restore, small volume (%s)", mib(r.Images.SmallSize)), "memory-restore", "ferry small restore")
	mem(fmt.Sprintf("peak RSS, restore, volume 10x larger (%s)", mib(r.Images.Size)), "memory-restore", "ferry restore", "ferry degraded")
	var fs, rs []float64
	for i := range r.FerryStored {
		fs = append(fs, float64(r.FerryStored[i])/(1<<20))
		rs = append(rs, float64(r.ResticStored[i])/(1<<20))
	}
	// (k+m)/k of restic's bytes, plus 2%.
	add("stored bytes, two related volumes: at most restic's x (k+m)/k + 2%", "", median(fs), median(rs)*1.5, "restic x 3/2 =", 1.02, "MiB")
}

// markdown renders the results as the README section does.
func (r *results) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	im := r.Images
	p("### Ferry vs restic (%s)\n\n", r.Date)
	p("%s; %s; %s. Three MinIO servers on loopback; Ferry erasure %s over the three, restic one repository on server %d (compression auto). Ferry: %s.\n\n",
		r.Machine, r.Go, r.Restic, erasure, resticServer+1, r.Tree)
	p("Volume: a raw ext4 image of %s holding %d real files (%s; the Go toolchain three times, two of them variants, Go module sources and part of them again as a variant, module zips, /usr/lib, /usr/share), %s allocated, the rest holes. ",
		mib(im.Size), im.Files, mib(im.FileBytes), mib(im.Allocated))
	p("Changed copy: files rewritten through a loop mount (%s written), %d blocks of 4 KiB differ: %.2f%% of the volume's blocks, %.2f%% of its allocated ones. Small volume: %s, %d files (%s).\n\n",
		mib(im.ChangeWritten), im.ChangedBlocks, 100*float64(im.ChangedBlocks*blockSize)/float64(im.Size),
		100*float64(im.ChangedBlocks*blockSize)/float64(im.Allocated), mib(im.SmallSize), im.SmallFiles, mib(im.SmallBytes))
	p("Medians of %d runs, interleaved (Ferry, restic, Ferry, restic ...), wall time from start to exit of each command.\n\n", r.Runs)
	p("| target | Ferry | reference | ratio | goal | result | ratio of the fastest runs | Ferry's CPU floor |\n|---|---|---|---|---|---|---|---|\n")
	for _, t := range r.Targets {
		verdict := "PASS"
		if !t.Pass {
			verdict = fmt.Sprintf("**FAIL** (%.2fx the goal)", t.Ratio/t.Limit)
		}
		best, floor := "", ""
		if t.BestRatio > 0 {
			best = fmt.Sprintf("%.3f", t.BestRatio)
		}
		if t.CPUFloor > 0 {
			floor = fmt.Sprintf("%.1f s", t.CPUFloor)
		}
		p("| %s | %s | %s | %.3f | ≤ %.3f | %s | %s | %s |\n", t.Name, t.Ferry, t.Reference, t.Ratio, t.Limit, verdict, best, floor)
	}
	p("\n(Ratio: of the medians. CPU floor: the median of Ferry's CPU time plus the MinIO servers' during each run, over %d cores: the least wall time that work allows on this machine.)\n", runtime.NumCPU())
	p("\nEvery run (wall s / CPU s of the command / peak RSS MiB / CPU s of the MinIO servers during it / CPU s of every other process, a measure of disturbance):\n\n")
	p("| measurement |")
	for i := 1; i <= r.Runs; i++ {
		p(" run %d |", i)
	}
	p(" median wall | median CPU |\n|---|")
	for i := 0; i < r.Runs+2; i++ {
		p("---|")
	}
	p("\n")
	for _, k := range order {
		ss := r.Samples[k]
		if len(ss) == 0 {
			continue
		}
		p("| %s |", k)
		var cpu []float64
		for _, s := range ss {
			p(" %.1f / %.1f / %d / %.1f / %.1f |", s.Wall, s.CPU(), s.MaxRSS>>20, s.MinIOCPU, s.Others)
			cpu = append(cpu, s.CPU())
		}
		for range r.Runs - len(ss) {
			p(" |")
		}
		p(" %.1f s | %.1f s |\n", median(r.walls(k)), median(cpu))
	}
	p("\nStored after both backups (MiB in the buckets, per run): Ferry")
	for _, n := range r.FerryStored {
		p(" %d", n>>20)
	}
	p(" (three servers together), restic")
	for _, n := range r.ResticStored {
		p(" %d", n>>20)
	}
	p(".\n")
	for _, k := range order {
		if sum, ok := r.Summaries[k]; ok {
			p("\n`%s` printed (run 1): `%s`", k, compact(sum))
		}
	}
	p("\n")
	if len(r.ResticRawData) > 0 {
		p("`restic stats --mode raw-data --json` after run 1: `%s`\n", r.ResticRawData)
	}
	if c := r.CBT; c != nil {
		p("\nChanged-block tracking, through the test CSI driver on the same two images (%s):\n\n    %s\n\n", c.Volume, c.Command)
		p("| iteration | full backup of snapshot 1 | incremental of snapshot 2 (delta) | snapshot 2 without CBT, compared with snapshot 1 |\n|---|---|---|---|\n")
		for i, it := range c.Iterations {
			p("| %d | %s | %s | %s |\n", i+1, it.Full, it.Inc, it.Reread)
		}
	}
	p("\nCommands (run 1; later runs use run2, run3 ... prefixes):\n\n```sh\n")
	for _, c := range r.Commands {
		p("%s\n", c)
	}
	p("```\n")
	if len(r.Memory) > 0 {
		p("\nMemory: the runs behind failed memory targets again, with the runtime's GC trace:\n\n| run | wall | peak RSS | GCs | largest heap at a GC start | largest live heap | largest heap goal |\n|---|---|---|---|---|---|---|\n")
		for _, m := range r.Memory {
			p("| %s, %s | %.1f s | %d MiB | %d | %d MB | %d MB | %d MB |\n", m.Op, m.Env, m.Wall, m.MaxRSS>>20, m.GCs, m.MaxHeap, m.MaxLive, m.MaxGoal)
		}
	}
	if len(r.MemoryPeaks) > 0 {
		p("\nThe same in a fresh process of perf/compare (-probe: the library calls the command makes), its memory sampled every 20 ms, at the peak RSS (MiB):\n\n| run | RSS before | peak RSS | anonymous | file-backed | Go heap objects | Go free heap | Go stacks | Go resident in all |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, m := range r.MemoryPeaks {
			p("| %s | %d | %d | %d | %d | %d | %d | %d | %d |\n", m.Op, m.Baseline>>20, m.RSS>>20, m.RSSAnon>>20, m.RSSFile>>20, m.HeapObjects>>20, m.HeapFree>>20, m.Stacks>>20, m.GoResident>>20)
		}
	}
	for _, pr := range r.Profiles {
		kind := "CPU profile"
		if strings.HasPrefix(pr.Op, "memory-") {
			kind = "Heap profile taken nearest the peak RSS"
		}
		p("\n%s, %s (`%s`):\n\n```\n%s```\n", kind, pr.Op, pr.Command, pr.Top)
	}
	return b.String()
}

func compact(m json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, m); err != nil {
		return string(m)
	}
	return b.String()
}
