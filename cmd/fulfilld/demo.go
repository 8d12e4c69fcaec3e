package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// The demo's sample actions: they print what a shop would do, and the
// fulfillment one turns a few orders away on their first attempt so that a
// retry shows.
const (
	demoShip = `#!/bin/sh
items=$(grep -o '"object":"item"' | wc -l)
case "$FULFILLD_SESSION_ID" in
*[0-4]) if [ "$FULFILLD_ATTEMPT" = 1 ]; then echo "warehouse busy, try again"; exit 1; fi ;;
esac
echo "shipped $FULFILLD_SESSION_ID: $items line items (attempt $FULFILLD_ATTEMPT, trigger $FULFILLD_TRIGGER)"
`
	demoNotify = `#!/bin/sh
cat >/dev/null
echo "told the customer about $FULFILLD_EVENT_TYPE ($FULFILLD_EVENT_ID)"
`
)

func (a *app) demoCommand() *cobra.Command {
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run against a built-in simulated Stripe API with generated traffic; no key needed",
		Long: "demo starts the simulated Stripe API on loopback, generates an hour of history and then live\n" +
			"traffic (paid, paid later, failed, expired, duplicated and late events, throttling and server\n" +
			"errors), and runs the daemon against it with a sample action. It stops by itself.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.demo(cmd.Context(), duration)
		},
	}
	cmd.Flags().DurationVar(&duration, "duration", 90*time.Second, "how long to run")
	return cmd
}

func (a *app) demo(parent context.Context, duration time.Duration) error {
	if duration <= 0 || duration > time.Hour {
		return usagef("--duration: give a duration from 1s to 1h, such as 90s")
	}
	dir, err := os.MkdirTemp("", "fulfilld-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for name, script := range map[string]string{"ship.sh": demoShip, "notify.sh": demoNotify} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o700); err != nil {
			return err
		}
	}
	var seq sync.Mutex
	sim := stripesim.New(stripesim.Options{
		APIKey:        stripesim.DefaultAPIKey,
		Latency:       func() time.Duration { return 40*time.Millisecond + rand.N(80*time.Millisecond) },
		GlobalLimit:   25,
		EndpointLimit: 25,
		Fault: func(_ *http.Request, n int64) *stripesim.Fault {
			seq.Lock()
			defer seq.Unlock()
			switch {
			case n%41 == 0:
				return &stripesim.Fault{Status: 429, Header: http.Header{"Stripe-Rate-Limited-Reason": {"global-rate"}}}
			case n%67 == 0:
				return &stripesim.Fault{Status: 500}
			}
			return nil
		},
	})
	defer sim.Close()

	err = a.setup(map[string]any{
		"stripe.api_key":     stripesim.DefaultAPIKey,
		"stripe.api_base":    sim.URL(),
		"store.path":         filepath.Join(dir, "demo.db"),
		"fulfill.command":    []string{"/bin/sh", filepath.Join(dir, "ship.sh")},
		"fulfill.timeout":    "10s",
		"notify.command":     []string{"/bin/sh", filepath.Join(dir, "notify.sh")},
		"schedule":           "@every 2s",
		"events.lookback":    "1m",
		"reconcile.schedule": "@every 20s",
		"reconcile.window":   "2h",
	})
	if err != nil {
		return err
	}
	a.log.Info("demo: simulated Stripe API listening", "url", sim.URL(), "store", a.cfg.Store.Path, "duration", duration)
	now := time.Now()
	gen := &demoTraffic{sim: sim}
	for i := range 20 { // an hour of history, for the backfill
		gen.one(now.Add(-time.Hour + time.Duration(i)*3*time.Minute))
	}
	// A paid session whose event Stripe never lists: only reconciliation finds it.
	id := sim.CreateSession(stripesim.SessionParams{Created: now.Add(-30 * time.Minute), LineItems: 2})
	sim.CompleteSession(id, "paid", now.Add(-29*time.Minute), stripesim.VisibleAt(now.Add(24*time.Hour)))

	ctx, cancel := context.WithTimeout(parent, duration)
	defer cancel()
	go gen.live(ctx, duration)

	db, err := a.openStore(false)
	if err != nil {
		return err
	}
	d := a.newDaemon(db)
	if _, err := d.poller.Start(ctx, now.Add(-time.Hour)); err != nil {
		db.Close()
		return err
	}
	err = d.serve(ctx)
	d.saveUsage(db, d.client)
	if err != nil {
		db.Close()
		return err
	}
	st, err := readStatus(db, a.clock())
	db.Close()
	if err != nil {
		return err
	}
	st.Store = "(demo store, removed on exit)"
	fmt.Fprintf(a.stdout, "\ndemo finished: %d sessions and %d events in the simulated account; what fulfilld did:\n\n", gen.sessions, sim.EventCount())
	st.writeText(a.stdout)
	fmt.Fprintln(a.stdout, "\nTry it for real: STRIPE_API_KEY=sk_test_… fulfilld run --since 24h --config deploy/fulfilld.yaml")
	return nil
}

// demoTraffic makes a shop's worth of Checkout Sessions.
type demoTraffic struct {
	sim      *stripesim.Server
	mu       sync.Mutex
	sessions int
	later    []func() // async outcomes, a few seconds on
}

// one makes one session's story, completed at the given time.
func (g *demoTraffic) one(at time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sessions++
	sim := g.sim
	id := sim.CreateSession(stripesim.SessionParams{Created: at.Add(-time.Minute), LineItems: 1 + rand.N(5)})
	switch r := rand.N(100); {
	case r < 55: // paid by card
		sim.CompleteSession(id, "paid", at)
	case r < 65: // a bank debit: unpaid now, paid a little later
		sim.CompleteSession(id, "unpaid", at)
		g.later = append(g.later, func() { sim.AsyncPaymentSucceeded(id, time.Now()) })
	case r < 73: // a bank debit that bounces
		sim.CompleteSession(id, "unpaid", at)
		g.later = append(g.later, func() { sim.AsyncPaymentFailed(id, time.Now()) })
	case r < 80: // abandoned
		sim.ExpireSession(id, at)
	case r < 87: // the same event delivered twice
		evt := sim.CompleteSession(id, "paid", at)
		sim.AddEvent("", "checkout.session.completed", at, json.RawMessage(fmt.Sprintf(
			`{"id":%q,"object":"checkout.session","payment_status":"paid","status":"complete","duplicate_of":%q}`, id, evt)))
	case r < 94: // listed late: visible 20 s after it was created
		sim.CompleteSession(id, "paid", at, stripesim.VisibleAt(at.Add(20*time.Second)))
	default: // a declined card on a PaymentIntent
		sim.PaymentIntentEvent("payment_intent.payment_failed", sim.PaymentIntentID(id), at, "Your card was declined.")
	}
}

// live keeps traffic coming until the last 15 s, so late events and
// retries can settle before the demo ends.
func (g *demoTraffic) live(ctx context.Context, duration time.Duration) {
	stop := time.Now().Add(duration - 15*time.Second)
	for time.Now().Before(stop) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(300*time.Millisecond + rand.N(700*time.Millisecond)):
		}
		g.one(time.Now())
		g.mu.Lock()
		if len(g.later) > 0 && rand.N(3) == 0 {
			next := g.later[0]
			g.later = g.later[1:]
			g.mu.Unlock()
			next()
			continue
		}
		g.mu.Unlock()
	}
}
