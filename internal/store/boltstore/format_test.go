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
		// A notification as format 1 and 2 wrote it: under its event id,
		// with no destination.
		if err := put(tx, "notifications", "evt_1", map[string]any{"event_id": "evt_1", "event_type": "checkout.session.expired",
			"state": "sent", "updated": now, "event": json.RawMessage(`{"id":"evt_1"}`)}); err != nil {
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

// format2Store writes a store as format 2 left it, with notifications
// keyed by event id alone: one sent, one dead-lettered, one queued, with
// their counters and index entries as format 2 kept them.
func format2Store(t *testing.T, path string, now time.Time) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bbolt.Tx) error {
		bucket := func(name string) *bbolt.Bucket {
			b, err := tx.CreateBucketIfNotExists([]byte(name))
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		u64 := func(n uint64) []byte {
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], n)
			return b[:]
		}
		notes := map[string]string{"evt_sent": "sent", "evt_dead": "failed", "evt_wait": "pending"}
		for id, state := range notes {
			v, _ := json.Marshal(map[string]any{"event_id": id, "event_type": "payment_intent.payment_failed", "state": state,
				"attempts": 1, "updated": now, "created": now, "event": json.RawMessage(`{"id":"` + id + `","object":"event"}`)})
			if err := bucket("notifications").Put([]byte(id), v); err != nil {
				return err
			}
			if err := bucket("fulfill_counts").Put([]byte("notify:"+state), u64(1)); err != nil {
				return err
			}
		}
		if err := bucket("failed_index").Put(append(append([]byte{'n'}, timeKey(now)...), "evt_dead"...), nil); err != nil {
			return err
		}
		item := append(timeKey(now.Add(time.Minute)), "evt_wait"...)
		if err := bucket("notify_queue").Put(item, nil); err != nil {
			return err
		}
		if err := bucket("notify_queue_index").Put([]byte("evt_wait"), item); err != nil {
			return err
		}
		if err := bucket("fulfill_counts").Put([]byte("queue:notifications"), u64(1)); err != nil {
			return err
		}
		return bucket("meta").Put([]byte("format"), u64(2))
	}); err != nil {
		t.Fatal(err)
	}
}

// TestFormat2NotificationsKeepWorking: notifications written before they
// were generalized to deliveries are, after the in-place upgrade, the
// notify destination's deliveries: the queued one still due when it was,
// the dead letter still listed and retryable, the sent one still never
// queued again, and the counts the same.
func TestFormat2NotificationsKeepWorking(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fulfilld.db")
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	format2Store(t, path, now)
	db, err := Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx store.Tx) error {
		c, err := tx.Counts()
		if err != nil {
			return err
		}
		if n := c.Deliveries[fulfill.DestNotify]; n["sent"] != 1 || n["failed"] != 1 || n["pending"] != 1 {
			t.Errorf("notify counts after the upgrade: %v", n)
		}
		if n := c.Deliveries[fulfill.DestForward]; n["sent"]+n["failed"]+n["pending"] != 0 {
			t.Errorf("forward counts after the upgrade: %v, want none", n)
		}
		rec, ok, err := fulfill.GetDelivery(tx, fulfill.DestNotify, "evt_wait")
		if err != nil || !ok || rec.Destination != fulfill.DestNotify || rec.State != "pending" || len(rec.Event) == 0 {
			t.Errorf("queued notification after the upgrade: %+v %v %v", rec, ok, err)
		}
		if rec.IdempotencyKey() != "fulfilld-notify-evt_wait" {
			t.Errorf("idempotency key %q changed across the upgrade", rec.IdempotencyKey())
		}
		due, ok, _ := tx.DueAt(fulfill.DeliveryQueue, "notify:evt_wait")
		if n, _ := tx.QueueLen(fulfill.DeliveryQueue); !ok || !due.Equal(now.Add(time.Minute)) || n != 1 {
			t.Errorf("queued notification due %v (%v), queue length %d; want due at %v, length 1", due, ok, n, now.Add(time.Minute))
		}
		if ids, _ := tx.Failed(fulfill.KindDelivery, 0); len(ids) != 1 || ids[0] != "notify:evt_dead" {
			t.Errorf("dead letters after the upgrade: %v", ids)
		}
		if added, err := fulfill.EnqueueDelivery(tx, fulfill.DestNotify, "evt_sent", "payment_intent.payment_failed", nil, now); added || err != nil {
			t.Errorf("a notification sent before the upgrade was queued again (%v, %v)", added, err)
		}
		done, err := fulfill.RetryDeliveries(tx, now, "evt_dead")
		if err != nil || len(done) != 1 {
			t.Errorf("retry evt_dead after the upgrade: %v %v", done, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
