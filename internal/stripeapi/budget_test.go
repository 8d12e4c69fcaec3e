package stripeapi

import (
	"math"
	"testing"
	"time"
)

// TestBudgetAIMD follows one budget through a 429 storm and its recovery on
// a clock the test owns: one cut per second at most, only for requests paced
// after the previous cut, a cut sized by what was really sent, then additive
// growth back to — never past — the configured limit.
func TestBudgetAIMD(t *testing.T) {
	start := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return start.Add(d) }
	b := newBudget(100)
	// 80 requests in the last second: the rate really used.
	for i := range 80 {
		b.note(at(time.Duration(i) * 12 * time.Millisecond))
	}
	now := at(990 * time.Millisecond)
	if !b.throttled(at(900*time.Millisecond), now, 0) {
		t.Fatal("the first 429 did not cut the budget")
	}
	if got, want := b.current(now), 0.7*80; math.Abs(got-want) > 0.01 {
		t.Fatalf("after the cut the rate is %.2f, want %.2f (0.7 × the 80/s really sent)", got, want)
	}
	// A 429 for a request sent before the cut, or within a second of it,
	// says nothing new.
	if b.throttled(at(950*time.Millisecond), at(1100*time.Millisecond), 0) {
		t.Error("a 429 for a request sent before the cut cut again")
	}
	if b.throttled(at(1050*time.Millisecond), at(1500*time.Millisecond), 0) {
		t.Error("a second cut within a second")
	}
	// Growth: 5% of the rate the 429 came at (80/s) per second.
	if got := b.current(at(3 * time.Second)); got < 56+2*4-0.5 || got > 56+2*4+0.5 {
		t.Errorf("two seconds after the cut the rate is %.2f, want about 64", got)
	}
	if got := b.current(at(time.Minute)); got != 100 {
		t.Errorf("a minute later the rate is %.2f, want the configured 100 and no more", got)
	}
	// Repeated cuts never go below the floor.
	for i := range 50 {
		sent := at(time.Minute + time.Duration(i)*2*time.Second)
		b.throttled(sent, sent.Add(time.Second), 0)
	}
	if got := b.current(at(time.Minute + 100*time.Second + time.Second)); got < minRate {
		t.Errorf("rate %.2f fell below the floor %v", got, minRate)
	}
	// A Retry-After holds the whole budget.
	now = at(time.Hour)
	b.throttled(now, now, 30*time.Second)
	if until := b.paused(now.Add(time.Second)); !until.Equal(now.Add(30 * time.Second)) {
		t.Errorf("paused until %v, want %v", until, now.Add(30*time.Second))
	}
}

func TestUnlimitedBudget(t *testing.T) {
	b := newBudget(0)
	now := time.Now()
	if !math.IsInf(b.current(now), 1) {
		t.Fatalf("a 0 limit should be unlimited, got %v", b.current(now))
	}
	for i := range 40 {
		b.note(now.Add(-time.Duration(i) * 10 * time.Millisecond))
	}
	if !b.throttled(now, now, 0) {
		t.Fatal("an unlimited budget that met a limit was not cut")
	}
	if got := b.current(now); got != 0.7*40 {
		t.Errorf("rate %.2f, want 0.7 × the 40/s really sent", got)
	}
}

func TestReadPacer(t *testing.T) {
	start := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	p := &ReadPacer{Budget: 30_000} // 1,000 a day
	if d := p.Allow(start, 0, 0); !d.Poll || d.Changed {
		t.Fatalf("the first poll: %+v", d)
	}
	// A backfill spends a day's worth and more: polls stop, once logged.
	d := p.Allow(start.Add(time.Minute), 1500, 1500)
	if d.Poll || !d.Changed || d.Reason == "" {
		t.Fatalf("after overspending: %+v", d)
	}
	if d := p.Allow(start.Add(2*time.Minute), 1500, 1500); d.Poll || d.Changed {
		t.Fatalf("still overspent, logged again or polled: %+v", d)
	}
	// 500 reads of debt refill at 1,000 a day: about 12 hours.
	if d := p.Allow(start.Add(11*time.Hour), 1500, 1500); d.Poll {
		t.Fatalf("polled after 11h with 12h of debt: %+v", d)
	}
	if d := p.Allow(start.Add(13*time.Hour), 1500, 1500); !d.Poll || !d.Changed {
		t.Fatalf("not polling again after the debt was repaid: %+v", d)
	}
	// The stored 30-day count is a hard stop, whatever the bucket says.
	if d := p.Allow(start.Add(48*time.Hour), 1500, 30_000); d.Poll {
		t.Fatalf("polled with the 30-day count at the budget: %+v", d)
	}
}

// TestAutoReadBudget: "auto" is half of Stripe's allocation, 500 reads per
// payment in the last 30 days and never less than 10,000.
func TestAutoReadBudget(t *testing.T) {
	for _, tt := range []struct{ payments, want int64 }{
		{0, 5_000}, {19, 5_000}, {20, 5_000}, {21, 5_250}, {1_000, 250_000}, {30_000, 7_500_000},
	} {
		if got := AutoReadBudget(tt.payments); got != tt.want {
			t.Errorf("%d payments: budget %d, want %d", tt.payments, got, tt.want)
		}
	}
}

// TestBudgetInterval: how far quiet polls stretch under a budget — a poll
// every few minutes under the smallest auto budget, none under no cap, the
// hour at most when the budget is spent.
func TestBudgetInterval(t *testing.T) {
	for _, tt := range []struct {
		name           string
		budget, used   int64
		perPoll, other float64
		min, max       time.Duration
	}{
		{"no cap", 0, 0, 1, 0, 0, 0},
		{"smallest auto budget, a read a poll", 5_000, 0, 1, 0, 9 * time.Minute, 10 * time.Minute},
		{"hourly sweeps leave less for polls", 5_000, 0, 1, 1.0 / 3600, 11 * time.Minute, 12 * time.Minute},
		{"budget spent", 5_000, 5_000, 1, 0, time.Hour, time.Hour},
		{"a busy account's budget", 250_000, 0, 1, 0, 0, 15 * time.Second},
	} {
		if got := BudgetInterval(tt.budget, tt.used, tt.perPoll, tt.other); got < tt.min || got > tt.max {
			t.Errorf("%s: %s, want %s–%s", tt.name, got, tt.min, tt.max)
		}
	}
}
