package fulfill_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// sizedSource is a Stripe client that suggests how many retrieves to keep in
// flight, and holds every retrieve until that many are in flight at once.
type sizedSource struct {
	inFlight int
	mu       sync.Mutex
	active   int
	peak     int
	full     chan struct{} // closed once inFlight retrieves were in flight together
}

func (s *sizedSource) RetrieveConcurrency() int { return s.inFlight }

func (s *sizedSource) GetSession(ctx context.Context, id string) (*stripeapi.Session, error) {
	s.mu.Lock()
	s.active++
	s.peak = max(s.peak, s.active)
	if s.active == s.inFlight {
		select {
		case <-s.full:
		default:
			close(s.full)
		}
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.active--
		s.mu.Unlock()
	}()
	select {
	case <-s.full:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &stripeapi.Session{ID: id, Status: "complete", PaymentStatus: "paid", JSON: []byte(`{}`)}, nil
}

// inFlightAction checks that each attempt was recorded in flight before it
// ran, and counts actions running at once.
type inFlightAction struct {
	t      *testing.T
	db     *boltstore.Store
	mu     sync.Mutex
	active int
	peak   int
	runs   map[string]int
}

func (a *inFlightAction) Deliver(_ context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	id := d.IdempotencyKey[len("fulfilld-"):]
	var rec fulfill.Record
	_ = a.db.View(func(tx store.Tx) (err error) { rec, _, err = fulfill.Get(tx, id); return err })
	if !rec.InFlight {
		a.t.Errorf("%s: the action ran before its attempt was recorded in flight", id)
	}
	a.mu.Lock()
	a.active++
	a.peak = max(a.peak, a.active)
	a.runs[id]++
	a.mu.Unlock()
	a.mu.Lock()
	a.active--
	a.mu.Unlock()
	return fulfill.Outcome{}, nil
}

// TestRetrievesArePrefetchedByBudget: the queue keeps as many retrieves in
// flight as the Stripe client suggests — not fulfill.concurrency — while the
// actions stay bounded by fulfill.concurrency, and each session is still
// fulfilled once.
func TestRetrievesArePrefetchedByBudget(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	src := &sizedSource{inFlight: 7, full: make(chan struct{})}
	act := &inFlightAction{t: t, db: db, runs: map[string]int{}}
	f := &fulfill.Fulfiller{DB: ledger(db), Sessions: src, Action: act, MaxAttempts: 3, Concurrency: 1, Now: func() time.Time { return now }}
	const n = 40
	if err := db.Update(func(tx store.Tx) error {
		for i := range n {
			if _, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: fmt.Sprintf("cs_%02d", i), Trigger: fulfill.TriggerEvent, At: now}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wake := make(chan struct{})
	close(wake)
	res, err := f.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Fulfilled != n {
		t.Errorf("fulfilled %d of %d", res.Fulfilled, n)
	}
	if src.peak != src.inFlight {
		t.Errorf("at most %d retrieves were in flight together, want the suggested %d", src.peak, src.inFlight)
	}
	if act.peak != 1 {
		t.Errorf("%d actions ran at once, want at most fulfill.concurrency (1)", act.peak)
	}
	for i := range n {
		if id := fmt.Sprintf("cs_%02d", i); act.runs[id] != 1 {
			t.Errorf("%s: action ran %d times", id, act.runs[id])
		}
	}
}
