package stripesim

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
)

func TestAuthentication(t *testing.T) {
	f := newFixture(t, Options{APIKey: "sk_test_right000000000000000000"})
	f.srv.AddEvent("", "checkout.session.completed", t0, json.RawMessage(`{}`))

	const wrong = "sk_test_51HwrongWRONGwrongXYZab12"
	tests := []struct {
		name    string
		key     string
		message string
	}{
		{"wrong secret key", wrong, "Invalid API Key provided: sk_test_" + strings.Repeat("*", len(wrong)-len("sk_test_")-4) + "ab12"},
		{"restricted key", "rk_test_abcdefghijklmnop9876", "Invalid API Key provided: rk_test_****************9876"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := listEventIDs(t, newClient(f.srv.URL(), tt.key), nil)
			se := checkStripeError(t, err, wantStripeError{status: 401, message: tt.message})
			if se.Msg != tt.message {
				t.Errorf("message = %q, want %q", se.Msg, tt.message)
			}
			if strings.Contains(err.Error(), tt.key) {
				t.Errorf("error reveals the key: %v", err)
			}
		})
	}

	t.Run("no key", func(t *testing.T) {
		resp, body := rawGet(t, f.srv, "/v1/events", "")
		if resp.StatusCode != 401 || !strings.Contains(errorField(t, body, "message"), "You did not provide an API key") {
			t.Errorf("status %d, body %v", resp.StatusCode, body)
		}
	})

	t.Run("rotated key", func(t *testing.T) {
		f.srv.SetAPIKey("sk_test_rotated")
		_, err := listEventIDs(t, f.api, nil) // f.api still holds the default key
		checkStripeError(t, err, wantStripeError{status: 401, message: "Invalid API Key provided"})
		if _, err := listEventIDs(t, newClient(f.srv.URL(), "sk_test_rotated"), nil); err != nil {
			t.Errorf("new key refused: %v", err)
		}
	})

	if got := f.srv.Stats().ByStatus[401]; got != 4 {
		t.Errorf("Stats.ByStatus[401] = %d, want 4", got)
	}
}

func TestRateLimits(t *testing.T) {
	// Budgets this small refill every ~17 minutes, so a real-time bucket
	// cannot refill between the two requests of a case.
	const tiny = 0.001
	tests := []struct {
		name       string
		opts       Options
		secondCall string // endpoint of the second request: "events" or "session"
		wantReason string
	}{
		{"endpoint budget, same endpoint", Options{EndpointLimit: tiny}, "events", "endpoint-rate"},
		{"endpoint budget, other endpoint", Options{EndpointLimit: tiny}, "session", ""},
		{"global budget", Options{GlobalLimit: tiny}, "session", "global-rate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.opts)
			cs := f.srv.CreateSession(SessionParams{Created: t0})
			if _, err := listEventIDs(t, f.api, nil); err != nil {
				t.Fatalf("first request: %v", err)
			}
			var err error
			if tt.secondCall == "events" {
				_, err = listEventIDs(t, f.api, nil)
			} else {
				_, err = f.api.CheckoutSessions.Get(cs, nil)
			}
			if tt.wantReason == "" {
				if err != nil {
					t.Fatalf("second request: %v", err)
				}
				return
			}
			se := checkStripeError(t, err, wantStripeError{status: 429, code: stripe.ErrorCodeRateLimit, message: "Request rate limit exceeded"})
			if got := se.LastResponse.Header.Get("Stripe-Rate-Limited-Reason"); got != tt.wantReason {
				t.Errorf("Stripe-Rate-Limited-Reason = %q, want %q", got, tt.wantReason)
			}
			if st := f.srv.Stats(); st.RateLimited != 1 || st.ByStatus[429] != 1 || st.Total != 2 {
				t.Errorf("stats = %+v, want one rate-limited request of two", st)
			}
		})
	}
}

func TestQueryValidation(t *testing.T) {
	f := newFixture(t, Options{})
	cs := f.srv.CreateSession(SessionParams{Created: t0})
	tests := []struct {
		name   string
		path   string
		status int
		code   string
		param  string
		msg    string
	}{
		{"unknown event list param", "/v1/events?limit=3&foo=bar", 400, "parameter_unknown", "foo", "Received unknown parameter: foo"},
		{"unknown nested param", "/v1/events?created[after]=1", 400, "parameter_unknown", "created[after]", "Received unknown parameter: created[after]"},
		{"session param on events", "/v1/events?status=complete", 400, "parameter_unknown", "status", "Received unknown parameter: status"},
		{"unknown retrieve param", "/v1/checkout/sessions/" + cs + "?limit=1", 400, "parameter_unknown", "limit", "Received unknown parameter: limit"},
		{"bad integer", "/v1/events?created[gte]=yesterday", 400, "parameter_invalid_integer", "created[gte]", "Invalid integer: yesterday"},
		{"bad boolean", "/v1/events?delivery_success=maybe", 400, "", "delivery_success", "Invalid boolean"},
		{"bad session status", "/v1/checkout/sessions?status=paid", 400, "", "status", "Invalid status"},
		{"types[] form", "/v1/events?types[]=checkout.session.completed&expand[]=data", 200, "", "", ""},
		{"unrecognized URL", "/v1/charges", 404, "", "", "Unrecognized request URL (GET: /v1/charges)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := rawGet(t, f.srv, tt.path, DefaultAPIKey)
			if resp.StatusCode != tt.status {
				t.Fatalf("status = %d, want %d: %v", resp.StatusCode, tt.status, body)
			}
			if !strings.HasPrefix(resp.Header.Get("Request-Id"), "req_") {
				t.Errorf("Request-Id = %q", resp.Header.Get("Request-Id"))
			}
			if tt.status == 200 {
				if body["object"] != "list" || body["url"] != "/v1/events" {
					t.Errorf("body = %v", body)
				}
				return
			}
			if got := errorField(t, body, "type"); got != "invalid_request_error" {
				t.Errorf("type = %q", got)
			}
			if got := errorField(t, body, "code"); got != tt.code {
				t.Errorf("code = %q, want %q", got, tt.code)
			}
			if got := errorField(t, body, "param"); got != tt.param {
				t.Errorf("param = %q, want %q", got, tt.param)
			}
			if got := errorField(t, body, "message"); !strings.Contains(got, tt.msg) {
				t.Errorf("message = %q, want %q", got, tt.msg)
			}
		})
	}
}

func TestFaults(t *testing.T) {
	tests := []struct {
		name  string
		fault Fault
		times int64 // consecutive requests that fail
		check func(t *testing.T, err error)
	}{
		{"503 asking for a retry", Fault{Status: 503, Header: http.Header{"Stripe-Should-Retry": {"true"}}}, 1, func(t *testing.T, err error) {
			se := checkStripeError(t, err, wantStripeError{status: 503, typ: stripe.ErrorTypeAPI, message: "something went wrong"})
			if se.LastResponse.Header.Get("Stripe-Should-Retry") != "true" {
				t.Errorf("headers = %v", se.LastResponse.Header)
			}
		}},
		{"429", Fault{Status: 429, Header: http.Header{"Stripe-Rate-Limited-Reason": {"global-concurrency"}}}, 1, func(t *testing.T, err error) {
			se := checkStripeError(t, err, wantStripeError{status: 429, code: stripe.ErrorCodeRateLimit, message: "rate limit"})
			if se.LastResponse.Header.Get("Stripe-Rate-Limited-Reason") != "global-concurrency" {
				t.Errorf("headers = %v", se.LastResponse.Header)
			}
		}},
		{"malformed body", Fault{Status: 500, Body: []byte(`{"error":`)}, 1, func(t *testing.T, err error) {
			var se *stripe.Error
			if err == nil || errors.As(err, &se) {
				t.Errorf("err = %v, want a decoding failure", err)
			}
		}},
		// net/http silently resends a GET whose reused connection was reset,
		// so it takes two resets in a row for the client to see one.
		{"connection reset", Fault{Reset: true}, 2, func(t *testing.T, err error) {
			var se *stripe.Error
			if err == nil || errors.As(err, &se) {
				t.Errorf("err = %v, want a transport error", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, Options{})
			f.srv.SetFault(func(r *http.Request, n int64) *Fault {
				if n >= 2 && n < 2+tt.times {
					return &tt.fault
				}
				return nil
			})
			if _, err := listEventIDs(t, f.api, nil); err != nil {
				t.Fatalf("request 1: %v", err)
			}
			_, err := listEventIDs(t, f.api, nil)
			tt.check(t, err)
			if _, err := listEventIDs(t, f.api, nil); err != nil {
				t.Fatalf("request 3: %v", err)
			}
		})
	}
}

func TestLatencyStopsWhenClientLeaves(t *testing.T) {
	srv := New(Options{Latency: func() time.Duration { return time.Hour }})
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL()+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+DefaultAPIKey)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := http.DefaultClient.Do(req.WithContext(ctx)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the client's deadline", err)
	}
	srv.Close() // waits for the handler, which must notice the client left
	if got := srv.Stats().ByStatus[499]; got != 1 {
		t.Errorf("abandoned requests = %d, want 1", got)
	}
}

func TestConcurrentUse(t *testing.T) {
	f := newFixture(t, Options{Latency: func() time.Duration { return time.Millisecond }})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 25 {
				cs := f.srv.CreateSession(SessionParams{Created: t0.Add(time.Duration(i) * time.Second), LineItems: 3})
				f.srv.CompleteSession(cs, "paid", t0.Add(time.Duration(w*100+i)*time.Second))
			}
		})
		wg.Go(func() {
			p := &stripe.EventListParams{}
			p.Limit = stripe.Int64(100)
			for range 10 {
				if _, err := listEventIDs(t, f.api, p); err != nil {
					t.Error(err)
					return
				}
				f.srv.Stats()
				f.srv.Requests()
			}
		})
	}
	wg.Wait()
	p := &stripe.EventListParams{}
	p.Limit = stripe.Int64(100)
	if ids := mustListEventIDs(t, f.api, p); len(ids) != 100 {
		t.Errorf("listed %d events, want 100", len(ids))
	}
}

// TestDateIsTheSimulationClock: clients learn Stripe's clock from the Date
// header, so every answer, errors included, carries the simulation's time,
// not the host's.
func TestDateIsTheSimulationClock(t *testing.T) {
	f := newFixture(t, Options{})
	tests := []struct {
		name string
		at   time.Time
		path string
		key  string
	}{
		{"a list, an hour after the epoch", t0.Add(time.Hour + 500*time.Millisecond), "/v1/events", DefaultAPIKey},
		{"a list, a year back", t0.AddDate(-1, 0, 0), "/v1/events", DefaultAPIKey},
		{"a 404", t0.Add(2 * time.Hour), "/v1/checkout/sessions/cs_test_missing", DefaultAPIKey},
		{"a 401", t0.Add(3 * time.Hour), "/v1/events", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.clock.Set(tt.at)
			resp, _ := rawGet(t, f.srv, tt.path, tt.key)
			got, err := http.ParseTime(resp.Header.Get("Date"))
			if err != nil {
				t.Fatalf("Date %q: %v", resp.Header.Get("Date"), err)
			}
			if want := tt.at.Truncate(time.Second); !got.Equal(want) {
				t.Errorf("Date %s, want the simulation's %s", got.UTC(), want)
			}
		})
	}
}
