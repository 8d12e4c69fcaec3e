package main

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/cluster"
	"github.com/fulfilld/fulfilld/internal/daemon"
	"github.com/fulfilld/fulfilld/internal/metrics"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/storehealth"
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

// newDaemon builds the service over an open store from the configuration.
func (a *app) newDaemon(db store.Store) *daemon.Daemon {
	client := a.stripeClient()
	// Every write of the queues and the poller is scored in one Health: a
	// failing disk pauses the queues and shows in /healthz.
	health := storehealth.NewHealth(a.log.With("component", "store"))
	var queues *storehealth.Guard[fulfill.Tx]
	if b, ok := db.(*boltstore.Store); ok {
		// One file, one writer: the attempts' writes share commits.
		queues = storehealth.New[fulfill.Tx](store.AsGrouped[fulfill.Tx](b), health)
	} else {
		queues = storehealth.New[fulfill.Tx](store.As[fulfill.Tx](db), health)
	}
	stream := storehealth.New(store.As[poller.Tx](db), health)
	listed := stream
	var node *cluster.Node
	if a.shared() {
		// The poller writes only while this instance lists: its writes
		// are fenced by the lister's lease.
		node = a.node(db, client)
		listed = storehealth.New(store.As[poller.Tx](node.Fence(db)), health)
	}
	bar := newProgressBar(a.stderr, a.clock)
	return daemon.New(&daemon.Daemon{
		Config:     a.cfg,
		DB:         db,
		Health:     health,
		Client:     client,
		Node:       node,
		Poller:     a.poller(listed, client),
		Fulfiller:  a.fulfiller(queues, client),
		Deliverer:  a.deliverer(queues),
		Reconciler: a.reconciler(stream, client),
		Metrics:    a.metrics(db),
		Logger:     a.log,
		Now:        a.now,
		Socket:     a.socketPath(),
		ExitCode:   exitCode,
	}, bar.update)
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
	onHost := false // since was counted back on the host's clock
	if f.since != "" {
		// Refused before any request on the host's clock.
		var err error
		if since, err = runSince(f.since, a.clock()); err != nil {
			return err
		}
		// One host backfilling a window well inside Stripe's retention
		// lists from its first request: the first answer tells Stripe's
		// time and moves the start back if the host was ahead
		// (Poller.StartOnHostClock). Otherwise --since is resolved on
		// Stripe's clock first, which decides what the stream covers:
		// a window at the retention's edge is refused on it, and
		// several hosts record the start for whichever lists.
		onHost = !a.shared() && config.SinceIsDuration(f.since) &&
			since.After(poller.RetentionEdge(a.clock()).Add(onHostMargin))
		if !onHost {
			now, err := a.stripeNow(ctx)
			if err != nil {
				// Stripe unreachable or the key rejected: the first
				// poll fails on the same error and records it.
				now = a.clock()
			}
			if since, err = runSince(f.since, now); err != nil {
				return err
			}
		}
	}
	if f.dryRun {
		return a.dryRun(ctx, since, onHost)
	}
	db, err := a.openStore(false)
	if err != nil {
		return err
	}
	defer db.Close()
	d := a.newDaemon(db)
	defer d.SaveUsage()
	switch {
	case a.shared() && !since.IsZero():
		// Whichever instance lists carries it out.
		if err := d.RequestBackfill(since); err != nil {
			return err
		}
	case a.shared():
		// The lister starts the stream when it takes the role.
	case onHost:
		if _, err := d.Poller.StartOnHostClock(ctx, since); err != nil {
			return authHint(err)
		}
	default:
		if _, err := d.Poller.Start(ctx, since); err != nil {
			return authHint(err)
		}
	}
	if err := d.Recover(); err != nil {
		return err
	}
	if f.once {
		return authHint(d.Once(ctx))
	}
	return authHint(d.Serve(ctx))
}

// onHostMargin: a --since window that begins this far inside Stripe's
// retention on the host's clock is not asked about first; a host off by
// more is broken, and the first poll still finds a window past the
// retention (its events are swept instead).
const onHostMargin = time.Hour

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
func (a *app) dryRun(ctx context.Context, since time.Time, onHost bool) error {
	var db store.Store
	var err error
	if _, serr := os.Stat(a.cfg.Store.Path); serr == nil || a.shared() {
		db, err = a.openStore(true)
	} else {
		// No store yet: judge against an empty one that is thrown away.
		dir, derr := os.MkdirTemp("", "fulfilld-dry-run-")
		if derr != nil {
			return derr
		}
		defer os.RemoveAll(dir)
		db, err = boltstore.Open(filepath.Join(dir, "dry-run.db"), false, time.Second)
	}
	if err != nil {
		return err
	}
	defer db.Close()
	p := a.poller(store.As[poller.Tx](db), a.stripeClient())
	p.DryRun = true
	start := p.Start
	if onHost {
		start = p.StartOnHostClock
	}
	if _, err := start(ctx, since); err != nil {
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

// metrics are the daemon's Prometheus series, with the configured read
// budget so /metrics shows the one in force.
func (a *app) metrics(db store.Store) *metrics.Metrics {
	m := metrics.New(db, a.now)
	m.SetReadBudget(a.cfg.Stripe.MonthlyReadBudget)
	return m
}
