package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/daemon"
	"github.com/fulfilld/fulfilld/internal/status"
	"github.com/fulfilld/fulfilld/internal/store"
)

func (a *app) fulfillCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "fulfill cs_…|pi_…",
		Short: "Fulfill one session (or, with fulfill.payment_intents, PaymentIntent) now (idempotent: a fulfilled one is not run again)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if !strings.HasPrefix(id, "cs_") && !fulfill.IsPaymentIntentID(id) {
				return usagef("fulfill: %q is not a Checkout Session id (cs_…) or a PaymentIntent id (pi_…)", id)
			}
			if err := a.setup(nil); err != nil {
				return err
			}
			if fulfill.IsPaymentIntentID(id) && !a.cfg.Fulfill.PaymentIntents {
				return usagef("fulfill: %s is a PaymentIntent, and fulfill.payment_intents is off; "+
					"set it to true to fulfil PaymentIntents that no Checkout Session owns", id)
			}
			rec, ferr, err := a.fulfillOne(cmd.Context(), id)
			if err != nil {
				return err
			}
			if err := status.PrintRecord(a.stdout, rec, asJSON); err != nil {
				return err
			}
			if ferr != nil {
				return authHint(ferr)
			}
			if rec.State == fulfill.StateFailed {
				return &exitError{code: exitFailure, err: fmt.Errorf("%s is dead-lettered: %s", id, rec.LastError)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the session's record as JSON")
	return cmd
}

// fulfillOne fulfills one session through the running daemon, or with this
// process holding the store. ferr is the attempt's error (the record says
// how it ended); err means there is no record to show.
func (a *app) fulfillOne(ctx context.Context, id string) (rec fulfill.Record, ferr, err error) {
	if adm := daemon.Dial(a.socketPath()); adm != nil {
		var ans daemon.FulfillAnswer
		if err := adm.Call(ctx, http.MethodPost, "/fulfill/"+id, nil, &ans); err != nil {
			return rec, nil, err
		}
		if ans.Error != "" {
			ferr = errors.New(ans.Error)
		}
		return ans.Record, ferr, nil
	}
	if err := a.cfg.RequireAPIKey(); err != nil {
		return rec, nil, err
	}
	if err := a.cfg.RequireFulfillAction(); err != nil {
		return rec, nil, err
	}
	db, err := a.openStore(false)
	if err != nil {
		return rec, nil, err
	}
	defer db.Close()
	client := a.stripeClient()
	defer daemon.SaveUsage(db, client, a.clock(), a.log)
	rec, ferr = a.fulfiller(store.As[fulfill.Tx](db), client).Fulfill(ctx, id, fulfill.TriggerManual, "")
	if ferr != nil && rec.SessionID == "" {
		return rec, nil, authHint(daemon.FulfillError(id, ferr))
	}
	return rec, ferr, nil
}

func (a *app) retryCommand() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "retry [cs_… | pi_… | evt_… | --failed]",
		Short: "Put dead-lettered fulfillments (cs_…, pi_…) or notifications (evt_…) back in the queue",
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return usagef("retry: give either ids (cs_… sessions, pi_… PaymentIntents, evt_… notifications) or --failed")
			}
			var sessions, events []string
			for _, id := range args {
				switch {
				case strings.HasPrefix(id, "cs_"), fulfill.IsPaymentIntentID(id):
					sessions = append(sessions, id)
				case strings.HasPrefix(id, "evt_"):
					events = append(events, id)
				default:
					return usagef("retry: %q is neither a Checkout Session id (cs_…), a PaymentIntent id (pi_…) nor an event id (evt_…)", id)
				}
			}
			if err := a.setup(nil); err != nil {
				return err
			}
			req := daemon.RetryRequest{Sessions: sessions, Events: events, All: all}
			var ids []string
			if adm := daemon.Dial(a.socketPath()); adm != nil {
				if err := adm.Call(cmd.Context(), http.MethodPost, "/retry", req, &ids); err != nil {
					return err
				}
			} else {
				db, err := a.openStore(false)
				if err != nil {
					return err
				}
				defer db.Close()
				if ids, err = daemon.Retry(db, a.clock(), req); err != nil {
					return err
				}
			}
			for _, id := range ids {
				fmt.Fprintln(a.stdout, id)
			}
			fmt.Fprintf(a.stdout, "requeued %d with fresh attempts; `fulfilld run` attempts them on its next pass\n", len(ids))
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "failed", false, "requeue every dead-lettered session")
	return cmd
}
