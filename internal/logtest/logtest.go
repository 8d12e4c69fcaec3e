// Package logtest collects what a test's logger or child process writes,
// safely from any goroutine, and counts the lines that hold given words:
// tests assert what an operator would read in the log.
package logtest

import (
	"bytes"
	"strings"
	"sync"
)

// Buffer is an io.Writer safe for concurrent use.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Lines are the lines that hold every one of subs.
func (b *Buffer) Lines(subs ...string) []string {
	var out []string
	for line := range strings.SplitSeq(b.String(), "\n") {
		all := line != ""
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			out = append(out, line)
		}
	}
	return out
}

// Count is how many lines hold every one of subs.
func (b *Buffer) Count(subs ...string) int { return len(b.Lines(subs...)) }
