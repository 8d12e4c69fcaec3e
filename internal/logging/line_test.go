package logging

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestStatusFitsTheTerminal: a status line longer than the terminal is
// wide would wrap, and each redraw would leave its first row behind: it is
// cut to the width, whole characters only.
func TestStatusFitsTheTerminal(t *testing.T) {
	var out bytes.Buffer
	l := NewLineOn(&out, true)
	l.Width = func() int { return 40 }
	l.Status("backfill ████████░░░░ 33% · 1200 events listed · 40 sessions queued · ETA 2m")
	drawn := strings.TrimPrefix(out.String(), clear)
	if n := utf8.RuneCountInString(drawn); n > 39 || !utf8.ValidString(drawn) || !strings.HasSuffix(drawn, "…") {
		t.Errorf("drew %q (%d columns) on a 40-column terminal; want at most 39, cut with …", drawn, n)
	}
}
