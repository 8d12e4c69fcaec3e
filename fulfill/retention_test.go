package fulfill_test

import (
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
		pruned, _, err = fulfill.Prune(tx, later.Add(-90*24*time.Hour), 100)
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
