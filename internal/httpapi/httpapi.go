// Package httpapi serves http.listen: /metrics for Prometheus, /healthz and
// /readyz for supervisors, and POST /fulfill/{session_id} for a landing
// page that wants its order fulfilled now rather than at the next poll.
package httpapi

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/status"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// Fulfiller is the one idempotent fulfillment path.
type Fulfiller interface {
	Fulfill(ctx context.Context, sessionID, trigger, eventID string) (fulfill.Record, error)
}

// Server answers the endpoints. Ready is set by the daemon once its first
// poll completed.
type Server struct {
	DB       status.Store
	Registry *prometheus.Registry
	Fulfill  Fulfiller
	// Work is the daemon's context: a fulfillment started by a request
	// goes on when the request ends, until the daemon stops.
	Work context.Context
	// MaxPollAge: /healthz fails when the last successful poll is older.
	MaxPollAge time.Duration
	// MinHorizon: /healthz fails when complete_until is closer than this to
	// Stripe's 30-day retention.
	MinHorizon time.Duration
	// Wait bounds how long POST /fulfill waits for the result before it
	// answers 202 with the record as it stands.
	Wait time.Duration
	// Now is the host's clock; the status model applies the skew to
	// Stripe's.
	Now    func() time.Time
	Logger *slog.Logger
	Ready  atomic.Bool
	// Stopping is set by a daemon that is shutting down: POST /fulfill is
	// answered 503 instead of starting an action the shutdown would cut
	// off.
	Stopping atomic.Bool
	// Store, when set, says whether the store takes writes (nil error) or
	// why not; /healthz fails while it does not.
	Store interface{ Err() error }
	// MaxInFlight bounds the landing-page fulfillments running at once
	// (default 16): the endpoint is unauthenticated, and each one costs a
	// Stripe request that the queue's own retrieves need too.
	MaxInFlight int
	// Poke, when set, is told that a landing page asked for a fulfilment:
	// orders are coming in, so the daemon polls at schedule again.
	Poke func()

	slotsOnce sync.Once
	slots     chan struct{}
	// running counts landing-page fulfillments still going after their
	// request was answered; Drain waits for them.
	running sync.WaitGroup
}

// Drain waits until every landing-page fulfillment has ended or ctx ends.
// A daemon that stops calls it before it cancels Work, so that an action
// the landing page started gets the same shutdown grace as queued ones and
// its result is recorded, not repeated on the next start.
func (s *Server) Drain(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.running.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Handler routes the endpoints.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("POST /fulfill/{session_id}", s.fulfill)
	return mux
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Health is what /healthz answers.
type Health struct {
	Status   string   `json:"status"` // "ok" or "unhealthy"
	Problems []string `json:"problems,omitempty"`
}

// Check judges the daemon's health from the status model.
func (s *Server) Check() Health {
	var problems []string
	st, err := status.Read(s.DB, s.now())
	switch {
	case err != nil:
		problems = append(problems, "store: "+err.Error())
	case st.LastPoll == nil || st.LastPoll.LastSuccess.IsZero():
		problems = append(problems, "no successful poll yet")
	case st.LastPoll.LastSuccessAge > s.MaxPollAge.Seconds():
		problems = append(problems, fmt.Sprintf("last successful poll %s ago (limit %s); last error: %s",
			(time.Duration(st.LastPoll.LastSuccessAge)*time.Second).Round(time.Second), s.MaxPollAge, st.LastPoll.Error))
	}
	if err == nil && st.Cursor.Started {
		if left := time.Duration(st.Cursor.HorizonSeconds * float64(time.Second)); left < s.MinHorizon {
			problems = append(problems, fmt.Sprintf("complete_until falls out of Stripe's 30-day retention in %s", left.Round(time.Minute)))
		}
	}
	if s.Store != nil {
		if err := s.Store.Err(); err != nil {
			problems = append(problems, "store: "+err.Error())
		}
	}
	if len(problems) > 0 {
		return Health{Status: "unhealthy", Problems: problems}
	}
	return Health{Status: "ok"}
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	h := s.Check()
	code := http.StatusOK
	if h.Status != "ok" {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, h)
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if !s.Ready.Load() {
		writeJSON(w, http.StatusServiceUnavailable, Health{Status: "starting", Problems: []string{"first poll not complete"}})
		return
	}
	writeJSON(w, http.StatusOK, Health{Status: "ok"})
}

// fulfill runs the landing-page trigger. The fulfillment runs on the
// daemon's context, so a client that gives up does not cut the action off;
// the answer comes when it ends or after Wait, whichever is first.
func (s *Server) fulfill(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("session_id")
	if !strings.HasPrefix(id, "cs_") && !fulfill.IsPaymentIntentID(id) || len(id) > 255 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "not a Checkout Session id (cs_…) or a PaymentIntent id (pi_…)"})
		return
	}
	if s.Stopping.Load() {
		w.Header().Set("Retry-After", "30")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "shutting down; try again shortly (the order is fulfilled by the poller in any case)"})
		return
	}
	if s.Poke != nil {
		s.Poke()
	}
	s.slotsOnce.Do(func() { s.slots = make(chan struct{}, cmp.Or(s.MaxInFlight, 16)) })
	select {
	case s.slots <- struct{}{}:
	default:
		w.Header().Set("Retry-After", "2")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "busy; try again shortly (the order is fulfilled by the poller in any case)"})
		return
	}
	type result struct {
		rec fulfill.Record
		err error
	}
	done := make(chan result, 1)
	s.running.Add(1)
	go func() {
		defer s.running.Done()
		defer func() { <-s.slots }()
		defer func() {
			if r := recover(); r != nil {
				if s.Logger != nil {
					s.Logger.Error("landing-page fulfillment panicked", "session", id, "panic", r, "stack", string(debug.Stack()))
				}
				done <- result{err: fmt.Errorf("fulfillment of %s panicked", id)}
			}
		}()
		rec, err := s.Fulfill.Fulfill(s.Work, id, fulfill.TriggerHTTP, "")
		done <- result{rec, err}
	}()
	timer := time.NewTimer(s.Wait)
	defer timer.Stop()
	select {
	case res := <-done:
		switch {
		case res.err == nil || res.rec.SessionID != "" && !errors.Is(res.err, context.Canceled):
			writeJSON(w, http.StatusOK, answer(res.rec))
		case errors.Is(res.err, stripeapi.ErrNotFound):
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such checkout session or payment intent"})
		case errors.Is(res.err, fulfill.ErrIntentsOff):
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "PaymentIntents are fulfilled through their Checkout Session here (fulfill.payment_intents is off)"})
		default:
			if s.Logger != nil {
				s.Logger.Warn("landing-page fulfillment did not complete", "session", id, "err", res.err)
			}
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "fulfillment could not be attempted now; it will be retried"})
		}
	case <-timer.C:
		var rec fulfill.Record
		_ = s.DB.View(func(tx store.Tx) (err error) { rec, _, err = fulfill.Get(tx, id); return err })
		if rec.SessionID == "" {
			rec = fulfill.Record{SessionID: id, State: fulfill.StatePending}
		}
		writeJSON(w, http.StatusAccepted, answer(rec))
	}
}

// Answer is what POST /fulfill tells a landing page: the outcome, not the
// action's output or errors (the endpoint has no authentication; operators
// read those with `fulfilld status`).
type Answer struct {
	SessionID   string    `json:"session_id"`
	State       string    `json:"state"`
	Attempts    int       `json:"attempts"`
	FulfilledAt time.Time `json:"fulfilled_at,omitzero"`
}

func answer(rec fulfill.Record) Answer {
	return Answer{SessionID: rec.SessionID, State: string(rec.State), Attempts: rec.Attempts, FulfilledAt: rec.FulfilledAt}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
