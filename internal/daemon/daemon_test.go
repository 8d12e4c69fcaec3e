package daemon_test

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/daemon"
	"github.com/fulfilld/fulfilld/internal/metrics"
	"github.com/fulfilld/fulfilld/internal/status"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/storetest"
	"github.com/fulfilld/fulfilld/internal/storehealth"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/internal/stripesim"
	"github.com/fulfilld/fulfilld/poller"
)

// The daemon is driven here as cmd/fulfilld drives it, without a binary:
// real store, stripe-go against the simulated Stripe, an in-process action.

// recorder is an action that records each session it was run for.
type recorder struct {
	mu   sync.Mutex
	runs map[string]int
}

func (r *recorder) Deliver(_ context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.runs[strings.TrimPrefix(d.IdempotencyKey, "fulfilld-")]++
	return fulfill.Outcome{}, nil
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.runs[id]
}

func newDaemon(t *testing.T, sim *stripesim.Server) (*daemon.Daemon, *recorder) {
	t.Helper()
	return newDaemonAt(t, sim, nil, func(*config.Config) {})
}

// newDaemonAt is newDaemon on a simulated clock (nil: the host's), with
// the configuration adjusted by set before New.
func newDaemonAt(t *testing.T, sim *stripesim.Server, clock *stripesim.Clock, set func(*config.Config)) (*daemon.Daemon, *recorder) {
	t.Helper()
	now := time.Now
	if clock != nil {
		now = clock.Now
	}
	s := storetest.Open(t)
	client := stripeapi.New(stripeapi.Config{APIKey: stripesim.DefaultAPIKey, APIBase: sim.URL(),
		Limits: stripeapi.Limits{Global: 1000, Endpoint: 1000}, Now: now})
	health := storehealth.NewHealth(nil)
	queues := storehealth.New(store.As[fulfill.Tx](s), health)
	stream := storehealth.New(store.As[poller.Tx](s), health)
	act := &recorder{runs: map[string]int{}}
	cfg := &config.Config{
		Schedule: "@every 1s",
		Events:   config.Events{Types: config.DefaultEventTypes, Lookback: 10 * time.Minute},
		Store:    config.Store{Path: filepath.Join(t.TempDir(), "f.db"), Retention: 90 * 24 * time.Hour},
		Fulfill:  config.Fulfill{Timeout: 5 * time.Second, Concurrency: 2, MaxAttempts: 3},
		Reconcile: config.Reconcile{
			Schedule: "@every 1h", Window: 72 * time.Hour,
		},
	}
	set(cfg)
	d := daemon.New(&daemon.Daemon{
		Config: cfg, DB: s, Health: health, Client: client,
		Poller:     &poller.Poller{DB: stream, Events: client, Types: cfg.Events.Types, Lookback: cfg.Events.Lookback, Clock: poller.ClientClock{Client: client}, Now: now},
		Fulfiller:  &fulfill.Fulfiller{DB: queues, Sessions: client, Action: act, MaxAttempts: 3, Concurrency: 2, Now: now},
		Reconciler: &poller.Reconciler{DB: stream, Sessions: client, Events: client, Types: cfg.Events.Types, Clock: poller.ClientClock{Client: client}, Now: now},
		Metrics:    metrics.New(s, nil),
		Socket:     cfg.Store.Path + ".sock",
		Now:        now,
	}, nil)
	return d, act
}

func paid(sim *stripesim.Server, at time.Time) string {
	id := sim.CreateSession(stripesim.SessionParams{Created: at})
	sim.CompleteSession(id, "paid", at)
	return id
}

// TestOncePassFulfillsEachPaidSessionOnce: a --once pass with a backfill
// fulfils every paid session, and a second pass over the same range runs
// nothing again.
func TestOncePassFulfillsEachPaidSessionOnce(t *testing.T) {
	sim := stripesim.New(stripesim.Options{})
	t.Cleanup(sim.Close)
	d, act := newDaemon(t, sim)
	ids := []string{paid(sim, time.Now().Add(-30*time.Minute)), paid(sim, time.Now().Add(-20*time.Minute))}
	for pass := range 2 {
		if _, err := d.Poller.Start(t.Context(), time.Now().Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := d.Recover(); err != nil {
			t.Fatal(err)
		}
		if err := d.Once(t.Context()); err != nil {
			t.Fatalf("pass %d: %v", pass+1, err)
		}
	}
	for _, id := range ids {
		if n := act.count(id); n != 1 {
			t.Errorf("%s: action ran %d times over two passes, want 1", id, n)
		}
	}
	st, err := status.Read(d.DB, time.Now())
	if err != nil || st.Fulfillments[string(fulfill.StateFulfilled)] != 2 || st.Queued != 0 {
		t.Errorf("status after the passes: %+v (%v); want 2 fulfilled, nothing queued", st.Fulfillments, err)
	}
}

// TestPollerTellsTheQueue: the daemon wires the poller's word to the queue
// — a poll that listed all it will (Settled) and a slice near its end
// (Ending) — without which the queue waits for fuller pages until its
// timers run out.
func TestPollerTellsTheQueue(t *testing.T) {
	sim := stripesim.New(stripesim.Options{})
	t.Cleanup(sim.Close)
	d, _ := newDaemon(t, sim)
	if d.Poller.Settled == nil || d.Poller.Ending == nil || d.Poller.Listing == nil {
		t.Errorf("poller hooks: Settled set %v, Ending set %v, Listing set %v; want all", d.Poller.Settled != nil, d.Poller.Ending != nil, d.Poller.Listing != nil)
	}
}

// TestServeAnswersOnTheSocketAndStops: while Serve runs, the admin socket
// answers status and fulfils a session on request; the first cancel stops
// it cleanly.
func TestServeAnswersOnTheSocketAndStops(t *testing.T) {
	sim := stripesim.New(stripesim.Options{})
	t.Cleanup(sim.Close)
	d, act := newDaemon(t, sim)
	if _, err := d.Poller.Start(t.Context(), time.Time{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx) }()
	var adm *daemon.Admin
	deadline := time.Now().Add(10 * time.Second)
	for adm == nil {
		if time.Now().After(deadline) {
			t.Fatal("the admin socket did not open within 10s")
		}
		adm = daemon.Dial(d.Socket)
		if adm == nil {
			<-time.After(5 * time.Millisecond)
		}
	}
	// Not in the stream (created before the start): only the request asks.
	id := paid(sim, time.Now().Add(-time.Hour))
	var ans daemon.FulfillAnswer
	if err := adm.Call(t.Context(), http.MethodPost, "/fulfill/"+id, nil, &ans); err != nil {
		t.Fatal(err)
	}
	if ans.Record.State != fulfill.StateFulfilled || act.count(id) != 1 {
		t.Errorf("fulfil over the socket: %+v, action ran %d times", ans.Record, act.count(id))
	}
	var st status.Report
	if err := adm.Call(t.Context(), http.MethodGet, "/status", nil, &st); err != nil || st.Fulfillments["fulfilled"] != 1 {
		t.Errorf("status over the socket: %+v (%v)", st.Fulfillments, err)
	}
	var re *daemon.RemoteError
	if err := adm.Call(t.Context(), http.MethodPost, "/fulfill/cs_test_nope", nil, &ans); !errors.As(err, &re) {
		t.Errorf("fulfil of an unknown session over the socket: %v, want a remote error", err)
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve after cancel: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return within 15s of cancel")
	}
}
