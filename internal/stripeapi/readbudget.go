package stripeapi

import (
	"fmt"
	"sync"
	"time"
)

// readWindow is the rolling window Stripe's read allocation is counted over.
const readWindow = 30 * 24 * time.Hour

// Stripe's read allocation: 500 reads per payment over a rolling 30 days,
// and never less than 10,000.
const (
	readsPerPayment = 500
	minAllocation   = 10_000
)

// AutoReadBudget is stripe.monthly_read_budget "auto": half of the read
// allocation Stripe gives an account that saw payments30 payments in the
// last 30 days, the other half left to the shop's own code.
func AutoReadBudget(payments30 int64) int64 {
	return max(minAllocation, readsPerPayment*payments30) / 2
}

// ReadBudgetInForce is stripe.monthly_read_budget as it applies now (0: no
// cap): configured when it is a number, or for auto (any negative value,
// config.ReadBudgetAuto) what the payments of the last 30 days earn.
func ReadBudgetInForce(configured int, payments30 int64) int64 {
	if configured < 0 {
		return AutoReadBudget(payments30)
	}
	return int64(configured)
}

// ReadPacer spreads scheduled polls so that the API reads of a rolling 30
// days stay within Budget (stripe.monthly_read_budget). It is a token
// bucket that fills at Budget per 30 days, holds at most one day's worth,
// and is drawn down by every request sent — polls, retrieves and sweeps
// alike, since all of fulfilld's requests are reads. A scheduled poll is
// skipped while the bucket is empty, or while the stored count of the last
// 30 days has reached the budget. Work already queued is not held back:
// only the discretionary polls stretch.
type ReadPacer struct {
	Budget int64

	mu        sync.Mutex
	started   time.Time
	last      time.Time
	tokens    float64
	lastSent  int64
	firstSent int64
	skipping  bool
}

// SetBudget changes the budget, as the payments "auto" derives it from
// change.
func (p *ReadPacer) SetBudget(b int64) {
	p.mu.Lock()
	p.Budget = b
	p.mu.Unlock()
}

// ReadDecision is the answer for one scheduled poll.
type ReadDecision struct {
	Poll bool
	// Changed is set when this decision starts or ends a run of skipped
	// polls: the moment to log, once.
	Changed bool
	// Reason says why polls are skipped, in words for the log.
	Reason string
	// Projected is the reads a rolling 30 days would hold at the pace of
	// this process so far.
	Projected int64
}

// Allow decides whether a scheduled poll may run now. sent is the
// transport's running total of requests (Transport.Sent), used30 the reads
// stored for the last 30 days.
func (p *ReadPacer) Allow(now time.Time, sent, used30 int64) ReadDecision {
	p.mu.Lock()
	defer p.mu.Unlock()
	perSec := float64(p.Budget) / readWindow.Seconds()
	dayCap := float64(p.Budget) / 30
	if p.started.IsZero() {
		p.started, p.last, p.tokens = now, now, dayCap
		p.lastSent, p.firstSent = sent, sent
	}
	p.tokens = min(dayCap, p.tokens+perSec*max(now.Sub(p.last).Seconds(), 0)) - float64(sent-p.lastSent)
	p.last, p.lastSent = now, sent

	var d ReadDecision
	if el := now.Sub(p.started); el >= time.Minute {
		d.Projected = int64(float64(sent-p.firstSent) / el.Seconds() * readWindow.Seconds())
	}
	switch {
	case used30 >= p.Budget:
		d.Reason = fmt.Sprintf("%d reads in the last 30 days have reached stripe.monthly_read_budget (%d); "+
			"polls are skipped until older reads leave the 30-day window", used30, p.Budget)
	case p.tokens < 0:
		wait := time.Duration(-p.tokens / perSec * float64(time.Second)).Round(time.Second)
		d.Reason = fmt.Sprintf("reads are being spent faster than stripe.monthly_read_budget (%d per 30 days) allows "+
			"(%d in the last 30 days); scheduled polls are skipped for about %s, and the poll interval stretches "+
			"to stay inside the budget", p.Budget, used30, wait)
	default:
		d.Poll = true
	}
	d.Changed = d.Poll == p.skipping
	p.skipping = !d.Poll
	return d
}

// MaxPollInterval is the longest a quiet stream stretches the poll interval:
// a landing page that could not reach fulfilld, or a webhook-less shop
// whose customer waits, is served by the next poll at the latest.
const MaxPollInterval = time.Hour

// budgetMargin is the share of the budget the stretched interval aims at:
// the rest absorbs what the pace cannot see coming (a burst of retrieves, a
// sweep that pages).
const budgetMargin = 0.9

// BudgetInterval is the poll interval that keeps a rolling 30 days inside
// budget: polls that cost perPoll reads each, beside the other reads
// (retrieves, sweeps) that go on at otherPerSec, spend no more than the
// budget's margin, nor more than what is left of it in the last 30 days
// spread over the next 30. 0 means no cap (budget 0): no stretching.
func BudgetInterval(budget, used30 int64, perPoll, otherPerSec float64) time.Duration {
	if budget <= 0 {
		return 0
	}
	perSec := min(budgetMargin*float64(budget), float64(budget-used30)) / readWindow.Seconds()
	perSec -= otherPerSec
	if perSec <= 0 {
		return MaxPollInterval
	}
	iv := time.Duration(max(perPoll, 1) / perSec * float64(time.Second))
	return min(iv, MaxPollInterval)
}

// PollPace is the adaptive poll interval: polls run at Schedule while
// events flow; after each poll that found nothing new the next is due
// twice as late, up to the interval the read budget asks for (never past
// MaxPollInterval); a trigger — a landing page, a `fulfill` or `reconcile`
// command, a poll that found new events — brings it straight back to
// Schedule. The cron schedule keeps ticking at Schedule; Due says whether a
// tick polls.
type PollPace struct {
	Schedule time.Duration

	mu       sync.Mutex
	interval time.Duration // 0: Schedule
	due      time.Time     // zero: the next tick
}

// PaceChange says when the interval crossed Schedule: the moment to log,
// once each way.
type PaceChange int

const (
	PaceSame    PaceChange = iota
	PaceSlowed             // the interval left Schedule
	PaceResumed            // the interval is back at Schedule
)

// Due reports whether a scheduled tick at now polls.
func (p *PollPace) Due(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.due.IsZero() || !now.Before(p.due)
}

// Interval is the interval in force.
func (p *PollPace) Interval() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return max(p.interval, p.Schedule)
}

// Polled is told how the poll that started at start went: fresh says it
// found new events; limit is what the budget asks for (BudgetInterval).
func (p *PollPace) Polled(start time.Time, fresh bool, limit time.Duration) PaceChange {
	p.mu.Lock()
	defer p.mu.Unlock()
	was := max(p.interval, p.Schedule)
	next := p.Schedule
	if !fresh {
		next = min(was*2, max(limit, p.Schedule))
	}
	p.interval = next
	// Half a period early: the tick that lands on the interval polls even
	// when the poll itself started a little after its tick.
	p.due = start.Add(next - p.Schedule/2)
	return change(was, next, p.Schedule)
}

// Trigger brings the interval back to Schedule: the next tick polls.
func (p *PollPace) Trigger() PaceChange {
	p.mu.Lock()
	defer p.mu.Unlock()
	was := max(p.interval, p.Schedule)
	p.interval, p.due = p.Schedule, time.Time{}
	return change(was, p.Schedule, p.Schedule)
}

func change(was, now, schedule time.Duration) PaceChange {
	switch {
	case was <= schedule && now > schedule:
		return PaceSlowed
	case was > schedule && now <= schedule:
		return PaceResumed
	}
	return PaceSame
}
