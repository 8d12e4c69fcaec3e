package poller_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/internal/stripesim"
	"github.com/fulfilld/fulfilld/poller"
)

// TestBackfillFulfillsEachPaidSessionOnce is the core promise: a mixed day of
// traffic, backfilled, runs the action exactly once for each paid session,
// with every line item, and never for the others.
func TestBackfillFulfillsEachPaidSessionOnce(t *testing.T) {
	h := newHarness(t)
	h.poller.Types = append(append([]string{}, defaultTypes...), "customer.created")
	sim := h.sim
	base := t0.Add(-20 * time.Hour)
	want := map[string]int{} // session → line items it must be fulfilled with
	never := map[string]fulfill.State{}

	for i := range 30 {
		at := base.Add(time.Duration(i) * 17 * time.Minute)
		items := 1 + i%3
		if i%10 == 0 {
			items = 250
		}
		want[h.paid(at, items)] = items
	}
	// Many events in one second, and ids that are not ordered.
	same := t0.Add(-3 * time.Hour)
	for range 15 {
		want[h.paid(same, 2)] = 2
	}
	for range 5 { // unpaid, then paid asynchronously
		id := sim.CreateSession(stripesim.SessionParams{Created: base, LineItems: 3})
		sim.CompleteSession(id, "unpaid", base.Add(time.Hour))
		sim.AsyncPaymentSucceeded(id, base.Add(2*time.Hour))
		want[id] = 3
	}
	for range 4 { // unpaid, then the async payment fails
		id := sim.CreateSession(stripesim.SessionParams{Created: base, LineItems: 1})
		sim.CompleteSession(id, "unpaid", base.Add(time.Hour))
		sim.AsyncPaymentFailed(id, base.Add(3*time.Hour))
		never[id] = fulfill.StatePaymentFailed
	}
	for range 3 { // unpaid, still waiting
		id := sim.CreateSession(stripesim.SessionParams{Created: base, LineItems: 1})
		sim.CompleteSession(id, "unpaid", base.Add(time.Hour))
		never[id] = fulfill.StateAwaitingPayment
	}
	for range 4 { // abandoned
		id := sim.CreateSession(stripesim.SessionParams{Created: base, LineItems: 1})
		sim.ExpireSession(id, base.Add(24*time.Hour-time.Minute))
		never[id] = fulfill.StateExpired
	}
	for range 3 { // free orders
		id := sim.CreateSession(stripesim.SessionParams{Created: base, LineItems: 1})
		sim.CompleteSession(id, "no_payment_required", base.Add(time.Hour))
		want[id] = 1
	}
	piFailed := sim.PaymentIntentEvent("payment_intent.payment_failed", "pi_failed1", base, "Your card was declined.")
	sim.PaymentIntentEvent("payment_intent.succeeded", "pi_ok1", base, "")
	sim.AddEvent("", "customer.created", base, json.RawMessage(`{"id":"cus_1","object":"customer"}`))
	sim.AddEvent("", "charge.succeeded", base, json.RawMessage(`{"id":"ch_1","object":"charge"}`)) // not in types[]

	pres, res := h.pass(t0.Add(-24 * time.Hour))

	for id, items := range want {
		runs := h.action.calls(id)
		if len(runs) != 1 {
			t.Errorf("%s: action ran %d times, want exactly once", id, len(runs))
			continue
		}
		if runs[0].LineItems != items || runs[0].HasMore {
			t.Errorf("%s: action got %d line items (has_more %v), want all %d", id, runs[0].LineItems, runs[0].HasMore, items)
		}
		if runs[0].IdempotencyKey != fulfill.IdempotencyKey(id) || runs[0].Trigger != "event" || runs[0].EventID == "" || runs[0].Attempt != "1" {
			t.Errorf("%s: action environment %+v", id, runs[0])
		}
		if rec := h.record(id); rec.State != fulfill.StateFulfilled {
			t.Errorf("%s: state %s, want fulfilled", id, rec.State)
		}
	}
	for id, state := range never {
		if n := len(h.action.calls(id)); n != 0 {
			t.Errorf("%s: action ran %d times for a session that was never paid", id, n)
		}
		if rec := h.record(id); rec.State != state {
			t.Errorf("%s: state %s, want %s", id, rec.State, state)
		}
	}
	if h.action.overlaps != 0 {
		t.Errorf("%d overlapping runs for one session", h.action.overlaps)
	}
	if res.Fulfilled != len(want) || res.Failed != 0 {
		t.Errorf("pass result %+v, want %d fulfilled", res, len(want))
	}
	err := h.db.View(func(tx store.Tx) error {
		pi, ok, _ := fulfill.GetPaymentIntent(tx, "pi_failed1")
		if !ok || pi.Status != "requires_payment_method" || pi.LastError != "Your card was declined." || pi.EventID != piFailed {
			t.Errorf("payment intent record %+v", pi)
		}
		counts := map[string]uint64{}
		rows, err := cursor.Counts(tx)
		if err != nil {
			return err
		}
		for _, c := range rows {
			counts[c.Type+"/"+c.Outcome] += c.Count
		}
		if counts["customer.created/ignored"] != 1 {
			t.Errorf("ignored events counted %v", counts)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	pos := h.position()
	if want := t0.Add(-h.poller.Lookback); !pos.Settled.Equal(want) || pos.Scans != nil || pos.Rescanned != nil {
		t.Errorf("cursor after a complete pass: %+v, want complete_until %s", pos, want)
	}
	t.Logf("listed %d events in %d pages; sim saw %d requests", pres.Listed, pres.Pages, sim.Stats().Total)

	// Rerun over the same window, after a restart: nothing runs again.
	before := h.action.total()
	h.restart()
	h.clock.Advance(time.Minute)
	h.pass(t0.Add(-24 * time.Hour))
	if got := h.action.total(); got != before {
		t.Errorf("rerun over the same window ran the action %d more times, want 0", got-before)
	}
}

// TestLateEventsWithinLookbackAreHandled: Stripe's list is eventually
// consistent; an event can show up after newer ones. One that appears
// within events.lookback of its creation is still handled.
func TestLateEventsWithinLookbackAreHandled(t *testing.T) {
	h := newHarness(t)
	h.pass(time.Time{}) // start at now
	var late []string
	for i := range 8 {
		h.clock.Advance(30 * time.Second)
		now := h.clock.Now()
		h.paid(now.Add(-time.Second), 1)
		// Created 20 s ago, visible only 1–9 minutes after creation: after
		// the tip has moved past its created time.
		created := now.Add(-20 * time.Second)
		late = append(late, h.paid(created, 1, stripesim.VisibleAt(created.Add(time.Duration(i+1)*time.Minute))))
		h.pass(time.Time{})
	}
	for range 30 { // keep polling for 15 minutes of simulated time
		h.clock.Advance(30 * time.Second)
		h.pass(time.Time{})
	}
	for _, id := range late {
		if n := len(h.action.calls(id)); n != 1 {
			t.Errorf("late %s: action ran %d times, want 1", id, n)
		}
	}
	if got, want := h.action.total(), 16; got != want {
		t.Errorf("action ran %d times in all, want %d", got, want)
	}
}

// TestSteadyStateListsEachEventAboutTwice: the re-scan costs one more listing
// per event, not one per poll.
func TestSteadyStateListsEachEventAboutTwice(t *testing.T) {
	h := newHarness(t)
	h.pass(time.Time{})
	h.poller.MinRescan = 2 * time.Minute
	created, listed := 0, 0
	for range 120 { // an hour at one poll every 30 s
		h.clock.Advance(30 * time.Second)
		for range 3 {
			h.paid(h.clock.Now().Add(-2*time.Second), 1)
			created++
		}
		res, err := h.poller.Poll(context.Background(), false)
		if err != nil {
			t.Fatal(err)
		}
		listed += res.Listed
	}
	// Events of the last lookback are not re-scanned yet.
	ratio := float64(listed) / float64(created)
	if ratio > 2.2 {
		t.Errorf("listed %d events for %d created: %.2f listings each, want about 2", listed, created, ratio)
	}
	t.Logf("%d events created, %d listed (%.2f each), %d list requests over 120 polls", created, listed, ratio, h.sim.Stats().ByEndpoint["GET /v1/events"])
}

// TestConcurrentTriggersRunTheActionOnce: two events, the landing page, a
// manual fulfill and the queue, all at once, for one session.
func TestConcurrentTriggersRunTheActionOnce(t *testing.T) {
	h := newHarness(t)
	id := h.paid(t0.Add(-time.Hour), 3)
	h.action.block = make(chan struct{})
	var wg sync.WaitGroup
	triggers := []string{fulfill.TriggerManual, fulfill.TriggerHTTP, fulfill.TriggerEvent, fulfill.TriggerReconcile}
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := h.ful.Fulfill(context.Background(), id, triggers[i%len(triggers)], ""); err != nil {
				t.Error(err)
			}
		}()
	}
	// Release the one running action once it has started.
	deadline := time.Now().Add(10 * time.Second)
	for len(h.action.calls(id)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the action never started")
		}
		time.Sleep(time.Millisecond)
	}
	close(h.action.block)
	wg.Wait()
	if n := len(h.action.calls(id)); n != 1 || h.action.overlaps != 0 {
		t.Fatalf("action ran %d times (%d overlapping), want once", n, h.action.overlaps)
	}
	if rec := h.record(id); rec.State != fulfill.StateFulfilled {
		t.Fatalf("state %s", rec.State)
	}
}

// TestFailingActionDoesNotHoldTheStream: a session whose action keeps failing
// waits in the queue and ends dead-lettered; the cursor and other sessions
// move on; `retry` brings it back.
func TestFailingActionDoesNotHoldTheStream(t *testing.T) {
	h := newHarness(t)
	bad := h.paid(t0.Add(-2*time.Hour), 1)
	var broken atomic.Bool
	broken.Store(true)
	h.action.fail = func(id string) error {
		if id == bad && broken.Load() {
			return errors.New("warehouse API down")
		}
		return nil
	}
	h.pass(t0.Add(-3 * time.Hour))
	good := h.paid(h.clock.Advance(time.Second), 1)
	for range 4 {
		h.clock.Advance(2 * time.Minute) // past the test's one-minute backoff
		h.pass(time.Time{})
	}
	if rec := h.record(bad); rec.State != fulfill.StateFailed || rec.Attempts != 3 || rec.LastError == "" {
		t.Fatalf("failing session: %+v, want failed after 3 attempts", rec)
	}
	if rec := h.record(good); rec.State != fulfill.StateFulfilled {
		t.Fatalf("later session is %s: a failing action held the stream back", rec.State)
	}
	runs := h.action.calls(bad)
	for i, r := range runs {
		if r.Attempt != fmt.Sprint(i+1) || r.IdempotencyKey != fulfill.IdempotencyKey(bad) {
			t.Errorf("attempt %d: %+v", i+1, r)
		}
	}
	broken.Store(false)
	if err := h.db.Update(func(tx store.Tx) error {
		_, err := fulfill.Retry(tx, h.clock.Now())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	h.pass(time.Time{})
	if rec := h.record(bad); rec.State != fulfill.StateFulfilled {
		t.Fatalf("after retry: %s", rec.State)
	}
}

// TestBadInputIsRecordedNotFatal: a malformed event, an event for a session
// that no longer exists, and odd payloads are recorded and counted; the
// stream moves on.
func TestBadInputIsRecordedNotFatal(t *testing.T) {
	h := newHarness(t)
	at := t0.Add(-time.Hour)
	h.sim.AddEvent("evt_malformed1", "checkout.session.completed", at, json.RawMessage(`"oops"`))
	h.sim.AddEvent("evt_wrongobj", "checkout.session.completed", at, json.RawMessage(`{"id":"ch_1","object":"charge"}`))
	h.sim.AddEvent("evt_pi_bad", "payment_intent.succeeded", at, json.RawMessage(`[]`))
	h.sim.AddEvent("evt_newfield", "checkout.session.completed", at,
		json.RawMessage(`{"id":"cs_test_unknown1","object":"checkout.session","brand_new_field":{"x":[1,2]}}`))
	gone := h.paid(at, 1)
	h.sim.DeleteSession(gone)
	ok := h.paid(at.Add(time.Minute), 2)

	h.pass(t0.Add(-2 * time.Hour))

	if rec := h.record(ok); rec.State != fulfill.StateFulfilled {
		t.Errorf("good session: %s", rec.State)
	}
	if rec := h.record(gone); rec.State != fulfill.StateFailed || rec.LastError == "" {
		t.Errorf("deleted session: %+v, want failed with the reason", rec)
	}
	// The event names a session Stripe does not know: same as deleted.
	if rec := h.record("cs_test_unknown1"); rec.State != fulfill.StateFailed {
		t.Errorf("unknown session: %s", rec.State)
	}
	err := h.db.View(func(tx store.Tx) error {
		bad, n, err := cursor.BadEvents(tx, 10)
		if err != nil {
			return err
		}
		ids := map[string]bool{}
		for _, b := range bad {
			ids[b.ID] = true
		}
		if n != 3 || !ids["evt_malformed1"] || !ids["evt_wrongobj"] || !ids["evt_pi_bad"] {
			t.Errorf("bad events recorded: %d %+v", n, bad)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if pos := h.position(); pos.Settled.Before(t0.Add(-h.poller.Lookback)) {
		t.Errorf("cursor stuck at %s", pos.Settled)
	}
}

// TestThrottlingAndServerErrorsLoseNothing: 429s and 5xx on every endpoint
// are retried; every paid session is fulfilled once.
func TestThrottlingAndServerErrorsLoseNothing(t *testing.T) {
	h := newHarness(t, func(o *stripesim.Options, _ *harness) {
		o.Fault = func(r *http.Request, n int64) *stripesim.Fault {
			switch n % 7 {
			case 2:
				return &stripesim.Fault{Status: 429, Header: http.Header{"Stripe-Rate-Limited-Reason": {"global-rate"}}}
			case 4:
				return &stripesim.Fault{Status: 503}
			case 6:
				return &stripesim.Fault{Status: 500, Header: http.Header{"Stripe-Should-Retry": {"true"}}}
			}
			return nil
		}
	})
	var ids []string
	for i := range 150 {
		ids = append(ids, h.paid(t0.Add(-time.Duration(i+2)*time.Minute), 1+i%12))
	}
	h.pass(t0.Add(-6 * time.Hour))
	// A session whose retrieve still failed after the transport's retries
	// waits for its backoff (a minute here); the next pass takes it.
	for range 3 {
		h.clock.Advance(2 * time.Minute)
		h.pass(time.Time{})
	}
	for _, id := range ids {
		if n := len(h.action.calls(id)); n != 1 {
			t.Errorf("%s: action ran %d times", id, n)
		}
	}
	st := h.sim.Stats()
	if st.ByStatus[429] == 0 || st.ByStatus[503] == 0 {
		t.Fatalf("faults were not injected: %+v", st.ByStatus)
	}
}

// TestRestartReListsAtMostOnePage: a backfill cut off part-way resumes after
// the last committed page.
func TestRestartReListsAtMostOnePage(t *testing.T) {
	h := newHarness(t)
	for i := range 1000 {
		h.paid(t0.Add(-5*time.Hour+time.Duration(i)*10*time.Second), 1)
	}
	h.poller.SliceLen = 6 * time.Hour // one slice: resumption is by page
	if _, err := h.poller.Start(context.Background(), t0.Add(-6*time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Cut the backfill off after the 4th page of the re-scan.
	lister := &cutoff{src: h.client, after: 4}
	h.poller.Events = lister
	if _, err := h.poller.Poll(context.Background(), true); !errors.Is(err, errCut) {
		t.Fatalf("poll: %v", err)
	}
	pos := h.position()
	if len(pos.Scans) != 1 || pos.Scans[0].Pages == 0 {
		t.Fatalf("no page position saved: %+v", pos)
	}
	h.restart()
	counter := &cutoff{src: h.client, after: -1}
	h.poller.Events = counter
	res, err := h.poller.Poll(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	// 1000 events in 100-event pages: 10 pages + the tip listing.
	if total := lister.pages + counter.pages; total > 10+2+1 {
		t.Errorf("listed %d pages in all for 1000 events (%d before the cut, %d after), want at most one page re-listed",
			total, lister.pages, counter.pages)
	}
	if res.New == 0 {
		t.Fatal("nothing new after the restart")
	}
	var queued int
	_ = h.db.View(func(tx store.Tx) (err error) { queued, err = fulfill.QueueLen(tx); return err })
	if queued != 1000 {
		t.Fatalf("%d sessions queued, want 1000", queued)
	}
}

var errCut = errors.New("cut off")

// cutoff passes pages through and fails after a number of them.
type cutoff struct {
	src   poller.EventSource
	after int
	pages int
}

func (c *cutoff) ListEvents(ctx context.Context, q stripeapi.EventQuery) (stripeapi.EventPage, error) {
	if c.after >= 0 && c.pages >= c.after+1 { // +1: the tip listing
		return stripeapi.EventPage{}, errCut
	}
	c.pages++
	return c.src.ListEvents(ctx, q)
}

// TestFirstStartBeginsNow: with no cursor and no --since, older events are
// not handled; --since later backfills them.
func TestFirstStartBeginsNow(t *testing.T) {
	h := newHarness(t)
	old := h.paid(t0.Add(-time.Hour), 1)
	h.pass(time.Time{})
	if n := len(h.action.calls(old)); n != 0 {
		t.Fatalf("an event from before the first start was handled without --since")
	}
	h.clock.Advance(time.Minute)
	h.pass(t0.Add(-2 * time.Hour))
	if n := len(h.action.calls(old)); n != 1 {
		t.Fatalf("--since did not backfill: %d runs", n)
	}
}
