package stripeapi_test

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/internal/stripesim"
)

var clockEpoch = time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)

// TestClockAnchor drives the clock with an injected host clock (wall time
// only, as a test clock is) through a script of host moves and
// observations, checking Stripe's time after each step.
func TestClockAnchor(t *testing.T) {
	type step struct {
		host    time.Duration // move the host clock by this first
		date    *time.Time    // then observe this Date, if set
		created *time.Time    // or this created stamp
		want    time.Time     // Stripe's time after the step
	}
	at := func(d time.Duration) *time.Time { v := clockEpoch.Add(d); return &v }
	stripe := func(d time.Duration) time.Time { return clockEpoch.Add(d) }
	tests := []struct {
		name  string
		steps []step
	}{
		{"before any answer it is the host's", []step{
			{want: stripe(0)},
			{created: at(time.Hour), want: stripe(0)}, // a stamp alone does not sync
		}},
		{"stripe ahead by 30m, followed as the host moves", []step{
			{date: at(30 * time.Minute), want: stripe(30 * time.Minute)},
			{host: 10 * time.Second, want: stripe(30*time.Minute + 10*time.Second)},
		}},
		{"stripe behind by 30m", []step{
			{date: at(-30 * time.Minute), want: stripe(-30 * time.Minute)},
			{host: time.Minute, want: stripe(-29 * time.Minute)},
		}},
		{"a truncated Date just behind is noise: the anchor stays", []step{
			{date: at(5*time.Minute + 800*time.Millisecond), want: stripe(5*time.Minute + 800*time.Millisecond)},
			{host: time.Second, date: at(5*time.Minute + time.Second), want: stripe(5*time.Minute + 1800*time.Millisecond)},
			{host: time.Second, date: at(5*time.Minute + 1*time.Second), want: stripe(5*time.Minute + 2800*time.Millisecond)},
		}},
		{"a Date ahead of the estimate moves it up", []step{
			{date: at(5 * time.Minute), want: stripe(5 * time.Minute)},
			{date: at(5*time.Minute + time.Second), want: stripe(5*time.Minute + time.Second)},
		}},
		{"a Date well behind re-anchors: stripe's clock went back", []step{
			{date: at(5 * time.Minute), want: stripe(5 * time.Minute)},
			{host: time.Second, date: at(4 * time.Minute), want: stripe(4 * time.Minute)},
		}},
		{"a wall-clock jump of a test host moves Now until the next Date", []step{
			{date: at(0), want: stripe(0)},
			{host: time.Hour, want: stripe(time.Hour)},
			{date: at(time.Second), want: stripe(time.Second)},
			{host: -time.Hour, want: stripe(time.Second - time.Hour)},
			{date: at(2 * time.Second), want: stripe(2 * time.Second)},
		}},
		{"a created stamp ahead bumps, behind or far ahead does not", []step{
			{date: at(0), want: stripe(0)},
			{created: at(1500 * time.Millisecond), want: stripe(1500 * time.Millisecond)},
			{created: at(-time.Hour), want: stripe(1500 * time.Millisecond)},
			{created: at(time.Hour), want: stripe(1500 * time.Millisecond)},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := stripesim.NewClock(clockEpoch)
			c := &stripeapi.Clock{Host: host.Now}
			for i, s := range tt.steps {
				host.Advance(s.host)
				if s.date != nil {
					c.ObserveDate(*s.date)
				}
				if s.created != nil {
					c.ObserveCreated(*s.created)
				}
				if got := c.Now(); !got.Equal(s.want) {
					t.Fatalf("step %d: Now %s, want %s", i, got, s.want)
				}
				skew, ok := c.Skew()
				if ok != c.Synced() || ok && skew != s.want.Sub(host.Now()) {
					t.Fatalf("step %d: Skew %s (%v), want %s", i, skew, ok, s.want.Sub(host.Now()))
				}
			}
		})
	}
}

// TestClockFromDateHeaders: against a server whose Date is the real time
// plus an offset, the client's clock (on the host's real, monotonic clock)
// reads Stripe's time, and the skew is the offset, after one request.
func TestClockFromDateHeaders(t *testing.T) {
	for _, offset := range []time.Duration{30 * time.Minute, -30 * time.Minute, 5 * time.Minute, 0} {
		t.Run(offset.String(), func(t *testing.T) {
			var mu sync.Mutex
			var listed int
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				listed++
				mu.Unlock()
				w.Header().Set("Date", time.Now().Add(offset).UTC().Format(http.TimeFormat))
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"object":"list","url":"/v1/events","has_more":false,"data":[]}`))
			}))
			defer srv.Close()
			c := stripeapi.New(stripeapi.Config{APIKey: "sk_test_clockClockClock0000", APIBase: srv.URL,
				Limits: stripeapi.Limits{Global: 100, Endpoint: 100}})
			if c.Clock.Synced() {
				t.Fatal("synced before any request")
			}
			if err := c.SyncClock(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := c.SyncClock(context.Background()); err != nil { // a no-op once synced
				t.Fatal(err)
			}
			if listed != 1 {
				t.Errorf("SyncClock sent %d requests, want 1", listed)
			}
			// Date is truncated to the second: Stripe's time is known to
			// within a second and the time on the wire.
			if d := c.Clock.Now().Sub(time.Now().Add(offset)); d > time.Second || d < -2*time.Second {
				t.Errorf("Now is %s off Stripe's time", d)
			}
			skew, ok := c.Clock.Skew()
			if !ok || math.Abs((skew-offset).Seconds()) > 2 {
				t.Errorf("skew %s (%v), want about %s", skew, ok, offset)
			}
		})
	}
}

// TestListingsTellTheClock: a listed event's created stamp moves the clock
// up (Stripe's clock has reached it), so does a retrieved session's.
func TestListingsTellTheClock(t *testing.T) {
	sim := stripesim.NewClock(clockEpoch)
	srv := stripesim.New(stripesim.Options{Now: sim.Now})
	defer srv.Close()
	host := stripesim.NewClock(clockEpoch.Add(-time.Hour))
	c := stripeapi.New(stripeapi.Config{APIKey: stripesim.DefaultAPIKey, APIBase: srv.URL(), Now: host.Now,
		Limits: stripeapi.Limits{Global: 100, Endpoint: 100}})
	if err := c.SyncClock(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := c.Clock.Now(); !got.Equal(clockEpoch) {
		t.Fatalf("after sync: %s, want the simulation's %s", got, clockEpoch)
	}
	// An event stamped 2 s after the Date it is listed with (the sim lets
	// tests do that; Stripe's own lag is a second or so).
	id := srv.CreateSession(stripesim.SessionParams{Created: clockEpoch.Add(-time.Minute)})
	srv.CompleteSession(id, "paid", clockEpoch.Add(2*time.Second))
	if _, err := c.ListEvents(context.Background(), stripeapi.EventQuery{}); err != nil {
		t.Fatal(err)
	}
	if got, want := c.Clock.Now(), clockEpoch.Add(2*time.Second); !got.Equal(want) {
		t.Errorf("after listing: %s, want the event's created %s", got, want)
	}
	late := srv.CreateSession(stripesim.SessionParams{Created: clockEpoch.Add(3 * time.Second)})
	if _, err := c.GetSession(context.Background(), late); err != nil {
		t.Fatal(err)
	}
	if got, want := c.Clock.Now(), clockEpoch.Add(3*time.Second); !got.Equal(want) {
		t.Errorf("after a retrieve: %s, want the session's created %s", got, want)
	}
}

// TestSyncClockReportsAFailure: a clock that cannot be learned is an error
// that says what was being done.
func TestSyncClockReportsAFailure(t *testing.T) {
	srv := stripesim.New(stripesim.Options{APIKey: "sk_test_theRightOne000000000"})
	defer srv.Close()
	c := stripeapi.New(stripeapi.Config{APIKey: "sk_test_theWrongOne000000000", APIBase: srv.URL(),
		Limits: stripeapi.Limits{Global: 100, Endpoint: 100}})
	err := c.SyncClock(context.Background())
	if err == nil || !strings.Contains(err.Error(), "stripe's clock") {
		t.Fatalf("err %v, want one about learning stripe's clock", err)
	}
	// The 401 carried a Date all the same: the clock is Stripe's now.
	if !c.Clock.Synced() {
		t.Error("the 401's Date was not observed")
	}
}
