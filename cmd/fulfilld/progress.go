package main

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/fulfilld/fulfilld/internal/logging"
	"github.com/fulfilld/fulfilld/poller"
)

// progressBar shows a backfill's progress on a terminal, one line redrawn
// in place; it is silent when stderr is not a terminal (journald, cron). It
// draws through the logger's logging.Line, so log records appear above the
// bar instead of overwriting it or gluing onto it.
type progressBar struct {
	line  *logging.Line
	now   func() time.Time
	mu    sync.Mutex
	start time.Time
	from  time.Time // complete_until when the backfill started
	shown time.Time
	drawn bool
}

// backfillAfter is how far behind now complete_until must be for a poll to
// count as a backfill worth a progress bar.
const backfillAfter = time.Hour

// newProgressBar draws on w: the app's stderr, which is the logger's
// logging.Line once the configuration is loaded.
func newProgressBar(w io.Writer, now func() time.Time) *progressBar {
	line, ok := w.(*logging.Line)
	if !ok {
		line = logging.NewLine(w)
	}
	return &progressBar{line: line, now: now}
}

func (b *progressBar) update(p poller.Progress) {
	if !b.line.Terminal() {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if p.Phase != "rescan" || p.Target.Sub(p.Settled) < backfillAfter && !b.drawn {
		b.clear()
		return
	}
	if b.start.IsZero() || p.Listed == 0 {
		b.start, b.from = now, p.Settled
	}
	if now.Sub(b.shown) < 250*time.Millisecond && p.Settled.Before(p.Target) {
		return
	}
	b.shown = now
	total := p.Target.Sub(b.from)
	done := p.Settled.Sub(b.from)
	frac := 1.0
	if total > 0 {
		frac = min(max(float64(done)/float64(total), 0), 1)
	}
	elapsed := now.Sub(b.start)
	rate := 0.0
	if elapsed > 0 {
		rate = float64(p.Listed) / elapsed.Seconds()
	}
	eta := "?"
	if frac > 0 && frac < 1 {
		eta = time.Duration(float64(elapsed) * (1 - frac) / frac).Round(time.Second).String()
	}
	const width = 24
	filled := int(frac * width)
	bar := make([]rune, width)
	for i := range bar {
		bar[i] = '░'
		if i < filled {
			bar[i] = '█'
		}
	}
	b.line.Status(fmt.Sprintf("backfill %s %3.0f%% · %d events listed · %d sessions queued · %.0f events/s · complete to %s · ETA %s",
		string(bar), frac*100, p.Listed, p.Queued, rate, p.Settled.UTC().Format("2006-01-02 15:04"), eta))
	b.drawn = true
	if !p.Settled.Before(p.Target) {
		b.clear()
	}
}

func (b *progressBar) clear() {
	if b.drawn {
		b.line.Clear()
		b.drawn = false
		b.start = time.Time{}
	}
}
