package fulfill

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// snapshot is everything the kept counters and indexes answer.
type snapshot struct {
	Summary        Summary
	Notifications  map[string]int
	FailedSessions []string
	FailedNotes    []string
}

func takeSnapshot(t *testing.T, tx *bbolt.Tx) snapshot {
	t.Helper()
	sum, err := Summarize(tx)
	if err != nil {
		t.Fatal(err)
	}
	notes, _, err := NotifySummary(tx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range sum.PaymentIntents {
		if v == 0 {
			delete(sum.PaymentIntents, k)
		}
	}
	return snapshot{Summary: sum, Notifications: notes,
		FailedSessions: recentFailed(tx, kindSession, 0), FailedNotes: recentFailed(tx, kindNotification, 0)}
}

// TestCountersMatchARecount: after a random mix of every transition a
// record can take — queued, ended, awaiting, attempted, fulfilled,
// dead-lettered, retried, pruned; notifications sent and failed;
// PaymentIntent statuses — and transactions that failed half-way (a crash,
// as far as bbolt is concerned: nothing of them is kept), the kept counts
// equal a count made from the records themselves.
func TestCountersMatchARecount(t *testing.T) {
	for seed := range uint64(5) {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			db := openTestDB(t)
			rng := rand.New(rand.NewPCG(seed, 42))
			now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
			errCrash := errors.New("crash half-way")
			for step := range 3000 {
				now = now.Add(time.Duration(rng.IntN(120)) * time.Second)
				id := fmt.Sprintf("cs_%d", rng.IntN(60))
				evt := fmt.Sprintf("evt_%d", rng.IntN(60))
				crash := rng.IntN(10) == 0
				err := db.Update(func(tx *bbolt.Tx) error {
					var err error
					switch rng.IntN(11) {
					case 0, 1:
						_, err = Enqueue(tx, Request{SessionID: id, EventID: evt, Trigger: TriggerEvent, At: now, Recovered: rng.IntN(4) == 0})
					case 2:
						_, err = End(tx, id, []State{StatePaymentFailed, StateExpired}[rng.IntN(2)], evt, now)
					case 3:
						err = Await(tx, id, now)
					case 4, 5: // an attempt starts, or ends
						rec, ok, gerr := Get(tx, id)
						if gerr != nil || !ok {
							return gerr
						}
						rec.Updated = now
						switch rng.IntN(4) {
						case 0:
							rec.InFlight, rec.Attempts = true, rec.Attempts+1
						case 1:
							rec.InFlight, rec.State, rec.FulfilledAt, rec.Output = false, StateFulfilled, now, "shipped"
						case 2:
							rec.InFlight, rec.State, rec.LastError = false, StateFailed, "exit 1"
						default:
							rec.InFlight = false
						}
						err = put(tx, rec)
					case 6:
						_, err = Retry(tx, now, id)
						if err != nil {
							err = nil // not failed: refused, nothing changed
						}
					case 7:
						_, err = EnqueueNotification(tx, evt, "checkout.session.expired", []byte(`{"id":"`+evt+`"}`), now)
					case 8:
						n, ok, gerr := GetNotification(tx, evt)
						if gerr != nil || !ok {
							return gerr
						}
						n.State, n.Updated = []string{NotifySent, NotifyFailed, NotifyPending}[rng.IntN(3)], now
						err = putNotification(tx, n)
					case 9:
						err = RecordPaymentIntent(tx, PaymentIntent{ID: "pi_" + id, EventID: evt, At: now,
							Status: []string{"succeeded", "processing", "requires_payment_method", "canceled"}[rng.IntN(4)]})
					case 10:
						_, _, err = Prune(tx, now.Add(-time.Hour), 5)
					}
					if err == nil && crash {
						return errCrash
					}
					return err
				})
				if err != nil && !errors.Is(err, errCrash) {
					t.Fatalf("step %d: %v", step, err)
				}
			}
			var kept, recounted snapshot
			if err := db.Update(func(tx *bbolt.Tx) error {
				kept = takeSnapshot(t, tx)
				if err := Recount(tx); err != nil {
					return err
				}
				recounted = takeSnapshot(t, tx)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(kept, recounted) {
				t.Errorf("kept counts differ from a recount:\nkept      %+v\nrecounted %+v", kept, recounted)
			}
			if kept.Summary.Sessions[StateFulfilled] == 0 || kept.Notifications[NotifySent] == 0 || len(kept.FailedSessions) == 0 {
				t.Errorf("the mix did not reach every state: %+v", kept)
			}
		})
	}
}

// TestRetentionNeverRepeats: a fulfilled session pruned to a tombstone
// keeps no output, and every trigger that comes after — the same event
// listed again by a backfill, a sweep, a person — still finds it fulfilled
// and runs nothing.
func TestRetentionNeverRepeats(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	enqueue(t, db, now, "cs_old")
	act := &runsAction{}
	f := &Fulfiller{DB: db, Sessions: &paidSource{}, Action: act, MaxAttempts: 3, Concurrency: 1, Now: func() time.Time { return now }}
	if _, err := f.Fulfill(t.Context(), "cs_old", TriggerEvent, "evt_cs_old"); err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		rec, _, _ := Get(tx, "cs_old")
		rec.Output = "shipped to Jane Doe, 1 Main St" // customer data in the kept output
		return put(tx, rec)
	}); err != nil {
		t.Fatal(err)
	}

	later := now.Add(91 * 24 * time.Hour)
	var pruned int
	if err := db.Update(func(tx *bbolt.Tx) (err error) {
		pruned, _, err = Prune(tx, later.Add(-90*24*time.Hour), 100)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	rec := stateOf(t, db, "cs_old")
	if pruned != 1 || !rec.Pruned || rec.Output != "" || rec.State != StateFulfilled {
		t.Fatalf("after retention (%d pruned): %+v; want a fulfilled tombstone without output", pruned, rec)
	}

	// The event listed again (run --since, reconcile --since).
	var queued bool
	if err := db.Update(func(tx *bbolt.Tx) (err error) {
		queued, err = Enqueue(tx, Request{SessionID: "cs_old", EventID: "evt_cs_old", Trigger: TriggerEvent, At: later})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	f.Now = func() time.Time { return later }
	for _, trigger := range []string{TriggerReconcile, TriggerHTTP, TriggerManual} {
		if _, err := f.Fulfill(t.Context(), "cs_old", trigger, ""); err != nil {
			t.Fatal(err)
		}
	}
	if queued || act.count("cs_old") != 1 {
		t.Errorf("after retention: queued again %v, action ran %d times; want not queued, once in all", queued, act.count("cs_old"))
	}
}
