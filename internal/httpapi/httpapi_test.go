package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/httpapi"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/store/storetest"
	"github.com/fulfilld/fulfilld/internal/storehealth"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

// now is the tests' clock: the server and the store agree on it.
var now = time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)

// openStore opens a real bbolt store with fulfilld's buckets.
func openStore(t *testing.T) *boltstore.Store { return storetest.Open(t) }

// newServer is the server as serve.go wires it, on a fresh store.
func newServer(t *testing.T, f httpapi.Fulfiller) (*httpapi.Server, *boltstore.Store) {
	t.Helper()
	db := openStore(t)
	work, stop := context.WithCancel(context.Background())
	t.Cleanup(stop)
	return &httpapi.Server{
		DB: db, Registry: prometheus.NewRegistry(), Fulfill: f, Work: work,
		MaxPollAge: 2 * time.Minute, MinHorizon: 48 * time.Hour, Wait: 5 * time.Second,
		Now: func() time.Time { return now },
	}, db
}

// serve serves one request and decodes the JSON answer.
func serve(t *testing.T, s *httpapi.Server, method, path string) (int, map[string]any) {
	t.Helper()
	rr := httptest.NewRecorder()
	s.Handler().ServeHTTP(rr, httptest.NewRequest(method, path, nil))
	var body map[string]any
	if ct := rr.Header().Get("Content-Type"); strings.HasPrefix(ct, "application/json") {
		if err := json.Unmarshal(rr.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s %s: answer is not JSON: %v\n%s", method, path, err, rr.Body)
		}
	}
	return rr.Code, body
}

func problems(body map[string]any) string {
	raw, _ := json.Marshal(body["problems"])
	return string(raw)
}

// TestHealthz: /healthz fails, naming the problem, when polls stop
// succeeding or complete_until nears Stripe's retention, and passes when
// the daemon keeps up — what a supervisor or an alert acts on.
func TestHealthz(t *testing.T) {
	t.Parallel()
	fresh := cursor.Position{Settled: now.Add(-2 * time.Minute), Tip: now.Add(-time.Minute)}
	tests := []struct {
		name string
		poll *cursor.Poll
		pos  *cursor.Position
		code int
		want []string // each must appear among the problems
	}{
		{name: "never polled", code: http.StatusServiceUnavailable, want: []string{"no successful poll"}},
		{name: "last poll just now", poll: &cursor.Poll{At: now.Add(-10 * time.Second), Outcome: "ok", LastSuccess: now.Add(-10 * time.Second)},
			pos: &fresh, code: http.StatusOK},
		{name: "polls failing for an hour",
			poll: &cursor.Poll{At: now.Add(-5 * time.Second), Outcome: "error", Error: "stripe answered 500", LastSuccess: now.Add(-time.Hour)},
			pos:  &fresh, code: http.StatusServiceUnavailable, want: []string{"last successful poll", "1h0m0s ago", "stripe answered 500"}},
		{name: "one failed poll within the limit",
			poll: &cursor.Poll{At: now.Add(-5 * time.Second), Outcome: "error", Error: "stripe answered 500", LastSuccess: now.Add(-90 * time.Second)},
			pos:  &fresh, code: http.StatusOK},
		{name: "complete_until a day from the retention edge",
			poll: &cursor.Poll{At: now, Outcome: "ok", LastSuccess: now},
			pos:  &cursor.Position{Settled: now.Add(-poller.Retention + 24*time.Hour), Tip: now},
			code: http.StatusServiceUnavailable, want: []string{"complete_until", "retention"}},
		{name: "complete_until three days from the retention edge",
			poll: &cursor.Poll{At: now, Outcome: "ok", LastSuccess: now},
			pos:  &cursor.Position{Settled: now.Add(-poller.Retention + 72*time.Hour), Tip: now},
			code: http.StatusOK},
		{name: "both",
			poll: &cursor.Poll{At: now, Outcome: "error", Error: "connection refused", LastSuccess: now.Add(-3 * time.Hour)},
			pos:  &cursor.Position{Settled: now.Add(-poller.Retention + time.Hour), Tip: now},
			code: http.StatusServiceUnavailable, want: []string{"connection refused", "complete_until"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, db := newServer(t, nil)
			if err := db.Update(func(tx store.Tx) error {
				if tt.poll != nil {
					if err := cursor.SavePoll(tx, *tt.poll); err != nil {
						return err
					}
				}
				if tt.pos != nil {
					return cursor.Save(tx, *tt.pos)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			code, body := serve(t, s, http.MethodGet, "/healthz")
			if code != tt.code {
				t.Fatalf("GET /healthz = %d %v, want %d", code, body, tt.code)
			}
			wantStatus := "ok"
			if tt.code != http.StatusOK {
				wantStatus = "unhealthy"
			}
			if body["status"] != wantStatus {
				t.Errorf("status %q, want %q", body["status"], wantStatus)
			}
			got := problems(body)
			if tt.code == http.StatusOK && body["problems"] != nil {
				t.Errorf("healthy, but problems: %s", got)
			}
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("problems %s do not mention %q", got, w)
				}
			}
		})
	}
}

// TestHealthzClosedStore: a store that cannot be read is a problem, not a
// panic or a 200.
func TestHealthzClosedStore(t *testing.T) {
	t.Parallel()
	s, db := newServer(t, nil)
	db.Close()
	code, body := serve(t, s, http.MethodGet, "/healthz")
	if code != http.StatusServiceUnavailable || !strings.Contains(problems(body), "store") {
		t.Errorf("GET /healthz on a closed store = %d %v, want 503 naming the store", code, body)
	}
}

// A store that refuses writes (a full disk) makes /healthz fail with the
// reason, though reads, and so every other check, still work.
func TestHealthzUnwritableStore(t *testing.T) {
	t.Parallel()
	s, db := newServer(t, nil)
	if err := db.Update(func(tx store.Tx) error {
		if err := cursor.Save(tx, cursor.Position{Settled: now, Tip: now}); err != nil {
			return err
		}
		return cursor.SavePoll(tx, cursor.Poll{At: now, Outcome: "ok", LastSuccess: now})
	}); err != nil {
		t.Fatal(err)
	}
	health := storehealth.NewHealth(nil)
	guard := storehealth.New[store.Tx](refusingStore{db}, health)
	s.Store = health
	if code, body := serve(t, s, http.MethodGet, "/healthz"); code != http.StatusOK {
		t.Fatalf("GET /healthz before any write failed = %d %v, want 200", code, body)
	}
	if err := guard.Update(func(store.Tx) error { return nil }); err == nil {
		t.Fatal("the refusing store took a write")
	}
	code, body := serve(t, s, http.MethodGet, "/healthz")
	if code != http.StatusServiceUnavailable || !strings.Contains(problems(body), "no space left on device") {
		t.Errorf("GET /healthz while writes fail = %d %v, want 503 with the disk's error", code, body)
	}
}

// refusingStore refuses every write as a full disk does.
type refusingStore struct{ *boltstore.Store }

func (refusingStore) Update(func(store.Tx) error) error {
	return errors.New("write fulfilld.db: no space left on device")
}

// TestReadyz: not ready until the daemon says its first poll completed.
func TestReadyz(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, nil)
	if code, body := serve(t, s, http.MethodGet, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("GET /readyz before the first poll = %d %v, want 503", code, body)
	}
	s.Ready.Store(true)
	if code, body := serve(t, s, http.MethodGet, "/readyz"); code != http.StatusOK || body["status"] != "ok" {
		t.Errorf("GET /readyz after the first poll = %d %v, want 200 ok", code, body)
	}
}

// TestMetricsEndpoint: /metrics serves the daemon's registry in the text
// exposition format.
func TestMetricsEndpoint(t *testing.T) {
	t.Parallel()
	s, _ := newServer(t, nil)
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "fulfilld_test_total", Help: "A test counter."})
	c.Add(3)
	s.Registry.MustRegister(c)
	rr := httptest.NewRecorder()
	s.Handler().ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rr.Code != http.StatusOK || !strings.Contains(rr.Body.String(), "fulfilld_test_total 3") {
		t.Errorf("GET /metrics = %d:\n%s", rr.Code, rr.Body)
	}
	if code, _ := serve(t, s, http.MethodPost, "/metrics"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics = %d, want 405", code)
	}
}

// fakeFulfiller answers the landing-page trigger as the test says.
type fakeFulfiller struct {
	mu    sync.Mutex
	calls []call
	fn    func(ctx context.Context, id string) (fulfill.Record, error)
}

type call struct {
	ctx              context.Context
	id, trigger, evt string
}

func (f *fakeFulfiller) Fulfill(ctx context.Context, id, trigger, eventID string) (fulfill.Record, error) {
	f.mu.Lock()
	f.calls = append(f.calls, call{ctx, id, trigger, eventID})
	f.mu.Unlock()
	return f.fn(ctx, id)
}

// TestLandingPageFulfill: POST /fulfill/{session_id} answers with the
// session's record, with the status a landing page can act on.
func TestLandingPageFulfill(t *testing.T) {
	t.Parallel()
	const id = "cs_test_a1B2c3"
	tests := []struct {
		name      string
		path      string
		fn        func(ctx context.Context, id string) (fulfill.Record, error)
		code      int
		wantState string // record state in the answer ("" = an error answer)
		wantErr   string
		noCall    bool
	}{
		{name: "fulfilled", path: "/fulfill/" + id, code: http.StatusOK, wantState: "fulfilled",
			fn: func(_ context.Context, id string) (fulfill.Record, error) {
				return fulfill.Record{SessionID: id, State: fulfill.StateFulfilled, Attempts: 1}, nil
			}},
		{name: "awaiting payment", path: "/fulfill/" + id, code: http.StatusOK, wantState: "awaiting_payment",
			fn: func(_ context.Context, id string) (fulfill.Record, error) {
				return fulfill.Record{SessionID: id, State: fulfill.StateAwaitingPayment}, nil
			}},
		{name: "action failed: the record says so", path: "/fulfill/" + id, code: http.StatusOK, wantState: "pending",
			fn: func(_ context.Context, id string) (fulfill.Record, error) {
				return fulfill.Record{SessionID: id, State: fulfill.StatePending, Attempts: 1,
						LastError: "action exited with status 1: " + secretOutput, Output: secretOutput},
					errors.New("fulfill " + id + ": action exited with status 1: " + secretOutput)
			}},
		{name: "unknown to Stripe", path: "/fulfill/" + id, code: http.StatusNotFound, wantErr: "no such checkout session",
			fn: func(context.Context, string) (fulfill.Record, error) {
				return fulfill.Record{}, errNotFound()
			}},
		{name: "store trouble", path: "/fulfill/" + id, code: http.StatusServiceUnavailable, wantErr: "retried",
			fn: func(context.Context, string) (fulfill.Record, error) {
				return fulfill.Record{}, errors.New("open /var/lib/fulfilld/f.db: " + secretOutput)
			}},
		{name: "daemon stopping", path: "/fulfill/" + id, code: http.StatusServiceUnavailable, wantErr: "retried",
			fn: func(context.Context, string) (fulfill.Record, error) {
				return fulfill.Record{SessionID: id, State: fulfill.StatePending}, context.Canceled
			}},
		{name: "not a session id", path: "/fulfill/in_123", code: http.StatusBadRequest, wantErr: "cs_", noCall: true},
		{name: "id too long", path: "/fulfill/cs_" + strings.Repeat("x", 300), code: http.StatusBadRequest, wantErr: "cs_", noCall: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := &fakeFulfiller{fn: tt.fn}
			s, _ := newServer(t, f)
			pokes := 0
			s.Poke = func() { pokes++ }
			code, body := serve(t, s, http.MethodPost, tt.path)
			// A landing page that asks means orders are coming in: the
			// daemon polls at schedule again. A bad id says nothing.
			if want := map[bool]int{true: 0, false: 1}[tt.noCall]; pokes != want {
				t.Errorf("POST %.40s told the daemon %d times that orders come in, want %d", tt.path, pokes, want)
			}
			// The endpoint has no authentication: the action's output and
			// internal errors stay with the operator.
			if raw, _ := json.Marshal(body); strings.Contains(string(raw), secretOutput) {
				t.Errorf("POST %.40s answers the action's output or an internal error: %s", tt.path, raw)
			}
			if code != tt.code {
				t.Fatalf("POST %.40s = %d %v, want %d", tt.path, code, body, tt.code)
			}
			if tt.wantState != "" && (body["state"] != tt.wantState || body["session_id"] != id) {
				t.Errorf("answer %v, want the record of %s in state %s", body, id, tt.wantState)
			}
			if tt.wantErr != "" {
				if msg, _ := body["error"].(string); !strings.Contains(msg, tt.wantErr) {
					t.Errorf("answer %v, want an error mentioning %q", body, tt.wantErr)
				}
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if tt.noCall {
				if len(f.calls) != 0 {
					t.Errorf("a bad id reached the fulfiller: %+v", f.calls)
				}
				return
			}
			if len(f.calls) != 1 || f.calls[0].id != id || f.calls[0].trigger != fulfill.TriggerHTTP || f.calls[0].evt != "" {
				t.Errorf("fulfiller calls %+v, want one for %s with trigger http", f.calls, id)
			}
		})
	}
}

// secretOutput stands for what an action prints or an error says: order
// details, paths, the operator's internals.
const secretOutput = "customer jane@example.com license key K3Y-0000"

// errNotFound is a missing session as the Stripe client reports it.
func errNotFound() error {
	return errors.Join(errors.New("retrieve checkout session: no such checkout.session"), stripeapi.ErrNotFound)
}

// TestLandingPageFulfillSlow: an action that outlasts Wait gets 202 with
// the record as the store has it, and it goes on after the request ended
// — the landing page's visitor closing the tab does not cut it off.
func TestLandingPageFulfillSlow(t *testing.T) {
	t.Parallel()
	const id = "cs_test_slow"
	release := make(chan struct{})
	finished := make(chan error, 1)
	f := &fakeFulfiller{fn: func(ctx context.Context, id string) (fulfill.Record, error) {
		select {
		case <-release:
			finished <- nil
		case <-ctx.Done():
			finished <- ctx.Err()
		}
		return fulfill.Record{SessionID: id, State: fulfill.StateFulfilled}, nil
	}}
	s, db := newServer(t, f)
	s.Wait = 50 * time.Millisecond
	if err := db.Update(func(tx store.Tx) error {
		_, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: id, Trigger: fulfill.TriggerEvent, EventID: "evt_1", At: now})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rr := httptest.NewRecorder()
	s.Handler().ServeHTTP(rr, httptest.NewRequest(http.MethodPost, "/fulfill/"+id, nil).WithContext(ctx))
	cancel() // the visitor is gone
	var rec fulfill.Record
	if err := json.Unmarshal(rr.Body.Bytes(), &rec); err != nil {
		t.Fatalf("answer is not a record: %v\n%s", err, rr.Body)
	}
	if rr.Code != http.StatusAccepted || rec.SessionID != id || rec.State != fulfill.StatePending {
		t.Errorf("POST of a slow fulfillment = %d %+v, want 202 with the pending record", rr.Code, rec)
	}
	close(release)
	select {
	case err := <-finished:
		if err != nil {
			t.Errorf("the fulfillment was cut off when the request ended: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the fulfillment did not finish")
	}

	// No record at all yet: 202 with a pending record for the id.
	release2 := make(chan struct{})
	t.Cleanup(func() { close(release2) })
	s2, _ := newServer(t, &fakeFulfiller{fn: func(_ context.Context, id string) (fulfill.Record, error) {
		<-release2
		return fulfill.Record{SessionID: id, State: fulfill.StateFulfilled}, nil
	}})
	s2.Wait = 20 * time.Millisecond
	code, body := serve(t, s2, http.MethodPost, "/fulfill/cs_test_new")
	if code != http.StatusAccepted || body["session_id"] != "cs_test_new" || body["state"] != "pending" {
		t.Errorf("POST of a slow fulfillment with no record yet = %d %v, want 202 pending", code, body)
	}
}

// The unauthenticated landing-page endpoint bounds the fulfillments it
// starts: past MaxInFlight it answers 503 with Retry-After instead of
// piling up goroutines and Stripe calls; a panic in one is a 503 for that
// request, not a crashed daemon.
func TestLandingPageIsBounded(t *testing.T) {
	release := make(chan struct{})
	f := &fakeFulfiller{fn: func(ctx context.Context, id string) (fulfill.Record, error) {
		if id == "cs_panics" {
			panic("a bug somewhere below")
		}
		<-release
		return fulfill.Record{SessionID: id, State: fulfill.StateFulfilled}, nil
	}}
	srv, _ := newServer(t, f)
	srv.MaxInFlight = 2
	srv.Wait = 50 * time.Millisecond
	h := srv.Handler()
	post := func(id string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/fulfill/"+id, nil))
		return rec
	}
	for _, id := range []string{"cs_a", "cs_b"} {
		if got := post(id).Code; got != http.StatusAccepted {
			t.Fatalf("POST %s while its action runs: %d, want 202", id, got)
		}
	}
	busy := post("cs_c")
	if busy.Code != http.StatusServiceUnavailable || busy.Header().Get("Retry-After") == "" {
		t.Fatalf("third POST with two in flight: %d (Retry-After %q), want 503 with Retry-After", busy.Code, busy.Header().Get("Retry-After"))
	}
	close(release)
	// The slots come back when the running fulfillments end.
	deadline := time.Now().Add(5 * time.Second)
	for post("cs_d").Code != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("slots never came back after the fulfillments ended")
		}
		runtime.Gosched()
	}
	if got := post("cs_panics").Code; got != http.StatusServiceUnavailable {
		t.Fatalf("a panicking fulfillment: %d, want 503", got)
	}
}

// TestLandingPageWhileStopping: once the daemon is stopping, a landing page
// is told to come back instead of starting an action that the shutdown
// would cut off and the next start would repeat.
func TestLandingPageWhileStopping(t *testing.T) {
	t.Parallel()
	called := false
	s, _ := newServer(t, &fakeFulfiller{fn: func(context.Context, string) (fulfill.Record, error) {
		called = true
		return fulfill.Record{}, nil
	}})
	s.Stopping.Store(true)
	rr := httptest.NewRecorder()
	s.Handler().ServeHTTP(rr, httptest.NewRequest(http.MethodPost, "/fulfill/cs_test_1", nil))
	if rr.Code != http.StatusServiceUnavailable || rr.Header().Get("Retry-After") == "" || called {
		t.Errorf("POST while stopping = %d (Retry-After %q), fulfiller called %v; want 503 with Retry-After and no attempt",
			rr.Code, rr.Header().Get("Retry-After"), called)
	}
}

// POST /fulfill/pi_… is the landing page of a Payment Element payment:
// the same path, answered the same way; while fulfill.payment_intents is
// off the PaymentIntent is not fulfilled on its own, which is a 404.
func TestLandingPagePaymentIntent(t *testing.T) {
	t.Parallel()
	const pi = "pi_3PaymentElement0001"
	tests := []struct {
		name  string
		err   error
		code  int
		state string
	}{
		{name: "fulfilled", code: http.StatusOK, state: "fulfilled"},
		{name: "payment_intents off", err: fulfill.ErrIntentsOff, code: http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, _ := newServer(t, &fakeFulfiller{fn: func(_ context.Context, id string) (fulfill.Record, error) {
				if tt.err != nil {
					return fulfill.Record{}, tt.err
				}
				return fulfill.Record{SessionID: id, Object: fulfill.ObjectPaymentIntent, State: fulfill.StateFulfilled, Attempts: 1}, nil
			}})
			code, body := serve(t, s, http.MethodPost, "/fulfill/"+pi)
			if code != tt.code || tt.state != "" && (body["state"] != tt.state || body["session_id"] != pi) {
				t.Errorf("POST /fulfill/%s = %d %v, want %d %s", pi, code, body, tt.code, tt.state)
			}
		})
	}
}
