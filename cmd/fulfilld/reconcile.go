package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/internal/daemon"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/poller"
)

func (a *app) reconcileCommand() *cobra.Command {
	var since string
	cmd := &cobra.Command{
		Use:   "reconcile [--since D]",
		Short: "Sweep Checkout Sessions now and fulfill any paid one the store does not show fulfilled",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.reconcile(cmd.Context(), since)
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "sweep sessions created since then (default: reconcile.window); may reach past Stripe's 30 days of events")
	return cmd
}

func (a *app) reconcile(ctx context.Context, since string) error {
	if err := a.setup(nil); err != nil {
		return err
	}
	// A bad --since is refused before any request, on the host's clock;
	// the window is then resolved on Stripe's, when a key is at hand (the
	// running daemon may hold one this command does not).
	now := a.clock()
	if since != "" {
		if _, err := config.ParseSince("since", since, now); err != nil {
			return err
		}
	}
	if a.cfg.RequireAPIKey() == nil {
		var err error
		if now, err = a.stripeNow(ctx); err != nil {
			return err
		}
	}
	from := now.Add(-a.cfg.Reconcile.Window)
	if since != "" {
		t, err := config.ParseSince("since", since, now)
		if err != nil {
			return err
		}
		from = t
	}
	if adm := daemon.Dial(a.socketPath()); adm != nil {
		var sw poller.Sweep
		if err := adm.Call(ctx, http.MethodPost, "/reconcile", from, &sw); err != nil {
			return err
		}
		a.printSweep(sw, from)
		what := "fulfilling what was recovered"
		if sw.Repair != nil {
			what = "re-delivering what was queued"
		}
		fmt.Fprintf(a.stdout, "the running daemon is %s; see `fulfilld status`\n", what)
		return nil
	}
	if err := a.cfg.RequireAPIKey(); err != nil {
		return err
	}
	// Repair mode is an action of its own: the sweep re-delivers to
	// forward.url what Stripe could not.
	needs := a.cfg.RequireFulfillAction
	if a.cfg.Repair() {
		needs = a.cfg.RequireAction
	}
	if err := needs(); err != nil {
		return err
	}
	db, err := a.openStore(false)
	if err != nil {
		return err
	}
	defer db.Close()
	d := a.newDaemon(db)
	defer d.SaveUsage()
	if err := d.Recover(); err != nil {
		return err
	}
	if since == "" {
		// From cron, a plain `reconcile` is the scheduled sweep: in repair
		// mode it starts where the last one's listing stopped, if further
		// back than the window.
		from = d.Reconciler.ScheduledSince(from)
	}
	sw, swept, res, err := d.Reconcile(ctx, from)
	if swept {
		if sw.Repair != nil {
			// Where repair stands after the queue's pass, not at the
			// sweep's end.
			_ = db.View(func(tx store.Tx) error { return poller.RepairTotals(tx, sw.Repair) })
		}
		a.printSweep(sw, from)
		done := "fulfilled"
		if sw.Repair != nil {
			done = "delivered"
		}
		fmt.Fprintf(a.stdout, "%d %s now, %d failed, %d waiting for a retry\n", res.Fulfilled, done, res.Failed, res.Waiting)
	}
	if err != nil {
		return authHint(err)
	}
	if res.Failed > 0 {
		return &exitError{code: exitFailure, err: fmt.Errorf("%d fulfillment(s) or delivery(ies) failed and are dead-lettered; see `fulfilld status`", res.Failed)}
	}
	return nil
}

func (a *app) printSweep(sw poller.Sweep, from time.Time) {
	if r := sw.Repair; r != nil {
		// Repair mode sweeps no sessions: the shop's handler fulfils.
		fmt.Fprintf(a.stdout, "repair: %d events Stripe could not deliver, created %s to %s (forward.grace ago): %d queued for forward.url now, %d queued before\n",
			r.Listed, r.Since.UTC().Format(time.RFC3339), r.Until.UTC().Format(time.RFC3339), r.Queued, r.Before)
		fmt.Fprintf(a.stdout, "repaired in all: %d delivered, %d waiting, %d dead-lettered (`fulfilld retry evt_…` requeues one)\n",
			r.Repaired, r.Waiting, r.DeadLettered)
		return
	}
	fmt.Fprintf(a.stdout, "swept %d complete sessions created since %s\n", sw.Listed, from.UTC().Format(time.RFC3339))
	fmt.Fprintf(a.stdout, "recovered %d never seen in the event stream, %d seen but not fulfilled; %d fulfilled ahead of the stream\n",
		sw.Recovered[poller.ReasonNeverSeen], sw.Recovered[poller.ReasonNotFulfilled], sw.Early)
	if m := sw.Misses; m != nil {
		fmt.Fprintf(a.stdout, "webhook deliveries that failed: %d events, %d of them not handled by fulfilld (see `fulfilld status`)\n", m.Count, m.Unhandled)
	}
}
