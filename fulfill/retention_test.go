package fulfill_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/storetest"
)

// TestRetentionNeverRepeats: a fulfilled session pruned to a tombstone
// keeps no output, and every trigger that comes after — the same event
// listed again by a backfill, a sweep, a person — still finds it fulfilled
// and runs nothing.
func TestRetentionNeverRepeats(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := storetest.Open(t)
	enqueue(t, db, now, "cs_old")
	act := &runsAction{}
	f := &fulfill.Fulfiller{DB: store.As[fulfill.Tx](db), Sessions: &paidSource{}, Action: act, MaxAttempts: 3, Concurrency: 1, Now: func() time.Time { return now }}
	if _, err := f.Fulfill(t.Context(), "cs_old", fulfill.TriggerEvent, "evt_cs_old"); err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx store.Tx) error {
		rec, _, _ := tx.Session("cs_old")
		rec.Output = "shipped to Jane Doe, 1 Main St" // customer data in the kept output
		return tx.PutSession(rec)
	}); err != nil {
		t.Fatal(err)
	}

	later := now.Add(91 * 24 * time.Hour)
	var pruned int
	if err := db.Update(func(tx store.Tx) (err error) {
		pruned, _, err = fulfill.Prune(tx, later.Add(-90*24*time.Hour), 100, true)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	rec := stateOf(t, db, "cs_old")
	if pruned != 1 || !rec.Pruned || rec.Output != "" || rec.State != fulfill.StateFulfilled {
		t.Fatalf("after retention (%d pruned): %+v; want a fulfilled tombstone without output", pruned, rec)
	}

	// The event listed again (run --since, reconcile --since).
	var queued bool
	if err := db.Update(func(tx store.Tx) (err error) {
		queued, err = fulfill.Enqueue(tx, fulfill.Request{SessionID: "cs_old", EventID: "evt_cs_old", Trigger: fulfill.TriggerEvent, At: later})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	f.Now = func() time.Time { return later }
	for _, trigger := range []string{fulfill.TriggerReconcile, fulfill.TriggerHTTP, fulfill.TriggerManual} {
		if _, err := f.Fulfill(t.Context(), "cs_old", trigger, ""); err != nil {
			t.Fatal(err)
		}
	}
	if queued || act.count("cs_old") != 1 {
		t.Errorf("after retention: queued again %v, action ran %d times; want not queued, once in all", queued, act.count("cs_old"))
	}
}

// TestRetriedTombstoneIsPrunedAgain: a dead letter pruned to a tombstone,
// then retried and fulfilled, keeps new output; retention prunes it again.
func TestRetriedTombstoneIsPrunedAgain(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := storetest.Open(t)
	prune := func(at time.Time) int {
		var n int
		if err := db.Update(func(tx store.Tx) (err error) { n, _, err = fulfill.Prune(tx, at, 100, true); return err }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if err := db.Update(func(tx store.Tx) error {
		return tx.PutSession(fulfill.Record{SessionID: "cs_dead", State: fulfill.StateFailed, Attempts: 8,
			LastError: "exit 1", Output: "card for Jane Doe", Created: now, Updated: now})
	}); err != nil {
		t.Fatal(err)
	}
	if n := prune(now.Add(time.Hour)); n != 1 {
		t.Fatalf("pruned %d, want the dead letter", n)
	}
	later := now.Add(100 * 24 * time.Hour)
	if err := db.Update(func(tx store.Tx) error { _, err := fulfill.Retry(tx, later, "cs_dead"); return err }); err != nil {
		t.Fatal(err)
	}
	f := &fulfill.Fulfiller{DB: store.As[fulfill.Tx](db), Sessions: &paidSource{}, Action: &runsAction{}, MaxAttempts: 3,
		Concurrency: 1, Now: func() time.Time { return later }}
	if _, err := f.Fulfill(t.Context(), "cs_dead", fulfill.TriggerManual, ""); err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx store.Tx) error {
		rec, _, _ := tx.Session("cs_dead")
		rec.Output = "shipped to Jane Doe"
		return tx.PutSession(rec)
	}); err != nil {
		t.Fatal(err)
	}
	if n := prune(later.Add(time.Hour)); n != 1 {
		t.Errorf("retention pruned %d after the retried session settled again, want 1", n)
	}
	if rec := stateOf(t, db, "cs_dead"); rec.Output != "" || rec.State != fulfill.StateFulfilled {
		t.Errorf("after the second retention: %+v; want a fulfilled tombstone", rec)
	}
}

// TestPruneSkipsAnUnreadableRecord: one record that cannot be read does not
// stop retention for every record settled after it.
func TestPruneSkipsAnUnreadableRecord(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := storetest.Open(t)
	if err := db.Update(func(tx store.Tx) error {
		for i := range 3 {
			if err := tx.PutSession(fulfill.Record{SessionID: fmt.Sprintf("cs_%d", i), State: fulfill.StateFulfilled,
				Output: "pii", Updated: now.Add(time.Duration(i) * time.Minute)}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.Update(func(tx store.Tx) (err error) {
		n, _, err = fulfill.Prune(badSession{Tx: tx, bad: "cs_0"}, now.Add(time.Hour), 100, true)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n != 2 || stateOf(t, db, "cs_2").Output != "" {
		t.Errorf("pruned %d with cs_0 unreadable, want the other 2", n)
	}
	if err := db.Update(func(tx store.Tx) (err error) {
		n, _, err = fulfill.Prune(tx, now.Add(time.Hour), 100, true)
		return err
	}); err != nil || n != 0 {
		t.Errorf("a second run pruned %d (%v): the unreadable one is passed over once, not at every run", n, err)
	}
}

// badSession is the storage boundary with one session record that cannot
// be read.
type badSession struct {
	store.Tx
	bad string
}

func (b badSession) Session(id string) (fulfill.Record, bool, error) {
	if id == b.bad {
		return fulfill.Record{}, false, errors.New("read record of " + id + ": unexpected end of JSON input")
	}
	return b.Tx.Session(id)
}

// TestRetryFailedSkipsPrunedNotifications: `retry --failed` requeues every
// dead letter that can still be delivered, even when a notification whose
// body retention removed is among them.
func TestRetryFailedSkipsPrunedNotifications(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := storetest.Open(t)
	if err := db.Update(func(tx store.Tx) error {
		if err := tx.PutSession(fulfill.Record{SessionID: "cs_dead", State: fulfill.StateFailed, Updated: now}); err != nil {
			return err
		}
		return tx.PutEventDelivery(fulfill.EventDelivery{Destination: fulfill.DestNotify, EventID: "evt_old",
			State: fulfill.DeliveryFailed, Updated: now, Pruned: true})
	}); err != nil {
		t.Fatal(err)
	}
	var sessions, notes []string
	if err := db.Update(func(tx store.Tx) (err error) {
		if sessions, err = fulfill.Retry(tx, now); err != nil {
			return err
		}
		notes, err = fulfill.RetryDeliveries(tx, now)
		return err
	}); err != nil {
		t.Fatalf("retry --failed: %v", err)
	}
	if len(sessions) != 1 || len(notes) != 0 {
		t.Errorf("requeued sessions %v and notifications %v; want cs_dead and none", sessions, notes)
	}
}

// TestRetentionForgetsWhatPreventsNothing: past Stripe's 30 days of events,
// a session that ended unpaid and a sent notification are deleted, not kept
// as tombstones; a fulfilled session stays and still stops a repeat.
func TestRetentionForgetsWhatPreventsNothing(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := storetest.Open(t)
	if err := db.Update(func(tx store.Tx) error {
		for _, r := range []fulfill.Record{
			{SessionID: "cs_paid", State: fulfill.StateFulfilled, Output: "pii", FulfilledAt: now, Updated: now},
			{SessionID: "cs_gone", State: fulfill.StateExpired, Updated: now},
		} {
			if err := tx.PutSession(r); err != nil {
				return err
			}
		}
		return tx.PutEventDelivery(fulfill.EventDelivery{Destination: fulfill.DestNotify, EventID: "evt_1",
			State: fulfill.DeliverySent, Updated: now})
	}); err != nil {
		t.Fatal(err)
	}
	later := now.Add(91 * 24 * time.Hour)
	if _, err := fulfill.PruneSettled(t.Context(), store.As[fulfill.Tx](db), later.Add(-90*24*time.Hour), true); err != nil {
		t.Fatal(err)
	}
	if err := db.View(func(tx store.Tx) error {
		_, expired, _ := tx.Session("cs_gone")
		_, note, _ := tx.EventDelivery(fulfill.DeliveryKey(fulfill.DestNotify, "evt_1"))
		paid, kept, _ := tx.Session("cs_paid")
		c, _ := tx.Counts()
		if expired || note || !kept || !paid.Pruned || paid.Output != "" || c.Sessions[fulfill.StateExpired] != 0 ||
			c.Sessions[fulfill.StateFulfilled] != 1 {
			t.Errorf("after retention: expired session kept %v, notification kept %v, fulfilled %+v (kept %v), counts %+v",
				expired, note, paid, kept, c.Sessions)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
