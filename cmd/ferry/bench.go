package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/perf"
	"github.com/ferrydr/ferry/transport/erasure"
)

// benchSample is the generated data every stage runs over: large enough
// for several packs, small enough to build in a fraction of a second.
const benchSample = 64 << 20

// benchReport is what `ferry bench --json` prints.
type benchReport struct {
	Cores   int           `json:"cores"`
	Erasure string        `json:"erasure"`
	Sample  int64         `json:"sample_bytes"`
	Ratio   float64       `json:"compression_ratio"` // packed bytes / sample bytes
	Stages  []perf.Result `json:"stages"`
	// CPU-bound estimates of what one node backs up per hour, new data
	// only (no dedupe), without reading the source or uploading.
	PerHourParallel float64 `json:"node_bytes_per_hour"`
	PerHourSerial   float64 `json:"node_bytes_per_hour_serial_chunking"`
}

func benchCmd() *cobra.Command {
	var seconds float64
	var scheme string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "bench [--seconds N] [--erasure K+M] [--json]",
		Short: "Measure this machine's chunking, hashing, compression, sealing and erasure-coding speed",
		Long: `Measure, on generated data that mixes compressible and incompressible runs,
how fast one core chunks, hashes, compresses, seals, packs and erasure-codes
with Ferry's own code, each stage alone for --seconds, and estimate what this
node can back up per hour when the CPU is the limit (new data, no dedupe;
reading the source and uploading not included).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := erasure.ParseScheme(scheme)
			if err != nil {
				return usageError{fmt.Errorf("--erasure: %w", err)}
			}
			if !(seconds > 0 && seconds <= 3600) {
				return usageError{fmt.Errorf("--seconds %v: want more than 0 and at most 3600", seconds)}
			}
			st, err := perf.NewStages(perf.SampleData(1, benchSample), s)
			if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			rep := benchReport{Cores: runtime.GOMAXPROCS(0), Erasure: s.String(), Sample: st.Sample, Ratio: float64(st.Stored) / float64(st.Sample)}
			progress := !asJSON && isTerminal(os.Stderr)
			var perByte, chunkPerByte float64 // CPU seconds per volume byte
			for _, stage := range st.List {
				if progress {
					fmt.Fprintf(os.Stderr, "\r\033[Kmeasuring %s ...", stage.Name)
				}
				res, err := st.Measure(cmd.Context(), stage, time.Duration(seconds*float64(time.Second)))
				if err != nil {
					return fmt.Errorf("bench: %w", err)
				}
				rep.Stages = append(rep.Stages, res)
				perByte += 1 / (res.VolumeMBps * 1e6)
				if stage.Name == "chunk" {
					chunkPerByte = 1 / (res.VolumeMBps * 1e6)
				}
			}
			if progress {
				fmt.Fprint(os.Stderr, "\r\033[K")
			}
			// Every stage but chunking runs on all cores in a backup; the
			// chunker of one volume runs on one goroutine unless the
			// pipeline splits the volume into segments.
			rep.PerHourParallel = 3600 * float64(rep.Cores) / perByte
			rep.PerHourSerial = min(rep.PerHourParallel, 3600/chunkPerByte)
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			printBench(cmd, rep)
			return nil
		},
	}
	f := cmd.Flags()
	f.Float64Var(&seconds, "seconds", 2, "how long to run each stage")
	// The default follows `ferry init`'s, so that the figure is the one of
	// a repository created without options.
	f.StringVar(&scheme, "erasure", initCmd(&globals{}).Flags().Lookup("erasure").DefValue, "erasure coding K+M to measure")
	f.BoolVar(&asJSON, "json", false, "print the results as JSON")
	return cmd
}

func printBench(cmd *cobra.Command, rep benchReport) {
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "%s of generated data (compresses to %.0f%%), one core per stage, erasure %s:\n\n",
		humanize.IBytes(uint64(rep.Sample)), 100*rep.Ratio, rep.Erasure)
	fmt.Fprintf(out, "%-9s %14s %14s  %s\n", "stage", "MB/s per core", "volume MB/s", "what one core does")
	for _, r := range rep.Stages {
		fmt.Fprintf(out, "%-9s %14.0f %14.0f  %s\n", r.Name, r.MBps, r.VolumeMBps, r.What)
	}
	fmt.Fprintf(out, "\n(MB/s: the stage's own input, volume bytes before it, compressed blobs after; volume MB/s: bytes of the volume per second.)\n")
	fmt.Fprintf(out, "One node, %d cores, CPU only, new data: about %s per hour with every stage on every core; %s per hour with the chunker on one core.\n",
		rep.Cores, humanize.Bytes(uint64(rep.PerHourParallel)), humanize.Bytes(uint64(rep.PerHourSerial)))
}
