package poller_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripesim"
	"github.com/fulfilld/fulfilld/poller"
)

func (h *harness) reconciler() *poller.Reconciler {
	r := &poller.Reconciler{DB: store.As[poller.Tx](h.db), Sessions: h.client, Events: h.client, Types: defaultTypes, Now: h.clock.Now}
	if h.stripesClock {
		r.Clock = poller.ClientClock{Client: h.client}
	}
	return r
}

// sweep runs a reconciliation sweep and works the queue until idle, as
// `fulfilld reconcile` does.
func (h *harness) sweep(since time.Time) poller.Sweep {
	h.t.Helper()
	r := h.reconciler()
	wake := make(chan struct{}, 1)
	r.Wake = func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := h.ful.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true})
		done <- err
	}()
	sw, err := r.Sweep(context.Background(), since)
	close(wake)
	if werr := <-done; werr != nil {
		h.t.Fatal(werr)
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return sw
}

// TestSweepFulfillsWhatTheStreamNeverDelivered: paid sessions whose events
// never reached fulfilld are each fulfilled once by a sweep, counted as
// recovered; a second sweep recovers nothing.
func TestSweepFulfillsWhatTheStreamNeverDelivered(t *testing.T) {
	h := newHarness(t)
	var paid []string
	for i := range 130 { // more than one page of sessions
		paid = append(paid, h.paid(t0.Add(-time.Duration(i+1)*20*time.Minute), 1+i%3))
	}
	unpaid := h.sim.CreateSession(stripesim.SessionParams{Created: t0.Add(-time.Hour), LineItems: 1})
	h.sim.CompleteSession(unpaid, "unpaid", t0.Add(-50*time.Minute))
	open := h.sim.CreateSession(stripesim.SessionParams{Created: t0.Add(-time.Hour), LineItems: 1})

	sw := h.sweep(t0.Add(-72 * time.Hour))

	for _, id := range paid {
		if n := len(h.action.calls(id)); n != 1 {
			t.Errorf("%s: action ran %d times, want 1", id, n)
		}
		rec := h.record(id)
		if rec.State != fulfill.StateFulfilled || !rec.Recovered {
			t.Errorf("%s: %s recovered=%v", id, rec.State, rec.Recovered)
		}
		if runs := h.action.calls(id); len(runs) == 1 && runs[0].Trigger != "reconcile" {
			t.Errorf("%s: trigger %q, want reconcile", id, runs[0].Trigger)
		}
	}
	if sw.Recovered[poller.ReasonNeverSeen] != len(paid) {
		t.Errorf("sweep counted %v recovered, want %d never seen", sw.Recovered, len(paid))
	}
	if rec := h.record(unpaid); rec.State != fulfill.StateAwaitingPayment {
		t.Errorf("unpaid session: %q, want awaiting_payment", rec.State)
	}
	if n := len(h.action.calls(unpaid)) + len(h.action.calls(open)); n != 0 {
		t.Errorf("action ran for an unpaid session")
	}
	if again := h.sweep(t0.Add(-72 * time.Hour)); len(again.Recovered) != 0 || h.action.total() != len(paid) {
		t.Errorf("second sweep recovered %v; action total %d", again.Recovered, h.action.total())
	}
	var summary fulfill.Summary
	_ = h.db.View(func(tx store.Tx) (err error) { summary, err = fulfill.Summarize(tx); return err })
	if summary.Recovered != len(paid) {
		t.Errorf("status would show %d recovered, want %d", summary.Recovered, len(paid))
	}
}

// TestSweepNamesWhyASessionWasMissed: a session whose paying event was lost
// (seen as awaiting payment, then paid) is recovered as "not fulfilled".
func TestSweepNamesWhyASessionWasMissed(t *testing.T) {
	h := newHarness(t)
	// Created 30 h ago, so it expired (24 h) before complete_until: whatever
	// happened to it, the stream should have delivered by now.
	id := h.sim.CreateSession(stripesim.SessionParams{Created: t0.Add(-30 * time.Hour), LineItems: 1})
	h.sim.CompleteSession(id, "unpaid", t0.Add(-29*time.Hour))
	h.pass(t0.Add(-31 * time.Hour))
	if rec := h.record(id); rec.State != fulfill.StateAwaitingPayment {
		t.Fatalf("state %s", rec.State)
	}
	// The async payment succeeded, but its event never shows up in the list.
	h.sim.AsyncPaymentSucceeded(id, t0.Add(-28*time.Hour), stripesim.VisibleAt(t0.Add(1000*time.Hour)))
	sw := h.sweep(t0.Add(-72 * time.Hour))
	if sw.Recovered[poller.ReasonNotFulfilled] != 1 || len(h.action.calls(id)) != 1 {
		t.Fatalf("recovered %v, %d runs", sw.Recovered, len(h.action.calls(id)))
	}
}

// TestSweepFulfillsAheadOfTheStreamWithoutCountingIt: a session paid
// recently whose event is not listed yet is fulfilled by the sweep all the
// same, but not reported as missed: the stream may still deliver it.
func TestSweepFulfillsAheadOfTheStreamWithoutCountingIt(t *testing.T) {
	h := newHarness(t)
	h.pass(t0.Add(-time.Hour))
	h.clock.Advance(30 * time.Minute)
	id := h.sim.CreateSession(stripesim.SessionParams{Created: t0.Add(-20 * time.Minute), LineItems: 1})
	h.sim.CompleteSession(id, "paid", t0.Add(time.Minute), stripesim.VisibleAt(t0.Add(1000*time.Hour)))
	h.pass(time.Time{})
	sw := h.sweep(t0.Add(-72 * time.Hour))
	if len(sw.Recovered) != 0 || sw.Early != 1 || len(h.action.calls(id)) != 1 {
		t.Fatalf("recovered %v, early %d, %d runs: want fulfilled once, not counted as recovered", sw.Recovered, sw.Early, len(h.action.calls(id)))
	}
	if h.record(id).Recovered {
		t.Fatal("record marked recovered")
	}
}

// TestSweepRacingThePollerNeverDoubles: a sweep and a poll over the same
// sessions at the same time run each action once.
func TestSweepRacingThePollerNeverDoubles(t *testing.T) {
	h := newHarness(t)
	var paid []string
	for i := range 120 {
		paid = append(paid, h.paid(t0.Add(-time.Duration(i+1)*3*time.Minute), 1))
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); h.pass(t0.Add(-12 * time.Hour)) }()
	go func() { defer wg.Done(); h.sweep(t0.Add(-12 * time.Hour)) }()
	wg.Wait()
	for _, id := range paid {
		if n := len(h.action.calls(id)); n != 1 {
			t.Errorf("%s: action ran %d times", id, n)
		}
	}
	if h.action.overlaps != 0 {
		t.Errorf("%d overlapping runs", h.action.overlaps)
	}
}

// TestAgedOutCursorIsSweptNotLost: fulfilld was down for 40 days. The
// events of the first ten are past Stripe's retention; their sessions are
// swept instead, and the cursor continues from the horizon.
func TestAgedOutCursorIsSweptNotLost(t *testing.T) {
	h := newHarness(t)
	h.clock.Set(t0.Add(-40 * 24 * time.Hour))
	h.pass(time.Time{}) // the cursor starts 40 days ago
	var lost, recent []string
	for day := 1; day < 40; day++ {
		id := h.paid(t0.Add(-time.Duration(40-day)*24*time.Hour), 1)
		if day < 10 {
			lost = append(lost, id)
		} else {
			recent = append(recent, id)
		}
	}
	h.clock.Set(t0)
	h.poller.SliceLen = 24 * time.Hour
	h.pass(time.Time{})
	pos := h.position()
	if pos.AgedOut == nil {
		t.Fatal("the aged-out gap was not recorded")
	}
	if swept, err := h.reconciler().SweepAgedOut(context.Background()); err != nil || !swept {
		t.Fatalf("aged-out sweep: %v %v", swept, err)
	}
	h.pass(time.Time{}) // work the queue the sweep filled
	for _, id := range append(lost, recent...) {
		if n := len(h.action.calls(id)); n != 1 {
			t.Errorf("%s: action ran %d times, want 1", id, n)
		}
	}
	if pos := h.position(); pos.AgedOut != nil || pos.Settled.Before(t0.Add(-30*24*time.Hour)) {
		t.Errorf("cursor after the sweep: %+v", pos)
	}
}

// TestWebhookMissesAreReported: events whose webhook delivery failed are
// listed with whether fulfilld handled them.
func TestWebhookMissesAreReported(t *testing.T) {
	h := newHarness(t)
	handled := h.paid(t0.Add(-2*time.Hour), 1, stripesim.DeliveryFailed())
	h.pass(t0.Add(-3 * time.Hour))
	// Paid after complete_until: the stream has not reached it yet, and the
	// sweep leaves it to the stream.
	fresh := h.paid(t0.Add(-time.Minute), 1, stripesim.DeliveryFailed())
	sw := h.sweep(t0.Add(-72 * time.Hour))
	m := sw.Misses
	if m == nil || m.Count != 2 || m.Unhandled != 1 || len(sw.Recovered) != 0 {
		t.Fatalf("misses %+v, recovered %v: want 2 missed, the fresh one not handled yet, nothing recovered", m, sw.Recovered)
	}
	h.clock.Advance(15 * time.Minute)
	h.pass(time.Time{})
	if m := h.sweep(t0.Add(-72 * time.Hour)).Misses; m.Unhandled != 0 || len(h.action.calls(fresh)) != 1 {
		t.Fatalf("after the stream caught up: %+v, %d runs", m, len(h.action.calls(fresh)))
	}
	found := false
	for _, e := range m.Recent {
		found = found || e.Object == handled && e.Handled
	}
	if !found {
		t.Errorf("the handled session's missed event is not reported as handled: %+v", m.Recent)
	}
}

// eventRecorder is a notify action counting deliveries per event.
type eventRecorder struct {
	mu   sync.Mutex
	runs map[string]int
}

func (r *eventRecorder) Deliver(_ context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, kv := range d.Env {
		if id, ok := strings.CutPrefix(kv, "FULFILLD_EVENT_ID="); ok {
			r.runs[id]++
		}
	}
	return fulfill.Outcome{}, nil
}

// TestNotifyOncePerFailureEventAcrossRestarts.
func TestNotifyOncePerFailureEventAcrossRestarts(t *testing.T) {
	h := newHarness(t)
	rec := &eventRecorder{runs: map[string]int{}}
	notifyPass := func(since time.Time) {
		h.poller.Routes = fulfill.NotifyRoutes()
		n := &fulfill.Deliverer{DB: store.As[fulfill.Tx](h.db), Destinations: map[string]fulfill.Action{fulfill.DestNotify: rec}, MaxAttempts: 3, Concurrency: 2, Now: h.clock.Now}
		if _, err := n.Recover(); err != nil {
			t.Fatal(err)
		}
		h.pass(since)
		wake := make(chan struct{})
		close(wake)
		if _, err := n.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true}); err != nil {
			t.Fatal(err)
		}
	}
	a := h.sim.CreateSession(stripesim.SessionParams{Created: t0.Add(-3 * time.Hour), LineItems: 1})
	h.sim.CompleteSession(a, "unpaid", t0.Add(-3*time.Hour))
	failed := h.sim.AsyncPaymentFailed(a, t0.Add(-2*time.Hour))
	b := h.sim.CreateSession(stripesim.SessionParams{Created: t0.Add(-3 * time.Hour), LineItems: 1})
	expired := h.sim.ExpireSession(b, t0.Add(-time.Hour))
	declined := h.sim.PaymentIntentEvent("payment_intent.payment_failed", "pi_x", t0.Add(-time.Hour), "Your card was declined.")
	h.paid(t0.Add(-time.Hour), 1)

	notifyPass(t0.Add(-4 * time.Hour))
	h.restart()
	h.clock.Advance(time.Minute)
	notifyPass(t0.Add(-4 * time.Hour)) // a backfill over the same window
	for _, id := range []string{failed, expired, declined} {
		if rec.runs[id] != 1 {
			t.Errorf("%s notified %d times, want once", id, rec.runs[id])
		}
	}
	if len(rec.runs) != 3 {
		t.Errorf("notified %d events, want 3: %v", len(rec.runs), rec.runs)
	}
}

// TestSignedNotifyVerifiesWithStripeGo: a notify URL receives the event
// signed as Stripe signs webhooks; stripe-go's own verification accepts it.
func TestSignedNotifyVerifiesWithStripeGo(t *testing.T) {
	const secret = "whsec_test_notify_secret_123"
	h := newHarness(t)
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		ev, err := webhook.ConstructEventWithOptions(body, r.Header.Get("Stripe-Signature"), secret, webhook.ConstructEventOptions{})
		if err != nil {
			t.Errorf("stripe-go rejected the delivery: %v", err)
			http.Error(w, "bad signature", http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, ev.ID+" "+string(ev.Type)+" "+r.Header.Get("Idempotency-Key"))
		mu.Unlock()
	}))
	defer srv.Close()
	b := h.sim.CreateSession(stripesim.SessionParams{Created: t0.Add(-3 * time.Hour), LineItems: 1})
	expired := h.sim.ExpireSession(b, t0.Add(-time.Hour))
	h.poller.Routes = fulfill.NotifyRoutes()
	h.pass(t0.Add(-2 * time.Hour))
	n := &fulfill.Deliverer{DB: store.As[fulfill.Tx](h.db), Destinations: map[string]fulfill.Action{fulfill.DestNotify: &fulfill.URL{URL: srv.URL, Secret: secret, Timeout: 5 * time.Second}},
		MaxAttempts: 2, Concurrency: 1, Now: time.Now}
	wake := make(chan struct{})
	close(wake)
	res, err := n.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true})
	if err != nil || res.Fulfilled != 1 {
		t.Fatalf("notify run: %+v %v", res, err)
	}
	want := expired + " checkout.session.expired fulfilld-notify-" + expired
	if len(got) != 1 || got[0] != want {
		t.Fatalf("received %q, want %q", got, want)
	}
}
