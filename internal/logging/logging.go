// Package logging builds fulfilld's one slog.Logger: text on a terminal,
// JSON otherwise (journald), and every secret the configuration holds
// replaced before a record is written.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"golang.org/x/term"
)

// Format and level names the --log-format and --log-level flags accept.
var (
	Formats = []string{"auto", "text", "json"}
	Levels  = []string{"debug", "info", "warn", "error"}
)

// ParseLevel reads a --log-level value.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil || !contains(Levels, strings.ToLower(s)) {
		return 0, fmt.Errorf("--log-level: %q is not one of %s", s, strings.Join(Levels, ", "))
	}
	return l, nil
}

// CheckFormat validates a --log-format value.
func CheckFormat(s string) error {
	if !contains(Formats, s) {
		return fmt.Errorf("--log-format: %q is not one of text, json (or auto: text on a terminal, JSON otherwise)", s)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// IsTerminal reports whether w is a terminal (or a Line on one).
func IsTerminal(w io.Writer) bool {
	if l, ok := w.(*Line); ok {
		return l.term
	}
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// New builds the logger. format is "text", "json" or "auto".
func New(w io.Writer, format string, level slog.Level, secrets []string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	if format == "json" || format == "auto" && !IsTerminal(w) {
		h = slog.NewJSONHandler(w, opts)
	} else {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(NewRedactor(h, secrets))
}

// Redactor replaces secrets in messages and attribute values. Code never
// logs a secret on purpose; this catches the accident (an error that quotes
// a URL or a header, a misplaced argument).
type Redactor struct {
	next     slog.Handler
	replacer *strings.Replacer
}

// NewRedactor wraps h. Empty and very short secrets are ignored.
func NewRedactor(h slog.Handler, secrets []string) slog.Handler {
	var pairs []string
	for _, s := range secrets {
		if len(s) >= 8 {
			pairs = append(pairs, s, "[REDACTED]")
		}
	}
	if len(pairs) == 0 {
		return h
	}
	return &Redactor{next: h, replacer: strings.NewReplacer(pairs...)}
}

// Redact replaces secrets in s.
func (r *Redactor) Redact(s string) string { return r.replacer.Replace(s) }

func (r *Redactor) Enabled(ctx context.Context, l slog.Level) bool { return r.next.Enabled(ctx, l) }

func (r *Redactor) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, r.Redact(rec.Message), rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(r.attr(a))
		return true
	})
	return r.next.Handle(ctx, out)
}

func (r *Redactor) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, r.Redact(v.String()))
	case slog.KindGroup:
		attrs := v.Group()
		out := make([]any, len(attrs))
		for i, g := range attrs {
			out[i] = r.attr(g)
		}
		return slog.Group(a.Key, out...)
	case slog.KindAny:
		if err, ok := v.Any().(error); ok {
			return slog.String(a.Key, r.Redact(err.Error()))
		}
		return slog.String(a.Key, r.Redact(fmt.Sprint(v.Any())))
	}
	return slog.Attr{Key: a.Key, Value: v}
}

func (r *Redactor) WithAttrs(attrs []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		red[i] = r.attr(a)
	}
	return &Redactor{next: r.next.WithAttrs(red), replacer: r.replacer}
}

func (r *Redactor) WithGroup(name string) slog.Handler {
	return &Redactor{next: r.next.WithGroup(name), replacer: r.replacer}
}
