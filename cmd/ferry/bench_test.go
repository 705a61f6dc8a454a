package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestBench(t *testing.T) {
	var rep struct {
		Cores   int     `json:"cores"`
		Erasure string  `json:"erasure"`
		Ratio   float64 `json:"compression_ratio"`
		Stages  []struct {
			Name       string  `json:"name"`
			MBps       float64 `json:"mb_per_s"`
			VolumeMBps float64 `json:"volume_mb_per_s"`
		} `json:"stages"`
		PerHour       float64 `json:"node_bytes_per_hour"`
		PerHourSerial float64 `json:"node_bytes_per_hour_serial_chunking"`
	}
	out := mustFerry(t, nil, "bench", "--seconds", "0.05", "--erasure", "4+2", "--json")
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench --json: %v\n%s", err, out)
	}
	if rep.Cores < 1 || rep.Erasure != "4+2" || !(rep.Ratio > 0.2 && rep.Ratio < 0.95) {
		t.Errorf("cores %d, erasure %q, compression ratio %.2f: want >= 1, 4+2, mixed data (0.2..0.95)", rep.Cores, rep.Erasure, rep.Ratio)
	}
	want := []string{"chunk", "hash", "compress", "seal", "pack", "erasure"}
	var got []string
	for _, s := range rep.Stages {
		got = append(got, s.Name)
		if !(s.MBps > 0 && s.VolumeMBps > 0) {
			t.Errorf("stage %s: %.1f MB/s, %.1f volume MB/s; want positive figures", s.Name, s.MBps, s.VolumeMBps)
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("stages %v, want %v", got, want)
	}
	if !(rep.PerHour > 0 && rep.PerHourSerial > 0 && rep.PerHourSerial <= rep.PerHour) {
		t.Errorf("per hour: %.0f, serial chunking %.0f: want positive, serial <= parallel", rep.PerHour, rep.PerHourSerial)
	}

	text := mustFerry(t, nil, "bench", "--seconds", "0.01")
	for _, s := range append(want, "per hour", "erasure 2+1") {
		if !strings.Contains(text, s) {
			t.Errorf("bench output lacks %q:\n%s", s, text)
		}
	}
	if r := ferry(t, nil, "bench", "--seconds", "0"); r.code != exitUsage {
		t.Errorf("bench --seconds 0: exit %d, want %d (usage)", r.code, exitUsage)
	}
	if r := ferry(t, nil, "bench", "--erasure", "0+1"); r.code != exitUsage {
		t.Errorf("bench --erasure 0+1: exit %d, want %d (usage)", r.code, exitUsage)
	}
}
