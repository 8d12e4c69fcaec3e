package stripeapi

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// TestPaymentIntentOwnership asks the simulated Stripe, in its wire
// format, for a Checkout payment's owner and a Payment Element payment's
// (none), and retrieves each PaymentIntent as the action would get it.
func TestPaymentIntentOwnership(t *testing.T) {
	srv := stripesim.New(stripesim.Options{})
	t.Cleanup(srv.Close)
	c := New(Config{APIKey: stripesim.DefaultAPIKey, APIBase: srv.URL(), Limits: Limits{Global: 1000, Endpoint: 1000}, MaxRetries: 1})
	ctx := context.Background()
	now := time.Now()

	cs := srv.CreateSession(stripesim.SessionParams{Created: now.Add(-time.Minute)})
	srv.CompleteSession(cs, "paid", now)
	checkoutPI := srv.PaymentIntentID(cs)
	const elementPI = "pi_3PaymentElement0001"
	srv.PaymentIntentEvent("payment_intent.succeeded", elementPI, now, "")

	for _, tt := range []struct{ pi, owner string }{{checkoutPI, cs}, {elementPI, ""}} {
		owner, err := c.SessionOwning(ctx, tt.pi)
		if err != nil || owner != tt.owner {
			t.Errorf("SessionOwning(%s) = %q, %v; want %q", tt.pi, owner, err, tt.owner)
		}
		pi, err := c.GetPaymentIntent(ctx, tt.pi)
		if err != nil {
			t.Fatalf("GetPaymentIntent(%s): %v", tt.pi, err)
		}
		var body struct{ ID, Object, Status string }
		if err := json.Unmarshal(pi.JSON, &body); err != nil || body.ID != tt.pi || body.Object != "payment_intent" ||
			body.Status != "succeeded" || pi.Status != "succeeded" {
			t.Errorf("GetPaymentIntent(%s): %+v %s (%v)", tt.pi, pi, pi.JSON, err)
		}
	}
	if _, err := c.GetPaymentIntent(ctx, "pi_3NoSuchIntent0000"); !errors.Is(err, ErrNotFound) {
		t.Errorf("an unknown PaymentIntent: %v, want ErrNotFound", err)
	}
	got := c.Transport.TakeUsage().Requests
	if got["GET /v1/payment_intents/:id"] != 3 || got["GET /v1/checkout/sessions"] != 2 {
		t.Errorf("requests by endpoint: %v", got)
	}
}
