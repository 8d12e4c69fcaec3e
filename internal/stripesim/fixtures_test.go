package stripesim

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/fixtures"
)

// The simulated Stripe must speak the format the real one does, or tests
// against it prove nothing: these compare its answers with the fixtures
// derived from Stripe's own (testdata/).

func loadFixtureObject(t *testing.T, name string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(fixtures.Load(t, name), &m); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return m
}

// kind is a JSON value's type; null matches anything, as Stripe renders an
// unset field of any type as null.
func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// sameShape reports, for what the simulator renders (got), every field the
// real object (want) lacks or has with another type; with nested, objects
// are compared down to their fields too.
func sameShape(t *testing.T, what string, got, want map[string]any, nested bool) {
	t.Helper()
	for _, k := range slices.Sorted(maps.Keys(got)) {
		w, ok := want[k]
		if !ok {
			t.Errorf("%s: the simulator renders %q, which Stripe's %s has not", what, k, what)
			continue
		}
		gk, wk := kind(got[k]), kind(w)
		if gk != wk && gk != "null" && wk != "null" {
			t.Errorf("%s.%s: the simulator renders a %s, Stripe a %s", what, k, gk, wk)
			continue
		}
		if g, ok := got[k].(map[string]any); ok && nested {
			if w, ok := w.(map[string]any); ok {
				sameShape(t, what+"."+k, g, w, nested)
			}
		}
	}
}

// requireFields fails for each field fulfilld reads that m lacks.
func requireFields(t *testing.T, what string, m map[string]any, fields ...string) {
	t.Helper()
	for _, f := range fields {
		if _, ok := m[f]; !ok {
			t.Errorf("%s has no %q, which fulfilld reads", what, f)
		}
	}
}

// An event the simulator lists has exactly the top-level fields of a real
// event in the pinned version, the request in its 2023-10-16 shape, and the
// pinned api_version.
func TestEventsHaveStripesShape(t *testing.T) {
	f := newFixture(t, Options{})
	id := f.srv.CreateSession(SessionParams{Created: t0})
	evID := f.srv.CompleteSession(id, "paid", t0.Add(time.Minute))
	_, got := rawGet(t, f.srv, "/v1/events/"+evID, DefaultAPIKey)
	want := loadFixtureObject(t, "events/"+APIVersion+"/checkout.session.completed.json")
	if g, w := slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)); !slices.Equal(g, w) {
		t.Errorf("event fields: simulator %v, Stripe %v", g, w)
	}
	sameShape(t, "event", got, want, false)
	if got["api_version"] != want["api_version"] {
		t.Errorf("api_version: simulator %v, pinned fixtures %v", got["api_version"], want["api_version"])
	}
	req, ok := got["request"].(map[string]any)
	if !ok {
		t.Fatalf("request is %v, want {id, idempotency_key} as in %s", got["request"], APIVersion)
	}
	sameShape(t, "event.request", req, want["request"].(map[string]any), false)
}

// A session the simulator renders, in each mode and payment_status, has
// only fields a real session has, each of the same type (nested objects
// too), with what fulfilment reads present, and a payment_intent exactly
// when Stripe's session of that mode has one.
func TestSessionsHaveStripesShape(t *testing.T) {
	for _, tt := range []struct{ fixture, mode, paymentStatus string }{
		{"payment.paid", "payment", "paid"},
		{"payment.unpaid", "payment", "unpaid"},
		{"subscription.paid", "subscription", "paid"},
		{"subscription.no_payment_required", "subscription", "no_payment_required"},
		{"setup.no_payment_required", "setup", "no_payment_required"},
	} {
		t.Run(tt.fixture, func(t *testing.T) {
			f := newFixture(t, Options{})
			id := f.srv.CreateSession(SessionParams{Created: t0, Mode: tt.mode})
			f.srv.CompleteSession(id, tt.paymentStatus, t0.Add(time.Minute))
			_, got := rawGet(t, f.srv, "/v1/checkout/sessions/"+id, DefaultAPIKey)
			want := loadFixtureObject(t, "checkout_sessions/"+tt.fixture+".json")
			sameShape(t, "checkout.session", got, want, true)
			fields := []string{"id", "object", "status", "payment_status", "mode", "payment_intent", "created", "expires_at"}
			requireFields(t, "the simulator's session", got, fields...)
			requireFields(t, "Stripe's session", want, fields...)
			for _, k := range []string{"object", "status", "payment_status", "mode"} {
				if got[k] != want[k] {
					t.Errorf("%s: simulator %v, Stripe %v", k, got[k], want[k])
				}
			}
			if (got["payment_intent"] == nil) != (want["payment_intent"] == nil) {
				t.Errorf("payment_intent: simulator %v, Stripe %v", got["payment_intent"], want["payment_intent"])
			}
		})
	}
}

// A PaymentIntent in a simulated payment_intent.payment_failed event has
// only fields a real one has, of the same types, and its
// last_payment_error has the message where Stripe puts it.
func TestPaymentIntentsHaveStripesShape(t *testing.T) {
	f := newFixture(t, Options{})
	evID := f.srv.PaymentIntentEvent("payment_intent.payment_failed", "pi_3OsimShape0000000000000", t0, "Your card was declined.")
	_, ev := rawGet(t, f.srv, "/v1/events/"+evID, DefaultAPIKey)
	got := ev["data"].(map[string]any)["object"].(map[string]any)
	want := loadFixtureObject(t, "payment_intents/requires_payment_method.last_payment_error.json")
	sameShape(t, "payment_intent", got, want, true)
	fields := []string{"id", "object", "status", "last_payment_error", "amount", "currency", "created"}
	requireFields(t, "the simulator's PaymentIntent", got, fields...)
	requireFields(t, "Stripe's PaymentIntent", want, fields...)
	if got["status"] != want["status"] {
		t.Errorf("status after a failed payment: simulator %v, Stripe %v", got["status"], want["status"])
	}
	lpe, ok := got["last_payment_error"].(map[string]any)
	if !ok || lpe["message"] != "Your card was declined." {
		t.Errorf("last_payment_error = %v, want the message under last_payment_error.message", got["last_payment_error"])
	}
}
