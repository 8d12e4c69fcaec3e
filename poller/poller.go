// Package poller pages through Stripe's events and turns each into durable
// work: a session to fulfill, a session that ended unpaid, a PaymentIntent
// status, or an event counted and ignored.
//
// A pass has two parts. The tip listing reads everything created since the
// previous pass (at most events.lookback back). The re-scan then lists, in
// slices, the range between the cursor's settled time and now − lookback
// once more: an event that became visible late — Stripe's list is only
// eventually consistent — is caught there. Every page is committed in one
// bbolt transaction with the events it queued, so the cursor never passes an
// event that is not durably queued, and a restart re-lists at most the page
// in progress (the re-scan keeps its page position) or the tip window.
package poller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// Retention is how long Stripe lists events.
const Retention = 30 * 24 * time.Hour

// retentionTolerance is how far past Stripe's retention the cursor may be
// before it counts as aged out: a listing from slightly past the edge just
// returns what Stripe still keeps, and a page position that ages out while
// being listed restarts its slice.
const retentionTolerance = 10 * time.Minute

// RetentionEdge is the oldest time whose events Stripe still lists.
func RetentionEdge(now time.Time) time.Time { return now.Add(-Retention) }

// pruneMargin is how far behind the settled time seen event ids are kept.
const pruneMargin = time.Hour

// Event types with a meaning here.
const (
	TypeCompleted          = "checkout.session.completed"
	TypeAsyncSucceeded     = "checkout.session.async_payment_succeeded"
	TypeAsyncFailed        = "checkout.session.async_payment_failed"
	TypeExpired            = "checkout.session.expired"
	paymentIntentTypeStart = "payment_intent."
)

// Outcomes an event is counted under.
const (
	OutcomeQueued    = "queued"    // a session was queued for fulfillment
	OutcomeHandled   = "handled"   // the session was already queued, fulfilled or dead-lettered
	OutcomeEnded     = "ended"     // a session recorded as payment_failed / expired
	OutcomeRecorded  = "recorded"  // a PaymentIntent status recorded
	OutcomeIgnored   = "ignored"   // a type fulfilld does not act on
	OutcomeMalformed = "malformed" // could not be read as its type promised
)

// EventSource lists one page of events.
type EventSource interface {
	ListEvents(ctx context.Context, q stripeapi.EventQuery) (stripeapi.EventPage, error)
}

// Poller reads the event stream into the store.
type Poller struct {
	DB       *bbolt.DB
	Events   EventSource
	Types    []string
	Lookback time.Duration
	// SliceLen is the length of the first re-scan slice of a pass (default
	// 1h). Later slices adapt: twice as long after a slice that fit in one
	// page, half as long after one that took many, so a quiet month costs a
	// few requests and a busy hour keeps complete_until moving.
	SliceLen time.Duration
	// MinRescan lets the re-scan wait until this much is ready, to save
	// requests on quiet accounts (default lookback/5). A complete pass
	// ignores it.
	MinRescan time.Duration
	Now       func() time.Time
	Logger    *slog.Logger
	// Wake is called after a commit that queued work.
	Wake func()
	// Notify queues a notification for each payment-failure event
	// (fulfill.NotifyTypes), once per event id.
	Notify bool
	// Progress, when set, is told about each committed page.
	Progress func(Progress)
	// DryRun lists and reports without writing anything: the position is
	// kept in memory.
	DryRun bool
	dryPos cursor.Position
	// tipCovered is where this process's first tip listing began: an event
	// created after it that only the re-scan finds was listed late.
	tipCovered time.Time
}

// Progress describes a pass as it goes.
type Progress struct {
	Phase   string // "tip" or "rescan"
	Listed  int
	Queued  int
	Settled time.Time
	Target  time.Time
}

// Result sums up one pass.
type Result struct {
	Pages    int
	Listed   int
	New      int
	Queued   int
	Position cursor.Position
}

func (p *Poller) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Poller) log() *slog.Logger {
	if p.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Logger
}

// Start sets where the stream begins. With no cursor and no since it starts
// now; since makes sure everything created after it is listed, whether or
// not a cursor exists (the seen-set and the ledger make re-listing safe).
func (p *Poller) Start(since time.Time) (cursor.Position, error) {
	var pos cursor.Position
	now := p.now()
	start := func(tx *bbolt.Tx) error {
		var err error
		if pos, err = cursor.Load(tx); err != nil {
			return err
		}
		switch {
		case pos.IsZero() && since.IsZero():
			pos = cursor.Position{Settled: now, Tip: now}
			p.log().Info("no cursor yet: polling starts now; to handle earlier events run once with --since (e.g. --since 24h)",
				"complete_until", now.Format(time.RFC3339))
		case pos.IsZero():
			pos = cursor.Position{Settled: since}
			p.log().Info("no cursor yet: backfilling", "since", since.Format(time.RFC3339))
		case !since.IsZero() && since.Before(pos.Settled):
			p.log().Info("backfilling behind the cursor; events already handled are skipped",
				"since", since.Format(time.RFC3339), "complete_until", pos.Settled.Format(time.RFC3339))
			pos.Settled, pos.Scan = since, nil
		}
		p.clampRetention(&pos, now)
		if p.DryRun {
			p.dryPos = pos
			return nil
		}
		return cursor.Save(tx, pos)
	}
	if p.DryRun {
		return pos, p.DB.View(start)
	}
	return pos, p.update(start)
}

// clampRetention moves a cursor that fell behind Stripe's retention to the
// edge of it, and says so: those events can no longer be listed.
func (p *Poller) clampRetention(pos *cursor.Position, now time.Time) bool {
	edge := RetentionEdge(now)
	if !pos.Settled.Before(edge.Add(-retentionTolerance)) {
		return false
	}
	p.log().Error("the cursor is past Stripe's 30-day event retention: events in between cannot be listed; "+
		"moving the cursor to the horizon and sweeping the sessions of that time instead",
		"complete_until", pos.Settled.Format(time.RFC3339), "moved_to", edge.Format(time.RFC3339))
	gap := cursor.Range{From: pos.Settled, To: edge}
	if pos.AgedOut != nil && pos.AgedOut.From.Before(gap.From) {
		gap.From = pos.AgedOut.From
	}
	pos.Settled, pos.Scan, pos.AgedOut = edge, nil, &gap
	if pos.Tip.Before(edge) {
		pos.Tip = time.Time{}
	}
	return true
}

// Poll runs one pass: the tip, then the re-scan. complete forces the re-scan
// up to now − lookback even when little is ready (for --once).
func (p *Poller) Poll(ctx context.Context, complete bool) (Result, error) {
	start := p.now()
	res, err := p.poll(ctx, complete)
	if p.DryRun || errors.Is(err, context.Canceled) {
		return res, err
	}
	info := cursor.Poll{At: start, Outcome: "ok", Duration: p.now().Sub(start), Listed: res.Listed, New: res.New}
	if err != nil {
		info.Outcome, info.Error = "error", err.Error()
	}
	if serr := p.update(func(tx *bbolt.Tx) error {
		prev, err := cursor.LoadPoll(tx)
		if err != nil {
			return err
		}
		info.LastSuccess = prev.LastSuccess
		if info.Outcome == "ok" {
			info.LastSuccess = start
		}
		return cursor.SavePoll(tx, info)
	}); serr != nil && err == nil {
		err = serr
	}
	return res, err
}

func (p *Poller) poll(ctx context.Context, complete bool) (Result, error) {
	var res Result
	pos := p.dryPos
	if !p.DryRun {
		if err := p.DB.View(func(tx *bbolt.Tx) (err error) { pos, err = cursor.Load(tx); return err }); err != nil {
			return res, err
		}
	}
	if pos.IsZero() {
		return res, errors.New("poll: the cursor was not started")
	}
	now := p.now()
	p.clampRetention(&pos, now)

	// The tip: everything since the previous pass, at most lookback back.
	tipFrom := maxTime(pos.Tip, pos.Settled, now.Add(-p.Lookback))
	if p.tipCovered.IsZero() {
		defer func() { p.tipCovered = tipFrom }() // once this first tip listing is done
	}
	q := stripeapi.EventQuery{Types: p.Types, CreatedGTE: tipFrom}
	for {
		page, err := p.Events.ListEvents(ctx, q)
		if err != nil {
			return res, fmt.Errorf("list events since %s: %w", tipFrom.UTC().Format(time.RFC3339), err)
		}
		if !page.HasMore {
			pos.Tip = now
		}
		if err := p.commit(&res, page, pos, "tip", now); err != nil {
			return res, err
		}
		if !page.HasMore || len(page.Events) == 0 {
			break
		}
		q.StartingAfter = page.Events[len(page.Events)-1].ID
	}

	// The re-scan: what is now old enough that no late event can still
	// appear in it.
	horizon := now.Add(-p.Lookback)
	minRescan := p.MinRescan
	if minRescan == 0 {
		minRescan = p.Lookback / 5
	}
	if complete {
		minRescan = 0
	}
	sliceLen := p.SliceLen
	if sliceLen == 0 {
		sliceLen = time.Hour
	}
	if pos.Scan != nil {
		sliceLen = pos.Scan.To.Sub(pos.Scan.From)
	}
	for {
		if pos.Scan == nil {
			if !pos.Settled.Before(horizon) || horizon.Sub(pos.Settled) < minRescan {
				break
			}
			pos.Scan = &cursor.Slice{From: pos.Settled, To: minTime(pos.Settled.Add(sliceLen), horizon)}
		}
		scan := *pos.Scan
		page, err := p.Events.ListEvents(ctx, stripeapi.EventQuery{
			Types: p.Types, CreatedGTE: scan.From, CreatedLT: scan.To, StartingAfter: scan.StartingAfter,
		})
		if errors.Is(err, stripeapi.ErrAgedOut) {
			p.log().Warn("the re-scan's page position aged out of Stripe's retention; restarting the slice", "err", err)
			pos.Scan = nil
			if !p.clampRetention(&pos, p.now()) {
				pos.Scan = &cursor.Slice{From: scan.From, To: scan.To}
			}
			continue
		}
		if err != nil {
			return res, fmt.Errorf("re-scan events %s to %s: %w",
				scan.From.UTC().Format(time.RFC3339), scan.To.UTC().Format(time.RFC3339), err)
		}
		next := scan
		next.Pages++
		if page.HasMore && len(page.Events) > 0 {
			next.StartingAfter = page.Events[len(page.Events)-1].ID
			pos.Scan = &next
		} else {
			pos.Settled, pos.Scan = scan.To, nil
			sliceLen = adaptSlice(sliceLen, next.Pages)
		}
		if err := p.commit(&res, page, pos, "rescan", horizon); err != nil {
			return res, err
		}
	}
	res.Position = pos
	return res, nil
}

// Bounds of an adapted re-scan slice.
const (
	minSlice = 5 * time.Minute
	maxSlice = 7 * 24 * time.Hour
	// manyPages is when a slice counts as busy enough to halve.
	manyPages = 20
)

func adaptSlice(cur time.Duration, pages int) time.Duration {
	switch {
	case pages <= 1:
		return min(cur*2, maxSlice)
	case pages >= manyPages:
		return max(cur/2, minSlice)
	}
	return cur
}

// commit records one page and the position after it in one transaction.
func (p *Poller) commit(res *Result, page stripeapi.EventPage, pos cursor.Position, phase string, target time.Time) error {
	res.Pages++
	res.Listed += len(page.Events)
	now := p.now()
	queued, fresh, notified, late := 0, 0, 0, 0
	counts := map[[2]string]int{}
	apply := func(tx *bbolt.Tx) error {
		for _, ev := range page.Events {
			if ev.ID != "" && cursor.Seen(tx, ev.ID) {
				continue
			}
			fresh++
			if phase == "rescan" && !p.tipCovered.IsZero() && !ev.Created.Before(p.tipCovered) {
				late++
			}
			outcome, err := p.route(tx, ev, now)
			if err != nil {
				return fmt.Errorf("event %s: %w", ev.ID, err)
			}
			if outcome == OutcomeQueued {
				queued++
			}
			counts[[2]string{typeLabel(ev.Type), outcome}]++
			if p.DryRun {
				p.log().Info("dry run: would handle event", "event", ev.ID, "type", ev.Type, "outcome", outcome)
				continue
			}
			if p.Notify && fulfill.NotifyTypes[ev.Type] && outcome != OutcomeMalformed {
				if _, err := fulfill.EnqueueNotification(tx, ev.ID, ev.Type, ev.Raw, now); err != nil {
					return fmt.Errorf("event %s: %w", ev.ID, err)
				}
				notified++
			}
			if ev.ID != "" {
				if err := cursor.MarkSeen(tx, ev.ID, ev.Created); err != nil {
					return err
				}
			}
		}
		if p.DryRun {
			return nil
		}
		if err := cursor.Count(tx, counts); err != nil {
			return err
		}
		if pos.Scan == nil && phase == "rescan" {
			if _, err := cursor.Prune(tx, pos.Settled.Add(-p.Lookback-pruneMargin)); err != nil {
				return fmt.Errorf("prune seen events: %w", err)
			}
		}
		return cursor.Save(tx, pos)
	}
	var err error
	if p.DryRun {
		err = p.DB.View(apply)
		p.dryPos = pos
	} else {
		err = p.update(apply)
	}
	if err != nil {
		return fmt.Errorf("commit page: %w", err)
	}
	res.New += fresh
	res.Queued += queued
	if late > 0 {
		p.log().Info("the re-scan found events Stripe listed late (after the tip had passed them); handled now", "events", late)
	}
	if queued+notified > 0 && p.Wake != nil {
		p.Wake()
	}
	if p.Progress != nil {
		p.Progress(Progress{Phase: phase, Listed: res.Listed, Queued: res.Queued, Settled: pos.Settled, Target: target})
	}
	return nil
}

// typeLabel bounds the set of counter keys an odd event can create.
func typeLabel(t string) string {
	if t == "" || len(t) > 100 {
		return "(invalid)"
	}
	return t
}

// route turns one event into work. Errors are storage errors only; a bad
// event is recorded and counted, never fatal.
func (p *Poller) route(tx *bbolt.Tx, ev stripeapi.Event, now time.Time) (string, error) {
	bad := func(err error) (string, error) {
		p.log().Warn("malformed event recorded and skipped", "event", ev.ID, "type", ev.Type, "err", err)
		if p.DryRun {
			return OutcomeMalformed, nil
		}
		return OutcomeMalformed, cursor.RecordBad(tx, cursor.BadEvent{
			ID: ev.ID, Type: ev.Type, Created: ev.Created, Error: err.Error(), SeenAt: now,
		})
	}
	if ev.Err != nil {
		return bad(ev.Err)
	}
	switch {
	case ev.Type == TypeCompleted || ev.Type == TypeAsyncSucceeded:
		id, err := objectID(ev.Object, "checkout.session", "cs_")
		if err != nil {
			return bad(err)
		}
		if p.DryRun {
			return p.dryRunSession(tx, id)
		}
		queued, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: id, EventID: ev.ID, Trigger: fulfill.TriggerEvent, At: now})
		if err != nil {
			return "", err
		}
		if queued {
			return OutcomeQueued, nil
		}
		return OutcomeHandled, nil
	case ev.Type == TypeAsyncFailed || ev.Type == TypeExpired:
		id, err := objectID(ev.Object, "checkout.session", "cs_")
		if err != nil {
			return bad(err)
		}
		if p.DryRun {
			return OutcomeEnded, nil
		}
		state := fulfill.StatePaymentFailed
		if ev.Type == TypeExpired {
			state = fulfill.StateExpired
		}
		ended, err := fulfill.End(tx, id, state, ev.ID, now)
		if err != nil {
			return "", err
		}
		if ended {
			return OutcomeEnded, nil
		}
		return OutcomeHandled, nil
	case strings.HasPrefix(ev.Type, paymentIntentTypeStart):
		var obj struct {
			ID               string `json:"id"`
			Object           string `json:"object"`
			Status           string `json:"status"`
			LastPaymentError *struct {
				Message string `json:"message"`
			} `json:"last_payment_error"`
		}
		if err := json.Unmarshal(ev.Object, &obj); err != nil || obj.Object != "payment_intent" || !strings.HasPrefix(obj.ID, "pi_") {
			return bad(fmt.Errorf("data.object is not a payment_intent"))
		}
		if p.DryRun {
			return OutcomeRecorded, nil
		}
		pi := fulfill.PaymentIntent{ID: obj.ID, Status: obj.Status, EventID: ev.ID, EventType: ev.Type, At: ev.Created}
		if obj.LastPaymentError != nil {
			pi.LastError = obj.LastPaymentError.Message
		}
		return OutcomeRecorded, fulfill.RecordPaymentIntent(tx, pi)
	}
	return OutcomeIgnored, nil
}

func (p *Poller) dryRunSession(tx *bbolt.Tx, id string) (string, error) {
	rec, ok, err := fulfill.Get(tx, id)
	if err != nil {
		return "", err
	}
	if ok && (rec.State == fulfill.StateFulfilled || rec.State == fulfill.StateFailed || rec.State == fulfill.StatePending) {
		return OutcomeHandled, nil
	}
	p.log().Info("dry run: would fulfill", "session", id)
	return OutcomeQueued, nil
}

// objectID reads data.object's id, checking it is the expected kind.
func objectID(raw json.RawMessage, object, prefix string) (string, error) {
	var obj struct {
		ID     string `json:"id"`
		Object string `json:"object"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return "", fmt.Errorf("data.object is not a %s: %w", object, err)
	}
	if obj.Object != object || !strings.HasPrefix(obj.ID, prefix) {
		return "", fmt.Errorf("data.object is not a %s (object %q, id %q)", object, obj.Object, obj.ID)
	}
	return obj.ID, nil
}

func (p *Poller) update(fn func(tx *bbolt.Tx) error) error {
	return p.DB.Update(fn)
}

func maxTime(ts ...time.Time) time.Time {
	var m time.Time
	for _, t := range ts {
		if t.After(m) {
			m = t
		}
	}
	return m
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
