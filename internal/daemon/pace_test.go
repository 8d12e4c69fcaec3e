package daemon_test

import (
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/internal/daemon"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// paced is a daemon at `@every 30s` with the default read budget, on a
// simulated clock that the test moves one schedule tick at a time.
type paced struct {
	t     *testing.T
	clock *stripesim.Clock
	sim   *stripesim.Server
	d     *daemon.Daemon
	last  time.Time // when the last poll ran
}

func newPaced(t *testing.T) *paced {
	t.Helper()
	p := &paced{t: t, clock: stripesim.NewClock(time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC))}
	p.sim = stripesim.New(stripesim.Options{Now: p.clock.Now})
	t.Cleanup(p.sim.Close)
	p.d, _ = newDaemonAt(t, p.sim, p.clock, func(c *config.Config) {
		c.Schedule = "@every 30s"
		c.Stripe.MonthlyReadBudget = config.ReadBudgetAuto
	})
	if _, err := p.d.Poller.Start(t.Context(), time.Time{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// tick moves the clock one schedule period and runs the scheduled poll
// job; it returns how long after the previous poll this one ran, or 0 when
// the tick did not poll.
func (p *paced) tick() time.Duration {
	p.t.Helper()
	now := p.clock.Advance(30 * time.Second)
	ran, _, err := p.d.ScheduledPoll(p.t.Context())
	if err != nil {
		p.t.Fatalf("poll at %s: %v", now.Format(time.TimeOnly), err)
	}
	if !ran {
		return 0
	}
	gap := now.Sub(p.last)
	p.last = now
	return gap
}

// untilPoll ticks until a tick polls, and returns the gap since the last.
func (p *paced) untilPoll() time.Duration {
	p.t.Helper()
	for range 200 {
		if gap := p.tick(); gap > 0 {
			return gap
		}
	}
	p.t.Fatal("no poll in 200 ticks")
	return 0
}

// TestQuietStreamStretchesPollsAndTriggersSnapBack: with nothing happening,
// each poll comes later than the one before, up to what the default budget
// asks for; a landing page or command (PollNow) and new events each bring
// the next poll back to the schedule.
func TestQuietStreamStretchesPollsAndTriggersSnapBack(t *testing.T) {
	p := newPaced(t)
	p.last = p.clock.Now()
	var gaps []time.Duration
	for range 12 {
		gaps = append(gaps, p.untilPoll())
	}
	t.Logf("gaps between quiet polls: %v", gaps)
	if gaps[0] != 30*time.Second {
		t.Errorf("first poll after %s, want the schedule (30s)", gaps[0])
	}
	for i := 1; i < len(gaps); i++ {
		if gaps[i] < gaps[i-1] {
			t.Errorf("poll %d came sooner (%s) than the one before (%s) on a quiet stream", i+1, gaps[i], gaps[i-1])
		}
	}
	// 5,000 reads a month at a read a poll, with room for the rest: about
	// one poll in 9 to 10 minutes, never beyond the hour.
	if last := gaps[len(gaps)-1]; last < 8*time.Minute || last > stripeapi.MaxPollInterval {
		t.Errorf("a quiet stream settles at a poll every %s, want 8m–1h under the default budget", last)
	}

	// A landing page (or `fulfilld fulfill`, `reconcile`): the very next tick polls.
	p.d.PollNow("test")
	if gap := p.tick(); gap == 0 {
		t.Error("the tick after a trigger did not poll")
	}
	if iv := p.d.PollInterval(); iv != 60*time.Second {
		// One quiet poll since the trigger: doubling starts again from 30s.
		t.Errorf("interval after a trigger and one quiet poll: %s, want 1m", iv)
	}
	for range 6 {
		p.untilPoll()
	}
	// New events: the poll that finds them puts the next one at schedule.
	paid(p.sim, p.clock.Now())
	p.untilPoll()
	if iv := p.d.PollInterval(); iv != 30*time.Second {
		t.Errorf("interval after a poll that found new events: %s, want the schedule", iv)
	}
	if gap := p.tick(); gap != 30*time.Second {
		t.Errorf("after new events the next poll came %s later, want 30s", gap)
	}
}

// TestBusyAccountPollsAtSchedule: events every poll keep every tick
// polling.
func TestBusyAccountPollsAtSchedule(t *testing.T) {
	p := newPaced(t)
	p.last = p.clock.Now()
	for i := range 60 {
		paid(p.sim, p.clock.Now())
		if gap := p.tick(); gap != 30*time.Second {
			t.Fatalf("tick %d with a new order: polled after %s, want every 30s", i+1, gap)
		}
	}
}
