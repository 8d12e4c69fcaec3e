package transfer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/store/pgstore"
	"github.com/fulfilld/fulfilld/internal/store/pgstore/pgtest"
	"github.com/fulfilld/fulfilld/internal/store/transfer"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// paid answers every session as complete and paid.
type paid struct{}

func (paid) GetSession(_ context.Context, id string) (*stripeapi.Session, error) {
	return &stripeapi.Session{ID: id, Status: "complete", PaymentStatus: "paid", JSON: []byte(`{"id":"` + id + `"}`)}, nil
}

// action counts runs by idempotency key; sessions named cs_fail… fail.
type action struct {
	mu   sync.Mutex
	runs map[string]int
}

func (a *action) Deliver(_ context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.runs[d.IdempotencyKey]++
	if strings.HasPrefix(d.IdempotencyKey, fulfill.IdempotencyKey("cs_fail")) {
		return fulfill.Outcome{Output: "no stock"}, errors.New("exit status 1")
	}
	return fulfill.Outcome{Output: "ok"}, nil
}

func (a *action) ran(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.runs[fulfill.IdempotencyKey(id)]
}

func fulfiller(db store.Store, act fulfill.Action, now func() time.Time) *fulfill.Fulfiller {
	return &fulfill.Fulfiller{DB: store.As[fulfill.Tx](db), Sessions: paid{}, Action: act, MaxAttempts: 1,
		Concurrency: 2, Now: now}
}

func update(t *testing.T, db store.Store, fn func(tx store.Tx) error) {
	t.Helper()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// buildBolt writes a bbolt store holding every kind of record, through the
// packages that write them in the daemon, and returns its path and now.
func buildBolt(t *testing.T) (string, time.Time) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fulfilld.db")
	db, err := boltstore.Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	old := now.Add(-100 * 24 * time.Hour)
	act := &action{runs: map[string]int{}}

	// Fulfilled 100 days ago, then pruned by retention to a tombstone; and
	// one fulfilled now, with its output kept.
	if _, err := fulfiller(db, act, func() time.Time { return old }).Fulfill(ctx, "cs_old", fulfill.TriggerManual, ""); err != nil {
		t.Fatal(err)
	}
	f := fulfiller(db, act, func() time.Time { return now })
	if _, err := f.Fulfill(ctx, "cs_done", fulfill.TriggerManual, ""); err != nil {
		t.Fatal(err)
	}
	// A dead letter: its one attempt failed.
	if rec, _ := f.Fulfill(ctx, "cs_fail1", fulfill.TriggerManual, ""); rec.State != fulfill.StateFailed {
		t.Fatalf("cs_fail1 is %s, want failed", rec.State)
	}
	update(t, db, func(tx store.Tx) error {
		if n, _, err := fulfill.Prune(tx, now.Add(-90*24*time.Hour), 100, false); err != nil || n != 1 {
			t.Fatalf("pruned %d records (%v), want the one fulfilled 100 days ago", n, err)
		}
		// Queued and due a minute ago; another due in an hour.
		for _, q := range []struct {
			id  string
			due time.Time
		}{{"cs_queued", now.Add(-time.Minute)}, {"cs_later", now.Add(time.Hour)}} {
			if _, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: q.id, EventID: "evt_" + q.id, Trigger: fulfill.TriggerEvent,
				At: q.due, SessionCreated: q.due}); err != nil {
				return err
			}
		}
		if _, err := fulfill.End(tx, "cs_expired", fulfill.StateExpired, "evt_exp", now); err != nil {
			return err
		}
		if err := fulfill.Await(tx, "cs_unpaid", now); err != nil {
			return err
		}
		if _, err := fulfill.EnqueueDelivery(tx, fulfill.DestNotify, "evt_exp", "checkout.session.expired",
			json.RawMessage(`{"id":"evt_exp","type":"checkout.session.expired"}`), now); err != nil {
			return err
		}
		if err := fulfill.RecordPaymentIntent(tx, fulfill.PaymentIntent{ID: "pi_1", Status: "requires_payment_method",
			LastError: "card declined", EventID: "evt_pi", EventType: "payment_intent.payment_failed", At: now}); err != nil {
			return err
		}
		for i, id := range []string{"evt_a", "evt_b", "evt_c"} {
			if err := cursor.MarkSeen(tx, id, now.Add(-time.Duration(i)*time.Hour)); err != nil {
				return err
			}
		}
		if err := cursor.Count(tx, map[[2]string]int{{"checkout.session.completed", "queued"}: 7, {"charge.refunded", "ignored"}: 2}); err != nil {
			return err
		}
		if err := cursor.RecordBad(tx, cursor.BadEvent{ID: "evt_bad", Type: "checkout.session.completed", Error: "no object id", SeenAt: now}); err != nil {
			return err
		}
		for _, d := range []time.Time{now.AddDate(0, 0, -45), now.AddDate(0, 0, -2), now} {
			if err := tx.AddUsage(d, stripeapi.Usage{Requests: map[string]int64{"GET /v1/events": 10}, ByStatus: map[string]int64{"200": 10}}); err != nil {
				return err
			}
		}
		if err := tx.PutLastSweep(poller.Sweep{At: now, Since: now.Add(-72 * time.Hour), Until: now, Listed: 4, Outcome: "ok",
			Recovered: map[string]int{"missed": 1}}); err != nil {
			return err
		}
		if err := tx.PutWebhookMisses(poller.WebhookMisses{Count: 1, Recent: []poller.WebhookMiss{{EventID: "evt_m", Type: "checkout.session.completed", Created: now}}}); err != nil {
			return err
		}
		if err := cursor.SavePoll(tx, cursor.Poll{At: now, Outcome: "ok", Listed: 3, New: 3}); err != nil {
			return err
		}
		return cursor.Save(tx, cursor.Position{Settled: now.Add(-10 * time.Minute), Tip: now})
	})
	return path, now
}

// TestCopyIntoPostgres moves a bbolt store with every kind of record into
// PostgreSQL: the figures are equal on both sides, a session fulfilled (or
// pruned to a tombstone) before the move is never run again by a fulfiller
// on PostgreSQL, a queued one is run once, a pending delivery keeps its
// event, and the bbolt file is left as it was.
func TestCopyIntoPostgres(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	path, now := buildBolt(t)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	src, err := boltstore.Open(path, true, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst := pgtest.OpenDSN(t, dsn, pgstore.Options{})
	batches := 0
	moved, err := transfer.Copy(dst, src, 4, func(int) { batches++ })
	if err != nil {
		t.Fatal(err)
	}
	want := transfer.Moved{boltstore.ItemSession: 7, boltstore.ItemDelivery: 1, boltstore.ItemPaymentIntent: 1,
		boltstore.ItemQueued: 3, boltstore.ItemSeen: 3, boltstore.ItemEventCount: 2, boltstore.ItemBadEvent: 1,
		boltstore.ItemUsageDay: 3, boltstore.ItemSweep: 1, boltstore.ItemMisses: 1, boltstore.ItemLastPoll: 1, boltstore.ItemPosition: 1}
	for k, n := range want {
		if moved[k] != n {
			t.Errorf("moved %d of %s, want %d (all: %v)", moved[k], k, n, moved)
		}
	}
	if batches < 6 {
		t.Errorf("%d transactions for 25 items at 4 a batch", batches)
	}
	var a, b transfer.Figures
	if err := src.View(func(tx store.Tx) (err error) { a, err = transfer.Tally(tx, now); return err }); err != nil {
		t.Fatal(err)
	}
	if err := dst.View(func(tx store.Tx) (err error) { b, err = transfer.Tally(tx, now); return err }); err != nil {
		t.Fatal(err)
	}
	if d := transfer.Diff(a, b); len(d) > 0 {
		t.Errorf("figures differ after the copy:\n%s", strings.Join(d, "\n"))
	}
	if a.Counts["sessions fulfilled"] != 2 || a.Counts["sessions failed"] != 1 || a.Counts["queued sessions"] != 2 {
		t.Errorf("the source's figures are not the store built: %v", a.Counts)
	}

	// The daemon on PostgreSQL: what was fulfilled stays fulfilled.
	act := &action{runs: map[string]int{}}
	f := fulfiller(dst, act, func() time.Time { return now })
	ctx := context.Background()
	for _, id := range []string{"cs_old", "cs_done"} {
		rec, err := f.Fulfill(ctx, id, fulfill.TriggerManual, "")
		if err != nil {
			t.Fatal(err)
		}
		if rec.State != fulfill.StateFulfilled || act.ran(id) != 0 {
			t.Errorf("%s after the move: %s, action ran %d times; want fulfilled and never run", id, rec.State, act.ran(id))
		}
	}
	wake := make(chan struct{})
	close(wake)
	if _, err := f.Run(ctx, fulfill.RunOptions{Wake: wake, UntilIdle: true}); err != nil {
		t.Fatal(err)
	}
	if act.ran("cs_queued") != 1 || act.ran("cs_later") != 0 || act.ran("cs_expired") != 0 || act.ran("cs_fail1") != 0 {
		t.Errorf("runs after the move: %v; want cs_queued once (it was due) and nothing else", act.runs)
	}
	err = dst.View(func(tx store.Tx) error {
		due, ok, err := tx.DueAt(fulfill.SessionQueue, "cs_later")
		if err != nil || !ok || !due.Equal(now.Add(time.Hour)) {
			t.Errorf("cs_later due %v (queued %v, %v), want %v", due, ok, err, now.Add(time.Hour))
		}
		d, ok, err := fulfill.GetDelivery(tx, fulfill.DestNotify, "evt_exp")
		if err != nil || !ok || d.State != fulfill.DeliveryPending || len(d.Event) == 0 {
			t.Errorf("pending delivery after the move: %+v (%v, %v); want pending with its event", d, ok, err)
		}
		if _, queued, _ := tx.DueAt(fulfill.DeliveryQueue, d.Key()); !queued {
			t.Error("the pending delivery is not queued after the move")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// A second copy into the same database is refused.
	if _, err := transfer.Copy(dst, src, 0, nil); !errors.Is(err, transfer.ErrNotEmpty) {
		t.Errorf("copy into a database that holds state: %v, want ErrNotEmpty", err)
	}
	src.Close()
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("the bbolt file changed")
	}
}
