package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
	"github.com/spf13/cobra"
	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/fulfill"
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
	db       *bbolt.DB
	client   *stripeapi.Client
	poller   *poller.Poller
	ful      *fulfill.Fulfiller
	notifier *fulfill.Notifier // nil without notify
	rec      *poller.Reconciler
}

func (a *app) newDaemon(db *bbolt.DB) *daemon {
	d := &daemon{app: a, db: db, client: a.stripeClient()}
	d.poller = a.poller(db, d.client)
	d.ful = a.fulfiller(db, d.client)
	d.notifier = a.notifier(db)
	d.poller.Notify = d.notifier != nil
	d.rec = a.reconciler(db, d.client)
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
		t, err := config.ParseSince("since", f.since, a.clock())
		if err != nil {
			return err
		}
		if t.Before(a.clock().Add(-poller.Retention)) {
			return usagef("--since: %s is past Stripe's 30-day event retention, so its events cannot be listed; "+
				"use at most --since 720h here, and `fulfilld reconcile --since %s` to sweep older sessions",
				t.UTC().Format(time.RFC3339), f.since)
		}
		since = t
	}
	db, err := a.openStore(false)
	if err != nil {
		return err
	}
	defer db.Close()
	d := a.newDaemon(db)
	defer d.saveUsage(db, d.client)
	if _, err := d.poller.Start(since); err != nil {
		return err
	}
	if f.dryRun {
		d.poller.DryRun = true
		_, err := d.poller.Poll(ctx, true)
		if isCanceled(ctx, err) {
			return nil
		}
		return authHint(err)
	}
	if n, err := d.ful.Recover(); err != nil {
		return err
	} else if n > 0 {
		a.log.Warn("attempts were cut off by the last stop; repeating them with the same idempotency keys", "sessions", n)
	}
	if d.notifier != nil {
		if _, err := d.notifier.Recover(); err != nil {
			return err
		}
	}
	if f.once {
		return d.once(ctx)
	}
	return d.serve(ctx)
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
			total.Attempted += r.res.Attempted
			total.Fulfilled += r.res.Fulfilled
			total.Failed += r.res.Failed
			total.Waiting += r.res.Waiting
			if r.err != nil && !errors.Is(r.err, context.Canceled) {
				errs = append(errs, r.err)
			}
		}
		return total, errors.Join(errs...)
	}
}

// once is one complete pass: the poll and the queues run side by side, the
// queues until nothing is due.
func (d *daemon) once(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, wait := d.workers(ctx, true)
	d.poller.Wake, d.rec.Wake = w.wake, w.wake
	pres, perr := d.poller.Poll(ctx, true)
	if perr == nil {
		_, perr = d.rec.SweepAgedOut(ctx)
	}
	if errors.Is(perr, stripeapi.ErrAuth) {
		cancel()
	}
	w.close()
	res, werr := wait()
	if ctx.Err() != nil {
		d.log.Info("stopped before the pass completed; the next run resumes where this one stopped")
		return nil
	}
	d.log.Info("pass complete",
		"events_listed", pres.Listed, "events_new", pres.New, "sessions_queued", pres.Queued,
		"attempted", res.Attempted, "fulfilled", res.Fulfilled, "failed", res.Failed, "waiting_retry", res.Waiting,
		"complete_until", pres.Position.Settled.UTC().Format(time.RFC3339))
	switch {
	case perr != nil:
		return authHint(perr)
	case werr != nil:
		return authHint(werr)
	case res.Failed > 0:
		return &exitError{code: exitFailure, err: fmt.Errorf("%d delivery(ies) failed in this pass and are dead-lettered; see `fulfilld status`, then `fulfilld retry --failed`", res.Failed)}
	}
	return nil
}

// serve is the daemon: polls and sweeps on their schedules, the queues
// always running. The first signal stops scheduling and lets running actions
// finish (up to fulfill.timeout); a second one kills the process.
func (d *daemon) serve(ctx context.Context) error {
	pollSched, err := cron.ParseStandard(d.cfg.Schedule)
	if err != nil {
		return &config.Error{Key: "schedule", Msg: err.Error()}
	}
	sweepSched, err := cron.ParseStandard(d.cfg.Reconcile.Schedule)
	if err != nil {
		return &config.Error{Key: "reconcile.schedule", Msg: err.Error()}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w, wait := d.workers(ctx, false)
	d.poller.Wake, d.rec.Wake = w.wake, w.wake
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := wait(); err != nil {
			cancel(err)
		}
	}()

	clog := cronLogger{d.log.With("component", "schedule")}
	chain := cron.NewChain(cron.Recover(clog), cron.SkipIfStillRunning(clog))
	poll := chain.Then(cron.FuncJob(func() {
		res, err := d.poller.Poll(ctx, false)
		if err == nil {
			_, err = d.rec.SweepAgedOut(ctx)
		}
		d.saveUsage(d.db, d.client)
		d.jobDone(ctx, cancel, "poll", err, "events_listed", res.Listed, "events_new", res.New, "sessions_queued", res.Queued)
	}))
	sweep := chain.Then(cron.FuncJob(func() {
		_, err := d.rec.Sweep(ctx, d.clock().Add(-d.cfg.Reconcile.Window))
		d.saveUsage(d.db, d.client)
		d.jobDone(ctx, cancel, "reconciliation sweep", err)
	}))
	c := cron.New(cron.WithLogger(clog))
	c.Schedule(pollSched, poll)
	c.Schedule(sweepSched, sweep)
	c.Start()
	d.log.Info("fulfilld running", "schedule", d.cfg.Schedule, "reconcile_schedule", d.cfg.Reconcile.Schedule,
		"store", d.cfg.Store.Path, "api_version", stripeapi.APIVersion)
	go poll.Run() // the first poll now, not at the first tick

	<-ctx.Done()
	if context.Cause(ctx) == context.Canceled {
		d.log.Info("stopping: no new polls; running actions get fulfill.timeout to finish", "grace", d.cfg.Fulfill.Timeout)
	}
	<-c.Stop().Done()
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return authHint(err)
	}
	d.log.Info("stopped")
	return nil
}

// jobDone logs a scheduled job's outcome; a rejected key stops the daemon,
// anything else waits for the next tick.
func (d *daemon) jobDone(ctx context.Context, cancel context.CancelCauseFunc, job string, err error, kv ...any) {
	switch {
	case err == nil:
		d.log.Debug(job+" complete", kv...)
	case isCanceled(ctx, err):
	case errors.Is(err, stripeapi.ErrAuth):
		cancel(err)
	default:
		d.log.Error(job+" failed; the next one retries from the same position", "err", err)
	}
}

// cronLogger adapts slog to cron's logger interface.
type cronLogger struct{ l *slog.Logger }

func (c cronLogger) Info(msg string, kv ...any) { c.l.Debug(msg, kv...) }
func (c cronLogger) Error(err error, msg string, kv ...any) {
	c.l.Error(msg, append(kv, "err", err)...)
}
