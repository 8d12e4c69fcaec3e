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

// daemon is one `run`: its store, client and the two loops.
type daemon struct {
	*app
	db     *bbolt.DB
	client *stripeapi.Client
	poller *poller.Poller
	ful    *fulfill.Fulfiller
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
	d := &daemon{app: a, db: db, client: a.stripeClient()}
	d.poller = a.poller(db, d.client)
	d.poller.DryRun = f.dryRun
	d.ful = a.fulfiller(db, d.client)
	defer a.saveUsage(db, d.client)

	if f.dryRun {
		if _, err := d.poller.Start(since); err != nil {
			return err
		}
		_, err := d.poller.Poll(ctx, true)
		if isCanceled(ctx, err) {
			return nil
		}
		return authHint(err)
	}
	if _, err := d.poller.Start(since); err != nil {
		return err
	}
	if n, err := d.ful.Recover(); err != nil {
		return err
	} else if n > 0 {
		a.log.Warn("attempts were cut off by the last stop; repeating them with the same idempotency keys", "sessions", n)
	}
	if f.once {
		return d.once(ctx)
	}
	return d.serve(ctx)
}

// once is one complete pass: the poll and the queue run side by side, the
// queue until nothing is due.
func (d *daemon) once(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wake := make(chan struct{}, 1)
	d.poller.Wake = func() { notify(wake) }
	type result struct {
		res fulfill.PassResult
		err error
	}
	worker := make(chan result, 1)
	go func() {
		res, err := d.ful.Run(ctx, fulfill.RunOptions{Wake: wake, UntilIdle: true, Grace: d.cfg.Fulfill.Timeout})
		worker <- result{res, err}
	}()
	pres, perr := d.poller.Poll(ctx, true)
	if errors.Is(perr, stripeapi.ErrAuth) {
		cancel()
	}
	close(wake)
	w := <-worker
	if isCanceled(ctx, perr) || isCanceled(ctx, w.err) {
		d.log.Info("stopped before the pass completed; the next run resumes where this one stopped")
		return nil
	}
	d.log.Info("pass complete",
		"events_listed", pres.Listed, "events_new", pres.New, "sessions_queued", pres.Queued,
		"attempted", w.res.Attempted, "fulfilled", w.res.Fulfilled, "failed", w.res.Failed, "waiting_retry", w.res.Waiting,
		"complete_until", pres.Position.Settled.UTC().Format(time.RFC3339))
	switch {
	case perr != nil:
		return authHint(perr)
	case w.err != nil:
		return authHint(w.err)
	case w.res.Failed > 0:
		return &exitError{code: exitFailure, err: fmt.Errorf("%d fulfillment(s) failed in this pass and are dead-lettered; see `fulfilld status`, then `fulfilld retry --failed`", w.res.Failed)}
	}
	return nil
}

// serve is the daemon: polls on the schedule, the queue always running.
func (d *daemon) serve(ctx context.Context) error {
	sched, err := cron.ParseStandard(d.cfg.Schedule)
	if err != nil {
		return &config.Error{Key: "schedule", Msg: err.Error()}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	wake := make(chan struct{}, 1)
	d.poller.Wake = func() { notify(wake) }

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := d.ful.Run(ctx, fulfill.RunOptions{Wake: wake, Grace: d.cfg.Fulfill.Timeout})
		if err != nil && !errors.Is(err, context.Canceled) {
			cancel(err)
		}
	}()

	clog := cronLogger{d.log.With("component", "schedule")}
	poll := cron.NewChain(cron.Recover(clog), cron.SkipIfStillRunning(clog)).Then(cron.FuncJob(func() {
		if ctx.Err() != nil {
			return
		}
		res, err := d.poller.Poll(ctx, false)
		d.saveUsage(d.db, d.client)
		switch {
		case err == nil:
			d.log.Debug("poll complete", "events_listed", res.Listed, "events_new", res.New, "sessions_queued", res.Queued)
		case isCanceled(ctx, err):
		case errors.Is(err, stripeapi.ErrAuth):
			cancel(err)
		default:
			d.log.Error("poll failed; the next poll retries from the same position", "err", err)
		}
	}))
	c := cron.New(cron.WithLogger(clog))
	c.Schedule(sched, poll)
	c.Start()
	d.log.Info("fulfilld running", "schedule", d.cfg.Schedule, "store", d.cfg.Store.Path, "api_version", stripeapi.APIVersion)
	go poll.Run() // the first poll now, not at the first tick

	<-ctx.Done()
	d.log.Info("stopping: no new polls; running actions get their timeout to finish", "grace", d.cfg.Fulfill.Timeout)
	<-c.Stop().Done()
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return authHint(err)
	}
	d.log.Info("stopped")
	return nil
}

func notify(c chan<- struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// cronLogger adapts slog to cron's logger interface.
type cronLogger struct{ l *slog.Logger }

func (c cronLogger) Info(msg string, kv ...any) { c.l.Debug(msg, kv...) }
func (c cronLogger) Error(err error, msg string, kv ...any) {
	c.l.Error(msg, append(kv, "err", err)...)
}
