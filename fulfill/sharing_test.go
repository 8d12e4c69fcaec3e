package fulfill_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// heldAction blocks each run until released, and records the runs.
type heldAction struct {
	started chan fulfill.Delivery
	release chan struct{}
	mu      sync.Mutex
	keys    []string
}

func newHeldAction() *heldAction {
	return &heldAction{started: make(chan fulfill.Delivery, 4), release: make(chan struct{})}
}

func (a *heldAction) Deliver(ctx context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	a.mu.Lock()
	a.keys = append(a.keys, d.IdempotencyKey)
	a.mu.Unlock()
	a.started <- d
	select {
	case <-a.release:
		return fulfill.Outcome{}, nil
	case <-ctx.Done():
		return fulfill.Outcome{}, ctx.Err()
	}
}

func (a *heldAction) runs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.keys...)
}

// laterDB is a store whose clock reads ahead: another instance looking at
// the store once a lease has run out.
type laterDB struct {
	fulfill.DB
	ahead time.Duration
}

type laterTx struct {
	fulfill.Tx
	ahead time.Duration
}

func (t laterTx) Now() (time.Time, error) {
	now, err := t.Tx.Now()
	return now.Add(t.ahead), err
}

func (d laterDB) View(fn func(fulfill.Tx) error) error {
	return d.DB.View(func(tx fulfill.Tx) error { return fn(laterTx{tx, d.ahead}) })
}

func (d laterDB) Update(fn func(fulfill.Tx) error) error {
	return d.DB.Update(func(tx fulfill.Tx) error { return fn(laterTx{tx, d.ahead}) })
}

func instance(db fulfill.DB, name string, action fulfill.Action) *fulfill.Fulfiller {
	return &fulfill.Fulfiller{DB: db, Sessions: &racingSource{answers: []string{"paid"}}, Action: action, MaxAttempts: 3,
		Sharing: fulfill.Sharing{Instance: name, Lease: time.Minute}}
}

// Two instances on one store: while one runs a session's action, the other
// does not start it, whoever asks; the action runs once.
func TestSharedStoreRunsASessionOnOneInstanceAtATime(t *testing.T) {
	db := ledger(openTestDB(t))
	actA, actB := newHeldAction(), newHeldAction()
	a, b := instance(db, "host-a:1", actA), instance(db, "host-b:2", actB)

	done := make(chan fulfill.Record, 1)
	go func() {
		rec, err := a.Fulfill(context.Background(), "cs_1", fulfill.TriggerManual, "")
		if err != nil {
			t.Error(err)
		}
		done <- rec
	}()
	<-actA.started
	rec, err := b.Fulfill(context.Background(), "cs_1", fulfill.TriggerManual, "")
	if err != nil {
		t.Fatal(err)
	}
	if !rec.InFlight || rec.Lease.Holder != "host-a:1" {
		t.Fatalf("b sees %+v; want the session in flight on host-a", rec)
	}
	close(actA.release)
	if rec := <-done; rec.State != fulfill.StateFulfilled || rec.Attempts != 1 {
		t.Fatalf("a ended with %+v", rec)
	}
	rec, err = b.Fulfill(context.Background(), "cs_1", fulfill.TriggerManual, "")
	if err != nil || rec.State != fulfill.StateFulfilled {
		t.Fatalf("b after a finished: %+v, %v", rec, err)
	}
	if got := len(actA.runs()) + len(actB.runs()); got != 1 {
		t.Fatalf("the action ran %d times; want once", got)
	}
}

// An instance that holds a session past its lease (it died, or paused) is
// taken over: the other repeats the attempt with the same idempotency key,
// and the late result of the first is not written over the second's.
func TestExpiredLeaseIsTakenOverWithTheSameKey(t *testing.T) {
	db := ledger(openTestDB(t))
	actA, actB := newHeldAction(), newHeldAction()
	a := instance(db, "host-a:1", actA)
	b := instance(laterDB{db, 2 * time.Minute}, "host-b:2", actB)

	done := make(chan error, 1)
	go func() {
		_, err := a.Fulfill(context.Background(), "cs_1", fulfill.TriggerManual, "")
		done <- err
	}()
	<-actA.started

	close(actB.release)
	rec, err := b.Fulfill(context.Background(), "cs_1", fulfill.TriggerManual, "")
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != fulfill.StateFulfilled || rec.Attempts != 2 {
		t.Fatalf("b's take-over ended with %+v; want fulfilled at attempt 2", rec)
	}
	close(actA.release)
	if err := <-done; !errors.Is(err, fulfill.ErrClaimLost) {
		t.Fatalf("a's late result: %v; want ErrClaimLost", err)
	}
	var final fulfill.Record
	if err := db.View(func(tx fulfill.Tx) (err error) { final, _, err = fulfill.Get(tx, "cs_1"); return err }); err != nil {
		t.Fatal(err)
	}
	if final.State != fulfill.StateFulfilled || final.Attempts != 2 || final.InFlight {
		t.Fatalf("record after both: %+v", final)
	}
	runs := append(actA.runs(), actB.runs()...)
	if len(runs) != 2 || runs[0] != "fulfilld-cs_1" || runs[1] != runs[0] {
		t.Fatalf("runs = %v; want two, both with the session's idempotency key", runs)
	}
}

// hookedSource answers every session paid, first running during (once):
// what another instance does while this one reads the session from Stripe.
type hookedSource struct {
	once   sync.Once
	during func()
}

func (s *hookedSource) GetSession(_ context.Context, id string) (*stripeapi.Session, error) {
	s.once.Do(s.during)
	return &stripeapi.Session{ID: id, Status: "complete", PaymentStatus: "paid", JSON: []byte(`{}`)}, nil
}

// An instance that looked at a session before another one fulfilled it, and
// reaches its own attempt after, does not run the action again nor write
// its stale view over the fulfilled record. (Found by the two-daemon test:
// sessions ran twice, both as attempt 1, on two live instances.)
func TestSessionFulfilledElsewhereWhileReadIsNotRunAgain(t *testing.T) {
	db := ledger(openTestDB(t))
	actA, actB := &countingAction{}, &countingAction{}
	a := instance(db, "host-a:1", actA)
	b := instance(db, "host-b:2", actB)
	b.Sessions = &hookedSource{during: func() {
		if rec, err := a.Fulfill(context.Background(), "cs_1", fulfill.TriggerEvent, "evt_1"); err != nil || rec.State != fulfill.StateFulfilled {
			t.Errorf("a: %+v, %v", rec, err)
		}
	}}
	rec, err := b.Fulfill(context.Background(), "cs_1", fulfill.TriggerEvent, "evt_1")
	if err != nil {
		t.Fatal(err)
	}
	if actB.runs != 0 || actA.runs != 1 {
		t.Errorf("the action ran %d time(s) on a and %d on b; want once, on a", actA.runs, actB.runs)
	}
	if rec.State != fulfill.StateFulfilled || rec.Attempts != 1 {
		t.Errorf("b answers %+v; want the record a fulfilled at attempt 1", rec)
	}
	var final fulfill.Record
	if err := db.View(func(tx fulfill.Tx) (err error) { final, _, err = fulfill.Get(tx, "cs_1"); return err }); err != nil {
		t.Fatal(err)
	}
	if final.State != fulfill.StateFulfilled || final.Attempts != 1 || final.InFlight {
		t.Errorf("record after both: %+v; want fulfilled at attempt 1", final)
	}
}

// A queue entry left for a session another instance has since fulfilled
// (one instance parks the entry until the lease of the other's attempt
// ends, and that attempt succeeds) is dropped when the queue reaches it,
// not offered again and again. (Found by the two-daemon test: status kept
// showing queued entries after every session was fulfilled.)
func TestQueuedEntryOfAFulfilledSessionIsDropped(t *testing.T) {
	db := ledger(openTestDB(t))
	act := &countingAction{}
	a := instance(db, "host-a:1", act)
	if rec, err := a.Fulfill(context.Background(), "cs_1", fulfill.TriggerEvent, "evt_1"); err != nil || rec.State != fulfill.StateFulfilled {
		t.Fatalf("fulfill: %+v, %v", rec, err)
	}
	if err := db.Update(func(tx fulfill.Tx) error { return tx.Schedule(fulfill.SessionQueue, "cs_1", time.Now()) }); err != nil {
		t.Fatal(err)
	}
	wake := make(chan struct{})
	close(wake)
	if _, err := a.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true}); err != nil {
		t.Fatal(err)
	}
	var queued int
	if err := db.View(func(tx fulfill.Tx) (err error) { queued, err = fulfill.QueueLen(tx); return err }); err != nil {
		t.Fatal(err)
	}
	if queued != 0 || act.runs != 1 {
		t.Errorf("after the queue's pass: %d queued, the action ran %d time(s); want 0 queued and one run", queued, act.runs)
	}
}

// afterView runs hook once, right after the first View: another instance
// writing between a look at a record and what is decided on it.
type afterView struct {
	fulfill.DB
	once sync.Once
	hook func(fulfill.Tx) error
}

func (d *afterView) View(fn func(fulfill.Tx) error) error {
	err := d.DB.View(fn)
	d.once.Do(func() {
		if herr := d.DB.Update(d.hook); herr != nil {
			panic(herr)
		}
	})
	return err
}

// A delivery looked at while dead-lettered, then retried from another host
// before the look's conclusion is written, stays queued: the stale look
// does not take the retried delivery out of the queue.
func TestStaleLookAtADeadLetterDoesNotUnqueueItsRetry(t *testing.T) {
	base := ledger(openTestDB(t))
	now := time.Now()
	if err := base.Update(func(tx fulfill.Tx) error {
		if _, err := fulfill.EnqueueDelivery(tx, fulfill.DestNotify, "evt_1", "checkout.session.expired", []byte(`{}`), now); err != nil {
			return err
		}
		rec, _, err := tx.EventDelivery(fulfill.DeliveryKey(fulfill.DestNotify, "evt_1"))
		if err != nil {
			return err
		}
		// Another instance dead-lettered it after this one found its
		// entry due.
		rec.State, rec.Attempts = fulfill.DeliveryFailed, 3
		return tx.PutEventDelivery(rec)
	}); err != nil {
		t.Fatal(err)
	}
	var db fulfill.DB
	db = &afterView{DB: base, hook: func(tx fulfill.Tx) error {
		_, err := fulfill.RetryDeliveries(tx, now, "evt_1")
		return err
	}}
	// The View the hook follows is the worker's look for due work, then
	// the attempt's own look: hook only after the attempt's.
	db = &skipViews{DB: db, skip: 1}
	act := &countingAction{}
	n := &fulfill.Deliverer{DB: db, Destinations: map[string]fulfill.Action{fulfill.DestNotify: act}, MaxAttempts: 3,
		Sharing: fulfill.Sharing{Instance: "host-a:1", Lease: time.Minute}}
	wake := make(chan struct{})
	close(wake)
	if _, err := n.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true}); err != nil {
		t.Fatal(err)
	}
	var rec fulfill.EventDelivery
	var queued bool
	if err := base.View(func(tx fulfill.Tx) (err error) {
		rec, _, err = tx.EventDelivery(fulfill.DeliveryKey(fulfill.DestNotify, "evt_1"))
		if err != nil {
			return err
		}
		_, queued, err = tx.DueAt(fulfill.DeliveryQueue, rec.Key())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if rec.State != fulfill.DeliverySent && !(rec.State == fulfill.DeliveryPending && queued) {
		t.Fatalf("the retried delivery is %s, queued %v: lost", rec.State, queued)
	}
}

// skipViews passes the first skip Views to the store directly, past the
// afterView beneath it.
type skipViews struct {
	fulfill.DB
	mu   sync.Mutex
	skip int
}

func (d *skipViews) View(fn func(fulfill.Tx) error) error {
	d.mu.Lock()
	pass := d.skip > 0
	d.skip--
	d.mu.Unlock()
	if pass {
		return d.DB.(*afterView).DB.View(fn)
	}
	return d.DB.View(fn)
}

// A session whose payment intent is being fulfilled on its own waits a
// while, on a shared store as on one's own: its queue entry is moved ahead,
// not left due, where the queue would offer it again at once and read the
// session from Stripe in a loop for as long as the payment intent waits.
func TestSharedSessionWaitsForItsBusyPaymentIntent(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	enqueue(t, db, now, "pi_1", "cs_1")
	if err := db.Update(func(tx store.Tx) error {
		pi, _, err := fulfill.Get(tx, "pi_1")
		if err != nil {
			return err
		}
		// Attempted on its own once; its retry is due later.
		pi.Attempts, pi.Updated = 1, now
		return tx.PutSession(pi)
	}); err != nil {
		t.Fatal(err)
	}
	act := &runsAction{}
	tick := 0 // the clock moves on, as it does
	f := &fulfill.Fulfiller{DB: ledger(db), Sessions: laggingStripe{}, Intents: laggingStripe{}, Action: act,
		MaxAttempts: 3, Concurrency: 1, Now: func() time.Time { tick++; return now.Add(time.Duration(tick) * time.Millisecond) },
		Sharing: fulfill.Sharing{Instance: "host-a:1", Lease: time.Minute}}
	if _, err := f.Fulfill(t.Context(), "cs_1", fulfill.TriggerEvent, "evt_cs_1"); err != nil {
		t.Fatal(err)
	}
	if runs := act.count("cs_1"); runs != 0 {
		t.Fatalf("the session's action ran %d times while its payment intent was busy", runs)
	}
	var due time.Time
	var queued bool
	if err := db.View(func(tx store.Tx) (err error) {
		due, queued, err = tx.DueAt(fulfill.SessionQueue, "cs_1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !queued || !due.After(now.Add(time.Second)) {
		t.Fatalf("cs_1 is queued %v, due %v: want queued after %v", queued, due, now)
	}
}

// readsPerUpdate counts the records each Update reads.
type readsPerUpdate struct {
	fulfill.DB
	most int
}

type countingTx struct {
	fulfill.Tx
	reads *int
}

func (t countingTx) Session(id string) (fulfill.Record, bool, error) {
	*t.reads++
	return t.Tx.Session(id)
}

func (d *readsPerUpdate) Update(fn func(fulfill.Tx) error) error {
	reads := 0
	err := d.DB.Update(func(tx fulfill.Tx) error { reads = 0; return fn(countingTx{tx, &reads}) })
	d.most = max(d.most, reads)
	return err
}

// Recover brings every cut-off attempt to the front of a long queue, a
// batch a transaction: on a shared store one write over a whole backfill's
// queue would hold every instance's writers (the lister's heartbeat too)
// back for as long as it takes.
func TestRecoverGoesThroughALongQueueInBatches(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	const n = 1200
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("cs_%04d", i)
	}
	enqueue(t, db, now, ids...)
	if err := db.Update(func(tx store.Tx) error {
		for i, id := range ids {
			if i%2 == 1 {
				continue
			}
			rec, _, err := fulfill.Get(tx, id)
			if err != nil {
				return err
			}
			rec.InFlight, rec.Attempts = true, 1
			if err := tx.PutSession(rec); err != nil {
				return err
			}
			if err := tx.Schedule(fulfill.SessionQueue, id, now.Add(24*time.Hour)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	counted := &readsPerUpdate{DB: ledger(db)}
	f := &fulfill.Fulfiller{DB: counted, Action: &countingAction{}, Now: func() time.Time { return now }}
	got, err := f.Recover()
	if err != nil {
		t.Fatal(err)
	}
	if got != n/2 {
		t.Fatalf("recovered %d; want %d", got, n/2)
	}
	if counted.most >= n {
		t.Fatalf("one transaction read %d records: the whole queue under the writers' lock", counted.most)
	}
	if err := db.View(func(tx store.Tx) error {
		for i, id := range ids {
			due, ok, err := tx.DueAt(fulfill.SessionQueue, id)
			if err != nil || !ok {
				return fmt.Errorf("%s: queued %v, %v", id, ok, err)
			}
			if i%2 == 0 && due.After(now) {
				return fmt.Errorf("%s was cut off and is still parked until %v", id, due)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
