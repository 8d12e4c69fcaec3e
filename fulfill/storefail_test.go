package fulfill_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/logtest"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/storehealth"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// errDiskFull stands for what a full disk makes bbolt's commit return.
var errDiskFull = errors.New("write fulfilld.db: no space left on device")

// flakyStore is the storage boundary with a switch: while failing, every
// write is refused as a full disk refuses it; reads go on.
type flakyStore struct {
	*boltstore.Store
	failing atomic.Bool
	writes  atomic.Int64 // refused writes
}

func (s *flakyStore) Update(fn func(store.Tx) error) error {
	if s.failing.Load() {
		s.writes.Add(1)
		return errDiskFull
	}
	return s.Store.Update(fn)
}

// Batch refuses as Update does while failing; otherwise the attempts'
// writes share commits, as in the daemon.
func (s *flakyStore) Batch(fn func(store.Tx) error) error {
	if s.failing.Load() {
		s.writes.Add(1)
		return errDiskFull
	}
	return s.Store.Batch(fn)
}

// guarded is the store under a flaky boundary, seen and scored as the
// daemon sees and scores a bbolt file: the fulfiller's attempts write
// through Batch (store.AsGrouped), everything else through Update.
func guarded(db *boltstore.Store, logger *slog.Logger) (*flakyStore, *storehealth.Guard[fulfill.Tx]) {
	flaky := &flakyStore{Store: db}
	return flaky, storehealth.New[fulfill.Tx](store.AsGrouped[fulfill.Tx](flaky), storehealth.NewHealth(logger))
}

// paidSource answers every retrieve with a paid session and counts them.
type paidSource struct{ calls atomic.Int64 }

func (s *paidSource) GetSession(_ context.Context, id string) (*stripeapi.Session, error) {
	s.calls.Add(1)
	return &stripeapi.Session{ID: id, Status: "complete", PaymentStatus: "paid", JSON: []byte(`{}`)}, nil
}

// runsAction counts runs per session and calls during (once) while the
// first run is "in the action".
type runsAction struct {
	mu     sync.Mutex
	runs   map[string]int
	during func()
}

func (a *runsAction) Deliver(_ context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.runs == nil {
		a.runs = map[string]int{}
	}
	a.runs[strings.TrimPrefix(d.IdempotencyKey, "fulfilld-")]++
	if a.during != nil {
		a.during()
		a.during = nil
	}
	return fulfill.Outcome{}, nil
}

func (a *runsAction) count(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.runs[id]
}

func enqueue(t *testing.T, db *boltstore.Store, now time.Time, ids ...string) {
	t.Helper()
	err := db.Update(func(tx store.Tx) error {
		for _, id := range ids {
			if _, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: id, EventID: "evt_" + id, Trigger: fulfill.TriggerEvent, At: now}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func stateOf(t *testing.T, db *boltstore.Store, id string) fulfill.Record {
	t.Helper()
	var rec fulfill.Record
	if err := db.View(func(tx store.Tx) (err error) { rec, _, err = fulfill.Get(tx, id); return err }); err != nil {
		t.Fatal(err)
	}
	return rec
}

// waitUntil waits for cond, checking it every few milliseconds, and fails
// the test after ten seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		<-time.After(5 * time.Millisecond)
	}
}

// A store that refuses every write (a full disk, a file system remounted
// read-only) stops new work instead of asking Stripe for the same sessions
// in a loop, and says so in one ERROR line; once it takes writes again every
// session is fulfilled exactly once.
func TestUnwritableStoreDoesNotSpin(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	ids := []string{"cs_1", "cs_2", "cs_3"}
	enqueue(t, db, now, ids...)
	var logs logtest.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	flaky, guard := guarded(db, logger)
	flaky.failing.Store(true)
	src, act := &paidSource{}, &runsAction{}
	f := &fulfill.Fulfiller{DB: guard, Sessions: src, Action: act, MaxAttempts: 3, Concurrency: 4,
		Now: func() time.Time { return now }, Logger: logger}

	// A daemon's queue for a while against the refusing store.
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	if _, err := f.Run(ctx, fulfill.RunOptions{Wake: make(chan struct{})}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("run: %v", err)
	}
	if n := src.calls.Load(); n > int64(len(ids)) {
		t.Errorf("%d session retrieves against a store that refuses writes, want at most one per queued session (%d)", n, len(ids))
	}
	if n := flaky.writes.Load(); n > 10 {
		t.Errorf("%d refused writes in 2.5s: the queue is not backing off", n)
	}
	if n := logs.Count("level=ERROR", "the store cannot be written"); n != 1 {
		t.Errorf("%d ERROR lines about the store, want 1:\n%s", n, logs.String())
	}
	if err := guard.Err(); err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Errorf("guard.Err() = %v, want the disk's error", err)
	}

	// A pass (run --once) on the refusing store stops with an error.
	wake := make(chan struct{})
	close(wake)
	if _, err := f.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true}); !errors.Is(err, storehealth.ErrUnwritable) {
		t.Errorf("a pass on a store that refuses writes returned %v, want ErrUnwritable", err)
	}

	// The disk is freed: everything is fulfilled, each exactly once.
	flaky.failing.Store(false)
	if _, err := f.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true}); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if rec := stateOf(t, db, id); rec.State != fulfill.StateFulfilled || act.count(id) != 1 {
			t.Errorf("%s: %s after %d action runs, want fulfilled after 1", id, rec.State, act.count(id))
		}
	}
	if guard.Err() != nil {
		t.Errorf("guard still failing after successful writes: %v", guard.Err())
	}
}

// The disk fills while the action runs: its success cannot be recorded.
// The action is not run again — not by the queue, not by a manual trigger —
// and the result is recorded as soon as the store takes writes again.
func TestResultThatCannotBeSavedIsNotRepeated(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	enqueue(t, db, now, "cs_1")
	flaky, guard := guarded(db, nil)
	src := &paidSource{}
	act := &runsAction{during: func() { flaky.failing.Store(true) }}
	f := &fulfill.Fulfiller{DB: guard, Sessions: src, Action: act, MaxAttempts: 3, Concurrency: 4,
		Now: func() time.Time { return now }}

	cancel, done := runDaemonQueue(f)
	waitUntil(t, "the result is kept in memory", func() bool { return f.Unsaved() == 1 })
	if rec := stateOf(t, db, "cs_1"); !rec.InFlight {
		t.Fatalf("store says %+v; the test wants the result unrecorded", rec)
	}

	// A person (or the landing page) asks again meanwhile.
	if _, err := f.Fulfill(context.Background(), "cs_1", fulfill.TriggerManual, ""); err == nil {
		t.Error("a manual fulfill while the result is unrecorded succeeded; want an error saying so")
	}
	if n := act.count("cs_1"); n != 1 {
		t.Fatalf("the action ran %d times while its result could not be saved, want 1", n)
	}

	flaky.failing.Store(false)
	waitUntil(t, "the kept result is saved", func() bool { return stateOf(t, db, "cs_1").State == fulfill.StateFulfilled })
	cancel()
	<-done
	if f.Unsaved() != 0 {
		t.Errorf("%d results still kept after the store recovered", f.Unsaved())
	}

	// A restart finds nothing cut off and runs nothing again.
	g := &fulfill.Fulfiller{DB: ledger(db), Sessions: src, Action: act, MaxAttempts: 3, Concurrency: 4, Now: func() time.Time { return now }}
	if n, err := g.Recover(); err != nil || n != 0 {
		t.Errorf("Recover after the result was saved: %d cut off, %v", n, err)
	}
	if _, err := g.Fulfill(context.Background(), "cs_1", fulfill.TriggerManual, ""); err != nil {
		t.Fatal(err)
	}
	if n := act.count("cs_1"); n != 1 {
		t.Errorf("the action ran %d times in all, want 1", n)
	}
}

// A notification whose record cannot be read is not dropped from the queue:
// it is delivered once the record reads again.
func TestUnreadableNotificationStaysQueued(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	if err := db.Update(func(tx store.Tx) error {
		_, err := fulfill.EnqueueDelivery(tx, fulfill.DestNotify, "evt_1", "checkout.session.expired", []byte(`{"id":"evt_1"}`), now)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	torn := &tornNotes{DB: ledger(db)}
	torn.torn.Store(true)
	act := &runsAction{}
	n := &fulfill.Deliverer{DB: torn, Destinations: map[string]fulfill.Action{fulfill.DestNotify: act}, MaxAttempts: 3, Concurrency: 2, Now: func() time.Time { return now }}
	wake := make(chan struct{})
	close(wake)
	// A pass (run --once) that could not attempt it does not call itself
	// complete.
	if _, err := n.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true}); err == nil ||
		!strings.Contains(err.Error(), "could not be attempted") {
		t.Fatalf("a pass that could not read a queued notification returned %v, want an error saying so", err)
	}
	var queued bool
	_ = db.View(func(tx store.Tx) (err error) {
		_, queued, err = tx.DueAt(fulfill.DeliveryQueue, "notify:evt_1")
		return err
	})
	if !queued || act.count("notify-evt_1") != 0 {
		t.Fatalf("queued %v after %d deliveries; want still queued, none delivered", queued, act.count("notify-evt_1"))
	}

	// The record reads again (the disk's error was passing).
	torn.torn.Store(false)
	if _, err := n.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true}); err != nil {
		t.Fatal(err)
	}
	if got := act.count("notify-evt_1"); got != 1 {
		t.Errorf("notification delivered %d times, want 1", got)
	}
}

// tornNotes is the storage boundary with notification records that cannot
// be read while torn is set (a bad sector, a torn write).
type tornNotes struct {
	fulfill.DB
	torn atomic.Bool
}

func (d *tornNotes) View(fn func(fulfill.Tx) error) error {
	return d.DB.View(func(tx fulfill.Tx) error { return fn(tornTx{tx, &d.torn}) })
}

func (d *tornNotes) Update(fn func(fulfill.Tx) error) error {
	return d.DB.Update(func(tx fulfill.Tx) error { return fn(tornTx{tx, &d.torn}) })
}

type tornTx struct {
	fulfill.Tx
	torn *atomic.Bool
}

func (t tornTx) EventDelivery(id string) (fulfill.EventDelivery, bool, error) {
	if t.torn.Load() {
		return fulfill.EventDelivery{}, false, errors.New("read delivery " + id + ": unexpected end of JSON input")
	}
	return t.Tx.EventDelivery(id)
}

// The disk fills during A's action and frees up while B's runs: B's save
// succeeds and so clears the store's failing state. A's kept result is
// still saved at once — not left in memory for a restart to repeat.
func TestKeptResultSavedWhenAnotherWriteSucceeds(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	enqueue(t, db, now, "cs_a", "cs_b")
	flaky, guard := guarded(db, nil)
	releaseB := make(chan struct{})
	act := &gatedAction{runs: map[string]int{}, gate: map[string]func(){
		"cs_a": func() { flaky.failing.Store(true) },
		"cs_b": func() { <-releaseB },
	}}
	f := &fulfill.Fulfiller{DB: guard, Sessions: &paidSource{}, Action: act, MaxAttempts: 3, Concurrency: 2,
		Now: func() time.Time { return now }}
	cancel, done := runDaemonQueue(f)
	waitUntil(t, "A's result is kept in memory", func() bool { return f.Unsaved() == 1 })
	flaky.failing.Store(false)
	close(releaseB)
	waitUntil(t, "A's kept result is saved", func() bool { return stateOf(t, db, "cs_a").State == fulfill.StateFulfilled })
	cancel()
	<-done

	g := &fulfill.Fulfiller{DB: ledger(db), Sessions: &paidSource{}, Action: act, MaxAttempts: 3, Concurrency: 2,
		Now: func() time.Time { return now }}
	if n, err := g.Recover(); err != nil || n != 0 {
		t.Errorf("a restart finds %d attempts cut off (%v), want none", n, err)
	}
	if act.count("cs_a") != 1 || act.count("cs_b") != 1 {
		t.Errorf("actions ran %v, want each once", act.runs)
	}
}

// A real full disk: an empty transaction still commits (bbolt rewrites its
// meta page in place), only writes of data fail. The probe's success must
// not count as recovery: one ERROR in the log, never a "writes again", and
// no flood of new work.
func TestFullDiskWhereEmptyCommitsSucceed(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	ids := []string{"cs_1", "cs_2", "cs_3"}
	enqueue(t, db, now, ids...)
	disk := &fullDisk{Store: db}
	disk.full.Store(true)
	var logs logtest.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	guard := storehealth.New[fulfill.Tx](store.AsGrouped[fulfill.Tx](disk), storehealth.NewHealth(logger))
	src, act := &paidSource{}, &runsAction{}
	f := &fulfill.Fulfiller{DB: guard, Sessions: src, Action: act, MaxAttempts: 3, Concurrency: 4,
		Now: func() time.Time { return now }, Logger: logger}
	ctx, cancel := context.WithTimeout(context.Background(), 3500*time.Millisecond)
	defer cancel()
	_, _ = f.Run(ctx, fulfill.RunOptions{Wake: make(chan struct{})})
	if n := logs.Count("level=ERROR", "the store cannot be written"); n != 1 {
		t.Errorf("%d ERROR lines about the store, want 1:\n%s", n, logs.String())
	}
	if n := logs.Count("writes again"); n != 0 {
		t.Errorf("the log says the store recovered %d times on a disk that stayed full:\n%s", n, logs.String())
	}
	// One retrieve per queued session before the failure is known, then one
	// per probe that lets a single item through (1 s, 2 s apart).
	if n := src.calls.Load(); n > int64(len(ids))+3 {
		t.Errorf("%d session retrieves against a full disk, want at most %d", n, len(ids)+3)
	}
	for _, id := range ids {
		if act.count(id) != 0 {
			t.Errorf("%s's action ran %d times though its start could not be recorded", id, act.count(id))
		}
	}
	if guard.Err() == nil {
		t.Error("the store counts as working on a full disk")
	}
}

// gatedAction runs a session's gate (once) while "in the action".
type gatedAction struct {
	mu   sync.Mutex
	runs map[string]int
	gate map[string]func()
}

func (a *gatedAction) Deliver(_ context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	id := strings.TrimPrefix(d.IdempotencyKey, "fulfilld-")
	a.mu.Lock()
	a.runs[id]++
	g := a.gate[id]
	delete(a.gate, id)
	a.mu.Unlock()
	if g != nil {
		g()
	}
	return fulfill.Outcome{}, nil
}

func (a *gatedAction) count(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.runs[id]
}

// fullDisk is the storage boundary of a full disk: a transaction that
// writes data fails at commit; an empty one commits.
type fullDisk struct {
	store.Store
	full atomic.Bool
}

var errRollback = errors.New("roll back: the disk is full")

func (s *fullDisk) Update(fn func(store.Tx) error) error { return s.commit(s.Store.Update, fn) }

// Batch is Update's full disk for writes that share a commit: the
// functions run, and the commit they share fails.
func (s *fullDisk) Batch(fn func(store.Tx) error) error {
	return s.commit(s.Store.(store.Batcher).Batch, fn)
}

// commit runs fn through run (Update or Batch); while the disk is full, a
// transaction that wrote data fails as its commit would.
func (s *fullDisk) commit(run func(func(store.Tx) error) error, fn func(store.Tx) error) error {
	if !s.full.Load() {
		return run(fn)
	}
	wrote := false
	err := run(func(tx store.Tx) error {
		if err := fn(writeSpy{Tx: tx, wrote: &wrote}); err != nil {
			return err
		}
		if wrote {
			return errRollback
		}
		return nil
	})
	if errors.Is(err, errRollback) {
		return errDiskFull
	}
	return err
}

// writeSpy notes whether a transaction wrote anything.
type writeSpy struct {
	store.Tx
	wrote *bool
}

func (w writeSpy) PutSession(r fulfill.Record) error { *w.wrote = true; return w.Tx.PutSession(r) }
func (w writeSpy) PutEventDelivery(n fulfill.EventDelivery) error {
	*w.wrote = true
	return w.Tx.PutEventDelivery(n)
}
func (w writeSpy) Schedule(q fulfill.Queue, id string, due time.Time) error {
	*w.wrote = true
	return w.Tx.Schedule(q, id, due)
}
func (w writeSpy) Unschedule(q fulfill.Queue, id string) error {
	*w.wrote = true
	return w.Tx.Unschedule(q, id)
}

// runDaemonQueue works f's queue as the daemon does, until cancel; done
// says how Run ended.
func runDaemonQueue(f *fulfill.Fulfiller) (cancel func(), done <-chan error) {
	ctx, stop := context.WithCancel(context.Background())
	out := make(chan error, 1)
	go func() {
		_, err := f.Run(ctx, fulfill.RunOptions{Wake: make(chan struct{})})
		out <- err
	}()
	return stop, out
}

// failsAction fails every attempt; the first fills the disk as it runs.
type failsAction struct {
	runsAction
	disk *flakyStore
}

func (a *failsAction) Deliver(ctx context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	_, _ = a.runsAction.Deliver(ctx, d)
	if a.count(strings.TrimPrefix(d.IdempotencyKey, "fulfilld-")) == 1 {
		a.disk.failing.Store(true)
	}
	return fulfill.Outcome{}, errors.New("warehouse API answered 503")
}

// A failed attempt whose result the store refused is kept; the next trigger
// records it first and then goes on as after any recorded failure: the
// attempt it starts is the second, not a first one again, and nothing of
// the kept one is lost.
func TestKeptFailureRecordedBeforeTheNextAttempt(t *testing.T) {
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	db := openTestDB(t)
	enqueue(t, db, now, "cs_1")
	flaky, guard := guarded(db, nil)
	act := &failsAction{disk: flaky}
	f := &fulfill.Fulfiller{DB: guard, Sessions: &paidSource{}, Action: act, MaxAttempts: 3, Concurrency: 4,
		Now: func() time.Time { return now }}
	rec, err := f.Fulfill(context.Background(), "cs_1", fulfill.TriggerManual, "")
	if err == nil || f.Unsaved() != 1 {
		t.Fatalf("first attempt: %v, %d kept; want its failure kept in memory", err, f.Unsaved())
	}
	// Meanwhile a trigger is told, with the record as the store has it.
	if rec, err = f.Fulfill(context.Background(), "cs_1", fulfill.TriggerManual, ""); err == nil || !rec.InFlight || rec.Attempts != 1 {
		t.Errorf("a trigger while the result is kept: %+v, %v; want the stored in-flight record and an error", rec, err)
	}
	flaky.failing.Store(false)
	if rec, _ = f.Fulfill(context.Background(), "cs_1", fulfill.TriggerManual, ""); rec.Attempts != 2 || rec.InFlight || rec.LastError == "" {
		t.Errorf("after the store recovered: %+v; want the second attempt recorded after the first", rec)
	}
	if n := act.count("cs_1"); n != 2 || f.Unsaved() != 0 {
		t.Errorf("the action ran %d times, %d kept; want 2 and none", n, f.Unsaved())
	}
}
