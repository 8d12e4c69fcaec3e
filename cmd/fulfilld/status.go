package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/daemon"
	"github.com/fulfilld/fulfilld/internal/status"
)

func (a *app) statusCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [cs_…|pi_…] [--json]",
		Short: "Show the cursor, the last poll, fulfillments by state, failures and API usage; or one session's record",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 && !strings.HasPrefix(args[0], "cs_") && !fulfill.IsPaymentIntentID(args[0]) {
				return usagef("status: %q is not a Checkout Session id (cs_…) or a PaymentIntent id (pi_…)", args[0])
			}
			if err := a.setup(nil); err != nil {
				return err
			}
			if len(args) == 1 {
				rec, err := a.record(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return status.PrintRecord(a.stdout, rec, asJSON)
			}
			st, err := a.status(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			st.WriteText(a.stdout)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return cmd
}

// status reads the status from the running daemon, or from the store when
// none runs.
func (a *app) status(ctx context.Context) (*status.Report, error) {
	if adm := daemon.Dial(a.socketPath()); adm != nil {
		var st status.Report
		return &st, adm.Call(ctx, http.MethodGet, "/status", nil, &st)
	}
	db, err := a.openStore(true)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	st, err := status.Read(db, a.clock())
	if err != nil {
		return nil, err
	}
	st.Store = a.cfg.Store.Path
	st.SetReadBudget(a.cfg.Stripe.MonthlyReadBudget)
	return st, nil
}

// record reads one session's record, read-only, from the running daemon or
// the store.
func (a *app) record(ctx context.Context, id string) (fulfill.Record, error) {
	var rec fulfill.Record
	if adm := daemon.Dial(a.socketPath()); adm != nil {
		return rec, adm.Call(ctx, http.MethodGet, "/session/"+id, nil, &rec)
	}
	db, err := a.openStore(true)
	if err != nil {
		return rec, err
	}
	defer db.Close()
	rec, err = status.Record(db, id)
	if errors.Is(err, fulfill.ErrUnknownSession) {
		err = &usageError{err}
	}
	return rec, err
}
