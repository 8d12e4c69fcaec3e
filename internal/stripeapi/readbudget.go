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
