package stripeapi

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// Stripe (or a proxy in front of it) saying line_items has_more while
// listing none is an answer we cannot page on: an error to retry later,
// not a panic.
func TestGetSessionWithHasMoreButNoItems(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"id":"cs_test_1","object":"checkout.session","status":"complete","payment_status":"paid",` +
			`"line_items":{"object":"list","data":[],"has_more":true,"url":"/v1/checkout/sessions/cs_test_1/line_items"}}`))
	}))
	defer srv.Close()
	c := New(Config{APIKey: "sk_test_123456789", APIBase: srv.URL})
	_, err := c.GetSession(context.Background(), "cs_test_1")
	var se *Error
	if err == nil || !errors.As(err, &se) || !se.Retryable() {
		t.Fatalf("got %v, want a retryable error", err)
	}
}

// A page of events cut short on the way, by a connection closed early or by
// anything in between, is an error of the request, retried later: never a
// page read as far as it goes, nor a run of bad events recorded as sent.
func TestEventPageCutShortIsAnError(t *testing.T) {
	const page = `{"object":"list","data":[{"id":"evt_1","object":"event","type":"checkout.session.completed","created":1700000000,` +
		`"data":{"object":{"id":"cs_test_1","object":"checkout.session"}}},{"id":"evt_2","object":"event","type":"checkout.session.completed",` +
		`"created":1700000001,"data":{"object":{"id":"cs_test_2","object":"checkout.session"}}}],"has_more":false,"url":"/v1/events"}`
	cut := strings.Index(page, `{"id":"evt_2"`) + 20
	for name, answer := range map[string]func(w http.ResponseWriter){
		"connection closed early": func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", strconv.Itoa(len(page)))
			_, _ = w.Write([]byte(page[:cut]))
		},
		"body cut short": func(w http.ResponseWriter) { _, _ = w.Write([]byte(page[:cut])) },
		"body cut after an event": func(w http.ResponseWriter) {
			_, _ = w.Write([]byte(page[:strings.Index(page, `{"id":"evt_2"`)]))
		},
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				answer(w)
			}))
			defer srv.Close()
			c := New(Config{APIKey: "sk_test_123456789", APIBase: srv.URL, MaxRetries: 1})
			got, err := c.ListEvents(context.Background(), EventQuery{})
			var se *Error
			if err == nil || !errors.As(err, &se) || !se.Retryable() {
				t.Fatalf("listed %+v (%v), want a retryable error", got, err)
			}
		})
	}
	// The whole page is read, with each event's bytes as sent.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(page)) }))
	defer srv.Close()
	got, err := New(Config{APIKey: "sk_test_123456789", APIBase: srv.URL}).ListEvents(context.Background(), EventQuery{})
	if err != nil || len(got.Events) != 2 || got.HasMore {
		t.Fatalf("listed %+v (%v), want the two events", got, err)
	}
	if want := page[strings.Index(page, `{"id":"evt_2"`):strings.LastIndex(page, `]`)]; string(got.Events[1].Raw) != want {
		t.Errorf("the second event kept as %s, sent as %s", got.Events[1].Raw, want)
	}
}

// An answer that is not a page of events (a proxy's, or from a wrong
// stripe.api_base) is an error: not an empty last page, which would let the
// tip pass events never listed, and not a panic. A redirect is not
// followed: the key would go wherever it points.
func TestAnswerNotAListIsAnError(t *testing.T) {
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a redirect was followed, with Authorization %q", r.Header.Get("Authorization"))
	}))
	defer elsewhere.Close()
	for name, answer := range map[string]func(w http.ResponseWriter){
		"empty object": func(w http.ResponseWriter) { _, _ = w.Write([]byte(`{}`)) },
		"null":         func(w http.ResponseWriter) { _, _ = w.Write([]byte(`null`)) },
		"no data":      func(w http.ResponseWriter) { _, _ = w.Write([]byte(`{"object":"list","has_more":false}`)) },
		"another object": func(w http.ResponseWriter) {
			_, _ = w.Write([]byte(`{"object":"event","id":"evt_1","data":[]}`))
		},
		"redirect elsewhere": func(w http.ResponseWriter) {
			w.Header().Set("Location", elsewhere.URL+"/v1/events")
			w.WriteHeader(http.StatusFound)
		},
		"a proxy's 401": func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`<html>Authorization: Bearer sk_test_123456789</html>`))
		},
		"redirect nowhere": func(w http.ResponseWriter) {
			w.Header().Set("Location", "http://[::1")
			w.WriteHeader(http.StatusFound)
		},
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { answer(w) }))
			defer srv.Close()
			c := New(Config{APIKey: "sk_test_123456789", APIBase: srv.URL, MaxRetries: 1})
			if strings.HasPrefix(name, "redirect") {
				// Nor is a redirect a retrieve's answer, whatever its body.
				if s, err := c.GetSession(context.Background(), "cs_test_1"); err == nil {
					t.Errorf("retrieved %+v through a redirect", s)
				}
			}
			if got, err := c.ListEvents(context.Background(), EventQuery{}); err == nil {
				t.Fatalf("listed %+v, want an error", got)
			} else if strings.Contains(err.Error(), "sk_test_123456789") {
				t.Errorf("the error shows the key: %v", err)
			} else if name == "a proxy's 401" && !errors.Is(err, ErrAuth) {
				t.Errorf("a 401 read as %v, want the key refused", err)
			}
		})
	}
}
