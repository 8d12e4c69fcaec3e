package poller_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// withPaymentIntents turns fulfill.payment_intents on.
func withPaymentIntents() harnessOpt {
	return func(_ *stripesim.Options, h *harness) { h.intents = true }
}

// intentReads counts the requests the PaymentIntent path sends: retrieves
// of a PaymentIntent, and session lists filtered by one.
func intentReads(t *testing.T, sim *stripesim.Server) (retrieves, owners int) {
	t.Helper()
	for _, r := range sim.Requests() {
		switch {
		case r.Endpoint == "GET /v1/payment_intents/:id":
			retrieves++
		case r.Endpoint == "GET /v1/checkout/sessions" && r.Query.Has("payment_intent"):
			owners++
		}
	}
	return retrieves, owners
}

// A Payment Element payment (a PaymentIntent no Checkout Session owns) runs
// the action once, with the PaymentIntent on stdin and the action
// protocol's PaymentIntent environment, for two reads.
func TestPaymentElementIntentIsFulfilledOnce(t *testing.T) {
	h := newHarness(t, withPaymentIntents())
	const pi = "pi_3PaymentElement0001"
	h.sim.PaymentIntentEvent("payment_intent.processing", pi, t0.Add(-2*time.Minute), "")
	succeeded := h.sim.PaymentIntentEvent("payment_intent.succeeded", pi, t0.Add(-time.Minute), "")
	h.clock.Advance(time.Minute)
	h.pass(t0.Add(-time.Hour))

	runs := h.action.calls(pi)
	if len(runs) != 1 {
		t.Fatalf("the action ran %d times for %s, want once", len(runs), pi)
	}
	r := runs[0]
	want := map[string]string{
		"FULFILLD_SESSION_ID": "", "FULFILLD_PAYMENT_INTENT_ID": pi, "FULFILLD_IDEMPOTENCY_KEY": "fulfilld-" + pi,
		"FULFILLD_TRIGGER": "event", "FULFILLD_EVENT_ID": succeeded, "FULFILLD_ATTEMPT": "1",
	}
	for k, v := range want {
		if got, ok := r.Env[k]; !ok || got != v {
			t.Errorf("%s = %q (set: %v), want %q", k, got, ok, v)
		}
	}
	var body struct{ ID, Object, Status string }
	if err := json.Unmarshal(r.Body, &body); err != nil || body.ID != pi || body.Object != "payment_intent" || body.Status != "succeeded" {
		t.Errorf("stdin is not the PaymentIntent as retrieved: %s (%v)", r.Body, err)
	}
	rec := h.record(pi)
	if rec.State != fulfill.StateFulfilled || rec.Object != fulfill.ObjectPaymentIntent || rec.EventID != succeeded {
		t.Errorf("record %+v", rec)
	}
	if retrieves, owners := intentReads(t, h.sim); retrieves != 1 || owners != 1 {
		t.Errorf("a Payment Element payment cost %d retrieves and %d owner lists, want 1 and 1", retrieves, owners)
	}

	// Listed again (a backfill), after a restart: never a second time.
	h.restart()
	h.clock.Advance(time.Minute)
	h.pass(t0.Add(-time.Hour))
	if n := len(h.action.calls(pi)); n != 1 {
		t.Errorf("after a second backfill the action ran %d times", n)
	}
	var counts fulfill.Counts
	_ = h.db.View(func(tx store.Tx) (err error) { counts, err = tx.Counts(); return err })
	if counts.IntentFulfillments[fulfill.StateFulfilled] != 1 || counts.Sessions[fulfill.StateFulfilled] != 0 {
		t.Errorf("counts %+v", counts)
	}
}

// A Checkout payment is fulfilled once, as its session, and never as its
// PaymentIntent, whichever of its two events is listed first.
func TestCheckoutIntentIsFulfilledOnlyAsItsSession(t *testing.T) {
	tests := []struct {
		name string
		// sessionFirst lists checkout.session.completed a pass before
		// payment_intent.succeeded; otherwise the other way round.
		sessionFirst bool
		sameList     bool
		// wantOwnerLists is what the PaymentIntent's event costs.
		wantOwnerLists int
	}{
		{name: "session event first", sessionFirst: true, wantOwnerLists: 0},
		{name: "payment intent event first", wantOwnerLists: 1},
		{name: "both in one listing", sameList: true, wantOwnerLists: -1}, // either, by the order of the attempts
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, withPaymentIntents())
			paidAt := t0.Add(-5 * time.Minute)
			cs := h.sim.CreateSession(stripesim.SessionParams{Created: paidAt.Add(-time.Minute)})
			pi := h.sim.PaymentIntentID(cs)
			var sessionOpts, intentOpts []stripesim.EventOpt
			switch {
			case tt.sameList:
			case tt.sessionFirst:
				intentOpts = append(intentOpts, stripesim.VisibleAt(t0.Add(2*time.Minute)))
			default:
				sessionOpts = append(sessionOpts, stripesim.VisibleAt(t0.Add(2*time.Minute)))
			}
			h.sim.CompleteSession(cs, "paid", paidAt, sessionOpts...)
			h.sim.PaymentIntentEvent("payment_intent.succeeded", pi, paidAt.Add(time.Second), "", intentOpts...)

			h.pass(t0.Add(-time.Hour))
			if !tt.sameList {
				first := h.record(pi)
				if tt.sessionFirst && (first.State != fulfill.StateOwned || first.Owner != cs) {
					t.Errorf("after the session's fulfilment its PaymentIntent's record is %+v, want owned by %s", first, cs)
				}
			}
			// The late event is caught by the re-scan once now - lookback
			// passes its created time.
			h.clock.Advance(6 * time.Minute)
			h.pass(time.Time{})
			var status fulfill.PaymentIntent
			_ = h.db.View(func(tx store.Tx) (err error) { status, _, err = fulfill.GetPaymentIntent(tx, pi); return err })
			if status.EventType != "payment_intent.succeeded" {
				t.Fatalf("payment_intent.succeeded was not listed: %+v", status)
			}
			if rec := h.record(cs); rec.SessionID == "" {
				t.Fatal("checkout.session.completed was not listed")
			}

			if runs := h.action.calls(cs); len(runs) != 1 {
				t.Errorf("the session's action ran %d times, want once", len(runs))
			}
			if runs := h.action.calls(pi); len(runs) != 0 {
				t.Errorf("the action ran %d times for the PaymentIntent of a Checkout payment", len(runs))
			}
			if rec := h.record(cs); rec.State != fulfill.StateFulfilled {
				t.Errorf("session %+v", rec)
			}
			if rec := h.record(pi); rec.State != fulfill.StateOwned || rec.Owner != cs {
				t.Errorf("PaymentIntent %+v, want owned by %s", rec, cs)
			}
			retrieves, owners := intentReads(t, h.sim)
			if retrieves != 0 || tt.wantOwnerLists >= 0 && owners != tt.wantOwnerLists {
				t.Errorf("the Checkout payment's PaymentIntent cost %d retrieves and %d owner lists, want 0 and %d",
					retrieves, owners, tt.wantOwnerLists)
			}
		})
	}
}

// With fulfill.payment_intents off (the default), payment_intent.succeeded
// only records the status, as before.
func TestPaymentIntentsOffByDefault(t *testing.T) {
	h := newHarness(t)
	const pi = "pi_3PaymentElement0002"
	h.sim.PaymentIntentEvent("payment_intent.succeeded", pi, t0.Add(-time.Minute), "")
	h.pass(t0.Add(-time.Hour))
	if h.action.total() != 0 {
		t.Errorf("the action ran %d times", h.action.total())
	}
	if rec := h.record(pi); rec.SessionID != "" {
		t.Errorf("a fulfilment record exists: %+v", rec)
	}
	if retrieves, owners := intentReads(t, h.sim); retrieves+owners != 0 {
		t.Errorf("%d requests for PaymentIntents", retrieves+owners)
	}
}

// A payment_intent event whose object has a field routing does not read in
// an unfamiliar shape (here created as a string) is still recorded: the
// daemon never fails on an unfamiliar field.
func TestPaymentIntentWithAnUnfamiliarFieldIsRecorded(t *testing.T) {
	h := newHarness(t)
	h.sim.AddEvent("", "payment_intent.payment_failed", t0.Add(-30*time.Minute), json.RawMessage(
		`{"id":"pi_odd","object":"payment_intent","created":"1764500000","status":"requires_payment_method",`+
			`"last_payment_error":{"message":"Your card was declined."}}`))
	h.pass(t0.Add(-time.Hour))
	var pi fulfill.PaymentIntent
	var ok bool
	if err := h.db.View(func(tx store.Tx) (err error) { pi, ok, err = fulfill.GetPaymentIntent(tx, "pi_odd"); return err }); err != nil {
		t.Fatal(err)
	}
	if !ok || pi.Status != "requires_payment_method" || pi.LastError != "Your card was declined." {
		t.Fatalf("pi_odd recorded as %+v (found %v); want its status and error", pi, ok)
	}
}
