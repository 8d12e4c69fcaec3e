package daemon

import (
	"context"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

// pace is the state of read-budget pacing: the adaptive interval, the
// token bucket behind it, and what the daemon has learnt about its own
// reads.
type pace struct {
	interval *stripeapi.PollPace
	bucket   *stripeapi.ReadPacer
	// start and sentAtStart mark when this process began to count; polled
	// is the requests sent during polls since, perPoll what the last quiet
	// poll cost. The rest of what was sent is the other reads (retrieves,
	// sweeps) the interval has to leave room for.
	start       time.Time
	sentAtStart int64
	polled      int64
	perPoll     float64
}

func newPace(schedule string, now time.Time) *pace {
	p := &pace{bucket: &stripeapi.ReadPacer{}}
	every := time.Minute
	if s, err := cron.ParseStandard(schedule); err == nil {
		every = interval(s, now)
	}
	p.interval = &stripeapi.PollPace{Schedule: every}
	return p
}

// PollInterval is the poll interval in force: `schedule` while events flow,
// longer while the stream is quiet and the read budget asks for it.
func (d *Daemon) PollInterval() time.Duration { return d.pace.interval.Interval() }

// PollNow brings the poll interval back to `schedule`: something (a landing
// page, a `fulfill` or `reconcile` command) says orders are coming in. The
// next scheduled tick polls.
func (d *Daemon) PollNow(why string) {
	if d.pace.interval.Trigger() == stripeapi.PaceResumed {
		d.Logger.Info("polling at schedule again", "why", why, "interval", d.pace.interval.Schedule)
	}
}

// ScheduledPoll is the poll job of `run`, for one tick of `schedule`: it
// polls when the adaptive interval says one is due and the read budget
// allows it, then sweeps what aged out. ran is false when the tick was
// skipped (also on an instance that does not list).
func (d *Daemon) ScheduledPoll(ctx context.Context) (ran bool, res poller.Result, err error) {
	start := d.now()
	if !d.lists() || !d.pace.interval.Due(start) || !d.pollWithinReadBudget() {
		return false, res, nil
	}
	ctx, cancel := d.listing(ctx)
	defer cancel()
	if err := d.startListing(ctx); err != nil {
		return true, res, err
	}
	d.polling.Store(true)
	d.beat()
	defer d.polling.Store(false)
	before := d.Client.Transport.Sent()
	res, err = d.Poller.Poll(ctx, false)
	if err == nil {
		_, err = d.Reconciler.SweepAgedOut(ctx)
	}
	d.Metrics.Poll(err)
	d.SaveUsage()
	reads := d.Client.Transport.Sent() - before
	d.pace.polled += reads
	fresh := res.New > 0
	if err != nil {
		// A failed poll is neither quiet nor busy: the next tick retries.
		fresh = true
	} else if !fresh {
		d.pace.perPoll = float64(reads)
	}
	limit := d.budgetInterval(start)
	switch d.pace.interval.Polled(start, fresh, limit) {
	case stripeapi.PaceSlowed:
		d.Logger.Info("the event stream is quiet: polls slow down to save reads, as far as stripe.monthly_read_budget asks "+
			"(a landing page, fulfill, reconcile or new events bring them back to schedule)",
			"schedule", d.pace.interval.Schedule, "at_most", limit)
	case stripeapi.PaceResumed:
		d.Logger.Info("polling at schedule again", "why", "new events", "interval", d.pace.interval.Schedule)
	}
	return true, res, err
}

// budgetInterval is how far the read budget asks quiet polls to stretch.
func (d *Daemon) budgetInterval(now time.Time) time.Duration {
	budget, used, _, ok := d.readBudget()
	if !ok {
		return 0
	}
	sent := d.Client.Transport.Sent()
	if d.pace.start.IsZero() {
		d.pace.start, d.pace.sentAtStart = now, sent
	}
	// Over at least an hour, so that the first minutes (a retrieve or two
	// at start) do not read as a pace.
	elapsed := max(now.Sub(d.pace.start), time.Hour)
	other := float64(sent-d.pace.sentAtStart-d.pace.polled) / elapsed.Seconds()
	return stripeapi.BudgetInterval(budget, used, d.pace.perPoll, max(other, 0))
}

// readBudget is the budget in force, the reads of the last 30 days and
// the requests sent so far; ok is false when there is no cap or usage could
// not be read.
func (d *Daemon) readBudget() (budget, used, payments int64, ok bool) {
	if d.Config.Stripe.MonthlyReadBudget == 0 {
		return 0, 0, 0, false
	}
	err := d.DB.View(func(tx store.Tx) error {
		r, err := stripeapi.LoadUsage(tx, d.now())
		used, payments = r.Last30Days.Total(), r.Last30Days.Payments
		return err
	})
	if err != nil {
		d.Logger.Warn("could not read API usage for stripe.monthly_read_budget; polling anyway", "err", err)
		return 0, 0, 0, false
	}
	return stripeapi.ReadBudgetInForce(d.Config.Stripe.MonthlyReadBudget, payments), used, payments, true
}

// pollWithinReadBudget is the backstop behind the adaptive interval: with
// stripe.monthly_read_budget set it skips a due poll while the reads
// already spent (a backfill, a burst of retrieves) are ahead of the budget;
// queued work goes on. It logs once when skipping starts and once when
// polls resume.
func (d *Daemon) pollWithinReadBudget() bool {
	budget, used, _, ok := d.readBudget()
	if !ok {
		return true
	}
	d.pace.bucket.SetBudget(budget)
	dec := d.pace.bucket.Allow(d.now(), d.Client.Transport.Sent(), used)
	switch {
	case dec.Changed && !dec.Poll:
		d.Logger.Warn("skipping scheduled polls to stay inside stripe.monthly_read_budget: "+dec.Reason,
			"reads_last_30_days", used, "monthly_read_budget", budget, "projected_30_days", dec.Projected)
	case dec.Changed:
		d.Logger.Info("polling on schedule again: back inside stripe.monthly_read_budget",
			"reads_last_30_days", used, "monthly_read_budget", budget)
	}
	return dec.Poll
}
