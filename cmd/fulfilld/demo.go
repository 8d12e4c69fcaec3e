package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/fulfilld/fulfilld/internal/status"
	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// The demo's sample actions. The fulfilment one appends each session it
// ships to a ledger, the demo's record of what the action really received,
// and turns away the first attempt of every session whose id ends in a
// digit or a-m (about a third) so that retries show. LEDGER is replaced by
// the ledger's path.
const (
	demoShip = `#!/bin/sh
cat >/dev/null
case "$FULFILLD_SESSION_ID" in
*[0-9a-m]) if [ "$FULFILLD_ATTEMPT" = 1 ]; then echo "warehouse busy (on purpose: the demo turns away first attempts), try again"; exit 1; fi ;;
esac
echo "$FULFILLD_SESSION_ID" >>'LEDGER'
echo "shipped $FULFILLD_SESSION_ID (attempt $FULFILLD_ATTEMPT, trigger $FULFILLD_TRIGGER)"
`
	demoNotify = `#!/bin/sh
cat >/dev/null
echo "$FULFILLD_EVENT_ID" >>'LEDGER'
echo "told the customer about $FULFILLD_EVENT_TYPE ($FULFILLD_EVENT_ID)"
`
)

// demoSettle is how long before the end the demo stops making traffic, so
// late events, retries and paid-later payments can finish.
const demoSettle = 25 * time.Second

func (a *app) demoCommand() *cobra.Command {
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "demo [--duration 90s]",
		Short: "Run against a built-in simulated Stripe API with generated traffic; no key needed",
		Long: "demo starts a simulated Stripe API on loopback with an hour of history and live traffic (paid,\n" +
			"paid later, bounced, expired, duplicated and late events; throttling and server errors), and\n" +
			"runs the daemon against it with a sample action that turns away some first attempts on\n" +
			"purpose. At the end it checks Stripe's records against what the action received: every paid\n" +
			"session fulfilled exactly once, nothing unpaid fulfilled. It exits 1 if that does not hold.\n" +
			"It logs at warn unless --log-level is given.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f := cmd.Flag("log-level"); f != nil && !f.Changed {
				a.logLevel = "warn" // the demo tells its own story; --log-level info shows every poll
			}
			return a.demo(cmd.Context(), duration)
		},
	}
	cmd.Flags().DurationVar(&duration, "duration", 90*time.Second, "how long to run (20s to 1h)")
	return cmd
}

func (a *app) demo(parent context.Context, duration time.Duration) error {
	if duration < 20*time.Second || duration > time.Hour {
		return usagef("--duration: give a duration from 20s to 1h, such as 90s")
	}
	dir, err := os.MkdirTemp("", "fulfilld-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for name, script := range map[string]string{"ship.sh": demoShip, "notify.sh": demoNotify} {
		script = strings.ReplaceAll(script, "LEDGER", filepath.Join(dir, strings.TrimSuffix(name, ".sh")+".ledger"))
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o700); err != nil {
			return err
		}
	}
	ledger := filepath.Join(dir, "ship.ledger")
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
		"events.types":       []string{}, // the default: the demo needs every type
	})
	if err != nil {
		return err
	}
	out := a.stdout
	fmt.Fprintf(out, `fulfilld demo: %s against a simulated Stripe API on this machine (no key, nothing left behind).

It shows fulfilld fulfilling every paid Checkout Session exactly once, while
  - the account has an hour of history to backfill, then new sessions every second or so:
    paid by card, paid later by bank debit, bounced, abandoned (expired), a declined card;
  - Stripe lists some events twice, lists some late, and one paid session's event never;
  - the simulated API throttles (429) and fails (500) some requests on purpose;
  - the sample action turns away the first attempt of about a third of the sessions on purpose
    ("warehouse busy"), so you see retries: fulfilld tries again a few seconds later.
New traffic stops %s before the end so retries and late events can settle; then the demo
compares Stripe's records with what the action received.

`, duration, demoSettle)

	now := time.Now()
	gen := &demoTraffic{sim: sim, kinds: map[string]int{}}
	for i := range 20 { // an hour of history, for the backfill
		gen.one(now.Add(-time.Hour + time.Duration(i)*3*time.Minute))
	}
	// A paid session whose event Stripe never lists: only reconciliation finds it.
	id := sim.CreateSession(stripesim.SessionParams{Created: now.Add(-30 * time.Minute), LineItems: 2})
	sim.CompleteSession(id, "paid", now.Add(-29*time.Minute), stripesim.VisibleAt(now.Add(24*time.Hour)))
	gen.add(id, "paid, but its event is never listed (reconcile finds it)")

	ctx, cancel := context.WithTimeout(parent, duration)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(2)
	go func() { defer wg.Done(); gen.live(ctx, duration-demoSettle) }()
	go func() { defer wg.Done(); a.demoProgress(ctx, now, duration, gen, ledger) }()

	db, err := a.openStore(false)
	if err != nil {
		return err
	}
	d := a.newDaemon(db)
	// Retries a few seconds apart instead of from 30 s, so they show.
	d.Fulfiller.Backoff = func(int) time.Duration { return 2 * time.Second }
	if d.Deliverer != nil {
		d.Deliverer.Backoff = d.Fulfiller.Backoff
	}
	if _, err := d.Poller.Start(ctx, now.Add(-time.Hour)); err != nil {
		db.Close()
		return err
	}
	err = d.Serve(ctx)
	d.SaveUsage()
	cancel()
	wg.Wait()
	if a.line != nil {
		a.line.Clear()
	}
	if err != nil {
		db.Close()
		return err
	}
	st, err := status.Read(db, a.clock())
	db.Close()
	if err != nil {
		return err
	}
	st.Store = "(demo store, removed on exit)"
	fmt.Fprintf(out, "\nWhat the simulated account saw: %d sessions, %d events.\n", len(gen.ids), sim.EventCount())
	gen.writeKinds(out)
	fmt.Fprintf(out, "\nfulfilld's status at the end:\n\n")
	st.WriteText(out)

	v, err := demoCheck(sim, gen.ids, ledger)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\n%s\n", v)
	self := selfName()
	fmt.Fprintf(out, `
Try it on your own Stripe sandbox (README.md, "Try it on your Stripe sandbox in five minutes"):
  %-35s # writes fulfilld.yaml and a sample action
  export STRIPE_API_KEY=rk_test_...   # a sandbox restricted key: Events and Checkout Sessions, read
  %s run --once --since 1h --config fulfilld.yaml
`, self+" init", self)
	if !v.ok() {
		return &exitError{code: exitFailure, err: fmt.Errorf("demo: the verdict failed: %s", v.line())}
	}
	return nil
}

// demoProgress draws a status line on a terminal until ctx ends.
func (a *app) demoProgress(ctx context.Context, start time.Time, duration time.Duration, gen *demoTraffic, ledger string) {
	if a.line == nil || !a.line.Terminal() {
		return
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			a.line.Clear()
			return
		case <-tick.C:
		}
		el := time.Since(start).Round(time.Second)
		phase := "traffic"
		if el > duration-demoSettle {
			phase = "settling"
		}
		shipped, _ := readLedger(ledger)
		n := 0
		for _, c := range shipped {
			n += c
		}
		a.line.Status(fmt.Sprintf("demo %s / %s (%s) · %d sessions · %d shipped · %s left",
			el, duration, phase, gen.count(), n, (duration - el).Round(time.Second)))
	}
}

// demoTraffic makes a shop's worth of Checkout Sessions.
type demoTraffic struct {
	sim   *stripesim.Server
	mu    sync.Mutex
	ids   []string
	kinds map[string]int
	later []func() // async outcomes, a few seconds on
}

func (g *demoTraffic) add(id, kind string) {
	g.ids = append(g.ids, id)
	g.kinds[kind]++
}

func (g *demoTraffic) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.ids)
}

// one makes one session's story, completed at the given time.
func (g *demoTraffic) one(at time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	sim := g.sim
	id := sim.CreateSession(stripesim.SessionParams{Created: at.Add(-time.Minute), LineItems: 1 + rand.N(5)})
	switch r := rand.N(100); {
	case r < 55:
		sim.CompleteSession(id, "paid", at)
		g.add(id, "paid by card")
	case r < 65:
		sim.CompleteSession(id, "unpaid", at)
		g.later = append(g.later, func() { sim.AsyncPaymentSucceeded(id, time.Now()) })
		g.add(id, "bank debit: unpaid at checkout, paid a little later")
	case r < 73:
		sim.CompleteSession(id, "unpaid", at)
		g.later = append(g.later, func() { sim.AsyncPaymentFailed(id, time.Now()) })
		g.add(id, "bank debit that bounces")
	case r < 80:
		sim.ExpireSession(id, at)
		g.add(id, "abandoned: the session expired")
	case r < 87:
		evt := sim.CompleteSession(id, "paid", at)
		sim.AddEvent("", "checkout.session.completed", at, json.RawMessage(fmt.Sprintf(
			`{"id":%q,"object":"checkout.session","payment_status":"paid","status":"complete","duplicate_of":%q}`, id, evt)))
		g.add(id, "paid, and its event listed twice")
	case r < 94:
		sim.CompleteSession(id, "paid", at, stripesim.VisibleAt(at.Add(5*time.Second)))
		g.add(id, "paid, its event listed 5 s late")
	default:
		sim.PaymentIntentEvent("payment_intent.payment_failed", sim.PaymentIntentID(id), at, "Your card was declined.")
		g.add(id, "card declined: never paid")
	}
}

// live makes traffic for the given time, about one session a second, and
// lets some paid-later payments succeed or bounce.
func (g *demoTraffic) live(ctx context.Context, d time.Duration) {
	stop := time.Now().Add(d)
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

func (g *demoTraffic) writeKinds(w io.Writer) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, k := range []string{"paid by card", "paid, and its event listed twice", "paid, its event listed 5 s late",
		"paid, but its event is never listed (reconcile finds it)", "bank debit: unpaid at checkout, paid a little later",
		"bank debit that bounces", "abandoned: the session expired", "card declined: never paid"} {
		fmt.Fprintf(w, "  %4d  %s\n", g.kinds[k], k)
	}
}

// readLedger counts, per session id, how often the action shipped it.
func readLedger(path string) (map[string]int, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return map[string]int{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if id := strings.TrimSpace(sc.Text()); id != "" {
			n[id]++
		}
	}
	return n, sc.Err()
}

// demoVerdict compares the simulated Stripe's records with the action's
// ledger.
type demoVerdict struct {
	paid, once, missed, twice int // sessions Stripe shows as paid
	unpaid, unpaidShipped     int // open, unpaid, bounced or expired
	strangers                 int // shipped ids Stripe does not know
}

func demoCheck(sim *stripesim.Server, ids []string, ledger string) (demoVerdict, error) {
	shipped, err := readLedger(ledger)
	if err != nil {
		return demoVerdict{}, fmt.Errorf("read the demo's ledger: %w", err)
	}
	var v demoVerdict
	known := map[string]bool{}
	for _, id := range ids {
		known[id] = true
		status, pay, _ := sim.Session(id)
		n := shipped[id]
		if status == "complete" && (pay == "paid" || pay == "no_payment_required") {
			v.paid++
			switch {
			case n == 0:
				v.missed++
			case n == 1:
				v.once++
			default:
				v.twice++
			}
			continue
		}
		v.unpaid++
		if n > 0 {
			v.unpaidShipped++
		}
	}
	for id := range shipped {
		if !known[id] {
			v.strangers++
		}
	}
	return v, nil
}

func (v demoVerdict) ok() bool {
	return v.paid > 0 && v.once == v.paid && v.unpaidShipped == 0 && v.strangers == 0
}

func (v demoVerdict) line() string {
	return fmt.Sprintf("%d of %d paid sessions fulfilled exactly once (%d missed, %d more than once); "+
		"%d of %d unpaid or expired sessions fulfilled; %d unknown sessions fulfilled",
		v.once, v.paid, v.missed, v.twice, v.unpaidShipped, v.unpaid, v.strangers)
}

func (v demoVerdict) String() string {
	word := "PASS"
	if !v.ok() {
		word = "FAIL"
	}
	return "verdict: " + word + ": " + v.line() + ".\n" +
		"(Stripe's records, read from the simulated API, against the ledger the sample action wrote.)"
}
