package stripeapi_test

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/logtest"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// An outage of Stripe is told once when it begins (a WARN with the reason
// and "retrying") and once when it ends (an INFO), however many requests
// fail in between.
func TestOutageLogsOnceWhenItBeginsAndOnceWhenItEnds(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	sim := stripesim.New(stripesim.Options{Fault: func(*http.Request, int64) *stripesim.Fault {
		if down.Load() {
			return &stripesim.Fault{Status: http.StatusBadGateway}
		}
		return nil
	}})
	t.Cleanup(sim.Close)
	var logs logtest.Buffer
	c := stripeapi.New(stripeapi.Config{APIKey: stripesim.DefaultAPIKey, APIBase: sim.URL(),
		Limits: stripeapi.Limits{Global: 1000, Endpoint: 1000}, MaxRetries: 3,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	c.Transport.MinBackoff, c.Transport.MaxBackoff = time.Millisecond, 2*time.Millisecond

	for range 3 { // three polls' worth of requests, each retried and given up
		if _, err := c.ListEvents(context.Background(), stripeapi.EventQuery{Types: []string{"checkout.session.completed"}}); err == nil {
			t.Fatal("a list against a Stripe answering 502 succeeded")
		}
	}
	warns := logs.Lines("level=WARN")
	if len(warns) != 1 || !strings.Contains(warns[0], "retrying") || !strings.Contains(warns[0], "HTTP 502") {
		t.Fatalf("want one WARN naming the reason and retrying, got %d:\n%s", len(warns), strings.Join(warns, "\n"))
	}
	down.Store(false)
	for range 2 {
		if _, err := c.ListEvents(context.Background(), stripeapi.EventQuery{Types: []string{"checkout.session.completed"}}); err != nil {
			t.Fatal(err)
		}
	}
	infos := logs.Lines("level=INFO")
	if len(infos) != 1 || !strings.Contains(infos[0], "stripe answers again") || !strings.Contains(infos[0], "failed_requests=12") {
		t.Fatalf("want one INFO when Stripe answers again (after 12 failed requests), got:\n%s", strings.Join(infos, "\n"))
	}
	if len(logs.Lines("level=WARN")) != 1 || len(logs.Lines("level=ERROR")) != 0 {
		t.Fatalf("more WARN/ERROR lines than the one at the start:\n%s", logs.String())
	}
}

// Stripe unreachable (nothing listens): the first failure says so at once,
// with the network's reason.
func TestUnreachableStripeWarnsAtOnce(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // connections are refused from now on
	var logs logtest.Buffer
	c := stripeapi.New(stripeapi.Config{APIKey: stripesim.DefaultAPIKey, APIBase: "http://" + addr,
		Limits: stripeapi.Limits{Global: 1000, Endpoint: 1000}, MaxRetries: 2,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	c.Transport.MinBackoff, c.Transport.MaxBackoff = time.Millisecond, 2*time.Millisecond
	// The error is the network's, through stripe-go's streaming call
	// (which loses it: see Client.stream).
	if _, err := c.ListEvents(context.Background(), stripeapi.EventQuery{Types: []string{"checkout.session.completed"}}); err == nil ||
		!strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("a list against nothing: %v, want the connection refused", err)
	}
	warns := logs.Lines("level=WARN")
	if len(warns) != 1 || !strings.Contains(warns[0], "connection refused") || !strings.Contains(warns[0], "retrying") {
		t.Fatalf("want one WARN with the reason, got:\n%s", logs.String())
	}
}
