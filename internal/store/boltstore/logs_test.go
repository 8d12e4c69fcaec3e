package boltstore

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
)

// storedAs is how a record is encoded where it is kept: under its id in
// bucket, or, settled, in its kind's log (as the bucket would keep it).
func storedAs(t *testing.T, tx *bbolt.Tx, bucket, id string) []byte {
	t.Helper()
	if raw := tx.Bucket([]byte(bucket)).Get([]byte(id)); raw != nil {
		return raw
	}
	for _, k := range ledgerKinds {
		if string(k.byID) != bucket {
			continue
		}
		key, err := (&Tx{tx: tx}).findLogged(k, id, func(v []byte) (bool, error) {
			got, _, err := k.read(v)
			return got == id, err
		})
		if err != nil || key == nil {
			t.Fatalf("%s is in neither %s nor %s (%v)", id, bucket, k.log, err)
		}
		return k.fromLog(tx.Bucket(k.log).Get(key))
	}
	t.Fatalf("no %s/%s", bucket, id)
	return nil
}

// asFormat7 turns a file this binary wrote into what format 7 wrote: the
// settled records under their ids, each with its entry in settled_index,
// and none of format 8's buckets.
func asFormat7(t *testing.T, tx *bbolt.Tx) {
	t.Helper()
	for _, k := range ledgerKinds {
		byID := tx.Bucket(k.byID)
		if err := tx.Bucket(k.log).ForEach(func(_, v []byte) error {
			id, _, err := k.read(v)
			if err != nil {
				return err
			}
			return byID.Put([]byte(id), bytes.Clone(k.fromLog(v)))
		}); err != nil {
			t.Fatal(err)
		}
		if err := tx.DeleteBucket(k.log); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.CreateBucket(k.log); err != nil {
			t.Fatal(err)
		}
	}
	if err := (&Tx{tx: tx}).recount(); err != nil {
		t.Fatal(err)
	}
	for _, k := range ledgerKinds {
		for _, name := range [][]byte{k.log, k.index} {
			if err := tx.DeleteBucket(name); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tx.Bucket(bucketMeta).Put(keyFormat, binary.BigEndian.AppendUint64(nil, 7)); err != nil {
		t.Fatal(err)
	}
}

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fulfilld.db")
	db, err := Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, path
}

func mustUpdate(t *testing.T, db *Store, fn func(tx store.Tx) error) {
	t.Helper()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// settledIDs is what retention would be handed before edge, in order.
func settledIDs(t *testing.T, db *Store, edge time.Time) []string {
	t.Helper()
	var ids []string
	if err := db.View(func(tx store.Tx) error {
		due, _, err := tx.SettledBefore(edge, 1000)
		for _, s := range due {
			ids = append(ids, s.ID)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestFormat7StoreUpgraded: a file format 7 wrote (settled sessions under
// their ids, every settled record in settled_index) opens read-only as it
// is and is upgraded in place; every record reads back as it was written,
// retention finds the old and the new settled records oldest first, prunes
// them all, and never runs a session twice; the kept counts equal a
// recount throughout.
func TestFormat7StoreUpgraded(t *testing.T) {
	// Format 7 made its files of 4 KiB pages.
	path := filepath.Join(t.TempDir(), "fulfilld.db")
	raw, err := bbolt.Open(path, 0o600, &bbolt.Options{PageSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	raw.Close()
	db, err := Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	old := []fulfill.Record{
		{SessionID: "cs_done", State: fulfill.StateFulfilled, Attempts: 1, Output: "shipped to Jane", Created: at, Updated: at, FulfilledAt: at},
		{SessionID: "cs_expired", State: fulfill.StateExpired, Created: at, Updated: at.Add(time.Minute)},
		{SessionID: "cs_dead", State: fulfill.StateFailed, Attempts: 8, LastError: "exit 1", Created: at, Updated: at.Add(2 * time.Minute)},
		{SessionID: "cs_wait", State: fulfill.StatePending, Created: at, Updated: at.Add(3 * time.Minute)},
		{SessionID: "cs_tomb", State: fulfill.StateFulfilled, Attempts: 1, Created: at, Updated: at, FulfilledAt: at, Pruned: true},
	}
	sent := fulfill.EventDelivery{Destination: fulfill.DestNotify, EventID: "evt_1", EventType: "checkout.session.expired",
		State: fulfill.DeliverySent, Attempts: 1, Created: at, Updated: at.Add(4 * time.Minute), SentAt: at.Add(4 * time.Minute)}
	pi := fulfill.PaymentIntent{ID: "pi_1", Status: "succeeded", EventID: "evt_2", EventType: "payment_intent.succeeded", At: at.Add(5 * time.Minute)}
	mustUpdate(t, db, func(tx store.Tx) error {
		for _, r := range old {
			if err := tx.PutSession(r); err != nil {
				return err
			}
		}
		if err := tx.PutEventDelivery(sent); err != nil {
			return err
		}
		return tx.PutPaymentIntent(pi)
	})
	if err := db.db.Update(func(tx *bbolt.Tx) error { asFormat7(t, tx); return nil }); err != nil {
		t.Fatal(err)
	}
	db.Close()

	readsBack := func(db *Store, when string) {
		t.Helper()
		if err := db.View(func(tx store.Tx) error {
			for _, want := range old {
				if want.Pruned {
					want = fulfill.Record{SessionID: want.SessionID, State: want.State, Attempts: 1, Created: at, Updated: at, FulfilledAt: at, Pruned: true}
				}
				if got, ok, err := tx.Session(want.SessionID); err != nil || !ok || !reflect.DeepEqual(got, want) {
					t.Errorf("%s: %s reads back %+v %t %v, want %+v", when, want.SessionID, got, ok, err, want)
				}
			}
			if got, ok, err := tx.EventDelivery(sent.Key()); err != nil || !ok || !reflect.DeepEqual(got, sent) {
				t.Errorf("%s: delivery reads back %+v %v", when, got, err)
			}
			if got, ok, err := tx.PaymentIntent(pi.ID); err != nil || !ok || got != pi {
				t.Errorf("%s: PaymentIntent reads back %+v %v", when, got, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	ro, err := Open(path, true, time.Second)
	if err != nil {
		t.Fatalf("a format 7 file opened read-only: %v", err)
	}
	if got := ro.db.Info().PageSize; got != 4096 {
		t.Fatalf("the format 7 file has %d-byte pages, want 4096", got)
	}
	readsBack(ro, "format 7, read-only")
	if got, want := settledIDs(t, ro, at.Add(time.Hour)), []string{"cs_done", "cs_expired", "cs_dead", "notify:evt_1", "pi_1"}; !reflect.DeepEqual(got, want) {
		t.Errorf("format 7, read-only: settled %v, want %v", got, want)
	}
	ro.Close()

	db, err = Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	readsBack(db, "upgraded")
	// A record written after the upgrade goes to the log; the old ones'
	// entries stay in settled_index until they are written again.
	mustUpdate(t, db, func(tx store.Tx) error {
		return tx.PutSession(fulfill.Record{SessionID: "cs_new", State: fulfill.StateFulfilled, Attempts: 1, Created: at,
			Updated: at.Add(90 * time.Second), FulfilledAt: at})
	})
	want := []string{"cs_done", "cs_expired", "cs_new", "cs_dead", "notify:evt_1", "pi_1"}
	if got := settledIDs(t, db, at.Add(time.Hour)); !reflect.DeepEqual(got, want) {
		t.Errorf("upgraded: settled %v, want %v (oldest first, from both indexes)", got, want)
	}
	recounts(t, db)
	var pruned int
	mustUpdate(t, db, func(tx store.Tx) (err error) {
		pruned, _, err = fulfill.Prune(tx, at.Add(time.Hour), 100, false)
		return err
	})
	if pruned != len(want) || len(settledIDs(t, db, at.Add(time.Hour))) != 0 {
		t.Errorf("pruned %d of %d; %v still settled", pruned, len(want), settledIDs(t, db, at.Add(time.Hour)))
	}
	recounts(t, db)
	for _, id := range []string{"cs_done", "cs_new", "cs_tomb"} {
		mustUpdate(t, db, func(tx store.Tx) error {
			queued, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: id, Trigger: fulfill.TriggerEvent, EventID: "evt_again", At: at.Add(time.Hour)})
			if queued {
				t.Errorf("%s, fulfilled before the upgrade or after, was queued again", id)
			}
			return err
		})
	}
	if err := db.db.View(func(tx *bbolt.Tx) error {
		if n := tx.Bucket(bucketSettled).Stats().KeyN; n != 0 {
			t.Errorf("%d entries left in settled_index after every old record was pruned", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Compacted, the file has this binary's pages, and reads the same.
	db.Close()
	if _, err := Compact(path, time.Second); err != nil {
		t.Fatal(err)
	}
	if db, err = Open(path, false, time.Second); err != nil {
		t.Fatal(err)
	}
	if got := db.db.Info().PageSize; got != pageSize {
		t.Errorf("compacted with %d-byte pages, want %d", got, pageSize)
	}
	if got := settledIDs(t, db, at.Add(time.Hour)); len(got) != 0 {
		t.Errorf("compacted: %v settled again", got)
	}
	if err := db.View(func(tx store.Tx) error {
		for _, id := range []string{"cs_done", "cs_new", "cs_tomb"} {
			if r, ok, err := tx.Session(id); err != nil || !ok || !r.Pruned || r.State != fulfill.StateFulfilled {
				t.Errorf("compacted: %s reads back %+v %t %v, want a fulfilled tombstone", id, r, ok, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	recounts(t, db)
}

// recounts checks the kept counts and indexes against a recount of the
// records.
func recounts(t *testing.T, db *Store) {
	t.Helper()
	type kept struct {
		counts  fulfill.Counts
		settled []string
		indexes map[string]string
	}
	read := func() (k kept) {
		if err := db.View(func(tx store.Tx) (err error) {
			k.counts, err = tx.Counts()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		k.indexes = map[string]string{}
		if err := db.db.View(func(tx *bbolt.Tx) error {
			for _, kind := range ledgerKinds {
				if err := tx.Bucket(kind.index).ForEach(func(key, v []byte) error {
					k.indexes[string(kind.index)+string(key)] = string(v)
					return nil
				}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		k.settled = settledIDs(t, db, time.Now().AddDate(10, 0, 0))
		return k
	}
	before := read()
	mustUpdate(t, db, func(tx store.Tx) error { return tx.(*Tx).Recount() })
	if after := read(); !reflect.DeepEqual(before, after) {
		t.Errorf("kept %+v, recounted %+v", before, after)
	}
}

// TestLogOrderUnderAClock: a record that settled a little before the log's
// end is pruned a little late, never early; a clock that jumped forward for
// a while does not hold up retention of what was written after it; one
// stepped back by more than the slack is indexed at its own time.
func TestLogOrderUnderAClock(t *testing.T) {
	db, _ := openTemp(t)
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	settle := func(id string, when time.Time) {
		t.Helper()
		mustUpdate(t, db, func(tx store.Tx) error {
			return tx.PutSession(fulfill.Record{SessionID: id, State: fulfill.StateExpired, Updated: when})
		})
	}
	settle("cs_1", at)
	settle("cs_late", at.Add(-10*time.Minute)) // within the slack: at the end, as of cs_1
	if got := settledIDs(t, db, at.Add(-5*time.Minute)); len(got) != 0 {
		t.Errorf("before the log's end: %v, want none (never early)", got)
	}
	if got := settledIDs(t, db, at.Add(time.Second)); !reflect.DeepEqual(got, []string{"cs_1", "cs_late"}) {
		t.Errorf("once cs_1 is due: %v, want [cs_1 cs_late]", got)
	}
	settle("cs_future", at.AddDate(1, 0, 0)) // the host's clock a year ahead, for a while
	settle("cs_2", at.Add(time.Minute))      // and back
	settle("cs_back", at.Add(-48*time.Hour)) // stepped back two days: at its own time
	if got, want := settledIDs(t, db, at.Add(2*time.Minute)), []string{"cs_back", "cs_1", "cs_late", "cs_2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after a jump: %v, want %v", got, want)
	}
	for _, id := range []string{"cs_1", "cs_late", "cs_2", "cs_back", "cs_future"} {
		if err := db.View(func(tx store.Tx) error {
			r, ok, err := tx.Session(id)
			if err != nil || !ok || r.SessionID != id {
				t.Errorf("%s reads back %+v %t %v", id, r, ok, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	recounts(t, db)
}

// TestLogPagesFillWhole: a log written in the order records settle fills
// its pages whole, whatever the ids, where a bucket keyed by id fills them
// two-thirds; PaymentIntents listed newest first still go at its end. So it
// does after a session settled while the host's clock was a year ahead:
// that one stays at the log's end, and what comes after goes just before
// it, in order.
func TestLogPagesFillWhole(t *testing.T) {
	for _, ahead := range []bool{false, true} {
		t.Run(fmt.Sprintf("a clock ahead before %t", ahead), func(t *testing.T) {
			db, _ := openTemp(t)
			at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
			if ahead {
				mustUpdate(t, db, func(tx store.Tx) error {
					// A year ahead of this host's clock, whenever the test runs.
					return tx.PutSession(fulfill.Record{SessionID: "cs_future", State: fulfill.StateExpired, Updated: time.Now().AddDate(1, 0, 0)})
				})
			}
			rng := rand.New(rand.NewPCG(1, 2))
			output := func() string {
				var b strings.Builder
				for b.Len() < 2048 {
					fmt.Fprintf(&b, "label %08x for order ORD-%d shipped to %x\n", rng.Uint32(), rng.IntN(1e6), rng.Uint64())
				}
				return b.String()
			}
			for i := range 300 {
				now := at.Add(time.Duration(i) * time.Second)
				mustUpdate(t, db, func(tx store.Tx) error {
					for j := range 10 {
						id := fmt.Sprintf("cs_%016x", rng.Uint64())
						if err := tx.PutSession(fulfill.Record{SessionID: id, State: fulfill.StateFulfilled, Attempts: 1, Output: output(),
							Created: now, Updated: now, FulfilledAt: now}); err != nil {
							return err
						}
						// A page of events, newest first.
						if err := tx.PutPaymentIntent(fulfill.PaymentIntent{ID: fmt.Sprintf("pi_%016x", rng.Uint64()), Status: "succeeded",
							At: now.Add(-time.Duration(j) * time.Minute)}); err != nil {
							return err
						}
					}
					return nil
				})
			}
			if err := db.db.View(func(tx *bbolt.Tx) error {
				for _, name := range [][]byte{sessionKind.log, intentKind.log} {
					st := tx.Bucket(name).Stats()
					fill := float64(st.LeafInuse) / float64(st.LeafAlloc)
					t.Logf("%s: %d keys, %d leaf pages, %.2f full", name, st.KeyN, st.LeafPageN, fill)
					if fill < 0.85 {
						t.Errorf("%s pages %.2f full, want at least 0.85", name, fill)
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestPruneLeavesARecordOnItsWay: a settled entry left behind by a record
// that moved on (one format 7 wrote beside a record that did not read, and
// was written over) is dropped by retention, and the record it names — on
// its way again, or settled again since — is not cut down to a tombstone
// before its own time.
func TestPruneLeavesARecordOnItsWay(t *testing.T) {
	db, _ := openTemp(t)
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	wait := fulfill.Record{SessionID: "cs_wait", State: fulfill.StatePending, Trigger: fulfill.TriggerEvent, Output: "first try", Updated: at}
	// Settled again since its entry: due an hour after the edge asked for.
	again := fulfill.Record{SessionID: "cs_again", State: fulfill.StateFulfilled, Attempts: 2, Output: "shipped", Created: at,
		Updated: at.Add(2 * time.Hour), FulfilledAt: at.Add(2 * time.Hour)}
	pending := fulfill.EventDelivery{Destination: fulfill.DestNotify, EventID: "evt_1", State: fulfill.DeliveryPending, Updated: at,
		Event: []byte(`{"id":"evt_1"}`)}
	mustUpdate(t, db, func(tx store.Tx) error {
		if err := tx.PutSession(wait); err != nil {
			return err
		}
		if err := tx.PutSession(again); err != nil {
			return err
		}
		return tx.PutEventDelivery(pending)
	})
	if err := db.db.Update(func(tx *bbolt.Tx) error {
		for _, id := range []string{"cs_wait", "cs_again"} {
			if err := tx.Bucket(bucketSettled).Put(settledKey(at, 's', id), nil); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketSettled).Put(settledKey(at, 'n', pending.Key()), nil)
	}); err != nil {
		t.Fatal(err)
	}
	var pruned int
	mustUpdate(t, db, func(tx store.Tx) (err error) {
		pruned, _, err = fulfill.Prune(tx, at.Add(time.Hour), 10, false)
		return err
	})
	if again := settledIDs(t, db, at.Add(3*time.Hour)); !reflect.DeepEqual(again, []string{"cs_again"}) {
		t.Errorf("after retention: %v due by its own time, want [cs_again]", again)
	}
	if pruned != 0 || len(settledIDs(t, db, at.Add(time.Hour))) != 0 {
		t.Errorf("pruned %d; left %v; want 0 and the entries dropped", pruned, settledIDs(t, db, at.Add(time.Hour)))
	}
	if err := db.View(func(tx store.Tx) error {
		for _, want := range []fulfill.Record{wait, again} {
			r, _, err := tx.Session(want.SessionID)
			if err != nil || !reflect.DeepEqual(r, want) {
				t.Errorf("%s reads back %+v (%v), want it untouched", want.SessionID, r, err)
			}
		}
		n, _, err := tx.EventDelivery(pending.Key())
		if err != nil || n.Pruned || len(n.Event) == 0 {
			t.Errorf("the pending delivery reads back %+v (%v), want it untouched", n, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestUnreadableSettledSessionNotRunAgain: a fulfilled session whose
// settled record cannot be read keeps failing closed (a lookup error),
// before retention passes it over and after, and the export that would
// carry the store elsewhere refuses it rather than leave it behind.
func TestUnreadableSettledSessionNotRunAgain(t *testing.T) {
	db, _ := openTemp(t)
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	mustUpdate(t, db, func(tx store.Tx) error {
		return tx.PutSession(fulfill.Record{SessionID: "cs_paid", State: fulfill.StateFulfilled, Attempts: 1, Output: "shipped",
			Created: at, Updated: at, FulfilledAt: at})
	})
	if err := db.db.Update(func(tx *bbolt.Tx) error {
		k, _ := tx.Bucket(sessionKind.log).Cursor().First()
		if k == nil {
			return fmt.Errorf("cs_paid is not in %s", sessionKind.log)
		}
		return tx.Bucket(sessionKind.log).Put(bytes.Clone(k), []byte("{not json"))
	}); err != nil {
		t.Fatal(err)
	}
	enqueue := func(when string) {
		t.Helper()
		var queued bool
		err := db.Update(func(tx store.Tx) (err error) {
			queued, err = fulfill.Enqueue(tx, fulfill.Request{SessionID: "cs_paid", EventID: "evt_again",
				Trigger: fulfill.TriggerEvent, At: at.Add(2 * time.Hour)})
			return err
		})
		if queued {
			t.Errorf("%s: cs_paid, already fulfilled, was queued again (lookup error: %v)", when, err)
		}
	}
	enqueue("before retention")
	mustUpdate(t, db, func(tx store.Tx) error {
		_, _, err := fulfill.Prune(tx, at.Add(time.Hour), 10, false)
		return err
	})
	enqueue("after retention")
	if err := db.Export(func(Item) error { return nil }); err == nil || !strings.Contains(err.Error(), "cannot be read") {
		t.Errorf("export with an unreadable record: %v, want it refused", err)
	}
	if err := db.View(func(tx store.Tx) error {
		if due, _, _ := tx.SettledBefore(at.Add(time.Hour), 10); len(due) != 0 {
			t.Errorf("retention still finds %+v", due)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestSettledWriteRepairsUnreadableDelivery: a delivery that does not read
// counts as absent, and writing it sent (to delivery_log) takes the
// unreadable one out from under its key, where lookups would find it first.
func TestSettledWriteRepairsUnreadableDelivery(t *testing.T) {
	db, _ := openTemp(t)
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	pending := fulfill.EventDelivery{Destination: fulfill.DestNotify, EventID: "evt_1", State: fulfill.DeliveryPending, Updated: at,
		Event: []byte(`{"id":"evt_1"}`)}
	mustUpdate(t, db, func(tx store.Tx) error { return tx.PutEventDelivery(pending) })
	if err := db.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketDeliveries).Put([]byte(pending.Key()), []byte("{not json"))
	}); err != nil {
		t.Fatal(err)
	}
	sent := pending
	sent.State, sent.Event, sent.Attempts, sent.SentAt, sent.Updated = fulfill.DeliverySent, nil, 1, at.Add(time.Minute), at.Add(time.Minute)
	mustUpdate(t, db, func(tx store.Tx) error { return tx.PutEventDelivery(sent) })
	if err := db.View(func(tx store.Tx) error {
		got, ok, err := tx.EventDelivery(sent.Key())
		if err != nil || !ok || got.State != fulfill.DeliverySent {
			t.Errorf("after writing it sent: %+v %t %v; want the sent record (repaired)", got, ok, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestExportCarriesTheLogs: Export carries the settled records of all
// three logs, not only what is under an id (migrate-store's tests need a
// PostgreSQL server; this one does not).
func TestExportCarriesTheLogs(t *testing.T) {
	src, _ := openTemp(t)
	dst, _ := openTemp(t)
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	rec := fulfill.Record{SessionID: "cs_done", State: fulfill.StateFulfilled, Attempts: 1, Output: "shipped", Created: at, Updated: at, FulfilledAt: at}
	dl := fulfill.EventDelivery{Destination: fulfill.DestNotify, EventID: "evt_1", State: fulfill.DeliverySent, Attempts: 1, Created: at, Updated: at, SentAt: at}
	pi := fulfill.PaymentIntent{ID: "pi_1", Status: "succeeded", EventID: "evt_2", At: at}
	mustUpdate(t, src, func(tx store.Tx) error {
		if err := tx.PutSession(rec); err != nil {
			return err
		}
		if err := tx.PutEventDelivery(dl); err != nil {
			return err
		}
		return tx.PutPaymentIntent(pi)
	})
	if err := src.Export(func(it Item) error { return dst.Update(it.Put) }); err != nil {
		t.Fatal(err)
	}
	if err := dst.View(func(tx store.Tx) error {
		if _, ok, err := tx.Session(rec.SessionID); !ok || err != nil {
			t.Errorf("session not carried: %t %v", ok, err)
		}
		if _, ok, err := tx.EventDelivery(dl.Key()); !ok || err != nil {
			t.Errorf("delivery not carried: %t %v", ok, err)
		}
		if _, ok, err := tx.PaymentIntent(pi.ID); !ok || err != nil {
			t.Errorf("PaymentIntent not carried: %t %v", ok, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestLogSequenceWraps: the sequence in a log key wraps; a key it meets
// again within one second is passed over, and both records stay.
func TestLogSequenceWraps(t *testing.T) {
	db, _ := openTemp(t)
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	put := func(id string) {
		t.Helper()
		mustUpdate(t, db, func(tx store.Tx) error {
			return tx.PutSession(fulfill.Record{SessionID: id, State: fulfill.StateExpired, Updated: at})
		})
	}
	put("cs_first") // sequence 1
	if err := db.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(sessionKind.log).SetSequence(seqMask + 1) // the next is 1 again, in the same second
	}); err != nil {
		t.Fatal(err)
	}
	put("cs_second")
	for _, id := range []string{"cs_first", "cs_second"} {
		if err := db.View(func(tx store.Tx) error {
			if r, ok, err := tx.Session(id); err != nil || !ok || r.SessionID != id {
				t.Errorf("%s reads back %+v %t %v", id, r, ok, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if got := settledIDs(t, db, at.Add(time.Second)); !reflect.DeepEqual(got, []string{"cs_first", "cs_second"}) {
		t.Errorf("settled %v, want both in the order written", got)
	}
}

// TestUnreadableKeyNotReused: a log key whose value was set apart as
// unreadable is not handed out again when the sequence wraps: the
// unreadable session's lookup would then find another record, report it
// absent, and run it again.
func TestUnreadableKeyNotReused(t *testing.T) {
	db, _ := openTemp(t)
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	mustUpdate(t, db, func(tx store.Tx) error {
		return tx.PutSession(fulfill.Record{SessionID: "cs_paid", State: fulfill.StateFulfilled, Attempts: 1, Created: at, Updated: at, FulfilledAt: at})
	})
	db.db.Update(func(tx *bbolt.Tx) error {
		k, _ := tx.Bucket(sessionKind.log).Cursor().First()
		return tx.Bucket(sessionKind.log).Put(append([]byte(nil), k...), []byte("{not json"))
	})
	mustUpdate(t, db, func(tx store.Tx) error { _, _, err := fulfill.Prune(tx, at.Add(time.Hour), 10, false); return err })
	db.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(sessionKind.log).SetSequence(seqMask + 1) })
	mustUpdate(t, db, func(tx store.Tx) error {
		return tx.PutSession(fulfill.Record{SessionID: "cs_other", State: fulfill.StateExpired, Updated: at})
	})
	var queued bool
	err := db.Update(func(tx store.Tx) (err error) {
		queued, err = fulfill.Enqueue(tx, fulfill.Request{SessionID: "cs_paid", EventID: "evt_again", Trigger: fulfill.TriggerEvent, At: at.Add(2 * time.Hour)})
		return err
	})
	if queued {
		t.Errorf("cs_paid queued again (err %v)", err)
	}
}
