package storetest

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

// Run is the contract every backend of the store must pass, whatever its
// engine: open returns a fresh, empty store that the test may close.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("rollback keeps nothing", func(t *testing.T) { testRollback(t, open(t)) })
	t.Run("records come back as written", func(t *testing.T) { testRoundTrip(t, open(t)) })
	t.Run("indexes honour their limits", func(t *testing.T) { testLimits(t, open(t)) })
	t.Run("bad events are bounded", func(t *testing.T) { testBadBound(t, open(t)) })
	t.Run("cursor", func(t *testing.T) { testCursor(t, open(t)) })
	t.Run("queues", func(t *testing.T) { testQueues(t, open(t)) })
	t.Run("kept counts equal the records", func(t *testing.T) { testCounts(t, open) })
	t.Run("api usage", func(t *testing.T) { testUsage(t, open(t)) })
	t.Run("payments per day", func(t *testing.T) { testPayments(t, open(t)) })
	t.Run("sweeps", func(t *testing.T) { testSweeps(t, open(t)) })
}

var t0 = time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)

func update(t *testing.T, s store.Store, fn func(tx store.Tx) error) {
	t.Helper()
	if err := s.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func view(t *testing.T, s store.Store, fn func(tx store.Tx) error) {
	t.Helper()
	if err := s.View(fn); err != nil {
		t.Fatal(err)
	}
}

// A transaction whose function fails leaves nothing behind: the cursor
// never moves without the events it stands for.
func testRollback(t *testing.T, s store.Store) {
	errCrash := errors.New("crash half-way")
	err := s.Update(func(tx store.Tx) error {
		if _, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: "cs_1", EventID: "evt_1", Trigger: fulfill.TriggerEvent, At: t0}); err != nil {
			return err
		}
		if err := tx.MarkSeen("evt_1", t0); err != nil {
			return err
		}
		if err := cursor.Save(tx, cursor.Position{Settled: t0, Tip: t0}); err != nil {
			return err
		}
		return errCrash
	})
	if !errors.Is(err, errCrash) {
		t.Fatalf("Update returned %v, want the function's error", err)
	}
	view(t, s, func(tx store.Tx) error {
		_, ok, err := tx.Session("cs_1")
		seen, _ := tx.Seen("evt_1", t0)
		pos, _ := cursor.Load(tx)
		n, _ := tx.QueueLen(fulfill.SessionQueue)
		c, _ := tx.Counts()
		if ok || seen || !pos.IsZero() || n != 0 || c.Sessions[fulfill.StatePending] != 0 {
			t.Errorf("after a rolled-back transaction: session %v, seen %v, position %+v, queue %d, pending %d (%v)",
				ok, seen, pos, n, c.Sessions[fulfill.StatePending], err)
		}
		return nil
	})
}

func testCursor(t *testing.T, s store.Store) {
	pos := cursor.Position{Settled: t0, Tip: t0.Add(time.Minute)}
	pos.Record(cursor.Slice{From: t0, To: t0.Add(time.Hour), StartingAfter: "evt_9", Pages: 2}, false)
	update(t, s, func(tx store.Tx) error {
		if err := cursor.Save(tx, pos); err != nil {
			return err
		}
		skew := -12.5
		if err := cursor.SavePoll(tx, cursor.Poll{At: t0, Outcome: "ok", Listed: 3, LastSuccess: t0, ClockSkew: &skew}); err != nil {
			return err
		}
		for i := range 5 {
			if err := tx.MarkSeen(fmt.Sprintf("evt_%d", i), t0.Add(time.Duration(i)*time.Hour)); err != nil {
				return err
			}
		}
		if err := tx.MarkSeen("evt_0", t0); err != nil { // again: counted once
			return err
		}
		if err := tx.CountEvents(map[[2]string]int{{"checkout.session.completed", "queued"}: 2, {"customer.created", "ignored"}: 1}); err != nil {
			return err
		}
		if err := tx.CountEvents(map[[2]string]int{{"checkout.session.completed", "queued"}: 3}); err != nil {
			return err
		}
		for i := range 3 {
			if err := tx.RecordBad(cursor.BadEvent{ID: fmt.Sprintf("evt_bad%d", i), Type: "x", SeenAt: t0.Add(time.Duration(i) * time.Second)}); err != nil {
				return err
			}
		}
		return nil
	})
	update(t, s, func(tx store.Tx) error {
		got, err := cursor.Load(tx)
		if err != nil {
			return err
		}
		if !got.Settled.Equal(pos.Settled) || !got.Tip.Equal(pos.Tip) || len(got.Scans) != 1 || got.Scans[0].StartingAfter != "evt_9" {
			t.Errorf("position read back as %+v, want %+v", got, pos)
		}
		poll, err := cursor.LoadPoll(tx)
		if err != nil || poll.Listed != 3 || poll.ClockSkew == nil || *poll.ClockSkew != -12.5 {
			t.Errorf("last poll read back as %+v (%v)", poll, err)
		}
		if n, _ := tx.SeenCount(); n != 5 {
			t.Errorf("seen count %d, want 5", n)
		}
		if n, err := tx.ForgetSeen(t0.Add(4*time.Hour), 2); err != nil || n != 2 {
			t.Errorf("forgot %d seen events (%v), want the limit, 2", n, err)
		}
		if n, err := tx.ForgetSeen(t0.Add(2*time.Hour), 100); err != nil || n != 0 {
			t.Errorf("forgot %d more seen events (%v), want none: the 2 oldest went first", n, err)
		}
		if seen, _ := tx.Seen("evt_1", t0); seen {
			t.Error("a forgotten event is still seen")
		}
		if seen, _ := tx.Seen("evt_3", t0.Add(3*time.Hour)); !seen {
			t.Error("an event created after the edge was forgotten")
		}
		if n, _ := tx.SeenCount(); n != 3 {
			t.Errorf("seen count after forgetting %d, want 3", n)
		}
		counts, err := tx.EventCounts()
		want := []cursor.EventCount{{Type: "checkout.session.completed", Outcome: "queued", Count: 5}, {Type: "customer.created", Outcome: "ignored", Count: 1}}
		if err != nil || !slices.Equal(counts, want) {
			t.Errorf("event counts %+v (%v), want %+v", counts, err, want)
		}
		bad, total, err := tx.BadEvents(2)
		if err != nil || total != 3 || len(bad) != 2 || bad[0].ID != "evt_bad2" {
			t.Errorf("bad events %+v of %d (%v), want the newest 2 of 3", bad, total, err)
		}
		return nil
	})
}

func testQueues(t *testing.T, s store.Store) {
	q := fulfill.SessionQueue
	var none map[string]bool
	update(t, s, func(tx store.Tx) error {
		for i, id := range []string{"c", "a", "b"} {
			if err := tx.Schedule(q, id, t0.Add(time.Duration(i)*time.Minute)); err != nil {
				return err
			}
		}
		if err := tx.Schedule(q, "a", t0.Add(10*time.Minute)); err != nil { // moved, not doubled
			return err
		}
		return tx.Schedule(fulfill.DeliveryQueue, "forward:evt_1", t0) // another queue
	})
	view(t, s, func(tx store.Tx) error {
		due, err := tx.Due(q, t0.Add(5*time.Minute), 10, none)
		if err != nil || !slices.Equal(due, []string{"c", "b"}) {
			t.Errorf("due %v (%v), want [c b] earliest first", due, err)
		}
		due, _ = tx.Due(q, t0.Add(time.Hour), 10, map[string]bool{"c": true})
		if !slices.Equal(due, []string{"b", "a"}) {
			t.Errorf("due skipping c: %v, want [b a]", due)
		}
		next, _ := tx.NextDue(q, map[string]bool{"c": true})
		if !next.Equal(t0.Add(2 * time.Minute)) {
			t.Errorf("next due %v, want b's", next)
		}
		if at, ok, _ := tx.DueAt(q, "a"); !ok || !at.Equal(t0.Add(10*time.Minute)) {
			t.Errorf("a due at %v (%v), want its new time", at, ok)
		}
		n, _ := tx.QueueLen(q)
		ids, _ := tx.Queued(q)
		sort.Strings(ids)
		if n != 3 || !slices.Equal(ids, []string{"a", "b", "c"}) {
			t.Errorf("queue holds %v (length %d), want a b c", ids, n)
		}
		return nil
	})
	update(t, s, func(tx store.Tx) error {
		if err := tx.Unschedule(q, "b"); err != nil {
			return err
		}
		return tx.Unschedule(q, "nothing") // not queued: no error
	})
	view(t, s, func(tx store.Tx) error {
		n, _ := tx.QueueLen(q)
		_, ok, _ := tx.DueAt(q, "b")
		if m, _ := tx.QueueLen(fulfill.DeliveryQueue); n != 2 || ok || m != 1 {
			t.Errorf("after unscheduling b: length %d, b queued %v, delivery queue %d", n, ok, m)
		}
		return nil
	})
}

// testCounts runs a random mix of every transition a record can take —
// queued, ended, awaiting, attempted, fulfilled, dead-lettered, retried,
// pruned; notifications sent and failed; PaymentIntent statuses — with
// transactions that fail half-way (a crash, as far as the store is
// concerned), then checks the kept counts and indexes against the records
// themselves.
func testCounts(t *testing.T, open func(t *testing.T) store.Store) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) {
			s := open(t)
			rng := rand.New(rand.NewPCG(seed, 42))
			now := t0
			errCrash := errors.New("crash half-way")
			sessions, events := 40, 40
			for step := range 2000 {
				now = now.Add(time.Duration(rng.IntN(120)) * time.Second)
				id := fmt.Sprintf("cs_%d", rng.IntN(sessions))
				if rng.IntN(4) == 0 {
					// A PaymentIntent fulfilled on its own shares the
					// ledger and is counted apart.
					id = fmt.Sprintf("pi_f%d", rng.IntN(sessions))
				}
				evt := fmt.Sprintf("evt_%d", rng.IntN(events))
				crash := rng.IntN(10) == 0
				err := s.Update(func(tx store.Tx) error {
					var err error
					switch rng.IntN(11) {
					case 0, 1:
						_, err = fulfill.Enqueue(tx, fulfill.Request{SessionID: id, EventID: evt, Trigger: fulfill.TriggerEvent, At: now, Recovered: rng.IntN(4) == 0})
					case 2:
						_, err = fulfill.End(tx, id, []fulfill.State{fulfill.StatePaymentFailed, fulfill.StateExpired}[rng.IntN(2)], evt, now)
					case 3:
						err = fulfill.Await(tx, id, now)
					case 4, 5: // an attempt starts, or ends
						rec, ok, gerr := tx.Session(id)
						if gerr != nil || !ok {
							return gerr
						}
						rec.Updated = now
						switch rng.IntN(5) {
						case 4:
							if !fulfill.IsPaymentIntentID(id) {
								return nil
							}
							rec.InFlight, rec.State, rec.Owner = false, fulfill.StateOwned, "cs_owner"
						case 0:
							rec.InFlight, rec.Attempts = true, rec.Attempts+1
						case 1:
							rec.InFlight, rec.State, rec.FulfilledAt, rec.Output = false, fulfill.StateFulfilled, now, "shipped"
						case 2:
							rec.InFlight, rec.State, rec.LastError = false, fulfill.StateFailed, "exit 1"
						default:
							rec.InFlight = false
						}
						err = tx.PutSession(rec)
					case 6:
						if _, rerr := fulfill.Retry(tx, now, id); rerr != nil {
							return nil // not failed: refused, nothing changed
						}
					case 7:
						_, err = fulfill.EnqueueDelivery(tx, fulfill.Destinations[rng.IntN(len(fulfill.Destinations))], evt,
							"checkout.session.expired", []byte(`{"id":"`+evt+`"}`), now)
					case 8:
						n, ok, gerr := fulfill.GetDelivery(tx, fulfill.Destinations[rng.IntN(len(fulfill.Destinations))], evt)
						if gerr != nil || !ok {
							return gerr
						}
						n.State, n.Updated = fulfill.DeliveryStates[rng.IntN(len(fulfill.DeliveryStates))], now
						err = tx.PutEventDelivery(n)
					case 9:
						piID := "pi_" + id
						if fulfill.IsPaymentIntentID(id) {
							piID = id // its status beside its fulfilment
						}
						err = fulfill.RecordPaymentIntent(tx, fulfill.PaymentIntent{ID: piID, EventID: evt, At: now,
							Status: []string{"succeeded", "processing", "requires_payment_method", "canceled"}[rng.IntN(4)]})
					case 10:
						_, _, err = fulfill.Prune(tx, now.Add(-time.Hour), 5, rng.IntN(2) == 0)
					}
					if err == nil && crash {
						return errCrash
					}
					return err
				})
				if err != nil && !errors.Is(err, errCrash) {
					t.Fatalf("step %d: %v", step, err)
				}
			}
			view(t, s, func(tx store.Tx) error {
				checkCounts(t, tx, sessions, events, now)
				return nil
			})
		})
	}
}

// checkCounts counts the records one by one and compares with what the
// store keeps.
func checkCounts(t *testing.T, tx store.Tx, sessions, events int, now time.Time) {
	t.Helper()
	want := fulfill.Counts{Sessions: map[fulfill.State]int{}, IntentFulfillments: map[fulfill.State]int{},
		PaymentIntents: map[string]int{}, Deliveries: map[string]map[string]int{}}
	for _, st := range fulfill.States {
		want.Sessions[st] = 0
	}
	for _, st := range fulfill.IntentStates {
		want.IntentFulfillments[st] = 0
	}
	for _, d := range fulfill.Destinations {
		want.Deliveries[d] = map[string]int{}
		for _, st := range fulfill.DeliveryStates {
			want.Deliveries[d][st] = 0
		}
	}
	type dated struct {
		id string
		at time.Time
	}
	var failedSessions, failedNotes []dated
	settled := 0
	edge := now.Add(time.Second) // everything settled and not pruned yet
	for i := range sessions {
		id := fmt.Sprintf("cs_%d", i)
		piRec, ok, err := tx.Session(fmt.Sprintf("pi_f%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			want.IntentFulfillments[piRec.State]++
			if piRec.Recovered {
				want.Recovered++
			}
			if piRec.InFlight {
				want.InFlight++
			}
			if piRec.State == fulfill.StateFailed {
				failedSessions = append(failedSessions, dated{piRec.SessionID, piRec.Updated})
			}
			if piRec.Ended() && !piRec.Pruned && piRec.Updated.Before(edge) {
				settled++
			}
			if piRec.Object != fulfill.ObjectPaymentIntent || piRec.State == fulfill.StateOwned && piRec.Owner == "" {
				t.Errorf("a PaymentIntent's record lost what it is: %+v", piRec)
			}
		}
		rec, ok, err := tx.Session(id)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			want.Sessions[rec.State]++
			if rec.Recovered {
				want.Recovered++
			}
			if rec.InFlight {
				want.InFlight++
			}
			if rec.State == fulfill.StateFailed {
				failedSessions = append(failedSessions, dated{id, rec.Updated})
			}
			if rec.Ended() && !rec.Pruned && rec.Updated.Before(edge) {
				settled++
			}
		}
		for _, piID := range []string{"pi_" + id, fmt.Sprintf("pi_f%d", i)} {
			if pi, ok, err := tx.PaymentIntent(piID); err != nil {
				t.Fatal(err)
			} else if ok {
				want.PaymentIntents[pi.Status]++
				if !pi.Pruned && pi.At.Before(edge) {
					settled++
				}
			}
		}
	}
	for i := range events {
		for _, dest := range fulfill.Destinations {
			id := fmt.Sprintf("evt_%d", i)
			n, ok, err := fulfill.GetDelivery(tx, dest, id)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				continue
			}
			if n.Destination != dest || n.EventID != id {
				t.Errorf("delivery %s of %s reads back as %s of %s", dest, id, n.Destination, n.EventID)
			}
			want.Deliveries[dest][n.State]++
			if n.State == fulfill.DeliveryFailed {
				failedNotes = append(failedNotes, dated{n.Key(), n.Updated})
			}
			if (n.State == fulfill.DeliverySent || n.State == fulfill.DeliveryFailed) && !n.Pruned && n.Updated.Before(edge) {
				settled++
			}
		}
	}
	got, err := tx.Counts()
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got.Sessions, want.Sessions) || !maps.Equal(got.PaymentIntents, want.PaymentIntents) ||
		!maps.Equal(got.IntentFulfillments, want.IntentFulfillments) ||
		!maps.EqualFunc(got.Deliveries, want.Deliveries, maps.Equal) || got.Recovered != want.Recovered || got.InFlight != want.InFlight {
		t.Errorf("kept counts differ from the records:\nkept    %+v\nrecords %+v", got, want)
	}
	newestFirst := func(ds []dated) []string {
		sort.Slice(ds, func(i, j int) bool { return ds[i].at.After(ds[j].at) })
		var ids []string
		for _, d := range ds {
			ids = append(ids, d.id)
		}
		return ids
	}
	if ids, _ := tx.Failed(fulfill.KindSession, 0); !slices.Equal(ids, newestFirst(failedSessions)) {
		t.Errorf("failed sessions %v, want %v", ids, newestFirst(failedSessions))
	}
	if ids, _ := tx.Failed(fulfill.KindDelivery, 0); !slices.Equal(ids, newestFirst(failedNotes)) {
		t.Errorf("failed deliveries %v, want %v", ids, newestFirst(failedNotes))
	}
	if due, _, _ := tx.SettledBefore(edge, 1<<20); len(due) != settled {
		t.Errorf("%d records settled before %s in the index, %d in the records", len(due), edge, settled)
	}
	if want.Sessions[fulfill.StateFulfilled] == 0 || want.IntentFulfillments[fulfill.StateOwned] == 0 ||
		want.IntentFulfillments[fulfill.StateFulfilled] == 0 || want.Deliveries[fulfill.DestNotify][fulfill.DeliverySent] == 0 ||
		want.Deliveries[fulfill.DestForward][fulfill.DeliverySent] == 0 || len(failedSessions) == 0 || settled == 0 {
		t.Errorf("the mix did not reach every state: %+v, %d settled", want, settled)
	}
	ids, _ := tx.Queued(fulfill.SessionQueue)
	if n, _ := tx.QueueLen(fulfill.SessionQueue); n != len(ids) {
		t.Errorf("queue length kept as %d, %d queued", n, len(ids))
	}
}

func testUsage(t *testing.T, s store.Store) {
	day := func(d int) time.Time { return t0.AddDate(0, 0, d) }
	u := stripeapi.Usage{Requests: map[string]int64{"GET /v1/events": 2}, ByStatus: map[string]int64{"200": 2}}
	update(t, s, func(tx store.Tx) error {
		for d := range 40 { // more days than are kept one by one
			if err := tx.AddUsage(day(d), u); err != nil {
				return err
			}
		}
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		r, err := tx.UsageReport(day(39))
		if err != nil || r.Total.Total() != 80 || r.Last30Days.Total() != 60 {
			t.Errorf("usage: total %d, last 30 days %d (%v); want 80 and 60", r.Total.Total(), r.Last30Days.Total(), err)
		}
		return nil
	})
}

// testPayments: paid sessions queued are counted per day, apart from the
// requests, over the same rolling 30 days; a rolled-back queueing counts
// nothing, and a session queued again is not a second payment.
func testPayments(t *testing.T, s store.Store) {
	day := func(d int) time.Time { return t0.AddDate(0, 0, d) }
	update(t, s, func(tx store.Tx) error {
		for d := range 40 {
			if err := tx.AddPayments(day(d), 3); err != nil {
				return err
			}
		}
		return tx.AddUsage(day(39), stripeapi.Usage{Requests: map[string]int64{"GET /v1/events": 1}})
	})
	errRollback := errors.New("roll back")
	if err := s.Update(func(tx store.Tx) error {
		if _, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: "cs_rolled_back", Trigger: fulfill.TriggerEvent, At: day(39)}); err != nil {
			return err
		}
		return errRollback
	}); !errors.Is(err, errRollback) {
		t.Fatalf("update: %v", err)
	}
	update(t, s, func(tx store.Tx) error {
		for range 2 {
			if _, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: "cs_paid", Trigger: fulfill.TriggerEvent, At: day(39)}); err != nil {
				return err
			}
		}
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		r, err := tx.UsageReport(day(39))
		if err != nil || r.Total.Payments != 121 || r.Last30Days.Payments != 91 || r.Last30Days.Total() != 1 {
			t.Errorf("payments: total %d, last 30 days %d, requests %d (%v); want 121, 91 and 1",
				r.Total.Payments, r.Last30Days.Payments, r.Last30Days.Total(), err)
		}
		return nil
	})
}

func testSweeps(t *testing.T, s store.Store) {
	view(t, s, func(tx store.Tx) error {
		if sw, m, err := tx.LastSweep(); sw != nil || m != nil || err != nil {
			t.Errorf("a new store has a last sweep: %+v %+v %v", sw, m, err)
		}
		return nil
	})
	update(t, s, func(tx store.Tx) error {
		if err := tx.PutLastSweep(poller.Sweep{At: t0, Listed: 7, Recovered: map[string]int{poller.ReasonNeverSeen: 1}, Outcome: "ok"}); err != nil {
			return err
		}
		return tx.PutWebhookMisses(poller.WebhookMisses{Count: 2, Unhandled: 1})
	})
	view(t, s, func(tx store.Tx) error {
		sw, m, err := tx.LastSweep()
		if err != nil || sw == nil || sw.Listed != 7 || sw.Recovered[poller.ReasonNeverSeen] != 1 || m == nil || m.Count != 2 {
			t.Errorf("last sweep read back as %+v, misses %+v (%v)", sw, m, err)
		}
		return nil
	})
}

// Every field a record holds comes back as written: the action's kept
// output, the in-flight mark a restart depends on, a notification's body.
func testRoundTrip(t *testing.T, s store.Store) {
	rec := fulfill.Record{SessionID: "cs_1", State: fulfill.StatePending, Trigger: fulfill.TriggerHTTP, EventID: "evt_1",
		PaymentStatus: "paid", LineItems: 3, Attempts: 2, InFlight: true, NextAttempt: t0.Add(time.Hour),
		LastError: "exit 1", Output: "shipped", Recovered: true, Seq: 7, Created: t0, Updated: t0.Add(time.Minute)}
	note := fulfill.EventDelivery{Destination: fulfill.DestNotify, EventID: "evt_2", EventType: "checkout.session.expired", State: fulfill.DeliveryPending,
		Attempts: 1, InFlight: true, NextAttempt: t0, LastError: "500", Output: "o", Created: t0, Updated: t0,
		Event: []byte(`{"id":"evt_2","object":"event"}`)}
	pi := fulfill.PaymentIntent{ID: "pi_1", Status: "requires_payment_method", LastError: "Your card was declined.",
		EventID: "evt_3", EventType: "payment_intent.payment_failed", At: t0}
	update(t, s, func(tx store.Tx) error {
		if err := tx.PutSession(rec); err != nil {
			return err
		}
		if err := tx.PutEventDelivery(note); err != nil {
			return err
		}
		return tx.PutPaymentIntent(pi)
	})
	view(t, s, func(tx store.Tx) error {
		got, ok, err := tx.Session("cs_1")
		if err != nil || !ok || !sameRecord(got, rec) {
			t.Errorf("session read back as %+v (%v, %v), want %+v", got, ok, err, rec)
		}
		gotN, ok, err := tx.EventDelivery(note.Key())
		if err != nil || !ok || string(gotN.Event) != string(note.Event) || !gotN.InFlight || gotN.Output != "o" || gotN.Attempts != 1 {
			t.Errorf("notification read back as %+v (%v, %v)", gotN, ok, err)
		}
		gotP, ok, err := tx.PaymentIntent("pi_1")
		if err != nil || !ok || gotP.LastError != pi.LastError || gotP.Status != pi.Status || !gotP.At.Equal(pi.At) {
			t.Errorf("payment intent read back as %+v (%v, %v)", gotP, ok, err)
		}
		if _, ok, _ := tx.Session("cs_none"); ok {
			t.Error("a session never written is found")
		}
		return nil
	})
	// A tombstone keeps what prevents a repeat and what status counts.
	tomb := fulfill.Record{SessionID: "pi_2", Object: fulfill.ObjectPaymentIntent, Owner: "cs_9", State: fulfill.StateFulfilled,
		Attempts: 3, Recovered: true, Created: t0, Updated: t0.Add(time.Hour), FulfilledAt: t0.Add(time.Minute), Pruned: true}
	update(t, s, func(tx store.Tx) error { return tx.PutSession(tomb) })
	view(t, s, func(tx store.Tx) error {
		got, ok, err := tx.Session("pi_2")
		if err != nil || !ok || !sameRecord(got, tomb) || got.Object != tomb.Object || got.Owner != tomb.Owner {
			t.Errorf("tombstone read back as %+v (%v, %v), want %+v", got, ok, err, tomb)
		}
		return nil
	})
	update(t, s, func(tx store.Tx) error { return tx.DeleteSession("pi_2") })
	view(t, s, func(tx store.Tx) error {
		if _, ok, _ := tx.Session("pi_2"); ok {
			t.Error("a deleted session is found")
		}
		return nil
	})
}

func sameRecord(a, b fulfill.Record) bool {
	return a.SessionID == b.SessionID && a.State == b.State && a.Trigger == b.Trigger && a.EventID == b.EventID &&
		a.PaymentStatus == b.PaymentStatus && a.LineItems == b.LineItems && a.Attempts == b.Attempts &&
		a.InFlight == b.InFlight && a.NextAttempt.Equal(b.NextAttempt) && a.LastError == b.LastError &&
		a.Output == b.Output && a.Recovered == b.Recovered && a.Seq == b.Seq && a.Created.Equal(b.Created) &&
		a.Updated.Equal(b.Updated) && a.FulfilledAt.Equal(b.FulfilledAt) && a.Pruned == b.Pruned
}

// Failed and SettledBefore return what they are asked for and say when
// there is more: status and retention rely on it.
func testLimits(t *testing.T, s store.Store) {
	update(t, s, func(tx store.Tx) error {
		for i := range 5 {
			if err := tx.PutSession(fulfill.Record{SessionID: fmt.Sprintf("cs_%d", i), State: fulfill.StateFailed,
				Updated: t0.Add(time.Duration(i) * time.Minute)}); err != nil {
				return err
			}
		}
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		ids, err := tx.Failed(fulfill.KindSession, 2)
		if err != nil || !slices.Equal(ids, []string{"cs_4", "cs_3"}) {
			t.Errorf("latest 2 failed: %v (%v), want [cs_4 cs_3]", ids, err)
		}
		due, more, err := tx.SettledBefore(t0.Add(time.Hour), 3)
		if err != nil || len(due) != 3 || !more || due[0].ID != "cs_0" || due[0].Kind != fulfill.KindSession {
			t.Errorf("settled, 3 at a time: %+v more %v (%v); want cs_0.. first and more", due, more, err)
		}
		due, more, _ = tx.SettledBefore(t0.Add(2*time.Minute), 10)
		if len(due) != 2 || more {
			t.Errorf("settled before the third: %+v more %v; want 2 and no more", due, more)
		}
		return nil
	})
}

// Bad events are kept to the newest 1,000, however many arrive.
func testBadBound(t *testing.T, s store.Store) {
	update(t, s, func(tx store.Tx) error {
		for i := range 1010 {
			if err := tx.RecordBad(cursor.BadEvent{ID: fmt.Sprintf("evt_bad%04d", i), SeenAt: t0.Add(time.Duration(i) * time.Second)}); err != nil {
				return err
			}
		}
		return nil
	})
	view(t, s, func(tx store.Tx) error {
		recent, total, err := tx.BadEvents(1)
		if err != nil || total != 1000 || len(recent) != 1 || recent[0].ID != "evt_bad1009" {
			t.Errorf("bad events: %d kept, newest %+v (%v); want 1000 and evt_bad1009", total, recent, err)
		}
		return nil
	})
}
