package fulfill_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// laggingStripe is Stripe whose list of sessions by PaymentIntent has not
// caught up: it says no session owns a PaymentIntent that one does.
type laggingStripe struct{}

func (laggingStripe) GetSession(_ context.Context, id string) (*stripeapi.Session, error) {
	return &stripeapi.Session{ID: id, Status: "complete", PaymentStatus: "paid", PaymentIntent: "pi_1", JSON: []byte(`{}`)}, nil
}

func (laggingStripe) GetPaymentIntent(_ context.Context, id string) (*stripeapi.PaymentIntent, error) {
	return &stripeapi.PaymentIntent{ID: id, Status: "succeeded", JSON: []byte(`{}`)}, nil
}

func (laggingStripe) SessionOwning(context.Context, string) (string, error) { return "", nil }

// TestCheckoutPaymentNeverTwiceEvenIfStripeLags: with fulfill.payment_intents
// on and Stripe's list lagging, a Checkout payment's two events — its
// session's and its PaymentIntent's, in either order — run the action once
// in all: the ledger, not the list, has the last word.
func TestCheckoutPaymentNeverTwiceEvenIfStripeLags(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	for _, order := range [][]string{{"pi_1", "cs_1"}, {"cs_1", "pi_1"}} {
		t.Run(order[0]+" first", func(t *testing.T) {
			db := openTestDB(t)
			act := &runsAction{}
			f := &fulfill.Fulfiller{DB: ledger(db), Sessions: laggingStripe{}, Intents: laggingStripe{}, Action: act,
				MaxAttempts: 3, Concurrency: 1, Now: func() time.Time { return now }}
			for _, id := range order {
				enqueue(t, db, now, id)
				if _, err := f.Fulfill(t.Context(), id, fulfill.TriggerEvent, "evt_"+id); err != nil {
					t.Fatal(err)
				}
			}
			if runs := act.count("cs_1") + act.count("pi_1"); runs != 1 {
				t.Errorf("the payment's action ran %d times (session %d, payment intent %d), want once",
					runs, act.count("cs_1"), act.count("pi_1"))
			}
			if rec := stateOf(t, db, "cs_1"); rec.State != fulfill.StateFulfilled {
				t.Errorf("the session ends %s, want fulfilled (by itself or as its payment intent)", rec.State)
			}
		})
	}
}

// catchingUp is Stripe whose list by payment_intent may lag on the first
// ask (owner says what it answers on the nth).
// catchingUp: Stripe's list by payment_intent lags on the first ask, then knows.
type catchingUp struct {
	asks      atomic.Int32
	sessionPI string // the session's payment_intent field ("" = subscription mode)
	owner     func(n int32) string
}

func (s *catchingUp) GetSession(_ context.Context, id string) (*stripeapi.Session, error) {
	return &stripeapi.Session{ID: id, Status: "complete", PaymentStatus: "paid", PaymentIntent: s.sessionPI, JSON: []byte(`{}`)}, nil
}
func (s *catchingUp) GetPaymentIntent(_ context.Context, id string) (*stripeapi.PaymentIntent, error) {
	pi := &stripeapi.PaymentIntent{ID: id, Status: "succeeded", JSON: []byte(`{}`)}
	if s.sessionPI == "" { // subscription mode: the PaymentIntent pays the first invoice
		pi.Invoice, pi.JSON = "in_1", []byte(`{"invoice":"in_1"}`)
	}
	return pi, nil
}
func (s *catchingUp) SessionOwning(context.Context, string) (string, error) {
	return s.owner(s.asks.Add(1)), nil
}

// timesOutOnce: the first run for pi_1 does the work, then times out.
type timesOutOnce struct {
	mu   sync.Mutex
	runs map[string]int
}

func (a *timesOutOnce) Deliver(_ context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.runs == nil {
		a.runs = map[string]int{}
	}
	a.runs[d.IdempotencyKey]++
	if d.IdempotencyKey == "fulfilld-pi_1" && a.runs[d.IdempotencyKey] == 1 {
		return fulfill.Outcome{}, fulfill.ErrTimeout
	}
	return fulfill.Outcome{}, nil
}

// 1. A PaymentIntent attempt that timed out (work done) while Stripe lagged;
// then the session's event: the session runs with a different key.
func TestTimedOutPaymentIntentIsNotTakenOverBySession(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	src := &catchingUp{sessionPI: "pi_1", owner: func(n int32) string {
		if n == 1 {
			return ""
		}
		return "cs_1"
	}}
	act := &timesOutOnce{}
	f := &fulfill.Fulfiller{DB: ledger(db), Sessions: src, Intents: src, Action: act, MaxAttempts: 8, Concurrency: 1,
		Now: func() time.Time { return now }}
	enqueue(t, db, now, "pi_1")
	rec, err := f.Fulfill(t.Context(), "pi_1", fulfill.TriggerEvent, "evt_pi")
	t.Logf("pi_1 after timeout: state=%s attempts=%d err=%v", rec.State, rec.Attempts, err)
	enqueue(t, db, now, "cs_1")
	rec, err = f.Fulfill(t.Context(), "cs_1", fulfill.TriggerEvent, "evt_cs")
	t.Logf("cs_1: state=%s err=%v", rec.State, err)
	rec, err = f.Fulfill(t.Context(), "pi_1", fulfill.TriggerEvent, "evt_pi")
	t.Logf("pi_1 again: state=%s owner=%s err=%v", rec.State, rec.Owner, err)
	t.Logf("runs by idempotency key: %v", act.runs)
	if act.runs["fulfilld-pi_1"] > 0 && act.runs["fulfilld-cs_1"] > 0 {
		t.Errorf("one Checkout payment's action ran under two idempotency keys: %v", act.runs)
	}
}

// 2. A crash mid PaymentIntent attempt (InFlight left set) while Stripe lagged;
// after restart Stripe knows the owner: the PI record ends owned, the session runs.
func TestCutOffPaymentIntentIsRepeatedWithItsKey(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	src := &catchingUp{sessionPI: "pi_1", owner: func(int32) string { return "cs_1" }}
	act := &runsAction{}
	// What the store holds after a SIGKILL while pi_1's action ran (lagging list then).
	enqueue(t, db, now, "pi_1")
	if err := db.Update(func(tx store.Tx) error {
		ftx := tx.(fulfill.Tx)
		rec, _, _ := ftx.Session("pi_1")
		rec.Attempts, rec.InFlight = 1, true
		return ftx.PutSession(rec)
	}); err != nil {
		t.Fatal(err)
	}
	f := &fulfill.Fulfiller{DB: ledger(db), Sessions: src, Intents: src, Action: act, MaxAttempts: 8, Concurrency: 1,
		Now: func() time.Time { return now }}
	if _, err := f.Recover(); err != nil {
		t.Fatal(err)
	}
	rec, err := f.Fulfill(t.Context(), "pi_1", fulfill.TriggerEvent, "evt_pi")
	t.Logf("pi_1 after restart: state=%s owner=%s err=%v", rec.State, rec.Owner, err)
	enqueue(t, db, now, "cs_1")
	rec, err = f.Fulfill(t.Context(), "cs_1", fulfill.TriggerEvent, "evt_cs")
	t.Logf("cs_1: state=%s err=%v; session runs=%d (pi_1's cut-off attempt may already have fulfilled under fulfilld-pi_1)", rec.State, err, act.count("cs_1"))
	if act.count("cs_1") == 1 {
		t.Errorf("the cut-off attempt (key fulfilld-pi_1) is not repeated with its key; the session runs under fulfilld-cs_1 instead")
	}
}

// 3. Subscription-mode Checkout: the session has no payment_intent; the first
// invoice's PaymentIntent is owned by no session in Stripe's list.
func TestSubscriptionCheckoutIsFulfilledOnceAsItsSession(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	src := &catchingUp{sessionPI: "", owner: func(int32) string { return "" }}
	act := &runsAction{}
	f := &fulfill.Fulfiller{DB: ledger(db), Sessions: src, Intents: src, Action: act, MaxAttempts: 8, Concurrency: 1,
		Now: func() time.Time { return now }}
	for _, id := range []string{"cs_1", "pi_1"} {
		enqueue(t, db, now, id)
		if _, err := f.Fulfill(t.Context(), id, fulfill.TriggerEvent, "evt_"+id); err != nil {
			t.Fatal(err)
		}
	}
	if n := act.count("cs_1") + act.count("pi_1"); n != 1 {
		t.Errorf("subscription Checkout payment ran the action %d times (session %d, invoice PaymentIntent %d)", n, act.count("cs_1"), act.count("pi_1"))
	}
}

// 4. The setting flipped off after a PI was fulfilled on its own (lag).
func TestTurningPaymentIntentsOffKeepsTheExclusion(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	src := &catchingUp{sessionPI: "pi_1", owner: func(int32) string { return "" }}
	act := &runsAction{}
	on := &fulfill.Fulfiller{DB: ledger(db), Sessions: src, Intents: src, Action: act, MaxAttempts: 8, Concurrency: 1, Now: func() time.Time { return now }}
	enqueue(t, db, now, "pi_1")
	if _, err := on.Fulfill(t.Context(), "pi_1", fulfill.TriggerEvent, "evt_pi"); err != nil {
		t.Fatal(err)
	}
	off := &fulfill.Fulfiller{DB: ledger(db), Sessions: src, Action: act, MaxAttempts: 8, Concurrency: 1, Now: func() time.Time { return now }}
	enqueue(t, db, now, "cs_1")
	if _, err := off.Fulfill(t.Context(), "cs_1", fulfill.TriggerEvent, "evt_cs"); err != nil {
		t.Fatal(err)
	}
	if n := act.count("cs_1") + act.count("pi_1"); n != 1 {
		t.Errorf("after turning fulfill.payment_intents off the payment ran %d times", n)
	}
}
