package logging

import (
	"io"
	"sync"

	"golang.org/x/term"
)

// Line is a terminal shared by log records and one status line that is
// redrawn in place (a progress bar). Both go through its lock: a record
// clears the status line, is written on a line of its own, and the status
// line is drawn again below it, so neither overwrites nor glues onto the
// other. Where w is not a terminal, Line passes records through and draws
// nothing.
type Line struct {
	mu     sync.Mutex
	w      io.Writer
	term   bool
	status string // what is drawn now; "" when nothing is
	// Width, when set, is the terminal's width in columns: a status line
	// longer than it would wrap, and "erase to the end of the line" would
	// then leave its first row behind at every redraw. It is cut to fit.
	Width func() int
}

// NewLine wraps w, usually stderr; on a terminal, status lines are cut to
// its width.
func NewLine(w io.Writer) *Line {
	l := NewLineOn(w, IsTerminal(w))
	if f, ok := w.(interface{ Fd() uintptr }); ok && l.term {
		l.Width = func() int {
			cols, _, err := term.GetSize(int(f.Fd()))
			if err != nil {
				return 0
			}
			return cols
		}
	}
	return l
}

// NewLineOn wraps w and draws status lines only if terminal is true; tests
// use it to see what a terminal would get.
func NewLineOn(w io.Writer, terminal bool) *Line { return &Line{w: w, term: terminal} }

// Terminal reports whether status lines are drawn.
func (l *Line) Terminal() bool { return l.term }

// clear is ANSI: carriage return, erase to the end of the line.
const clear = "\r\033[K"

// Write writes one log record (slog handlers write a whole record at once).
func (l *Line) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.status == "" {
		return l.w.Write(p)
	}
	if _, err := io.WriteString(l.w, clear); err != nil {
		return 0, err
	}
	n, err := l.w.Write(p)
	if err != nil {
		return n, err
	}
	if len(p) > 0 && p[len(p)-1] != '\n' {
		io.WriteString(l.w, "\n")
	}
	_, err = io.WriteString(l.w, l.status)
	return n, err
}

// Status draws s in place of the current status line; "" clears it.
// Nothing is drawn where w is not a terminal.
func (l *Line) Status(s string) {
	if !l.term {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.Width != nil {
		if cols := l.Width(); cols > 1 {
			s = fit(s, cols-1) // the last column would wrap on some terminals
		}
	}
	if s == l.status {
		return
	}
	if s == "" {
		io.WriteString(l.w, clear)
	} else {
		io.WriteString(l.w, clear+s)
	}
	l.status = s
}

// Clear removes the status line, e.g. before the program's last words.
func (l *Line) Clear() { l.Status("") }

// fit cuts s to at most n characters (runes: the bar is drawn with
// multi-byte block characters), ending in "…" when cut.
func fit(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
