package boltstore

import (
	"bytes"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/ledgerindex"
)

// bbolt's compact tombstone keeps exactly what ledgerindex.Tombstone says a
// pruned record keeps, so every backend reads a pruned record back alike.
func TestTombstoneKeepsWhatLedgerindexSays(t *testing.T) {
	at := time.Date(2026, 11, 20, 12, 0, 0, 123456789, time.FixedZone("x", 3600))
	for _, r := range []fulfill.Record{
		{SessionID: "cs_1", State: fulfill.StateFulfilled, Trigger: "event", EventID: "evt_1", Attempts: 2, Output: "shipped",
			LastError: "e", Seq: 9, Recovered: true, Created: at, Updated: at.Add(time.Hour), FulfilledAt: at.Add(time.Minute), Pruned: true},
		{SessionID: "pi_2", Object: fulfill.ObjectPaymentIntent, Owner: "cs_9", State: fulfill.StateOwned, Attempts: -1,
			Created: time.Unix(0, 0), Pruned: true},
		{SessionID: "cs_3", State: fulfill.StateExpired, Pruned: true},
	} {
		got, err := decodeTombstone(r.SessionID, encodeTombstone(r))
		if err != nil {
			t.Fatal(err)
		}
		if want := ledgerindex.Tombstone(r); !reflect.DeepEqual(got, want) {
			t.Errorf("tombstone of %s reads back as\n%+v\nledgerindex says\n%+v", r.SessionID, got, want)
		}
	}
}

// TestTombstonesApart: a pruned record moves to the tombstones bucket and
// a record that leaves its final state moves back (to sessions, or settled
// to session_log: "in sessions" below), with its counts; a
// tombstone a format 5 store left in sessions still keeps its session
// from running, and moves when it is written again. A session is never
// in both buckets.
func TestTombstonesApart(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "fulfilld.db"), false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	at := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	done := fulfill.Record{SessionID: "cs_done", State: fulfill.StateFulfilled, Attempts: 1, Output: "shipped", Created: at, Updated: at, FulfilledAt: at}
	old := fulfill.Record{SessionID: "cs_old", State: fulfill.StateFulfilled, Attempts: 1, Created: at, Updated: at, FulfilledAt: at, Pruned: true}
	put := func(r fulfill.Record) {
		t.Helper()
		if err := db.Update(func(tx store.Tx) error { return tx.PutSession(r) }); err != nil {
			t.Fatal(err)
		}
	}
	where := func(id string) (inSessions, inTombstones bool) {
		t.Helper()
		if err := db.db.View(func(tx *bbolt.Tx) error {
			inLog, err := (&Tx{tx: tx}).findLogged(sessionKind, id, func(v []byte) (bool, error) {
				got, _, err := sessionKind.read(v)
				return got == id, err
			})
			inSessions = tx.Bucket(bucketSessions).Get([]byte(id)) != nil
			if inLog != nil && inSessions {
				t.Errorf("%s both in sessions and in %s", id, sessionKind.log)
			}
			inSessions = inSessions || inLog != nil
			inTombstones = tx.Bucket(bucketTombstones).Get([]byte(id)) != nil
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return
	}
	expect := func(id string, wantPruned, wantSessions, wantTombstones bool, fulfilled int) {
		t.Helper()
		if s, tb := where(id); s != wantSessions || tb != wantTombstones {
			t.Errorf("%s in sessions %t, in tombstones %t; want %t, %t", id, s, tb, wantSessions, wantTombstones)
		}
		if err := db.View(func(tx store.Tx) error {
			r, ok, err := tx.Session(id)
			if err != nil || !ok || r.Pruned != wantPruned || r.State != fulfill.StateFulfilled {
				t.Errorf("%s reads back %+v, %t, %v; want pruned %t", id, r, ok, err, wantPruned)
			}
			c, err := tx.Counts()
			if err != nil {
				return err
			}
			if got := c.Sessions[fulfill.StateFulfilled]; got != fulfilled {
				t.Errorf("%d fulfilled counted, want %d", got, fulfilled)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	put(done)
	expect("cs_done", false, true, false, 1)
	pruned := done
	pruned.Pruned, pruned.Output = true, ""
	put(pruned)
	expect("cs_done", true, false, true, 1)
	// Retried by hand after all (a record that leaves its final state is
	// no longer a tombstone), then fulfilled again.
	again := done
	again.State, again.Attempts = fulfill.StatePending, 2
	put(again)
	if s, tb := where("cs_done"); !s || tb {
		t.Errorf("cs_done pending again: in sessions %t, in tombstones %t", s, tb)
	}
	again.State = fulfill.StateFulfilled
	put(again)
	expect("cs_done", false, true, false, 1)

	// A tombstone where format 5 left it.
	put(old)
	if err := db.db.Update(func(tx *bbolt.Tx) error {
		v := bytes.Clone(tx.Bucket(bucketTombstones).Get([]byte("cs_old")))
		if err := tx.Bucket(bucketTombstones).Delete([]byte("cs_old")); err != nil {
			return err
		}
		return tx.Bucket(bucketSessions).Put([]byte("cs_old"), v)
	}); err != nil {
		t.Fatal(err)
	}
	expect("cs_old", true, true, false, 2)
	if err := db.Update(func(tx store.Tx) error {
		queued, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: "cs_old", Trigger: fulfill.TriggerEvent, EventID: "evt_again", At: at})
		if queued {
			t.Error("an old tombstone's session was queued again")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.View(func(tx store.Tx) error {
		ids, err := tx.Due(fulfill.SessionQueue, at.Add(time.Hour), 10, nil)
		if len(ids) != 0 {
			t.Errorf("an old tombstone's session was queued again: %v", ids)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	put(old)
	expect("cs_old", true, false, true, 2)
	if err := db.Update(func(tx store.Tx) error { return tx.DeleteSession("cs_old") }); err != nil {
		t.Fatal(err)
	}
	if s, tb := where("cs_old"); s || tb {
		t.Errorf("cs_old deleted but still in sessions %t, tombstones %t", s, tb)
	}
}
