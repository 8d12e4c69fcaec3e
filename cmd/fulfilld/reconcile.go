package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/internal/daemon"
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
		fmt.Fprintln(a.stdout, "the running daemon is fulfilling what was recovered; see `fulfilld status`")
		return nil
	}
	if err := a.cfg.RequireAPIKey(); err != nil {
		return err
	}
	if err := a.cfg.RequireFulfillAction(); err != nil {
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
	sw, swept, res, err := d.Reconcile(ctx, from)
	if swept {
		a.printSweep(sw, from)
		fmt.Fprintf(a.stdout, "%d fulfilled now, %d failed, %d waiting for a retry\n", res.Fulfilled, res.Failed, res.Waiting)
	}
	if err != nil {
		return authHint(err)
	}
	if res.Failed > 0 {
		return &exitError{code: exitFailure, err: fmt.Errorf("%d fulfillment(s) failed and are dead-lettered; see `fulfilld status`", res.Failed)}
	}
	return nil
}

func (a *app) printSweep(sw poller.Sweep, from time.Time) {
	fmt.Fprintf(a.stdout, "swept %d complete sessions created since %s\n", sw.Listed, from.UTC().Format(time.RFC3339))
	fmt.Fprintf(a.stdout, "recovered %d never seen in the event stream, %d seen but not fulfilled; %d fulfilled ahead of the stream\n",
		sw.Recovered[poller.ReasonNeverSeen], sw.Recovered[poller.ReasonNotFulfilled], sw.Early)
	if m := sw.Misses; m != nil {
		fmt.Fprintf(a.stdout, "webhook deliveries that failed: %d events, %d of them not handled by fulfilld (see `fulfilld status`)\n", m.Count, m.Unhandled)
	}
}
