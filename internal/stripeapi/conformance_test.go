package stripeapi

import (
	"context"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
)

// stripeMockKey is any test-mode key: stripe-mock checks its shape only.
const stripeMockKey = "sk_test_123"

// recorder remembers every request the client sent and the status it got.
type recorder struct {
	base http.RoundTripper
	mu   sync.Mutex
	seen []sent
}

type sent struct {
	method, path, query string
	status              int
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	s := sent{method: req.Method, path: req.URL.Path, query: req.URL.RawQuery}
	if resp != nil {
		s.status = resp.StatusCode
	}
	r.mu.Lock()
	r.seen = append(r.seen, s)
	r.mu.Unlock()
	return resp, err
}

// TestConformanceWithStripeMock sends every kind of request the daemon sends
// to stripe-mock (github.com/stripe/stripe-mock), which validates each one
// against Stripe's OpenAPI specification and answers 400 to a parameter
// Stripe would refuse. It runs when STRIPE_MOCK_URL is set, e.g.
//
//	go install github.com/stripe/stripe-mock@v0.203.0
//	stripe-mock -http-addr 127.0.0.1:12111 -https-addr 127.0.0.1:12112 &
//	STRIPE_MOCK_URL=http://127.0.0.1:12111 go test ./internal/stripeapi -run Conformance
func TestConformanceWithStripeMock(t *testing.T) {
	base := os.Getenv("STRIPE_MOCK_URL")
	if base == "" {
		t.Skip("STRIPE_MOCK_URL is not set: start stripe-mock (go install github.com/stripe/stripe-mock@v0.203.0; " +
			"stripe-mock -http-addr 127.0.0.1:12111) and set STRIPE_MOCK_URL=http://127.0.0.1:12111 to check our requests against Stripe's API specification")
	}
	c := New(Config{APIKey: stripeMockKey, APIBase: base, Limits: Limits{Global: 50, Endpoint: 25}, MaxRetries: 1})
	rec := &recorder{base: c.Transport.Base}
	c.Transport.Base = rec
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	now := time.Now()
	no := false
	types := []string{
		"checkout.session.completed", "checkout.session.async_payment_succeeded",
		"checkout.session.async_payment_failed", "checkout.session.expired",
		"payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.processing",
		"payment_intent.amount_capturable_updated", "payment_intent.canceled",
	}
	tests := []struct {
		name string
		// want is a request that must have been sent: method, path and
		// query parameters it must carry.
		path  string
		query []string
		call  func() error
	}{
		{
			name: "the tip: events of our types since a time", path: "/v1/events",
			query: []string{"types[0]=", "types[8]=", "created[gte]=", "limit=100"},
			call: func() error {
				_, err := c.ListEvents(ctx, EventQuery{Types: types, CreatedGTE: now.Add(-10 * time.Minute)})
				return err
			},
		},
		{
			name: "a re-scan slice, from a page position", path: "/v1/events",
			query: []string{"types[0]=", "created[gte]=", "created[lt]=", "starting_after=evt_"},
			call: func() error {
				_, err := c.ListEvents(ctx, EventQuery{Types: types, CreatedGTE: now.Add(-2 * time.Hour),
					CreatedLT: now.Add(-time.Hour), StartingAfter: "evt_1NG8Du2eZvKYlo2CUI79vXWy"})
				return err
			},
		},
		{
			name: "one event type", path: "/v1/events", query: []string{"type=checkout.session.completed"},
			call: func() error {
				_, err := c.ListEvents(ctx, EventQuery{Types: types[:1]})
				return err
			},
		},
		{
			name: "webhook misses", path: "/v1/events", query: []string{"delivery_success=false", "types[0]=", "created[gte]="},
			call: func() error {
				_, err := c.ListEvents(ctx, EventQuery{Types: types, DeliverySuccess: &no, CreatedGTE: now.Add(-72 * time.Hour)})
				return err
			},
		},
		{
			// Repair mode (forward.undelivered_only): the same listing,
			// forward.types only, up to forward.grace ago, from a page
			// position.
			name: "undelivered events to repair", path: "/v1/events",
			query: []string{"delivery_success=false", "types[0]=", "types[2]=", "created[gte]=", "created[lt]=", "starting_after=evt_", "limit=100"},
			call: func() error {
				_, err := c.ListEvents(ctx, EventQuery{Types: types[:3], DeliverySuccess: &no, CreatedGTE: now.Add(-72 * time.Hour),
					CreatedLT: now.Add(-15 * time.Minute), StartingAfter: "evt_1NG8Du2eZvKYlo2CUI79vXWy"})
				return err
			},
		},
		{
			name: "retrieve a session with its line items", path: "/v1/checkout/sessions/cs_test_a1",
			query: []string{"expand[0]=line_items"},
			call: func() error {
				_, err := c.GetSession(ctx, "cs_test_a1")
				return err
			},
		},
		{
			name: "the next page of a session's line items", path: "/v1/checkout/sessions/cs_test_a1/line_items",
			query: []string{"limit=100", "starting_after=li_"},
			call: func() error {
				lp := &stripe.CheckoutSessionListLineItemsParams{Session: stripe.String("cs_test_a1")}
				lp.Context = ctx
				lp.Limit = stripe.Int64(100)
				lp.StartingAfter = stripe.String("li_1NG8Du2eZvKYlo2C")
				var page rawList
				return c.list(ctx, "/v1/checkout/sessions/cs_test_a1/line_items", lp, &page)
			},
		},
		{
			name: "a reconciliation sweep page", path: "/v1/checkout/sessions",
			query: []string{"status=complete", "created[gte]=", "created[lt]=", "starting_after=cs_", "limit=100"},
			call: func() error {
				_, err := c.ListSessions(ctx, SessionQuery{Status: "complete", CreatedGTE: now.Add(-72 * time.Hour),
					CreatedLT: now, StartingAfter: "cs_test_b2"})
				return err
			},
		},
		{
			// Batch hydration (fulfill/batch.go): queued sessions read a
			// hundred to a request, line items expanded in the list.
			name: "queued sessions a hundred to a request", path: "/v1/checkout/sessions",
			query: []string{"status=complete", "created[gte]=", "created[lte]=", "expand[0]=data.line_items",
				"starting_after=cs_", "limit=100"},
			call: func() error {
				_, err := c.ListCompleteSessions(ctx, now.Add(-time.Hour), now, "cs_test_b2")
				return err
			},
		},
		{
			name: "retrieve a PaymentIntent (fulfill.payment_intents)", path: "/v1/payment_intents/pi_1NG8Du2eZvKYlo2C",
			call: func() error {
				_, err := c.GetPaymentIntent(ctx, "pi_1NG8Du2eZvKYlo2C")
				return err
			},
		},
		{
			name: "the session that owns a PaymentIntent", path: "/v1/checkout/sessions",
			query: []string{"payment_intent=pi_1NG8Du2eZvKYlo2C", "limit=1"},
			call: func() error {
				_, err := c.SessionOwning(ctx, "pi_1NG8Du2eZvKYlo2C")
				return err
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec.mu.Lock()
			from := len(rec.seen)
			rec.mu.Unlock()
			if err := tt.call(); err != nil {
				t.Fatalf("stripe-mock refused the request: %v", err)
			}
			rec.mu.Lock()
			got := append([]sent(nil), rec.seen[from:]...)
			rec.mu.Unlock()
			found := false
			for _, s := range got {
				if s.status != http.StatusOK {
					t.Errorf("%s %s?%s answered %d", s.method, s.path, s.query, s.status)
				}
				if s.method != http.MethodGet {
					t.Errorf("%s %s: fulfilld only reads", s.method, s.path)
				}
				if s.path == tt.path && hasAll(s.query, tt.query) {
					found = true
				}
			}
			if !found {
				t.Errorf("no request to %s with %v among %+v", tt.path, tt.query, got)
			}
		})
	}
}

// hasAll reports whether the decoded query holds each fragment.
func hasAll(rawQuery string, frags []string) bool {
	q := strings.NewReplacer("%5B", "[", "%5D", "]").Replace(rawQuery)
	for _, f := range frags {
		if !strings.Contains(q, f) {
			return false
		}
	}
	return true
}
