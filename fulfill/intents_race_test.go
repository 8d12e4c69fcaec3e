package fulfill_test

import (
	"context"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
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
