package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/metrics"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/storehealth"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

type runFlags struct {
	since  string
	once   bool
	dryRun bool
}

func (a *app) runCommand() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run [--since D] [--once] [--dry-run]",
		Short: "Poll Stripe's events on the schedule and fulfill paid sessions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.run(cmd.Context(), f)
		},
	}
	cmd.Flags().StringVar(&f.since, "since", "", "make sure everything created since then is handled: a duration (24h, 90m) or an RFC 3339 time")
	cmd.Flags().BoolVar(&f.once, "once", false, "one full pass (poll, drain the queue, due retries), then exit")
	cmd.Flags().BoolVar(&f.dryRun, "dry-run", false, "list and report what would be done; write nothing, run no action")
	return cmd
}

// daemon is one process's store, client and loops.
type daemon struct {
	*app
	db *bbolt.DB
	// store is db as the queues write to it: it keeps score of whether
	// writes work, so a failing disk pauses them and shows in /healthz.
	store    *storehealth.Guard
	client   *stripeapi.Client
	poller   *poller.Poller
	ful      *fulfill.Fulfiller
	notifier *fulfill.Notifier // nil without notify
	rec      *poller.Reconciler
	metrics  *metrics.Metrics
	// wake tells the running queues that work was queued.
	wake func()
	// heartbeat is when the poll last showed progress (unix nanos), and
	// polling whether one is running: the systemd watchdog reads them.
	heartbeat atomic.Int64
	polling   atomic.Bool
	// reads paces polls under stripe.monthly_read_budget; see pollWithinReadBudget.
	reads *stripeapi.ReadPacer
	// jobFailures counts each scheduled job's failures in a row (jobDone).
	jobMu       sync.Mutex
	jobFailures map[string]int
}

func (a *app) newDaemon(db *bbolt.DB) *daemon {
	d := &daemon{app: a, db: db, client: a.stripeClient(), wake: func() {}}
	d.store = storehealth.New(db, a.log.With("component", "store"))
	d.metrics = metrics.New(db, d.client.Clock.Now)
	d.poller = a.poller(db, d.client)
	d.ful = a.fulfiller(d.store, d.client)
	d.ful.Action = d.metrics.Instrument("fulfill", d.ful.Action)
	d.notifier = a.notifier(d.store)
	if d.notifier != nil {
		d.notifier.Action = d.metrics.Instrument("notify", d.notifier.Action)
	}
	d.poller.Notify = d.notifier != nil
	d.rec = a.reconciler(db, d.client)
	bar := newProgressBar(a.stderr, a.clock)
	d.poller.Progress = func(p poller.Progress) {
		d.heartbeat.Store(a.clock().UnixNano())
		bar.update(p)
	}
	return d
}

func (a *app) run(ctx context.Context, f runFlags) error {
	if err := a.setup(nil); err != nil {
		return err
	}
	if err := a.cfg.RequireAPIKey(); err != nil {
		return err
	}
	if !f.dryRun {
		if err := a.cfg.RequireAction(); err != nil {
			return err
		}
	}
	var since time.Time
	if f.since != "" {
		// Refused before any request on the host's clock; then resolved
		// on Stripe's, which decides what the stream covers.
		if _, err := runSince(f.since, a.clock()); err != nil {
			return err
		}
		now, err := a.stripeNow(ctx)
		if err != nil {
			// Stripe unreachable or the key rejected: Start below fails
			// on the same error and records it for status.
			now = a.clock()
		}
		if since, err = runSince(f.since, now); err != nil {
			return err
		}
	}
	if f.dryRun {
		return a.dryRun(ctx, since)
	}
	db, err := a.openStore(false)
	if err != nil {
		return err
	}
	defer db.Close()
	d := a.newDaemon(db)
	defer d.saveUsage(db, d.client)
	if _, err := d.poller.Start(ctx, since); err != nil {
		return authHint(err)
	}
	if err := d.recover(); err != nil {
		return err
	}
	if f.once {
		return d.once(ctx)
	}
	return d.serve(ctx)
}

// runSince resolves run's --since against now, refusing what the event
// stream can no longer list.
func runSince(value string, now time.Time) (time.Time, error) {
	t, err := config.ParseSince("since", value, now)
	if err != nil {
		return t, err
	}
	if t.Before(poller.RetentionEdge(now)) {
		return t, usagef("--since: %s is past Stripe's 30-day event retention, so its events cannot be listed; "+
			"use at most --since 720h here, and `fulfilld reconcile --since %s` to sweep older sessions",
			t.UTC().Format(time.RFC3339), value)
	}
	return t, nil
}

// dryRun lists what one pass would handle, reading the store (if there is
// one) and writing nothing.
func (a *app) dryRun(ctx context.Context, since time.Time) error {
	var db *bbolt.DB
	var err error
	if _, serr := os.Stat(a.cfg.Store.Path); serr == nil {
		db, err = a.openStore(true)
	} else {
		// No store yet: judge against an empty one that is thrown away.
		dir, derr := os.MkdirTemp("", "fulfilld-dry-run-")
		if derr != nil {
			return derr
		}
		defer os.RemoveAll(dir)
		db, err = store.Open(filepath.Join(dir, "dry-run.db"), false, time.Second)
	}
	if err != nil {
		return err
	}
	defer db.Close()
	p := a.poller(db, a.stripeClient())
	p.DryRun = true
	if _, err := p.Start(ctx, since); err != nil {
		return err
	}
	res, err := p.Poll(ctx, true)
	if isCanceled(ctx, err) {
		return nil
	}
	if err == nil {
		a.log.Info("dry run complete: nothing was written and no action ran",
			"events_listed", res.Listed, "events_new", res.New, "sessions_to_fulfill", res.Queued)
	}
	return authHint(err)
}

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

// workers starts the fulfillment queue and, when configured, the notify
// queue. wait returns their combined result once both returned.
func (d *daemon) workers(ctx context.Context, untilIdle bool) (w wakers, wait func() (fulfill.PassResult, error)) {
	type result struct {
		res fulfill.PassResult
		err error
	}
	runs := []func(context.Context, fulfill.RunOptions) (fulfill.PassResult, error){d.ful.Run}
	if d.notifier != nil {
		runs = append(runs, d.notifier.Run)
	}
	results := make(chan result, len(runs))
	for _, run := range runs {
		c := make(chan struct{}, 1)
		w = append(w, c)
		go func() {
			res, err := run(ctx, fulfill.RunOptions{Wake: c, UntilIdle: untilIdle, Grace: d.cfg.Fulfill.Timeout})
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

// recover puts attempts the last stop cut off, of both queues, first in
// line; they are repeated with the same idempotency keys.
func (d *daemon) recover() error {
	n, err := d.ful.Recover()
	if err != nil {
		return err
	}
	if d.notifier != nil {
		m, err := d.notifier.Recover()
		if err != nil {
			return err
		}
		n += m
	}
	if n > 0 {
		d.log.Warn("attempts were cut off by the last stop; repeating them with the same idempotency keys", "count", n)
	}
	return nil
}

// errInterrupted is a pass a signal stopped: not a success for cron.
var errInterrupted = &exitError{code: exitFailure,
	err: errors.New("stopped before the pass completed; the next run resumes where this one stopped")}

// pass runs list (the poll of `run --once`, or a `reconcile` sweep) while
// the queues work until nothing is due. Meanwhile the admin socket answers
// status, as it does for the daemon. A rejected key stops the queues too.
// err is errInterrupted after a signal, else the first of list's and the
// queues' errors.
func (d *daemon) pass(parent context.Context, list func(ctx context.Context) error) (fulfill.PassResult, error) {
	// ctx is also cancelled when the key is rejected; only parent ending is
	// a shutdown.
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	adminL, err := listenAdmin(d.socketPath())
	if err != nil {
		return fulfill.PassResult{}, err
	}
	defer os.Remove(d.socketPath())
	admin := d.startServer(adminL, d.adminHandler(ctx, true), "admin socket")
	defer admin.Close()
	w, wait := d.workers(ctx, true)
	d.poller.Wake, d.rec.Wake = w.wake, w.wake
	lerr := list(ctx)
	if errors.Is(lerr, stripeapi.ErrAuth) {
		cancel()
	}
	w.close()
	res, werr := wait()
	switch {
	case parent.Err() != nil:
		return res, errInterrupted
	case lerr != nil:
		return res, authHint(lerr)
	case werr != nil:
		return res, authHint(werr)
	}
	return res, d.unsavedResults()
}

// unsavedResults is an error when attempts ran whose results the store
// refused to record: the process is about to end, so the next start
// repeats them (with the same idempotency keys), as after a crash.
func (d *daemon) unsavedResults() error {
	n := d.ful.Unsaved()
	if d.notifier != nil {
		n += d.notifier.Unsaved()
	}
	if n == 0 {
		return d.store.Err()
	}
	return &exitError{code: exitFailure, err: fmt.Errorf("%d attempt(s) ran but the store refused to record their results (%v); "+
		"the next start repeats them with the same idempotency keys: free the disk first", n, d.store.Err())}
}

// once is one complete pass: the poll and the queues side by side, the
// queues until nothing is due.
func (d *daemon) once(parent context.Context) error {
	var pres poller.Result
	res, err := d.pass(parent, func(ctx context.Context) error {
		var perr error
		pres, perr = d.poller.Poll(ctx, true)
		d.metrics.Poll(perr)
		if perr == nil {
			_, perr = d.rec.SweepAgedOut(ctx)
		}
		return perr
	})
	if err == errInterrupted {
		return err
	}
	counts := []any{"events_listed", pres.Listed, "events_new", pres.New, "sessions_queued", pres.Queued,
		"attempted", res.Attempted, "fulfilled", res.Fulfilled, "failed", res.Failed, "waiting_retry", res.Waiting}
	if err != nil {
		// The error itself is the exit message; the counts say how far
		// the pass got. complete_until is left out: it did not move.
		d.log.Warn("pass did not complete; the next run resumes from the same position", counts...)
		return err
	}
	d.log.Info("pass complete", append(counts, "complete_until", pres.Position.Settled.UTC().Format(time.RFC3339))...)
	if err := d.prune(parent); err != nil && !isCanceled(parent, err) {
		return err
	}
	if res.Failed > 0 {
		return &exitError{code: exitFailure, err: fmt.Errorf("%d delivery(ies) failed in this pass and are dead-lettered; see `fulfilld status`, then `fulfilld retry --failed`", res.Failed)}
	}
	return nil
}

// prune cuts settled records older than store.retention down to what
// prevents a repeat, in small transactions.
func (d *daemon) prune(ctx context.Context) error {
	before := d.clock().Add(-d.cfg.Store.Retention)
	n, err := fulfill.PruneSettled(ctx, d.store, before)
	if n > 0 {
		d.log.Info("pruned settled records past store.retention to what prevents a repeat",
			"records", n, "retention", d.cfg.Store.Retention, "settled_before", before.UTC().Format(time.RFC3339))
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

// pollWithinReadBudget is asked before each scheduled poll. With
// stripe.monthly_read_budget set it skips the poll while the reads of a
// rolling 30 days would exceed the budget, which stretches the poll
// interval; queued work goes on. It logs once when skipping starts and once
// when polls resume.
func (d *daemon) pollWithinReadBudget() bool {
	budget := d.cfg.Stripe.MonthlyReadBudget
	if budget <= 0 {
		return true
	}
	if d.reads == nil {
		d.reads = &stripeapi.ReadPacer{Budget: int64(budget)}
	}
	var used int64
	err := d.db.View(func(tx *bbolt.Tx) error {
		r, err := stripeapi.LoadUsage(tx, d.clock())
		used = r.Last30Days.Total()
		return err
	})
	if err != nil {
		d.log.Warn("could not read API usage for stripe.monthly_read_budget; polling anyway", "err", err)
		return true
	}
	dec := d.reads.Allow(d.clock(), d.client.Transport.Sent(), used)
	switch {
	case dec.Changed && !dec.Poll:
		d.log.Warn("skipping scheduled polls to stay inside stripe.monthly_read_budget: "+dec.Reason,
			"reads_last_30_days", used, "monthly_read_budget", budget, "projected_30_days", dec.Projected)
	case dec.Changed:
		d.log.Info("polling on schedule again: back inside stripe.monthly_read_budget",
			"reads_last_30_days", used, "monthly_read_budget", budget)
	}
	return dec.Poll
}
