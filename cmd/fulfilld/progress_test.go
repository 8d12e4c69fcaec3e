package main

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/logging"
	"github.com/fulfilld/fulfilld/poller"
)

// The backfill progress line shows on a terminal, says how far along the
// backfill is, and is cleared when it completes; journald and cron get
// nothing.
func TestProgressBar(t *testing.T) {
	start := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	clock := start
	now := func() time.Time { return clock }
	from, target := start.Add(-24*time.Hour), start.Add(-10*time.Minute)
	steps := []poller.Progress{
		{Phase: "rescan", Listed: 0, Settled: from, Target: target},
		{Phase: "rescan", Listed: 5000, Queued: 40, Settled: from.Add(12 * time.Hour), Target: target},
		{Phase: "rescan", Listed: 10000, Queued: 80, Settled: target, Target: target},
	}
	t.Run("terminal", func(t *testing.T) {
		var out bytes.Buffer
		bar := newProgressBar(logging.NewLineOn(&out, true), now)
		for _, p := range steps {
			clock = clock.Add(time.Second)
			bar.update(p)
		}
		got := out.String()
		for _, want := range []string{"backfill", "5000 events listed", "40 sessions queued", "ETA"} {
			if !strings.Contains(got, want) {
				t.Errorf("progress output lacks %q:\n%q", want, got)
			}
		}
		if !strings.Contains(got, " 50%") && !strings.Contains(got, " 51%") {
			t.Errorf("halfway through, the line does not say about 50%%:\n%q", got)
		}
		if !strings.HasSuffix(got, "\r\033[K") {
			t.Errorf("the line is not cleared when the backfill completes:\n%q", got)
		}
	})
	t.Run("not a terminal", func(t *testing.T) {
		var out bytes.Buffer
		bar := newProgressBar(&out, now) // a buffer is not a terminal
		for _, p := range steps {
			bar.update(p)
		}
		if out.Len() != 0 {
			t.Errorf("wrote %q where no terminal is", out.String())
		}
	})
	t.Run("polls near the tip draw nothing", func(t *testing.T) {
		var out bytes.Buffer
		bar := newProgressBar(logging.NewLineOn(&out, true), now)
		bar.update(poller.Progress{Phase: "rescan", Listed: 3, Settled: target.Add(-time.Minute), Target: target})
		bar.update(poller.Progress{Phase: "tip", Listed: 3, Settled: target, Target: target})
		if out.Len() != 0 {
			t.Errorf("a steady-state poll drew a progress line: %q", out.String())
		}
	})
}

// screen replays what a terminal shows for out: \r returns to the start of
// the line, ESC[K erases to its end, \n starts a new line.
func screen(out string) []string {
	var lines []string
	var cur []rune
	col := 0
	for i := 0; i < len(out); {
		switch {
		case strings.HasPrefix(out[i:], "\033[K"):
			cur = cur[:col]
			i += len("\033[K")
			continue
		case out[i] == '\r':
			col = 0
		case out[i] == '\n':
			lines = append(lines, string(cur))
			cur, col = nil, 0
		default:
			r := []rune(out[i:])[0]
			if col < len(cur) {
				cur[col] = r
			} else {
				cur = append(cur, r)
			}
			col++
			i += len(string(r))
			continue
		}
		i++
	}
	return append(lines, string(cur))
}

// Log records written while the backfill line is drawn land on lines of
// their own above it: never over the bar, never glued onto it, and the bar
// is drawn again below them.
func TestProgressBarAndLogShareTheTerminal(t *testing.T) {
	start := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := start
	now := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		clock = clock.Add(time.Second) // every draw is due
		return clock
	}
	var out bytes.Buffer
	line := logging.NewLineOn(&out, true)
	log := logging.New(line, "text", slog.LevelInfo, nil)
	bar := newProgressBar(line, now)
	from, target := start.Add(-24*time.Hour), start.Add(-10*time.Minute)

	const records = 50
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range records {
			log.Info("late event caught by the re-scan", "n", i)
		}
	}()
	for i := range 100 {
		bar.update(poller.Progress{Phase: "rescan", Listed: i * 10, Settled: from.Add(time.Duration(i) * 10 * time.Minute), Target: target})
	}
	wg.Wait()
	bar.update(poller.Progress{Phase: "rescan", Listed: 1000, Settled: from.Add(20 * time.Hour), Target: target})
	log.Info("after the last draw")

	lines := screen(out.String())
	var logged int
	for i, l := range lines {
		switch {
		case strings.HasPrefix(l, "time=") && strings.Contains(l, "backfill"):
			t.Errorf("line %d: a record and the bar share a line: %q", i, l)
		case strings.HasPrefix(l, "time="):
			if !strings.Contains(l, "msg=") || !strings.Contains(l, " n=") && !strings.Contains(l, "last draw") {
				t.Errorf("line %d: a cut-off record: %q", i, l)
			}
			logged++
		case strings.HasPrefix(l, "backfill"):
			if i != len(lines)-1 {
				t.Errorf("line %d: the bar was left above a record instead of redrawn below it: %q", i, l)
			}
		case l != "":
			t.Errorf("line %d: neither a record nor the bar: %q", i, l)
		}
	}
	if logged != records+1 {
		t.Errorf("%d records on the screen, want %d:\n%s", logged, records+1, strings.Join(lines, "\n"))
	}
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "backfill") {
		t.Errorf("after the last record the bar is not drawn again below it; the last line is %q", last)
	}
}
