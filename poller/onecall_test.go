package poller_test

import (
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// TestQuietPollIsOneRequest: on a quiet stream the tip listing reaches back
// to complete_until and serves as the re-scan too — one request a poll, and
// complete_until still keeps up with now − lookback.
func TestQuietPollIsOneRequest(t *testing.T) {
	h := newHarness(t)
	h.pass(time.Time{})
	h.paid(h.clock.Now().Add(-time.Second), 1) // some history; then quiet
	h.clock.Advance(30 * time.Second)
	h.poll(false)
	for i := range 40 { // 20 quiet minutes, past the lookback
		now := h.clock.Advance(30 * time.Second)
		before := h.sim.Stats().Total
		h.poll(false)
		if i < 2 {
			continue // the first quiet pass after events still lists the tip narrowly
		}
		if n := h.sim.Stats().Total - before; n != 1 {
			t.Fatalf("quiet poll %d at %s sent %d requests, want 1", i+1, now.Format(time.TimeOnly), n)
		}
		if settled, want := h.position().Settled, now.Add(-10*time.Minute); settled.Before(want.Add(-30 * time.Second)) {
			t.Fatalf("quiet poll %d: complete_until %s lags now − lookback (%s)", i+1, settled.Format(time.TimeOnly), want.Format(time.TimeOnly))
		}
	}
}

// TestOneCallPollsStillCatchLateEvents: on a quiet stream polled one call
// at a time, an event that becomes visible late — up to the lookback after
// it was created — is still handled once: the one-call listing settles
// only what a re-scan at that moment would have.
func TestOneCallPollsStillCatchLateEvents(t *testing.T) {
	h := newHarness(t)
	h.pass(time.Time{})
	for range 6 { // quiet: polls are one call by now
		h.clock.Advance(30 * time.Second)
		h.poll(false)
	}
	var late []string
	for i := range 3 {
		created := h.clock.Now().Add(-10 * time.Second)
		// Visible 3, 6, then 9½ minutes after its creation: the last just
		// inside the 10-minute lookback.
		visible := created.Add([]time.Duration{3 * time.Minute, 6 * time.Minute, 9*time.Minute + 30*time.Second}[i])
		late = append(late, h.paid(created, 1, stripesim.VisibleAt(visible)))
		h.clock.Advance(30 * time.Second)
		h.poll(false)
	}
	for range 40 {
		h.clock.Advance(30 * time.Second)
		h.poll(false)
	}
	for _, id := range late {
		if n := len(h.action.calls(id)); n != 1 {
			t.Errorf("late %s: action ran %d times, want 1", id, n)
		}
	}
}
