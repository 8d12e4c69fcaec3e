package fulfill

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

func openTestDB(t *testing.T) *bbolt.DB {
	t.Helper()
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "f.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Update(Init); err != nil {
		t.Fatal(err)
	}
	return db
}

// racingSource answers like Stripe but, while "on the wire", lets the test
// record an event the way the poller would, in its own transaction.
type racingSource struct {
	db      *bbolt.DB
	during  func(tx *bbolt.Tx) error
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

func (a *countingAction) Deliver(context.Context, Delivery) (Outcome, error) {
	a.runs++
	return Outcome{}, nil
}

// An event recorded while an attempt is reading the session from Stripe is
// not overwritten by the attempt's stale view.
func TestEventsDuringAnAttemptAreNotLost(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		during  func(tx *bbolt.Tx) error
		answers []string
		want    State
		runs    int
	}{
		{
			name: "async payment failed while the completed event was being read",
			during: func(tx *bbolt.Tx) error {
				_, err := End(tx, "cs_1", StatePaymentFailed, "evt_failed", now)
				return err
			},
			answers: []string{"unpaid"},
			want:    StatePaymentFailed,
		},
		{
			name: "async payment succeeded while the completed event was being read",
			during: func(tx *bbolt.Tx) error {
				_, err := Enqueue(tx, Request{SessionID: "cs_1", EventID: "evt_paid", Trigger: TriggerEvent, At: now})
				return err
			},
			answers: []string{"unpaid", "paid"},
			want:    StateFulfilled,
			runs:    1,
		},
		{
			name:    "nothing happened meanwhile",
			answers: []string{"unpaid"},
			want:    StateAwaitingPayment,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openTestDB(t)
			src := &racingSource{db: db, during: tt.during, answers: tt.answers}
			act := &countingAction{}
			f := &Fulfiller{DB: db, Sessions: src, Action: act, MaxAttempts: 3, Concurrency: 2, Now: func() time.Time { return now }}
			if err := db.Update(func(tx *bbolt.Tx) error {
				_, err := Enqueue(tx, Request{SessionID: "cs_1", EventID: "evt_completed", Trigger: TriggerEvent, At: now})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			wake := make(chan struct{})
			close(wake)
			if _, err := f.Run(context.Background(), RunOptions{Wake: wake, UntilIdle: true}); err != nil {
				t.Fatal(err)
			}
			var rec Record
			_ = db.View(func(tx *bbolt.Tx) (err error) { rec, _, err = Get(tx, "cs_1"); return err })
			if rec.State != tt.want || act.runs != tt.runs {
				t.Fatalf("state %s after %d action runs, want %s after %d", rec.State, act.runs, tt.want, tt.runs)
			}
		})
	}
}
