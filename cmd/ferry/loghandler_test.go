package main

import (
	"bytes"
	"errors"
	"log/slog"
	"testing"
)

// TestCLIHandler: log records read as the command's other messages, one
// line each, with their attributes, groups included, and nothing below
// the level.
func TestCLIHandler(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(newCLIHandler(&out, slog.LevelInfo))
	log.Warn("the local index cache failed; keeping the index in memory", "dir", "/var/cache/x", "error", errors.New("open x: no space left on device"))
	log.Debug("not shown")
	log.With("repo", "r1").WithGroup("pack").Info("rebuilt", "shard", 2, slog.Group("target", "n", 3))
	log.Error("failed", "empty", "")
	want := `ferry: warning: the local index cache failed; keeping the index in memory (dir=/var/cache/x error="open x: no space left on device")
ferry: rebuilt (repo=r1 pack.shard=2 pack.target.n=3)
ferry: error: failed (empty="")
`
	if got := out.String(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	out.Reset()
	slog.New(newCLIHandler(&out, slog.LevelDebug)).WithGroup("g").With("a", 1).Debug("shown")
	if got := out.String(); got != "ferry: debug: shown (g.a=1)\n" {
		t.Fatalf("debug with a group's attributes: %q", got)
	}
}
