package main

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/dustin/go-humanize"
)

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// showProgress prints done/total, rate and ETA to stderr once a second while
// stderr is a terminal (or FERRY_PROGRESS=1), and nothing otherwise. The
// returned func stops it and clears the line.
func showProgress(total, done func() int64, verb string, quiet bool) func() {
	if quiet || !(isTerminal(os.Stderr) || os.Getenv("FERRY_PROGRESS") == "1") {
		return func() {}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	start := time.Now()
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				fmt.Fprint(os.Stderr, "\r\033[K")
				return
			case <-t.C:
				fmt.Fprintf(os.Stderr, "\r\033[K%s", progressLine(verb, done(), total(), time.Since(start)))
			}
		}
	}()
	return func() { close(stop); wg.Wait() }
}

func progressLine(verb string, done, total int64, elapsed time.Duration) string {
	rate := float64(done) / elapsed.Seconds()
	pct, eta := 0.0, "?"
	if total > 0 {
		pct = 100 * float64(done) / float64(total)
	}
	if rate > 0 && total >= done {
		eta = time.Duration(float64(total-done) / rate * float64(time.Second)).Round(time.Second).String()
	}
	return fmt.Sprintf("%s %s / %s (%.0f%%), %s/s, ETA %s", verb, human(done), human(total), pct, human(int64(rate)), eta)
}

// human prints a byte count the way people read them (1.5 GiB).
func human(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }
