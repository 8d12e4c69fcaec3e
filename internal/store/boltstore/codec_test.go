package boltstore

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
)

// TestRecordDictNeverChanges: every compressed record ever written needs
// this exact dictionary to be read.
func TestRecordDictNeverChanges(t *testing.T) {
	sum := sha256.Sum256(recordDict)
	if got, want := hex.EncodeToString(sum[:]), "d708610598d8acd1d1d0b4df2d38b273a674e32402baabf52e289353d63a8192"; got != want {
		t.Fatalf("recorddict.v1 changed (sha256 %s, was %s): records written with it could no longer be read; "+
			"a new dictionary needs a new mark and a new format", got, want)
	}
}

// TestKeptOutputReadsBackIdentical: what an action printed and an event's
// body read back byte for byte after compression, and take less room.
func TestKeptOutputReadsBackIdentical(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "fulfilld.db"), false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Date(2026, 11, 20, 12, 0, 0, 123456789, time.UTC)
	var log strings.Builder
	for i := range 40 {
		fmt.Fprintf(&log, "%s INFO shipment shp_%06d label created for Jürgen Müller, Hauptstraße %d\n", now.Add(time.Duration(i)*time.Second).Format(time.RFC3339Nano), i*7919, i)
	}
	noise := make([]byte, 1500)
	rand.Read(noise)
	rec := fulfill.Record{SessionID: "cs_live_out", State: fulfill.StateFulfilled, Trigger: fulfill.TriggerEvent, EventID: "evt_1",
		Attempts: 1, Output: log.String() + "\x00\t\"quoted\" \u2028 end", Seq: 3, Created: now, Updated: now, FulfilledAt: now}
	body := json.RawMessage(`{"id":"evt_2","object":"event","type":"checkout.session.expired","data":{"object":{"id":"cs_live_x","customer_details":{"email":"a@example.com"}}}}`)
	dl := fulfill.EventDelivery{Destination: fulfill.DestNotify, EventID: "evt_2", EventType: "checkout.session.expired", State: fulfill.DeliveryPending,
		Created: now, Updated: now, Event: body}
	pi := fulfill.PaymentIntent{ID: "pi_1", Status: "succeeded", EventID: "evt_3", EventType: "payment_intent.succeeded", At: now}
	random := fulfill.Record{SessionID: "cs_live_rand", State: fulfill.StateFulfilled, Output: hex.EncodeToString(noise), Created: now, Updated: now}
	// A session on its way is rewritten within moments: kept as JSON,
	// without the cost of compressing it.
	queued := fulfill.Record{SessionID: "cs_live_queued", State: fulfill.StatePending, Trigger: fulfill.TriggerEvent, EventID: "evt_4",
		Attempts: 1, InFlight: true, LastError: "action exited 1", Seq: 2, Created: now, Updated: now, NextAttempt: now.Add(time.Minute)}
	if err := db.Update(func(tx store.Tx) error {
		for _, r := range []fulfill.Record{rec, random, queued} {
			if err := tx.PutSession(r); err != nil {
				return err
			}
		}
		if err := tx.PutEventDelivery(dl); err != nil {
			return err
		}
		return tx.PutPaymentIntent(pi)
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.View(func(tx store.Tx) error {
		got, _, err := tx.Session(rec.SessionID)
		if err != nil {
			return err
		}
		if !reflect.DeepEqual(got, rec) {
			t.Errorf("session read back:\n%+v\nwant\n%+v", got, rec)
		}
		if got, _, err := tx.Session(queued.SessionID); err != nil || !reflect.DeepEqual(got, queued) {
			t.Errorf("queued session read back:\n%+v\nwant\n%+v (%v)", got, queued, err)
		}
		if got, _, err := tx.Session(random.SessionID); err != nil || got.Output != random.Output {
			t.Errorf("incompressible output read back %d bytes, want %d (%v)", len(got.Output), len(random.Output), err)
		}
		gotDl, _, err := tx.EventDelivery(dl.Key())
		if err != nil || string(gotDl.Event) != string(body) || !gotDl.Created.Equal(now) {
			t.Errorf("delivery read back: %+v, %v", gotDl, err)
		}
		if gotPi, _, err := tx.PaymentIntent("pi_1"); err != nil || gotPi != pi {
			t.Errorf("payment intent read back: %+v, %v", gotPi, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.db.View(func(tx *bbolt.Tx) error {
		for _, c := range []struct {
			bucket, key string
			v           any
			mark        byte // compressed, or a PaymentIntent's own form
		}{
			{"sessions", rec.SessionID, rec, deflateMark},
			{"sessions", random.SessionID, random, deflateMark},
			{"notifications", dl.Key(), dl, deflateMark},
			{"payment_intents", pi.ID, pi, intentMark},
		} {
			raw := storedAs(t, tx, c.bucket, c.key)
			plain, _ := json.Marshal(c.v)
			if raw[0] != c.mark {
				t.Errorf("%s/%s kept as %.10q, want mark %#x", c.bucket, c.key, raw, c.mark)
			}
			if len(raw) >= len(plain) {
				t.Errorf("%s/%s takes %d bytes, %d as JSON", c.bucket, c.key, len(raw), len(plain))
			}
			t.Logf("%s/%s: %d bytes of JSON kept in %d", c.bucket, c.key, len(plain), len(raw))
		}
		if raw := tx.Bucket([]byte("sessions")).Get([]byte(queued.SessionID)); raw[0] != '{' {
			t.Errorf("a queued session is kept as %.10q, want its JSON", raw)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// What compressing would make larger is kept as JSON.
	if raw, err := encodeRecord(7); err != nil || string(raw) != "7" {
		t.Errorf("a value of one byte is kept as %q (%v), want its JSON", raw, err)
	}
}

// format4Store writes a store as format 4 left it: every record plain
// JSON, a pruned session a tombstone.
func format4Store(t *testing.T, path string, recs []fulfill.Record, dls []fulfill.EventDelivery, pis []fulfill.PaymentIntent) {
	t.Helper()
	db, err := Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx store.Tx) error {
		for _, r := range recs {
			if err := tx.PutSession(r); err != nil {
				return err
			}
		}
		for _, d := range dls {
			if err := tx.PutEventDelivery(d); err != nil {
				return err
			}
		}
		for _, pi := range pis {
			if err := tx.PutPaymentIntent(pi); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The records as format 4 encoded them, and its format number.
	if err := db.db.Update(func(tx *bbolt.Tx) error {
		asFormat7(t, tx)
		plain := func(bucket string, key string, v any) error {
			raw, err := json.Marshal(v)
			if err != nil {
				return err
			}
			return tx.Bucket([]byte(bucket)).Put([]byte(key), raw)
		}
		for _, r := range recs {
			if !r.Pruned {
				if err := plain("sessions", r.SessionID, r); err != nil {
					return err
				}
				continue
			}
			// Before format 6 a tombstone stood in sessions.
			tombs := tx.Bucket([]byte("tombstones"))
			v := bytes.Clone(tombs.Get([]byte(r.SessionID)))
			if err := tombs.Delete([]byte(r.SessionID)); err != nil {
				return err
			}
			if err := tx.Bucket([]byte("sessions")).Put([]byte(r.SessionID), v); err != nil {
				return err
			}
		}
		for _, d := range dls {
			if err := plain("notifications", d.Key(), d); err != nil {
				return err
			}
		}
		for _, pi := range pis {
			if err := plain("payment_intents", pi.ID, pi); err != nil {
				return err
			}
		}
		// Nor had it a tombstones bucket (format 6).
		if err := tx.DeleteBucket([]byte("tombstones")); err != nil {
			return err
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], 4)
		return tx.Bucket([]byte("meta")).Put([]byte("format"), v[:])
	}); err != nil {
		t.Fatal(err)
	}
}

// TestFormat4StoreKeepsWorking: a format 4 store opens read-only as it is
// (status without the daemon), is upgraded in place by a read-write open,
// and keeps every record, count and tombstone; a record written after the
// upgrade is kept compressed, and a compressed store is refused by nothing
// that reads it here.
func TestFormat4StoreKeepsWorking(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fulfilld.db")
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	out := strings.Repeat("2026-11-01T12:00:00Z label created for order ORD-1, tracking 1Z999AA10123456784\n", 25)
	recs := []fulfill.Record{
		{SessionID: "cs_done", State: fulfill.StateFulfilled, Trigger: fulfill.TriggerEvent, EventID: "evt_a", Attempts: 1, Output: out, Seq: 2,
			Created: now, Updated: now, FulfilledAt: now},
		{SessionID: "cs_dead", State: fulfill.StateFailed, Trigger: fulfill.TriggerEvent, Attempts: 8, LastError: "exit 1", Created: now, Updated: now},
		{SessionID: "cs_old", State: fulfill.StateFulfilled, Pruned: true, Attempts: 1, Created: now.Add(-time.Hour), Updated: now.Add(-time.Hour),
			FulfilledAt: now.Add(-time.Hour)},
	}
	dls := []fulfill.EventDelivery{{Destination: fulfill.DestNotify, EventID: "evt_b", EventType: "checkout.session.expired",
		State: fulfill.DeliveryPending, Created: now, Updated: now, Event: json.RawMessage(`{"id":"evt_b","object":"event"}`)}}
	pis := []fulfill.PaymentIntent{{ID: "pi_1", Status: "succeeded", EventID: "evt_c", EventType: "payment_intent.succeeded", At: now}}
	format4Store(t, path, recs, dls, pis)

	check := func(db *Store, when string) {
		t.Helper()
		if err := db.View(func(tx store.Tx) error {
			for _, want := range recs {
				got, ok, err := tx.Session(want.SessionID)
				if err != nil || !ok {
					t.Errorf("%s: %s: %v %v", when, want.SessionID, ok, err)
					continue
				}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s: %s read back\n%+v\nwant\n%+v", when, want.SessionID, got, want)
				}
			}
			if got, _, err := tx.EventDelivery("notify:evt_b"); err != nil || !reflect.DeepEqual(got, dls[0]) {
				t.Errorf("%s: delivery %+v, %v", when, got, err)
			}
			if got, _, err := tx.PaymentIntent("pi_1"); err != nil || got != pis[0] {
				t.Errorf("%s: payment intent %+v, %v", when, got, err)
			}
			c, err := tx.Counts()
			if err != nil {
				return err
			}
			if c.Sessions[fulfill.StateFulfilled] != 2 || c.Sessions[fulfill.StateFailed] != 1 ||
				c.Deliveries[fulfill.DestNotify][fulfill.DeliveryPending] != 1 || c.PaymentIntents[pis[0].Status] != 1 {
				t.Errorf("%s: counts %+v", when, c)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	ro, err := Open(path, true, time.Second)
	if err != nil {
		t.Fatalf("read-only open of a format 4 store: %v", err)
	}
	check(ro, "format 4, read-only")
	// A session it never saw, and the whole file for migrate-store.
	if err := ro.View(func(tx store.Tx) error {
		_, ok, err := tx.Session("cs_unknown")
		if ok || err != nil {
			t.Errorf("format 4, read-only: a session never seen reads as %t, %v", ok, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	if err := ro.Export(func(it Item) error {
		if it.Kind == ItemSession {
			exported[it.Key] = true
		}
		return nil
	}); err != nil {
		t.Errorf("format 4, read-only: export: %v", err)
	}
	for _, r := range recs {
		if !exported[r.SessionID] {
			t.Errorf("format 4, read-only: export left out %s", r.SessionID)
		}
	}
	ro.Close()

	db, err := Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	check(db, "after the upgrade")
	var format int
	if err := db.db.View(func(tx *bbolt.Tx) error { format = formatOf(tx); return nil }); err != nil || format != Format {
		t.Fatalf("format after the upgrade: %d (%v), want %d", format, err, Format)
	}
	// Counters equal a count made from the records, old encoding and new.
	recounted := func() fulfill.Counts {
		var c fulfill.Counts
		if err := db.View(func(tx store.Tx) (err error) { c, err = tx.Counts(); return err }); err != nil {
			t.Fatal(err)
		}
		return c
	}
	before := recounted()
	// The fulfilled session is written again: now it is compressed; and
	// the PaymentIntent's status, now in its binary form.
	recs[0].Seq++
	pis[0].Status, pis[0].EventType, pis[0].LastError = "canceled", "payment_intent.canceled", "Your card was declined."
	if err := db.Update(func(tx store.Tx) error {
		if err := tx.PutPaymentIntent(pis[0]); err != nil {
			return err
		}
		return tx.PutSession(recs[0])
	}); err != nil {
		t.Fatal(err)
	}
	if c := recounted(); c.PaymentIntents["succeeded"] != 0 || c.PaymentIntents["canceled"] != 1 {
		t.Errorf("counts after the PaymentIntent's old value was replaced: %+v", c.PaymentIntents)
	}
	before = recounted()
	if err := db.Update(func(tx store.Tx) error { return tx.(*Tx).Recount() }); err != nil {
		t.Fatal(err)
	}
	if after := recounted(); !reflect.DeepEqual(before, after) {
		t.Errorf("counts after a recount: %+v, kept %+v", after, before)
	}
	check(db, "after a write")
	if err := db.db.View(func(tx *bbolt.Tx) error {
		if v := storedAs(t, tx, "sessions", "cs_done"); v[0] != deflateMark {
			t.Errorf("cs_done written after the upgrade is not compressed: %.20q", v)
		}
		if v := storedAs(t, tx, "payment_intents", "pi_1"); v[0] != intentMark {
			t.Errorf("pi_1 written after the upgrade is not in its binary form: %.20q", v)
		}
		if v := tx.Bucket([]byte("sessions")).Get([]byte("cs_dead")); v[0] != '{' {
			t.Errorf("cs_dead, not written since, was rewritten: %.20q", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestPaymentIntentForm: a PaymentIntent status reads back as it was
// written, whatever its time and text, and a value cut short is an error,
// never a status read wrong.
func TestPaymentIntentForm(t *testing.T) {
	at := time.Date(2026, 11, 30, 12, 0, 0, 999_999_999, time.UTC)
	for _, pi := range []fulfill.PaymentIntent{
		{ID: "pi_1", Status: "succeeded", EventID: "evt_1", EventType: "payment_intent.succeeded", At: at},
		{ID: "pi_2", Status: "requires_payment_method", LastError: strings.Repeat("Your card was declined. ", 200), EventID: "evt_2",
			EventType: "payment_intent.payment_failed", At: at.Truncate(time.Second)},
		{ID: "pi_3", Status: "canceled", Pruned: true},
		{ID: "pi_6", Status: "succeeded", EventType: "checkout.session.completed", At: at},
		{ID: "pi_4", Status: "succeeded", At: time.Unix(0, 0).UTC()},
		// An event's object without a status is recorded as it came.
		{ID: "pi_7", EventID: "evt_7", EventType: "payment_intent.processing", At: at},
		{ID: "pi_5", Status: "processing", At: time.Date(1969, 7, 20, 20, 17, 40, 5, time.UTC)},
	} {
		raw := encodeIntent(pi)

		t.Logf("%s: %d bytes", pi.ID, len(raw))
		got, err := DecodePaymentIntent(pi.ID, raw)
		if err != nil || got != pi {
			t.Errorf("%s read back as %+v (%v), want %+v", pi.ID, got, err, pi)
		}
		for n := 1; n < len(raw); n++ {
			if got, err := DecodePaymentIntent(pi.ID, raw[:n]); err == nil {
				t.Errorf("%s cut to %d of %d bytes read as %+v", pi.ID, n, len(raw), got)
			}
		}
		// A flags byte with bits no writer sets, or a byte too many.
		for _, bad := range [][]byte{append(bytes.Clone(raw[:len(raw)-1]), raw[len(raw)-1]|0x80), append(bytes.Clone(raw), 0)} {
			if got, err := DecodePaymentIntent(pi.ID, bad); err == nil {
				t.Errorf("%s with a corrupt end read as %+v", pi.ID, got)
			}
		}
	}
}
