package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

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
		bar := &progressBar{w: &out, now: now, on: true}
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
		bar := &progressBar{w: &out, now: now, on: true}
		bar.update(poller.Progress{Phase: "rescan", Listed: 3, Settled: target.Add(-time.Minute), Target: target})
		bar.update(poller.Progress{Phase: "tip", Listed: 3, Settled: target, Target: target})
		if out.Len() != 0 {
			t.Errorf("a steady-state poll drew a progress line: %q", out.String())
		}
	})
}
