package stripeapi

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
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
