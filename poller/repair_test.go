package poller_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/internal/stripesim"
	"github.com/fulfilld/fulfilld/poller"
)

const grace = 15 * time.Minute

// repairer is repair mode (forward.undelivered_only) over the harness's
// store, wired as the daemon wires it: the sweep on Stripe's clock as the
// client learns it, and the delivery runner with the repair destination.
func (h *harness) repairer(url string, types []string) (*poller.Reconciler, *fulfill.Deliverer) {
	rec := &poller.Reconciler{
		DB: store.As[poller.Tx](h.db), Sessions: h.client, Events: h.client, Types: defaultTypes,
		Now: h.clock.Now, Clock: poller.ClientClock{Client: h.client}, RelayOnly: true,
		Repair: &poller.Repair{Types: types, Grace: grace},
	}
	handler := &fulfill.URL{URL: url, Secret: forwardSecret, Timeout: 300 * time.Millisecond,
		ContentType: "application/json; charset=utf-8"}
	d := &fulfill.Deliverer{
		DB:           store.As[fulfill.Tx](h.db),
		Destinations: map[string]fulfill.Action{fulfill.DestRepair: handler, fulfill.DestForward: handler},
		Routes:       fulfill.Routes{}, MaxAttempts: 3, Concurrency: 4, Now: h.clock.Now,
		Backoff: func(int) time.Duration { return time.Minute },
	}
	return rec, d
}

func sweep(t *testing.T, rec *poller.Reconciler, since time.Time) *poller.RepairReport {
	t.Helper()
	sw, err := rec.Sweep(context.Background(), since)
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	if sw.Repair == nil {
		t.Fatal("a repair-mode sweep reported no repair")
	}
	return sw.Repair
}

func newReceiver(t *testing.T) (*webhookReceiver, string) {
	recv := &webhookReceiver{t: t, mode: "up", delivered: map[string]int{}, types: map[string]string{}, bodies: map[string][]byte{}}
	srv := httptest.NewServer(recv)
	t.Cleanup(srv.Close)
	return recv, srv.URL + "/webhook"
}

// completed emits checkout.session.completed for a new paid session.
func (h *harness) completed(at time.Time, opts ...stripesim.EventOpt) string {
	id := h.sim.CreateSession(stripesim.SessionParams{Created: at.Add(-time.Minute), LineItems: 1})
	return h.sim.CompleteSession(id, "paid", at, opts...)
}

func wantDelivered(t *testing.T, recv *webhookReceiver, want map[string]int) {
	t.Helper()
	got, _ := recv.snapshot()
	if len(got) != len(want) {
		t.Errorf("the handler got %v, want %v", got, want)
		return
	}
	for id, n := range want {
		if got[id] != n {
			t.Errorf("the handler got %s %d times, want %d (all: %v)", id, got[id], n, got)
		}
	}
}

// TestRepairForwardsOnlyWhatStripeCouldNotDeliver: of the events in a
// sweep's window, only those of forward.types that Stripe reports as not
// delivered and that are older than forward.grace — on Stripe's clock,
// with the host's an hour ahead — reach the handler, signed, as listed.
// A second sweep, a sweep after a restart, and a sweep once the grace has
// passed for the recent one each forward nothing twice.
func TestRepairForwardsOnlyWhatStripeCouldNotDeliver(t *testing.T) {
	stripe := stripesim.NewClock(t0)
	h := newHarness(t, onStripesClock(stripe))
	h.clock.Advance(time.Hour) // on the host's clock the recent event would be past the grace
	recv, url := newReceiver(t)
	types := []string{poller.TypeCompleted, poller.TypeAsyncSucceeded, poller.TypeExpired}
	rec, d := h.repairer(url, types)

	failed := stripesim.DeliveryFailed()
	missed := h.completed(t0.Add(-2*time.Hour), failed)
	h.completed(t0.Add(-2 * time.Hour)) // Stripe delivered it
	expired := h.sim.ExpireSession(h.sim.CreateSession(stripesim.SessionParams{Created: t0.Add(-4 * time.Hour)}), t0.Add(-3*time.Hour), failed)
	h.sim.PaymentIntentEvent("payment_intent.payment_failed", "pi_other", t0.Add(-2*time.Hour), "declined", failed) // not a forwarded type
	recent := h.completed(t0.Add(-5*time.Minute), failed)                                                           // Stripe may still deliver it
	h.completed(t0.Add(-80*time.Hour), failed)                                                                      // before the window
	h.sim.AddEvent("", poller.TypeCompleted, t0.Add(-time.Hour), []byte(`{"object":"charge","id":"ch_1"}`), failed) // malformed

	r := sweep(t, rec, stripe.Now().Add(-72*time.Hour))
	if r.Listed != 3 || r.Queued != 2 || r.Malformed != 1 || r.Before != 0 || r.Waiting != 2 {
		t.Errorf("first sweep: %+v; want 3 listed, 2 queued, 1 malformed, 2 waiting", *r)
	}
	if want := stripe.Now().Add(-grace); !r.Until.Equal(want) {
		t.Errorf("the sweep listed up to %s, want forward.grace before Stripe's now (%s)", r.Until, want)
	}
	if res := runDeliveries(t, d); res.Fulfilled != 2 {
		t.Errorf("delivered %d, want 2", res.Fulfilled)
	}
	wantDelivered(t, recv, map[string]int{missed: 1, expired: 1})

	// The body is the event exactly as Stripe's list returned it.
	no := false
	page, err := h.client.ListEvents(context.Background(), stripeapi.EventQuery{Types: types, DeliverySuccess: &no})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range page.Events {
		if ev.ID == missed && !bytes.Equal(ev.Raw, recv.bodies[missed]) {
			t.Errorf("the handler got\n%s\nnot the event as listed\n%s", recv.bodies[missed], ev.Raw)
		}
	}

	r = sweep(t, rec, stripe.Now().Add(-72*time.Hour))
	runDeliveries(t, d)
	if r.Queued != 0 || r.Before != 2 || r.Repaired != 2 || r.Waiting != 0 {
		t.Errorf("second sweep: %+v; want nothing queued, 2 queued before, 2 repaired", *r)
	}
	wantDelivered(t, recv, map[string]int{missed: 1, expired: 1})

	// Once the grace has passed for it, the recent one is Stripe's no more.
	stripe.Advance(grace)
	h.clock.Advance(grace)
	if r = sweep(t, rec, stripe.Now().Add(-72*time.Hour)); r.Queued != 1 {
		t.Errorf("the sweep after the grace queued %d, want the recent event", r.Queued)
	}
	runDeliveries(t, d)
	wantDelivered(t, recv, map[string]int{missed: 1, expired: 1, recent: 1})

	// A restart forgets everything but the store.
	h.restart()
	rec, d = h.repairer(url, types)
	if r = sweep(t, rec, stripe.Now().Add(-72*time.Hour)); r.Queued != 0 || r.Before != 3 || r.Repaired != 3 {
		t.Errorf("the sweep after a restart: %+v; want nothing queued, 3 repaired before", *r)
	}
	runDeliveries(t, d)
	wantDelivered(t, recv, map[string]int{missed: 1, expired: 1, recent: 1})
}

// TestRepairRetriesThenDeadLetters: a handler that fails at first gets the
// event at a later attempt; one that fails every attempt leaves the event
// dead-lettered, which later sweeps do not requeue and `retry evt_…` does.
func TestRepairRetriesThenDeadLetters(t *testing.T) {
	h := newHarness(t)
	recv, url := newReceiver(t)
	rec, d := h.repairer(url, defaultTypes)
	failed := stripesim.DeliveryFailed()
	first := h.completed(t0.Add(-time.Hour), failed)

	recv.set("500")
	sweep(t, rec, t0.Add(-72*time.Hour))
	for range 2 {
		if res := runDeliveries(t, d); res.Fulfilled != 0 {
			t.Fatalf("delivered while the handler answered 500")
		}
		h.clock.Advance(2 * time.Minute)
	}
	recv.set("up")
	runDeliveries(t, d)
	wantDelivered(t, recv, map[string]int{first: 1})
	record := func(id string) fulfill.EventDelivery {
		var n fulfill.EventDelivery
		if err := h.db.View(func(tx store.Tx) (err error) {
			n, _, err = fulfill.GetDelivery(tx, fulfill.DestRepair, id)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := record(first); n.State != fulfill.DeliverySent || n.Attempts != 3 {
		t.Errorf("the repair of %s: %s after %d attempts, want sent at the third", first, n.State, n.Attempts)
	}

	second := h.completed(h.clock.Now().Add(-time.Hour), failed)
	recv.set("500")
	sweep(t, rec, t0.Add(-72*time.Hour))
	var res fulfill.PassResult
	for range 3 {
		res = runDeliveries(t, d)
		h.clock.Advance(2 * time.Minute)
	}
	if res.Failed != 1 || record(second).State != fulfill.DeliveryFailed {
		t.Fatalf("after 3 failed attempts: %+v, record %+v; want dead-lettered", res, record(second))
	}
	recv.set("up")
	if r := sweep(t, rec, t0.Add(-72*time.Hour)); r.Queued != 0 || r.DeadLettered != 1 || r.Repaired != 1 {
		t.Errorf("the sweep after the dead letter: %+v; want nothing queued, 1 dead-lettered, 1 repaired", *r)
	}
	runDeliveries(t, d)
	wantDelivered(t, recv, map[string]int{first: 1})

	if err := h.db.Update(func(tx store.Tx) error {
		_, err := fulfill.RetryDeliveries(tx, h.clock.Now(), second)
		return err
	}); err != nil {
		t.Fatalf("retry %s: %v", second, err)
	}
	runDeliveries(t, d)
	wantDelivered(t, recv, map[string]int{first: 1, second: 1})
}

// TestRepairAfterRetention: a repaired event's record cut to a tombstone
// by store.retention still keeps a sweep from forwarding it again; a
// record deleted past Stripe's 30 days is of an event no list returns.
func TestRepairAfterRetention(t *testing.T) {
	h := newHarness(t)
	recv, url := newReceiver(t)
	rec, d := h.repairer(url, defaultTypes)
	ev := h.completed(t0.Add(-time.Hour), stripesim.DeliveryFailed())
	sweep(t, rec, t0.Add(-72*time.Hour))
	runDeliveries(t, d)

	h.clock.Advance(2 * 24 * time.Hour)
	fdb := store.As[fulfill.Tx](h.db)
	if n, err := fulfill.PruneSettled(context.Background(), fdb, h.clock.Now().Add(-24*time.Hour), false); err != nil || n != 1 {
		t.Fatalf("prune with store.retention 1d: %d, %v; want the repair cut to a tombstone", n, err)
	}
	if r := sweep(t, rec, h.clock.Now().Add(-72*time.Hour)); r.Listed != 1 || r.Queued != 0 {
		t.Errorf("the sweep after retention: %+v; want the event listed and not queued", *r)
	}
	runDeliveries(t, d)
	wantDelivered(t, recv, map[string]int{ev: 1})

	// With store.retention 90d the record goes for good, long after Stripe
	// stopped listing its event: reconcile --since 100d finds nothing.
	h2 := newHarness(t)
	rec, d = h2.repairer(url, defaultTypes)
	ev2 := h2.completed(t0.Add(-time.Hour), stripesim.DeliveryFailed())
	sweep(t, rec, t0.Add(-72*time.Hour))
	runDeliveries(t, d)
	h2.clock.Advance(91 * 24 * time.Hour)
	if n, err := fulfill.PruneSettled(context.Background(), store.As[fulfill.Tx](h2.db), h2.clock.Now().Add(-90*24*time.Hour), true); err != nil || n != 1 {
		t.Fatalf("prune with store.retention 90d: %d, %v; want the record deleted", n, err)
	}
	if r := sweep(t, rec, h2.clock.Now().Add(-100*24*time.Hour)); r.Listed != 0 {
		t.Errorf("a sweep past Stripe's retention listed %d events", r.Listed)
	}
	runDeliveries(t, d)
	wantDelivered(t, recv, map[string]int{ev: 1, ev2: 1})
}

// TestRepairAfterForward: a shop that ran forward mode and switches to
// repair mode gets none of the events the stream forwarded again — they
// are exactly the ones Stripe could not deliver to the same handler.
func TestRepairAfterForward(t *testing.T) {
	h := newHarness(t)
	recv, url := newReceiver(t)
	ev := h.completed(t0.Add(-2*time.Hour), stripesim.DeliveryFailed())
	fwd := h.forwarder(url)
	h.pass(t0.Add(-3 * time.Hour))
	runDeliveries(t, fwd)
	wantDelivered(t, recv, map[string]int{ev: 1})

	rec, d := h.repairer(url, defaultTypes)
	if r := sweep(t, rec, t0.Add(-72*time.Hour)); r.Listed != 1 || r.Queued != 0 || r.Before != 1 {
		t.Errorf("the repair sweep after forward mode: %+v; want the event listed and not queued", *r)
	}
	runDeliveries(t, d)
	wantDelivered(t, recv, map[string]int{ev: 1})
}

// TestRepairSweepReads: a repair sweep is one request per 100 undelivered
// events of the window (and one for a window with none; none for a window
// younger than the grace), every forwarded type in one request; the webhook-miss report it replaces cost the same, and
// hourly sweeps stay well inside the smallest automatic read budget.
func TestRepairSweepReads(t *testing.T) {
	h := newHarness(t)
	_, url := newReceiver(t)
	rec, _ := h.repairer(url, defaultTypes)
	count := func(f func()) (all, misses int) {
		before := len(h.sim.Requests())
		f()
		for _, r := range h.sim.Requests()[before:] {
			all++
			if r.Query.Get("delivery_success") == "false" {
				misses++
				if r.Query.Get("types[8]") == "" || r.Query.Get("limit") != "100" {
					t.Errorf("a repair listing without all 9 types in one request, 100 a page: %v", r.Query)
				}
			}
		}
		return all, misses
	}
	h.sim.ExpireSession(h.sim.CreateSession(stripesim.SessionParams{Created: t0.Add(-100 * time.Hour)}), t0.Add(-99*time.Hour))
	count(func() { sweep(t, rec, t0.Add(-72*time.Hour)) }) // learns Stripe's clock
	if all, misses := count(func() { sweep(t, rec, t0.Add(-72*time.Hour)) }); all != 1 || misses != 1 {
		t.Errorf("a sweep of a window with nothing undelivered sent %d requests (%d listings), want 1", all, misses)
	}
	// reconcile --since 10m with a 15m grace: nothing is old enough yet.
	if all, _ := count(func() { sweep(t, rec, t0.Add(-10*time.Minute)) }); all != 0 {
		t.Errorf("a sweep whose window is younger than forward.grace sent %d requests, want none", all)
	}
	const undelivered = 250
	for i := range undelivered {
		at := t0.Add(-time.Duration(i+1) * 15 * time.Minute)
		h.completed(at, stripesim.DeliveryFailed())
		h.completed(at) // delivered: never listed
	}
	all, misses := count(func() { sweep(t, rec, t0.Add(-72*time.Hour)) })
	if want := (undelivered + 99) / 100; all != want || misses != want {
		t.Errorf("a sweep of %d undelivered events sent %d requests (%d listings), want %d", undelivered, all, misses, want)
	}
	// Hourly, the default reconcile.schedule, inside the smallest automatic
	// budget with room for the polls.
	if perDay, budget := 24*int64(all), stripeapi.AutoReadBudget(0)/30; perDay > budget/2 {
		t.Errorf("hourly sweeps read %d a day, more than half the smallest automatic budget's %d a day", perDay, budget)
	}
}

// TestMeasureRepairSweepReads measures the requests one repair sweep sends
// for windows of 1 to 30 days with a given number of undelivered events a
// day: the figures in the README. FULFILLD_MEASURE=1 runs it.
func TestMeasureRepairSweepReads(t *testing.T) {
	if os.Getenv("FULFILLD_MEASURE") == "" {
		t.Skip("a measurement; set FULFILLD_MEASURE=1 to run it")
	}
	for _, perDay := range []int{0, 10, 100, 1000} {
		h := newHarness(t)
		rec, _ := h.repairer("http://127.0.0.1:1/webhook", defaultTypes)
		for i := range perDay * 30 {
			h.completed(t0.Add(-time.Duration(i+1)*24*time.Hour/time.Duration(perDay)), stripesim.DeliveryFailed())
		}
		sweep(t, rec, t0.Add(-time.Hour)) // learns Stripe's clock
		line := fmt.Sprintf("%4d undelivered a day:", perDay)
		for _, days := range []int{1, 3, 7, 30} {
			before := h.sim.Stats().Total
			sweep(t, rec, t0.Add(-time.Duration(days)*24*time.Hour))
			line += fmt.Sprintf("  %dd window %d reads", days, h.sim.Stats().Total-before)
		}
		t.Log(line)
	}
}

// TestScheduledRepairSweepsLeaveNoGap: the scheduled sweep lists
// reconcile.window back, and repair has no other path than the sweeps (the
// stream forwards nothing), so a sweep must start where the last one's
// listing stopped when that is further back: an event created inside
// forward.grace before a sweep, with the next sweep a window later (a
// @daily schedule with a 24h window, or the daemon stopped for a day), is
// repaired all the same, and one that a failed sweep did not get to is
// listed by the next.
func TestScheduledRepairSweepsLeaveNoGap(t *testing.T) {
	stripe := stripesim.NewClock(t0)
	h := newHarness(t, onStripesClock(stripe))
	recv, url := newReceiver(t)
	rec, d := h.repairer(url, defaultTypes)
	const window = 24 * time.Hour
	scheduled := func() *poller.RepairReport {
		t.Helper()
		return sweep(t, rec, rec.ScheduledSince(stripe.Now().Add(-window)))
	}
	failed := stripesim.DeliveryFailed()
	early := h.completed(t0.Add(-time.Hour), failed)
	edge := h.completed(t0.Add(-5*time.Minute), failed) // Stripe's to deliver at the first sweep
	if r := scheduled(); r.Queued != 1 {
		t.Fatalf("first sweep: %+v; want only the event past the grace", *r)
	}

	for _, gap := range []time.Duration{window, 3 * window} { // a day's schedule; a three days' stop
		stripe.Advance(gap)
		h.clock.Advance(gap)
		scheduled()
	}
	runDeliveries(t, d)
	wantDelivered(t, recv, map[string]int{early: 1, edge: 1})

	// A sweep that stops half-way (Stripe's listing fails) covers
	// nothing for sure: the next one starts where it started.
	late := h.completed(stripe.Now().Add(-20*time.Minute), failed)
	h.sim.SetFault(func(r *http.Request, _ int64) *stripesim.Fault {
		if r.URL.Query().Get("delivery_success") == "false" {
			return &stripesim.Fault{Status: http.StatusBadRequest}
		}
		return nil
	})
	_, err := rec.Sweep(context.Background(), rec.ScheduledSince(stripe.Now().Add(-window)))
	h.sim.SetFault(nil)
	if err == nil {
		t.Fatal("the sweep did not fail")
	}
	stripe.Advance(2 * window)
	h.clock.Advance(2 * window)
	scheduled()
	runDeliveries(t, d)
	wantDelivered(t, recv, map[string]int{early: 1, edge: 1, late: 1})
}
