package stripeapi

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/stripe/stripe-go/v76"
)

// PaymentIntent is a PaymentIntent as retrieved.
type PaymentIntent struct {
	ID      string
	Status  string
	Created time.Time
	// Invoice is set when the PaymentIntent pays an invoice (a
	// subscription's first payment through Checkout, and every renewal):
	// not a Payment Element payment.
	Invoice string
	// JSON is the PaymentIntent as Stripe sent it: what the operator's
	// action receives.
	JSON []byte
}

// GetPaymentIntent retrieves a PaymentIntent (GET /v1/payment_intents/:id).
func (c *Client) GetPaymentIntent(ctx context.Context, id string) (*PaymentIntent, error) {
	params := &stripe.PaymentIntentParams{}
	params.Context = ctx
	pi, err := c.api.PaymentIntents.Get(id, params)
	if err != nil {
		return nil, wrap("retrieve payment intent "+id, err)
	}
	body := pi.LastResponse.RawJSON
	if !json.Valid(body) {
		return nil, &Error{Op: "retrieve payment intent " + id, Msg: "the answer is not JSON"}
	}
	c.Clock.ObserveCreated(time.Unix(pi.Created, 0))
	out := &PaymentIntent{ID: pi.ID, Status: string(pi.Status), Created: time.Unix(pi.Created, 0).UTC(), JSON: body}
	if pi.Invoice != nil {
		out.Invoice = pi.Invoice.ID
	}
	return out, nil
}

// SessionOwning returns the id of the Checkout Session that owns the
// PaymentIntent, or "" when none does: one request,
// GET /v1/checkout/sessions?payment_intent=…&limit=1. Stripe answers it
// from the session itself, so it knows the owner before the session's
// events are listed.
func (c *Client) SessionOwning(ctx context.Context, paymentIntentID string) (string, error) {
	params := &stripe.CheckoutSessionListParams{PaymentIntent: stripe.String(paymentIntentID)}
	params.Context = ctx
	params.Single = true
	params.Limit = stripe.Int64(1)
	var list rawList
	if err := c.list(ctx, "/v1/checkout/sessions", params, &list); err != nil {
		return "", wrap("list checkout sessions of payment intent "+paymentIntentID, err)
	}
	for _, raw := range list.Data {
		var s struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(raw, &s); err != nil || s.ID == "" {
			return "", &Error{Op: "list checkout sessions of payment intent " + paymentIntentID,
				Msg: fmt.Sprintf("a listed session cannot be read: %v", err)}
		}
		return s.ID, nil
	}
	return "", nil
}
