package boltstore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
)

// oldStore writes a store the way fulfilld wrote it before format 2: the
// records, the seen-set and the queue, and no counters, indexes or format.
func oldStore(t *testing.T, path string) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	put := func(tx *bbolt.Tx, bucket, key string, v any) error {
		b, err := tx.CreateBucketIfNotExists([]byte(bucket))
		if err != nil {
			return err
		}
		raw, err := json.Marshal(v)
		if err != nil {
			return err
		}
		return b.Put([]byte(key), raw)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		recs := []fulfill.Record{
			{SessionID: "cs_done", State: fulfill.StateFulfilled, Attempts: 1, Trigger: "event", Output: "shipped", Updated: now, FulfilledAt: now},
			{SessionID: "cs_dead", State: fulfill.StateFailed, Attempts: 8, Trigger: "event", LastError: "exit 1", Updated: now},
			{SessionID: "cs_wait", State: fulfill.StateAwaitingPayment, Trigger: "event", Updated: now},
			{SessionID: "cs_rec", State: fulfill.StateFulfilled, Recovered: true, Attempts: 1, Trigger: "reconcile", Updated: now},
		}
		for _, r := range recs {
			if err := put(tx, "sessions", r.SessionID, r); err != nil {
				return err
			}
		}
		if err := put(tx, "notifications", "evt_1", fulfill.Notification{EventID: "evt_1", EventType: "checkout.session.expired",
			State: fulfill.NotifySent, Updated: now, Event: json.RawMessage(`{"id":"evt_1"}`)}); err != nil {
			return err
		}
		if err := put(tx, "payment_intents", "pi_1", fulfill.PaymentIntent{ID: "pi_1", Status: "succeeded", At: now}); err != nil {
			return err
		}
		seen, err := tx.CreateBucketIfNotExists([]byte("seen"))
		if err != nil {
			return err
		}
		var ts [8]byte
		binary.BigEndian.PutUint64(ts[:], uint64(now.Unix()))
		for _, id := range []string{"evt_1", "evt_2", "evt_3"} {
			if err := seen.Put([]byte(id), ts[:]); err != nil {
				return err
			}
		}
		// Two sessions queued, as the old queue kept them.
		items, _ := tx.CreateBucketIfNotExists([]byte("queue"))
		index, _ := tx.CreateBucketIfNotExists([]byte("queue_index"))
		for _, id := range []string{"cs_wait", "cs_other"} {
			key := append(append([]byte(nil), ts[:]...), id...)
			if err := items.Put(key, nil); err != nil {
				return err
			}
			if err := index.Put([]byte(id), key); err != nil {
				return err
			}
		}
		// More bad events than are kept now.
		for i := range 1100 {
			id := fmt.Sprintf("evt_bad%04d", i)
			if err := put(tx, "bad_events", id, cursor.BadEvent{ID: id, SeenAt: now.Add(time.Duration(i) * time.Second)}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestOldStoreUpgradedInPlace: a store written before counters were kept
// opens, is counted once, and shows the same numbers a full count shows;
// a read-only open (status with no daemon) before that says what to do.
func TestOldStoreUpgradedInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fulfilld.db")
	oldStore(t, path)

	if _, err := Open(path, true, time.Second); !errors.Is(err, ErrFormat) {
		t.Fatalf("read-only open of an old store: %v, want ErrFormat with a hint", err)
	}
	db, err := Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var sum fulfill.Summary
	var failed []fulfill.Record
	var seen, queued, bad int
	if err := db.View(func(tx store.Tx) (err error) {
		if sum, err = fulfill.Summarize(tx); err != nil {
			return err
		}
		if seen, err = cursor.SeenCount(tx); err != nil {
			return err
		}
		if failed, err = fulfill.Failed(tx, 10); err != nil {
			return err
		}
		if queued, err = fulfill.QueueLen(tx); err != nil {
			return err
		}
		_, bad, err = tx.BadEvents(1)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if queued != 2 || bad != 1000 {
		t.Errorf("after the upgrade: queue length %d, %d bad events kept; want 2 and 1000", queued, bad)
	}
	if sum.Sessions[fulfill.StateFulfilled] != 2 || sum.Sessions[fulfill.StateFailed] != 1 ||
		sum.Sessions[fulfill.StateAwaitingPayment] != 1 || sum.Recovered != 1 || sum.PaymentIntents["succeeded"] != 1 {
		t.Errorf("counts after the upgrade: %+v", sum)
	}
	if len(failed) != 1 || failed[0].SessionID != "cs_dead" || seen != 3 {
		t.Errorf("after the upgrade: failures %+v, seen %d; want cs_dead and 3", failed, seen)
	}
	// Now read-only opens work too.
	ro, err := Open(path, true, time.Second)
	if err != nil {
		t.Fatalf("read-only open after the upgrade: %v", err)
	}
	ro.Close()
}

// TestNewerStoreRefused: a store from a newer fulfilld is not touched.
func TestNewerStoreRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fulfilld.db")
	db, err := Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.db.Update(func(tx *bbolt.Tx) error {
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], Format+1)
		return tx.Bucket([]byte("meta")).Put([]byte("format"), v[:])
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	for _, ro := range []bool{false, true} {
		if _, err := Open(path, ro, time.Second); !errors.Is(err, ErrFormat) {
			t.Errorf("open (read-only %v) of a newer store: %v, want ErrFormat", ro, err)
		}
	}
}
