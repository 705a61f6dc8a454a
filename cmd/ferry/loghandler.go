package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
)

// cliHandler writes log records the way the command's other messages read:
//
//	ferry: warning: the local index cache failed; keeping the index in memory (dir=/x error="...")
//
// one line each, without the time (a person reads it as it happens; with
// --log-level debug the lines are in order anyway). The agent, which runs
// unattended, logs JSON instead.
type cliHandler struct {
	w      io.Writer
	mu     *sync.Mutex
	level  slog.Leveler
	prefix string      // of the keys: the open groups, "a.b."
	attrs  []slog.Attr // from WithAttrs, keys already prefixed
}

func newCLIHandler(w io.Writer, level slog.Leveler) *cliHandler {
	return &cliHandler{w: w, mu: &sync.Mutex{}, level: level}
}

func (h *cliHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

func (h *cliHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString("ferry: ")
	switch {
	case r.Level >= slog.LevelError:
		b.WriteString("error: ")
	case r.Level >= slog.LevelWarn:
		b.WriteString("warning: ")
	case r.Level >= slog.LevelInfo:
	default:
		b.WriteString("debug: ")
	}
	b.WriteString(r.Message)
	var attrs []string
	add := func(prefix string, a slog.Attr) {
		attrs = appendAttr(attrs, prefix, a)
	}
	for _, a := range h.attrs {
		add("", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		add(h.prefix, a)
		return true
	})
	if len(attrs) > 0 {
		b.WriteString(" (")
		b.WriteString(strings.Join(attrs, " "))
		b.WriteString(")")
	}
	b.WriteString("\n")
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.w, b.String())
	return err
}

// appendAttr appends a as key=value, a group's attributes each with the
// group's name before their keys, and nothing for an empty attribute.
func appendAttr(out []string, prefix string, a slog.Attr) []string {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return out
	}
	if a.Value.Kind() == slog.KindGroup {
		if a.Key != "" {
			prefix += a.Key + "."
		}
		for _, g := range a.Value.Group() {
			out = appendAttr(out, prefix, g)
		}
		return out
	}
	v := a.Value.String()
	if v == "" || strings.ContainsAny(v, " \t\n\"=") {
		v = fmt.Sprintf("%q", v)
	}
	return append(out, prefix+a.Key+"="+v)
}

func (h *cliHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, a := range as {
		if h.prefix != "" {
			a = slog.Group(strings.TrimSuffix(h.prefix, "."), a)
		}
		c.attrs = append(c.attrs, a)
	}
	return &c
}

func (h *cliHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.prefix += name + "."
	return &c
}
