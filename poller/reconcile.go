package poller

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// Reconciliation looks at the objects, not the stream: Stripe documents that
// events can fail to be generated, the list is eventually consistent, events
// are kept 30 days and webhook deliveries fail. A sweep lists Checkout
// Sessions created in a window and queues every paid one the store does not
// show fulfilled.

// Why a session was recovered.
const (
	ReasonNeverSeen    = "never_seen"    // no event for it ever reached the store
	ReasonNotFulfilled = "not_fulfilled" // seen, but not fulfilled (e.g. its paying event was missed)
)

// SessionLister lists Checkout Sessions.
type SessionLister interface {
	ListSessions(ctx context.Context, q stripeapi.SessionQuery) (stripeapi.SessionPage, error)
}

// Reconciler runs sweeps.
type Reconciler struct {
	DB       DB
	Sessions SessionLister
	Events   EventSource // for the webhook-miss report; nil skips it
	Types    []string
	// Now is the host's clock: it stamps the work queued. Clock, when set,
	// is Stripe's: the sweep's end, the retention edge and its time are
	// read from it (see Poller.Clock).
	Now    func() time.Time
	Clock  Clock
	Logger *slog.Logger
	// Wake is called after a page that queued work.
	Wake func()
	// RelayOnly skips the session sweep: with forward alone fulfilld runs
	// no action of its own, so there is nothing of its own to recover;
	// the webhook-miss report still runs.
	RelayOnly bool
	// Repair, when set, is repair mode (forward.undelivered_only): the
	// webhook-miss listing, narrowed to Repair's types and to events older
	// than its grace, queues each event it lists for re-delivery to
	// fulfill.DestRepair (forward.url). Needs Events.
	Repair *Repair
}

// Repair is what repair mode re-delivers.
type Repair struct {
	Types []string      // forward.types
	Grace time.Duration // forward.grace: how long Stripe gets to deliver an event itself
}

// Sweep describes one sweep.
type Sweep struct {
	At           time.Time      `json:"time"`
	Since        time.Time      `json:"since"`
	Until        time.Time      `json:"until"`
	Listed       int            `json:"sessions_listed"`
	Recovered    map[string]int `json:"recovered"` // by reason
	AwaitingSeen int            `json:"awaiting_payment"`
	Outcome      string         `json:"outcome"`
	Error        string         `json:"error,omitempty"`
	Misses       *WebhookMisses `json:"webhook_misses,omitempty"`
	Duration     time.Duration  `json:"duration_ns"`
	// Early counts paid sessions fulfilled ahead of the stream: they may
	// have been paid after complete_until, so they are not counted as
	// recovered.
	Early int `json:"fulfilled_ahead_of_stream"`
	// Repair is what a repair-mode sweep re-delivered; nil otherwise.
	Repair  *RepairReport `json:"repair,omitempty"`
	settled time.Time
}

// RepairReport is what one repair-mode sweep did with the events Stripe
// could not deliver, and where repair stands in all.
type RepairReport struct {
	// Since and Until bound the events listed: the sweep's window (at most
	// Stripe's 30 days), up to forward.grace before the sweep began.
	Since time.Time `json:"since"`
	Until time.Time `json:"until"`
	// Listed is the undelivered events of forward.types in the window;
	// Queued those this sweep queued for re-delivery; Before those queued
	// earlier (by a sweep, or forwarded by the stream), never again.
	// Malformed ones are not forwarded.
	Listed    int `json:"listed"`
	Queued    int `json:"queued"`
	Before    int `json:"queued_before"`
	Malformed int `json:"malformed"`
	// Repaired, Waiting and DeadLettered count every repair delivery the
	// store keeps, after this sweep: delivered, queued or backing off, and
	// out of attempts until `fulfilld retry evt_…`.
	Repaired     int `json:"repaired"`
	Waiting      int `json:"waiting"`
	DeadLettered int `json:"dead_lettered"`
}

func (p *RepairReport) add(q RepairReport) {
	p.Listed += q.Listed
	p.Queued += q.Queued
	p.Before += q.Before
	p.Malformed += q.Malformed
}

// WebhookMisses are events Stripe could not deliver to a webhook endpoint
// (delivery_success=false), and whether fulfilld handled each.
type WebhookMisses struct {
	Count     int           `json:"count"`
	Unhandled int           `json:"unhandled"`
	Recent    []WebhookMiss `json:"recent"`
}

// WebhookMiss is one event a webhook endpoint missed.
type WebhookMiss struct {
	EventID string    `json:"event_id"`
	Type    string    `json:"type"`
	Created time.Time `json:"created"`
	Object  string    `json:"object_id,omitempty"`
	Handled bool      `json:"handled_by_fulfilld"`
	State   string    `json:"state,omitempty"` // fulfilld's state of the session, if it is one
	// Repair is, in repair mode, the state of its re-delivery (pending,
	// sent, failed), or "forwarded" when the stream forwarded it before.
	Repair string `json:"repair,omitempty"`
}

const maxMissesKept = 100

// now is Stripe's time when the Clock is wired, else the host's.
func (r *Reconciler) now() time.Time {
	if r.Clock != nil {
		return r.Clock.Now()
	}
	return r.hostNow()
}

func (r *Reconciler) hostNow() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Reconciler) log() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

// Sweep lists complete Checkout Sessions created since the given time and
// queues each paid one the store does not show fulfilled. It may reach past
// the 30-day event horizon: sessions are listed, not events.
func (r *Reconciler) Sweep(ctx context.Context, since time.Time) (Sweep, error) {
	var err error
	if r.Clock != nil {
		err = r.Clock.Sync(ctx)
	}
	start, hostStart := r.now(), r.hostNow()
	sw := Sweep{At: start, Since: since, Until: start, Recovered: map[string]int{}, Outcome: "ok"}
	if err == nil && !r.RelayOnly {
		err = r.sweep(ctx, &sw)
	}
	if err == nil && r.Events != nil {
		err = r.reportMisses(ctx, &sw)
	}
	sw.Duration = r.hostNow().Sub(hostStart)
	if err != nil {
		sw.Outcome, sw.Error = "error", err.Error()
	}
	if ctx.Err() == nil {
		if serr := r.DB.Update(func(tx Tx) error { return tx.PutLastSweep(sw) }); serr != nil && err == nil {
			err = serr
		}
	}
	total := 0
	for _, n := range sw.Recovered {
		total += n
	}
	attrs := []any{"since", since.UTC().Format(time.RFC3339), "sessions_listed", sw.Listed,
		"recovered", total, "recovered_never_seen", sw.Recovered[ReasonNeverSeen],
		"recovered_not_fulfilled", sw.Recovered[ReasonNotFulfilled], "fulfilled_ahead_of_stream", sw.Early}
	if rep := sw.Repair; rep != nil {
		attrs = append(attrs, "undelivered_listed", rep.Listed, "repair_queued", rep.Queued,
			"repair_queued_before", rep.Before, "repaired", rep.Repaired, "repair_waiting", rep.Waiting,
			"repair_dead_lettered", rep.DeadLettered)
	}
	if err != nil {
		r.log().Warn("reconciliation sweep stopped", append(attrs, "err", err)...)
	} else {
		r.log().Info("reconciliation sweep done", attrs...)
	}
	return sw, err
}

func (r *Reconciler) sweep(ctx context.Context, sw *Sweep) error {
	// Sessions created after complete_until may still arrive through the
	// stream; they are the next sweep's, so "recovered" counts only what
	// the stream really missed.
	var settled time.Time
	if err := r.DB.View(func(tx Tx) error {
		pos, err := cursor.Load(tx)
		settled = pos.Settled
		return err
	}); err != nil {
		return err
	}
	q := stripeapi.SessionQuery{Status: "complete", CreatedGTE: sw.Since}
	if !settled.IsZero() && settled.After(sw.Since) {
		q.CreatedLT = settled
		sw.Until = settled
	}
	sw.settled = settled
	for {
		page, err := r.Sessions.ListSessions(ctx, q)
		if err != nil {
			return fmt.Errorf("list checkout sessions since %s: %w", sw.Since.UTC().Format(time.RFC3339), err)
		}
		sw.Listed += len(page.Sessions)
		queued := 0
		now := r.hostNow() // the queues schedule what is queued on the host's clock
		awaiting, early, recovered := sw.AwaitingSeen, sw.Early, maps.Clone(sw.Recovered)
		err = r.DB.Update(func(tx Tx) error {
			// A shared store re-runs the transaction after a
			// serialization failure: count this run only.
			queued, sw.AwaitingSeen, sw.Early, sw.Recovered = 0, awaiting, early, maps.Clone(recovered)
			for _, s := range page.Sessions {
				n, err := r.reconcileOne(tx, s, now, sw)
				if err != nil {
					return err
				}
				queued += n
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("record sweep page: %w", err)
		}
		if queued > 0 && r.Wake != nil {
			r.Wake()
		}
		if !page.HasMore || len(page.Sessions) == 0 {
			return nil
		}
		q.StartingAfter = page.Sessions[len(page.Sessions)-1].ID
	}
}

// reconcileOne decides about one listed session inside the page's
// transaction. It returns 1 when it queued the session.
func (r *Reconciler) reconcileOne(tx Tx, s stripeapi.SessionSummary, now time.Time, sw *Sweep) (int, error) {
	rec, seen, err := fulfill.Get(tx, s.ID)
	if err != nil {
		return 0, err
	}
	paid := s.PaymentStatus == "paid" || s.PaymentStatus == "no_payment_required"
	if !paid {
		if seen {
			return 0, nil
		}
		// Unpaid and never seen: record it, so its async event (or the next
		// sweep) finds it waiting.
		sw.AwaitingSeen++
		return 0, fulfill.Await(tx, s.ID, now)
	}
	if seen && (rec.State == fulfill.StateFulfilled || rec.State == fulfill.StateFailed ||
		rec.State == fulfill.StatePending) {
		// Fulfilled, dead-lettered (the operator decides), or already queued.
		return 0, nil
	}
	// A session cannot be completed after it expires: one that expired
	// before complete_until was surely paid before it too, so the stream
	// really missed it. A younger one may just not be streamed yet; it is
	// fulfilled now all the same (the ledger keeps that to once).
	// With no cursor at all (reconcile on its own), nothing else would
	// deliver it.
	missed := sw.settled.IsZero() || s.ExpiresAt > 0 && time.Unix(s.ExpiresAt, 0).Before(sw.settled)
	reason := ReasonNeverSeen
	if seen {
		reason = ReasonNotFulfilled
	}
	req := fulfill.Request{SessionID: s.ID, Trigger: fulfill.TriggerReconcile, At: now, Recovered: missed}
	if s.Created > 0 {
		req.SessionCreated = time.Unix(s.Created, 0).UTC()
	}
	if _, err := fulfill.Enqueue(tx, req); err != nil {
		return 0, err
	}
	if !missed {
		sw.Early++
		r.log().Info("reconciliation is fulfilling a paid session the stream has not delivered yet", "session", s.ID, "state_before", rec.State)
		return 1, nil
	}
	sw.Recovered[reason]++
	r.log().Warn("reconciliation found a paid session the event stream missed; queued it",
		"session", s.ID, "reason", reason, "state_before", rec.State)
	return 1, nil
}

// ScheduledSince is where a scheduled sweep starts: since (reconcile.window
// ago), or in repair mode where the last sweep's listing stopped, when that
// is further back. The stream forwards nothing in repair mode, so an
// undelivered event no sweep lists is never repaired: one created within
// forward.grace before a sweep when the next comes a window later (a
// schedule as long as the window, the daemon stopped, sweeps failing).
// Stripe's 30 days bound it all the same (see reportMisses).
func (r *Reconciler) ScheduledSince(since time.Time) time.Time {
	if r.Repair == nil {
		return since
	}
	var last *Sweep
	if err := r.DB.View(func(tx Tx) (err error) {
		last, _, err = tx.LastSweep()
		return err
	}); err != nil || last == nil {
		return since
	}
	from := since
	switch {
	case last.Outcome != "ok":
		// It may have stopped before any listing: it covered nothing.
		from = last.Since
	case last.Repair != nil:
		from = last.Repair.Until
	}
	if !from.Before(since) {
		return since
	}
	r.log().Info("the sweep starts where the last one's listing stopped, before reconcile.window",
		"since", from.UTC().Format(time.RFC3339), "window_start", since.UTC().Format(time.RFC3339))
	return from
}

// reportMisses lists events whose webhook delivery failed in the window (at
// most the 30 days Stripe keeps events) and notes whether fulfilld handled
// each. In repair mode the same listing, of forward.types and up to
// forward.grace ago, queues each event for re-delivery in the page's
// transaction.
func (r *Reconciler) reportMisses(ctx context.Context, sw *Sweep) error {
	since := sw.Since
	if edge := RetentionEdge(r.now()); since.Before(edge) {
		since = edge
	}
	failed := false
	q := stripeapi.EventQuery{Types: r.Types, CreatedGTE: since, DeliverySuccess: &failed}
	var rep *RepairReport
	if r.Repair != nil {
		// Younger events are still Stripe's to deliver: its first attempt
		// or a retry may yet succeed.
		rep = &RepairReport{Since: since, Until: sw.At.Add(-r.Repair.Grace)}
		sw.Repair = rep
		q.Types, q.CreatedLT = r.Repair.Types, rep.Until
		if !since.Before(rep.Until) {
			r.log().Info("nothing to repair: the sweep's window is younger than forward.grace",
				"since", since.UTC().Format(time.RFC3339), "grace", r.Repair.Grace)
			return r.repairTotals(rep)
		}
	}
	misses := &WebhookMisses{Recent: []WebhookMiss{}}
	for {
		page, err := r.Events.ListEvents(ctx, q)
		if err != nil {
			return fmt.Errorf("list events with failed webhook deliveries: %w", err)
		}
		now := r.hostNow() // the queues schedule what is queued on the host's clock
		// What one page adds is merged once its transaction committed: a
		// backend may run a transaction again after a conflict.
		var pageRep RepairReport
		var pageMisses []WebhookMiss
		note := func(tx Tx) error {
			pageRep, pageMisses = RepairReport{}, pageMisses[:0]
			for _, ev := range page.Events {
				m := WebhookMiss{EventID: ev.ID, Type: ev.Type, Created: ev.Created}
				if ev.Head != nil {
					m.Object = ev.Head.ID
				} else {
					var obj struct {
						ID string `json:"id"`
					}
					_ = json.Unmarshal(ev.ObjectJSON(), &obj)
					m.Object = obj.ID
				}
				var err error
				switch {
				case rep != nil:
					if m.Repair, err = r.repairOne(tx, ev, now, &pageRep); err != nil {
						return fmt.Errorf("event %s: %w", ev.ID, err)
					}
					m.Handled = m.Repair != ""
				default:
					// Handled: the event went through the stream, or the
					// session is in the ledger (queued, fulfilled or
					// otherwise decided).
					if m.Handled, err = cursor.Seen(tx, ev.ID, ev.Created); err != nil {
						return err
					}
					if rec, ok, _ := fulfill.Get(tx, m.Object); ok {
						m.Handled, m.State = true, string(rec.State)
					}
				}
				pageMisses = append(pageMisses, m)
			}
			return nil
		}
		if rep != nil {
			err = r.DB.Update(note)
		} else {
			err = r.DB.View(note)
		}
		if err != nil {
			return err
		}
		for _, m := range pageMisses {
			misses.Count++
			if !m.Handled {
				misses.Unhandled++
			}
			if len(misses.Recent) < maxMissesKept {
				misses.Recent = append(misses.Recent, m)
			}
		}
		if rep != nil {
			rep.add(pageRep)
			if pageRep.Queued > 0 && r.Wake != nil {
				r.Wake()
			}
		}
		if !page.HasMore || len(page.Events) == 0 {
			break
		}
		q.StartingAfter = page.Events[len(page.Events)-1].ID
	}
	sort.Slice(misses.Recent, func(i, j int) bool { return misses.Recent[i].Created.After(misses.Recent[j].Created) })
	sw.Misses = misses
	if misses.Count > 0 {
		r.log().Warn("Stripe could not deliver some events to a webhook endpoint", "events", misses.Count,
			"not_handled_by_fulfilld", misses.Unhandled)
	}
	if err := r.DB.Update(func(tx Tx) error { return tx.PutWebhookMisses(*misses) }); err != nil {
		return err
	}
	if rep != nil {
		return r.repairTotals(rep)
	}
	return nil
}

// repairOne queues one undelivered event for re-delivery, inside the page's
// transaction, and returns the state of its delivery ("" when it is not
// forwarded). The delivery record makes it once: it is kept in any state,
// as a tombstone after store.retention, across restarts and re-listings,
// and an event the stream forwarded has one under forward
// (fulfill.EnqueueDelivery looks at both).
func (r *Reconciler) repairOne(tx Tx, ev stripeapi.Event, now time.Time, rep *RepairReport) (string, error) {
	if !slices.Contains(r.Repair.Types, ev.Type) {
		return "", nil // Stripe filters by type; this guards against a list that did not
	}
	rep.Listed++
	if err := shapeErr(ev); err != nil {
		rep.Malformed++
		r.log().Warn("an event Stripe could not deliver is malformed; not forwarded", "event", ev.ID, "type", ev.Type, "err", err)
		return "", nil
	}
	queued, err := fulfill.EnqueueDelivery(tx, fulfill.DestRepair, ev.ID, ev.Type, ev.Raw, now)
	if err != nil {
		return "", err
	}
	if queued {
		rep.Queued++
		return fulfill.DeliveryPending, nil
	}
	rep.Before++
	switch d, ok, err := fulfill.GetDelivery(tx, fulfill.DestRepair, ev.ID); {
	case err != nil:
		// Queued once all the same (EnqueueDelivery counts a record it
		// cannot read as one); one bad record must not stop every sweep.
		return "unreadable", nil
	case ok:
		return d.State, nil
	}
	return "forwarded", nil
}

// shapeErr says why the stream would count the event malformed (and
// forward it nowhere), if it would: it cannot be read, or its object is not
// what its type promises.
func shapeErr(ev stripeapi.Event) error {
	var err error
	switch {
	case ev.Err != nil:
		err = ev.Err
	case ev.Type == TypeCompleted || ev.Type == TypeAsyncSucceeded || ev.Type == TypeAsyncFailed || ev.Type == TypeExpired:
		_, err = objectID(ev, "checkout.session", "cs_")
	case strings.HasPrefix(ev.Type, paymentIntentTypeStart):
		_, err = objectID(ev, "payment_intent", "pi_")
	}
	return err
}

func (r *Reconciler) repairTotals(rep *RepairReport) error {
	return r.DB.View(func(tx Tx) error { return RepairTotals(tx, rep) })
}

// RepairTotals fills in the kept counts of repair deliveries: delivered,
// waiting and dead-lettered.
func RepairTotals(tx fulfill.Tx, rep *RepairReport) error {
	c, err := tx.Counts()
	n := c.Deliveries[fulfill.DestRepair]
	rep.Repaired, rep.Waiting, rep.DeadLettered = n[fulfill.DeliverySent], n[fulfill.DeliveryPending], n[fulfill.DeliveryFailed]
	return err
}

// LastSweep reads the most recent sweep and the webhook-miss report.
func LastSweep(tx SweepTx) (*Sweep, *WebhookMisses, error) { return tx.LastSweep() }

// agedOutSweepMargin reaches back before an aged-out gap for sessions
// created before it and paid inside it.
const agedOutSweepMargin = 48 * time.Hour

// SweepAgedOut sweeps the sessions of a time the event stream could not
// list any more (the cursor fell past Stripe's retention), then forgets
// the gap. It does nothing when there is no gap.
func (r *Reconciler) SweepAgedOut(ctx context.Context) (bool, error) {
	var gap *cursor.Range
	if err := r.DB.View(func(tx Tx) error {
		pos, err := cursor.Load(tx)
		gap = pos.AgedOut
		return err
	}); err != nil || gap == nil {
		return false, err
	}
	r.log().Warn("sweeping the sessions of the time the event stream aged out",
		"from", gap.From.UTC().Format(time.RFC3339), "to", gap.To.UTC().Format(time.RFC3339))
	// A session paid inside the gap may have been created before it: up to
	// a day before (Checkout Sessions expire within 24 h), more for
	// delayed payment methods. Sweep from two days before.
	if _, err := r.Sweep(ctx, gap.From.Add(-agedOutSweepMargin)); err != nil {
		return true, err
	}
	return true, r.DB.Update(func(tx Tx) error {
		pos, err := cursor.Load(tx)
		if err != nil {
			return err
		}
		pos.AgedOut = nil
		return cursor.Save(tx, pos)
	})
}
