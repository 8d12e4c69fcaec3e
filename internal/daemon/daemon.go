package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

// wakers fans one "work was queued" signal out to every worker.
type wakers []chan struct{}

func (w wakers) wake() {
	for _, c := range w {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

func (w wakers) close() {
	for _, c := range w {
		close(c)
	}
}

// workers starts the fulfillment queue and, when configured, the delivery
// queue (notify, forward). wait returns their combined result once both returned.
func (d *Daemon) workers(ctx context.Context, untilIdle bool) (w wakers, wait func() (fulfill.PassResult, error)) {
	type result struct {
		res fulfill.PassResult
		err error
	}
	runs := []func(context.Context, fulfill.RunOptions) (fulfill.PassResult, error){d.Fulfiller.Run}
	if d.Deliverer != nil {
		runs = append(runs, d.Deliverer.Run)
	}
	results := make(chan result, len(runs))
	for _, run := range runs {
		c := make(chan struct{}, 1)
		w = append(w, c)
		go func() {
			res, err := run(ctx, fulfill.RunOptions{Wake: c, UntilIdle: untilIdle, Grace: d.Config.Fulfill.Timeout})
			results <- result{res, err}
		}()
	}
	return w, func() (fulfill.PassResult, error) {
		var total fulfill.PassResult
		var errs []error
		for range runs {
			r := <-results
			total.Add(r.res)
			if r.err != nil && !errors.Is(r.err, context.Canceled) && !errors.Is(r.err, context.DeadlineExceeded) {
				errs = append(errs, r.err)
			}
		}
		return total, errors.Join(errs...)
	}
}

// Recover puts attempts the last stop cut off, of both queues, first in
// line; they are repeated with the same idempotency keys.
func (d *Daemon) Recover() error {
	n, err := d.Fulfiller.Recover()
	if err != nil {
		return err
	}
	if d.Deliverer != nil {
		m, err := d.Deliverer.Recover()
		if err != nil {
			return err
		}
		n += m
	}
	if n > 0 {
		d.Logger.Warn("attempts were cut off by the last stop; repeating them with the same idempotency keys", "count", n)
	}
	return nil
}

// ErrInterrupted is a pass a signal stopped: not a success for cron.
var ErrInterrupted = errors.New("stopped before the pass completed; the next run resumes where this one stopped")

// pass runs list (the poll of `run --once`, or a `reconcile` sweep) while
// the queues work until nothing is due. Meanwhile the admin socket answers
// status, as it does for the daemon. A rejected key stops the queues too.
// err is ErrInterrupted after a signal, else the first of list's and the
// queues' errors.
func (d *Daemon) pass(parent context.Context, list func(ctx context.Context) error) (fulfill.PassResult, error) {
	// ctx is also cancelled when the key is rejected; only parent ending is
	// a shutdown.
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	adminL, err := listenAdmin(d.Socket)
	if err != nil {
		return fulfill.PassResult{}, err
	}
	defer os.Remove(d.Socket)
	admin := d.startServer(adminL, d.adminHandler(ctx, true), "admin socket")
	defer admin.Close()
	w, wait := d.workers(ctx, true)
	d.Poller.Wake, d.Reconciler.Wake = w.wake, w.wake
	lerr := list(ctx)
	if errors.Is(lerr, stripeapi.ErrAuth) {
		cancel()
	}
	w.close()
	res, werr := wait()
	switch {
	case parent.Err() != nil:
		if uerr := d.unsavedResults(); uerr != nil && d.Fulfiller.Unsaved()+d.delivererUnsaved() > 0 {
			return res, fmt.Errorf("%w; %w", ErrInterrupted, uerr)
		}
		return res, ErrInterrupted
	case lerr != nil:
		return res, lerr
	case werr != nil:
		return res, werr
	}
	return res, d.unsavedResults()
}

// unsavedResults is an error when attempts ran whose results the store
// refused to record: the process is about to end, so the next start
// repeats them (with the same idempotency keys), as after a crash.
func (d *Daemon) unsavedResults() error {
	// One more try: the disk may have recovered since the queues last wrote.
	_ = d.Fulfiller.SaveKept()
	if d.Deliverer != nil {
		_ = d.Deliverer.SaveKept()
	}
	n := d.Fulfiller.Unsaved()
	if d.Deliverer != nil {
		n += d.Deliverer.Unsaved()
	}
	if n == 0 {
		return d.Health.Err()
	}
	return fmt.Errorf("%d attempt(s) ran but the store refused to record their results (%v); "+
		"the next start repeats them with the same idempotency keys: free the disk first", n, d.Health.Err())
}

// Once is one complete pass (`run --once`): the poll and the queues side by side, the
// queues until nothing is due.
func (d *Daemon) Once(parent context.Context) error {
	if d.Node != nil {
		// One heartbeat first: it says whether this pass lists.
		if err := d.Node.Beat(); err != nil {
			return fmt.Errorf("shared store: %w", err)
		}
		defer d.runNode(parent)()
	}
	var pres poller.Result
	res, err := d.pass(parent, func(ctx context.Context) error {
		if !d.lists() {
			d.Logger.Info("another instance lists events; this pass works the queues only")
			return nil
		}
		ctx, cancel := d.listing(ctx)
		defer cancel()
		if err := d.startListing(ctx); err != nil {
			return err
		}
		var perr error
		pres, perr = d.Poller.Poll(ctx, true)
		d.Metrics.Poll(perr)
		if perr == nil {
			_, perr = d.Reconciler.SweepAgedOut(ctx)
		}
		return perr
	})
	if errors.Is(err, ErrInterrupted) {
		return err
	}
	counts := []any{"events_listed", pres.Listed, "events_new", pres.New, "sessions_queued", pres.Queued,
		"attempted", res.Attempted, "fulfilled", res.Fulfilled, "failed", res.Failed, "waiting_retry", res.Waiting}
	if err != nil {
		// The error itself is the exit message; the counts say how far
		// the pass got. complete_until is left out: it did not move.
		d.Logger.Warn("pass did not complete; the next run resumes from the same position", counts...)
		return err
	}
	d.Logger.Info("pass complete", append(counts, "complete_until", pres.Position.Settled.UTC().Format(time.RFC3339))...)
	if d.lists() {
		if err := d.Prune(parent); err != nil && !isCanceled(parent, err) {
			return err
		}
	}
	if res.Failed > 0 {
		return fmt.Errorf("%d delivery(ies) failed in this pass and are dead-lettered; see `fulfilld status`, then `fulfilld retry --failed`", res.Failed)
	}
	return nil
}

// Prune cuts settled records older than store.retention down to what
// prevents a repeat, in small transactions.
func (d *Daemon) Prune(ctx context.Context) error {
	before := d.now().Add(-d.Config.Store.Retention)
	// Past Stripe's 30 days of events (and a day's margin), records that
	// prevent nothing can go for good; see fulfill.Prune.
	forget := d.Config.Store.Retention >= ForgetAfter
	n, err := fulfill.PruneSettled(ctx, d.Fulfiller.DB, before, forget)
	if n > 0 {
		d.Logger.Info("pruned settled records past store.retention to what prevents a repeat",
			"records", n, "retention", d.Config.Store.Retention, "settled_before", before.UTC().Format(time.RFC3339))
	}
	if err != nil {
		return fmt.Errorf("prune settled records: %w", err)
	}
	return nil
}

// cronLogger adapts slog to cron's logger interface.
type cronLogger struct{ l *slog.Logger }

func (c cronLogger) Info(msg string, kv ...any) { c.l.Debug(msg, kv...) }
func (c cronLogger) Error(err error, msg string, kv ...any) {
	c.l.Error(msg, append(kv, "err", err)...)
}

// Reconcile is one sweep of sessions created since from, with the queues
// working until nothing is due: `reconcile` when no daemon runs. swept says
// whether the sweep itself completed (its result is worth showing even
// when the queues then failed).
func (d *Daemon) Reconcile(parent context.Context, from time.Time) (sw poller.Sweep, swept bool, res fulfill.PassResult, err error) {
	res, err = d.pass(parent, func(ctx context.Context) error {
		var serr error
		sw, serr = d.Reconciler.Sweep(ctx, from)
		swept = serr == nil
		return serr
	})
	return sw, swept, res, err
}

func (d *Daemon) delivererUnsaved() int {
	if d.Deliverer == nil {
		return 0
	}
	return d.Deliverer.Unsaved()
}

// ForgetAfter is the retention from which records that prevent nothing are
// deleted rather than kept as tombstones: Stripe lists events for 30 days,
// and a day more covers a late listing.
const ForgetAfter = 31 * 24 * time.Hour
