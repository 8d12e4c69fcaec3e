package fulfill_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/store/storetest"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// openTestDB is a real store in t.TempDir().
func openTestDB(t *testing.T) *boltstore.Store { return storetest.Open(t) }

// ledger is the store as the fulfiller sees it.
// ledger is the store as the daemon's fulfiller sees a bbolt file: the
// attempts' starts and results share commits (store.AsGrouped).
func ledger(db *boltstore.Store) fulfill.DB { return store.AsGrouped[fulfill.Tx](db) }

// racingSource answers like Stripe but, while "on the wire", lets the test
// record an event the way the poller would, in its own transaction.
type racingSource struct {
	db      *boltstore.Store
	during  func(tx store.Tx) error
	answers []string // payment_status per call
	calls   int
}

func (s *racingSource) GetSession(_ context.Context, id string) (*stripeapi.Session, error) {
	status := s.answers[min(s.calls, len(s.answers)-1)]
	s.calls++
	if s.during != nil {
		during := s.during
		s.during = nil
		if err := s.db.Update(during); err != nil {
			return nil, err
		}
	}
	return &stripeapi.Session{ID: id, Status: "complete", PaymentStatus: status, JSON: []byte(`{}`)}, nil
}

type countingAction struct{ runs int }

func (a *countingAction) Deliver(context.Context, fulfill.Delivery) (fulfill.Outcome, error) {
	a.runs++
	return fulfill.Outcome{}, nil
}

// An event recorded while an attempt is reading the session from Stripe is
// not overwritten by the attempt's stale view.
func TestEventsDuringAnAttemptAreNotLost(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		during  func(tx store.Tx) error
		answers []string
		want    fulfill.State
		runs    int
	}{
		{
			name: "async payment failed while the completed event was being read",
			during: func(tx store.Tx) error {
				_, err := fulfill.End(tx, "cs_1", fulfill.StatePaymentFailed, "evt_failed", now)
				return err
			},
			answers: []string{"unpaid"},
			want:    fulfill.StatePaymentFailed,
		},
		{
			name: "async payment succeeded while the completed event was being read",
			during: func(tx store.Tx) error {
				_, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: "cs_1", EventID: "evt_paid", Trigger: fulfill.TriggerEvent, At: now})
				return err
			},
			answers: []string{"unpaid", "paid"},
			want:    fulfill.StateFulfilled,
			runs:    1,
		},
		{
			name:    "nothing happened meanwhile",
			answers: []string{"unpaid"},
			want:    fulfill.StateAwaitingPayment,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openTestDB(t)
			src := &racingSource{db: db, during: tt.during, answers: tt.answers}
			act := &countingAction{}
			f := &fulfill.Fulfiller{DB: ledger(db), Sessions: src, Action: act, MaxAttempts: 3, Concurrency: 2, Now: func() time.Time { return now }}
			if err := db.Update(func(tx store.Tx) error {
				_, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: "cs_1", EventID: "evt_completed", Trigger: fulfill.TriggerEvent, At: now})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			wake := make(chan struct{})
			close(wake)
			if _, err := f.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true}); err != nil {
				t.Fatal(err)
			}
			var rec fulfill.Record
			_ = db.View(func(tx store.Tx) (err error) { rec, _, err = fulfill.Get(tx, "cs_1"); return err })
			if rec.State != tt.want || act.runs != tt.runs {
				t.Fatalf("state %s after %d action runs, want %s after %d", rec.State, act.runs, tt.want, tt.runs)
			}
		})
	}
}

// envAction records the FULFILLD_* environment of each attempt, and panics
// when asked to.
type envAction struct {
	envs  []map[string]string
	panic bool
}

func (a *envAction) Deliver(_ context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	if a.panic {
		a.panic = false
		panic("the action's code has a bug")
	}
	env := map[string]string{}
	for _, kv := range d.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	a.envs = append(a.envs, env)
	return fulfill.Outcome{}, nil
}

// FULFILLD_EVENT_ID names the event that asked for the attempt, and is empty
// when a person asked, even for a session an event queued first.
func TestEventIDOnlyWhenAnEventAsked(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		trigger, wantEvent string
	}{
		{fulfill.TriggerEvent, "evt_completed"},
		{fulfill.TriggerManual, ""},
		{fulfill.TriggerHTTP, ""},
	} {
		t.Run(tt.trigger, func(t *testing.T) {
			db := openTestDB(t)
			act := &envAction{}
			f := &fulfill.Fulfiller{DB: ledger(db), Sessions: &racingSource{answers: []string{"paid"}}, Action: act, MaxAttempts: 3,
				Concurrency: 1, Now: func() time.Time { return now }}
			if err := db.Update(func(tx store.Tx) error {
				_, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: "cs_1", EventID: "evt_completed", Trigger: fulfill.TriggerEvent, At: now})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Fulfill(context.Background(), "cs_1", tt.trigger, ""); err != nil {
				t.Fatal(err)
			}
			if len(act.envs) != 1 || act.envs[0]["FULFILLD_EVENT_ID"] != tt.wantEvent || act.envs[0]["FULFILLD_TRIGGER"] != tt.trigger {
				t.Fatalf("environment %v, want FULFILLD_EVENT_ID=%q", act.envs, tt.wantEvent)
			}
		})
	}
}

// A panic in one attempt does not stop the queue: the others are fulfilled
// and the panicking one stays queued for another attempt.
func TestPanicInOneAttemptDoesNotStopTheQueue(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	act := &envAction{panic: true}
	f := &fulfill.Fulfiller{DB: ledger(db), Sessions: &racingSource{answers: []string{"paid"}}, Action: act, MaxAttempts: 3,
		Concurrency: 1, Now: func() time.Time { return now }}
	if err := db.Update(func(tx store.Tx) error {
		for _, id := range []string{"cs_1", "cs_2", "cs_3"} {
			if _, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: id, EventID: "evt_" + id, Trigger: fulfill.TriggerEvent, At: now}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wake := make(chan struct{})
	close(wake)
	if _, err := f.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true}); err != nil {
		t.Fatal(err)
	}
	if len(act.envs) != 2 {
		t.Fatalf("%d sessions fulfilled after one attempt panicked, want the other 2", len(act.envs))
	}
	// Offered again a minute later, not after the 24 h in-flight lease.
	var next time.Time
	_ = db.View(func(tx store.Tx) (err error) {
		next, err = tx.NextDue(fulfill.SessionQueue, nil)
		return err
	})
	if !next.Equal(now.Add(time.Minute)) { // panicRetry
		t.Fatalf("the panicked attempt is due %s, want %s", next, now.Add(time.Minute))
	}
	if n, err := f.Recover(); err != nil || n != 1 {
		t.Fatalf("recover after the panic: %d in flight, %v; want the panicked one", n, err)
	}
}

// panickySource is Stripe answering something that makes reading it panic
// for one session, with one retrieve slot in all.
type panickySource struct{ bad string }

func (panickySource) RetrieveConcurrency() int { return 1 }
func (s panickySource) GetSession(_ context.Context, id string) (*stripeapi.Session, error) {
	if id == s.bad {
		panic("index out of range reading line_items")
	}
	return &stripeapi.Session{ID: id, Status: "complete", PaymentStatus: "paid", JSON: []byte(`{}`)}, nil
}

// A retrieve that panics gives its slot back: with one slot, a leak would
// leave every later session waiting forever (found by review).
func TestPanickingRetrieveDoesNotWedgeTheQueue(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	act := &envAction{}
	f := &fulfill.Fulfiller{DB: ledger(db), Sessions: panickySource{bad: "cs_bad"}, Action: act, MaxAttempts: 3,
		Concurrency: 1, Now: func() time.Time { return now }}
	if err := db.Update(func(tx store.Tx) error {
		for _, id := range []string{"cs_bad", "cs_good1", "cs_good2"} {
			if _, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: id, Trigger: fulfill.TriggerEvent, At: now}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wake := make(chan struct{})
	close(wake)
	done := make(chan error, 1)
	go func() {
		_, err := f.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the queue is wedged: a panicking retrieve kept its slot")
	}
	if len(act.envs) != 2 {
		t.Fatalf("%d sessions fulfilled, want the 2 good ones", len(act.envs))
	}
}

// failingAction fails every attempt.
type failingAction struct{ runs int }

func (a *failingAction) Deliver(context.Context, fulfill.Delivery) (fulfill.Outcome, error) {
	a.runs++
	return fulfill.Outcome{}, errors.New("warehouse down")
}

// `retry` resets a dead letter's attempts while a manual attempt on it is
// reading Stripe: that attempt counts from the fresh start, so one more
// failure does not dead-letter the session again at once (found by review).
func TestRetryDuringAnAttemptKeepsTheFreshAttempts(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	act := &failingAction{}
	src := &racingSource{db: db, answers: []string{"paid"}}
	f := &fulfill.Fulfiller{DB: ledger(db), Sessions: src, Action: act, MaxAttempts: 3, Concurrency: 1,
		Now: func() time.Time { return now }, Backoff: func(int) time.Duration { return time.Minute }}
	if err := db.Update(func(tx store.Tx) error {
		_, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: "cs_1", EventID: "evt_1", Trigger: fulfill.TriggerEvent, At: now})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for range 3 { // dead-letter it
		_, _ = f.Fulfill(context.Background(), "cs_1", fulfill.TriggerEvent, "evt_1")
	}
	src.during = func(tx store.Tx) error {
		_, err := fulfill.Retry(tx, now, "cs_1")
		return err
	}
	rec, _ := f.Fulfill(context.Background(), "cs_1", fulfill.TriggerManual, "")
	if rec.State != fulfill.StatePending || rec.Attempts != 1 {
		t.Fatalf("after retry + one failed attempt: %s with %d attempts, want pending with 1", rec.State, rec.Attempts)
	}
}
