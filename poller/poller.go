// Package poller pages through Stripe's events and turns each into durable
// work: a session to fulfill, a session that ended unpaid, a PaymentIntent
// status, or an event counted and ignored.
//
// A pass has two parts. The tip listing reads everything created since the
// previous pass (at most events.lookback back). The re-scan lists, in
// slices, the range between the cursor's settled time and now − lookback
// once more, beside the tip once Stripe's clock is known (after the tip
// while it is not, as in a process's first pass on a stored cursor): an event that became visible late — Stripe's list is only
// eventually consistent — is caught there. Every page is committed in one
// store transaction with the events it queued, so the cursor never passes an
// event that is not durably queued, and a restart re-lists at most the page
// in progress of each slice (the re-scan keeps every slice's page position)
// or the tip window.
//
// A backfill is bound by latency when it lists one page after the other, so
// the re-scan lists several slices at once, as many as the EventSource says
// are worth having in flight. Slices complete in any order; Settled moves
// only over the completely listed prefix.
package poller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

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

// maxOneCall bounds the range a quiet pass's tip lists from complete_until
// to save the re-scan's request: the slowest poll interval (an hour) and
// the lookback, with room; a longer gap (a backfill, a long stop) is the
// re-scan's, in parallel slices.
const maxOneCall = 2 * time.Hour

// pruneMargin is how far behind the settled time seen event ids are kept.
const pruneMargin = time.Hour

// prunePerCommit bounds the seen event ids one page's commit forgets: twice
// a page, so the seen-set shrinks back faster than listing grows it, and a
// transaction stays small however far Settled moved.
const prunePerCommit = 200

// Event types with a meaning here.
const (
	TypeCompleted          = "checkout.session.completed"
	TypeAsyncSucceeded     = "checkout.session.async_payment_succeeded"
	TypeAsyncFailed        = "checkout.session.async_payment_failed"
	TypeExpired            = "checkout.session.expired"
	TypeIntentSucceeded    = "payment_intent.succeeded"
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

// EventSource lists one page of events. It must be safe for concurrent use
// when it offers ListConcurrency.
type EventSource interface {
	ListEvents(ctx context.Context, q stripeapi.EventQuery) (stripeapi.EventPage, error)
}

// ConcurrentSource is an EventSource that says how many listings are worth
// having in flight at once (the request budget times the latency observed);
// the re-scan lists that many slices at once. Without it, one.
type ConcurrentSource interface {
	EventSource
	ListConcurrency() int
}

// Clock is Stripe's clock, learned from its answers (in production a
// stripeapi.Clock with the client that syncs it). Every time that decides
// what the stream covers — the tip, complete_until, the re-scan horizon,
// the retention edge, "now" on a first start — is read from it.
type Clock interface {
	Now() time.Time
	// Sync makes sure Stripe's time was observed at least once; a no-op
	// after that (every answer keeps the clock up to date).
	Sync(ctx context.Context) error
	// Skew is Stripe's time minus the host's; ok once observed.
	Skew() (skew time.Duration, ok bool)
}

// maxListConcurrency bounds the slices listed at once: past the request
// budget, more would only wait at the pacer.
const maxListConcurrency = 8

// Poller reads the event stream into the store.
type Poller struct {
	DB       DB
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
	// Now is the host's clock: it stamps the work queued, which the queues
	// schedule on it. Without Clock it also decides what the stream covers,
	// which is only right when the host's clock is Stripe's.
	Now func() time.Time
	// Clock, when set, is Stripe's clock: see Clock.
	Clock  Clock
	Logger *slog.Logger
	// Wake is called after a commit that queued work.
	Wake func()
	// Listing, when set, is called after every committed page: a poll is
	// listing on, and what it queues may grow yet (Fulfiller.Listing). It
	// must not block.
	Listing func()
	// Settled, when set, is called when a poll ends, whether it listed all
	// it was to or failed: what it queued will not grow until the next one
	// (the fulfiller then lists at once the sessions it holds back for a
	// fuller page, and stops waiting for pages, see Listing).
	Settled func()
	// Ending, when set, is called once per re-scan slice when it has a
	// page or two left to list (pagesLeft ≤ 2): the slice is [from, to)
	// and its events still to come were created in [from, reached]. The
	// fulfiller lists at once the sessions it holds back for a fuller
	// page there, so that what the last pages queue is already in hand
	// (see Fulfiller.Ending). It must not block.
	Ending func(from, reached, to time.Time)
	// Routes queues a delivery of each listed event to the destinations
	// (notify, forward) that its type is routed to, once per event id and
	// destination, in the same commit as the page; malformed events are
	// not delivered.
	Routes fulfill.Routes
	// RelayOnly is set when fulfilld runs no action of its own (forward
	// alone): sessions are not queued for fulfilment.
	RelayOnly bool
	// PaymentIntents (fulfill.payment_intents) queues the PaymentIntent of
	// each payment_intent.succeeded for fulfilment too; its attempt finds
	// out whether a Checkout Session owns it (fulfill/intents.go).
	PaymentIntents bool
	// Progress, when set, is told about each committed page, from one
	// goroutine at a time.
	Progress func(Progress)
	// DryRun lists and reports without writing anything: the position is
	// kept in memory.
	DryRun bool

	mu     sync.Mutex // guards dryPos
	dryPos cursor.Position
	resMu  sync.Mutex // guards a pass's Result and serializes Progress
	// tipCovered is where this process's first tip listing began: an event
	// created after it that only the re-scan finds was listed late.
	tipCovered time.Time
	// skewWarned is whether the clock skew was last logged as too large.
	skewWarned bool
	// quiet is whether the last pass found nothing new in one tip page:
	// the next tip reaches back to complete_until (one call). tipNarrow is
	// where this pass's tip would have begun without that: an event older
	// than it that the tip finds new was listed late.
	quiet     bool
	tipNarrow time.Time
	// sinceAt is the host's reading (with its monotonic part) at which
	// this process counted a start it stored; zero once that start is
	// judged. Judged in this process, the skew at that moment counts, not
	// one a clock step since has changed (an earlier process's start still
	// stored is judged by it too: it only lists more).
	sinceAt time.Time
	// group gathers the pages being committed at the same moment into one
	// transaction.
	group groupCommit
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

// now is Stripe's time when the Clock is wired, else the host's.
func (p *Poller) now() time.Time {
	if p.Clock != nil {
		return p.Clock.Now()
	}
	return p.hostNow()
}

// stripeAt is Stripe's time, as the clock tells it now, at an earlier
// reading of the host's clock: the time that passed since is the host's.
func (p *Poller) stripeAt(host time.Time) time.Time {
	return p.now().Add(-p.hostNow().Sub(host))
}

// hostNow is the host's time, for what the queues schedule and for
// durations.
func (p *Poller) hostNow() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// sync learns Stripe's clock when it was not observed yet.
func (p *Poller) sync(ctx context.Context) error {
	if p.Clock == nil {
		return nil
	}
	return p.Clock.Sync(ctx)
}

// clockKnown reports whether now() is Stripe's time (or the test's).
func (p *Poller) clockKnown() bool {
	if p.Clock == nil {
		return true
	}
	_, ok := p.Clock.Skew()
	return ok
}

func (p *Poller) log() *slog.Logger {
	if p.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Logger
}

// Start sets where the stream begins. With no cursor and no since it starts
// now (Stripe's now: it learns Stripe's clock first); since makes sure
// everything created after it is listed, whether or not a cursor exists
// (the seen-set and the ledger make re-listing safe).
func (p *Poller) Start(ctx context.Context, since time.Time) (cursor.Position, error) {
	return p.start(ctx, since, false)
}

func (p *Poller) start(ctx context.Context, since time.Time, onHost bool) (cursor.Position, error) {
	var pos cursor.Position
	if err := p.DB.View(func(tx Tx) (err error) { pos, err = cursor.Load(tx); return err }); err != nil {
		return pos, err
	}
	// Stripe's "now" is needed only to begin a stream that has no cursor
	// and no --since; with either, the first poll learns Stripe's clock, and
	// the daemon starts (and works its queues) while Stripe is away.
	if pos.IsZero() && since.IsZero() {
		if err := p.sync(ctx); err != nil {
			// The first request of the first poll failed (an unreachable
			// Stripe, a rejected key): status shows why, as for any poll.
			if !p.DryRun && ctx.Err() == nil {
				if serr := p.savePoll(cursor.Poll{At: p.now(), Outcome: "error", Error: err.Error()}); serr != nil {
					return pos, errors.Join(err, serr)
				}
			}
			return pos, err
		}
	}
	now := p.now()
	start := func(tx Tx) error {
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
			pos.Settled = since
			pos.ResetScan()
		}
		if onHost && (pos.HostSince == nil || since.Before(*pos.HostSince)) {
			// The earliest start counted on the host that no answer
			// judged yet: a later one asks for less.
			pos.HostSince = &since
		}
		if p.clockKnown() {
			// With an unknown clock the first poll checks the retention
			// edge instead: the host's clock may be far off.
			p.clampRetention(&pos, now)
		}
		if p.DryRun {
			p.mu.Lock()
			p.dryPos = pos
			p.mu.Unlock()
			return nil
		}
		return cursor.Save(tx, pos)
	}
	if p.DryRun {
		return pos, p.DB.View(start)
	}
	return pos, p.update(start)
}

// StartOnHostClock is Start with a since read on the host's clock (run
// --since, a duration counted back from the host's now or a time), so that
// a backfill lists from its first request rather than after one that asks
// Stripe's time. It starts clockNoise earlier, the noise of Stripe's Date;
// the first answer tells Stripe's time, and a host found ahead of it by
// more moves the start back by as much before the first poll's re-scan
// commits anything (that round is planned again: see poll). A host behind
// lists a little more than asked, which the seen-set and the ledger skip.
func (p *Poller) StartOnHostClock(ctx context.Context, since time.Time) (cursor.Position, error) {
	if p.clockKnown() {
		return p.Start(ctx, since)
	}
	p.sinceAt = p.hostNow()
	return p.start(ctx, since.Add(-clockNoise), true)
}

// correctSince judges a start taken on the host's clock (HostSince) once
// Stripe's clock is known: a --since 24h counts back from Stripe's now. A
// host that was ahead of Stripe by more than clockNoise when it counted
// moves complete_until back by as much; what was listed from the start on
// stays listed. How far ahead is the largest reading there is: the skew at
// the moment this process counted (sinceAt), the skew now, and the last
// poll's recorded one, as a clock fixed in between must not hide it (a
// stale one only lengthens the window, which dedupe makes harmless). What
// that puts past Stripe's retention is recorded for the sessions sweep
// (clampRetention). Until the clock is known (no answer yet, or none with
// a Date) it is left to a later answer, or process. It returns
// complete_until as it leaves it.
func (p *Poller) correctSince() (time.Time, error) {
	var settled time.Time
	if !p.clockKnown() {
		pos, err := p.load()
		return pos.Settled, err
	}
	var skew time.Duration // none without a Clock: the host's is Stripe's
	if p.Clock != nil {
		skew, _ = p.Clock.Skew()
	}
	fix := func(pos *cursor.Position, recorded *float64) bool {
		settled = pos.Settled
		if pos.HostSince == nil {
			return false
		}
		since := *pos.HostSince
		pos.HostSince = nil
		off := -skew // how far the host was ahead when it counted, at the most
		if !p.sinceAt.IsZero() {
			off = max(off, p.sinceAt.Sub(p.stripeAt(p.sinceAt)))
		}
		if recorded != nil {
			off = max(off, -time.Duration(*recorded*float64(time.Second)))
		}
		if to := since.Add(-off); off > clockNoise && to.Before(pos.Settled) {
			p.log().Info("the backfill's start was counted back on the host's clock, which was ahead of Stripe's: "+
				"moving it back by as much", "ahead_seconds", math.Round(off.Seconds()), "since", to.Format(time.RFC3339))
			if since.Before(pos.Settled) {
				pos.Rescanned = append(pos.Rescanned, cursor.Range{From: since, To: pos.Settled})
			}
			pos.Settled = to
			// What lies past Stripe's retention now is recorded for the
			// sessions sweep at once, whichever path judged it.
			p.clampRetention(pos, p.now())
		}
		settled = pos.Settled
		return true
	}
	if p.DryRun {
		last, err := p.lastPoll()
		if err != nil {
			return settled, err
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		fix(&p.dryPos, last.ClockSkew)
		return settled, nil
	}
	err := p.update(func(tx Tx) error {
		pos, err := cursor.Load(tx)
		if err != nil {
			return err
		}
		last, err := cursor.LoadPoll(tx)
		if err != nil || !fix(&pos, last.ClockSkew) {
			return err
		}
		return cursor.Save(tx, pos)
	})
	if err != nil {
		return settled, fmt.Errorf("move the backfill's start to Stripe's clock: %w", err)
	}
	return settled, nil
}

// lastSkewed reports whether the last poll recorded the host's clock off
// Stripe's by more than clockNoise.
func (p *Poller) lastSkewed() (bool, error) {
	last, err := p.lastPoll()
	return last.ClockSkew != nil && math.Abs(*last.ClockSkew) > clockNoise.Seconds(), err
}

// lastPoll is how the last poll went, as recorded.
func (p *Poller) lastPoll() (last cursor.Poll, err error) {
	err = p.DB.View(func(tx Tx) (err error) { last, err = cursor.LoadPoll(tx); return err })
	return last, err
}

// clampRetention moves a cursor that fell behind Stripe's retention to the
// edge of it, and says so: those events can no longer be listed.
func (p *Poller) clampRetention(pos *cursor.Position, now time.Time) bool {
	if !agedOut(*pos, now) {
		return false
	}
	edge := RetentionEdge(now)
	p.log().Error("the cursor is past Stripe's 30-day event retention: events in between cannot be listed; "+
		"moving the cursor to the horizon and sweeping the sessions of that time instead",
		"complete_until", pos.Settled.Format(time.RFC3339), "moved_to", edge.Format(time.RFC3339))
	gap := cursor.Range{From: pos.Settled, To: edge}
	if pos.AgedOut != nil && pos.AgedOut.From.Before(gap.From) {
		gap.From = pos.AgedOut.From
	}
	pos.Settled, pos.AgedOut = edge, &gap
	pos.ResetScan()
	if pos.Tip.Before(edge) {
		pos.Tip = time.Time{}
	}
	return true
}

// agedOut reports whether the position fell past what Stripe still lists.
func agedOut(pos cursor.Position, now time.Time) bool {
	return pos.Settled.Before(RetentionEdge(now).Add(-retentionTolerance))
}

// Poll runs one pass: the tip and the re-scan. complete forces the re-scan
// up to now − lookback even when little is ready (for --once).
func (p *Poller) Poll(ctx context.Context, complete bool) (Result, error) {
	// No request of its own to learn Stripe's clock first: the first
	// answers teach it, and the re-scan commits nothing before the tip's
	// first answer judged what was planned on the host's (see poll).
	known := p.clockKnown()
	start, hostStart := p.now(), p.hostNow()
	res, err := p.poll(ctx, complete)
	if !known && p.clockKnown() {
		start = p.stripeAt(hostStart) // when the pass began, on Stripe's clock
	}
	if !p.sinceAt.IsZero() && p.clockKnown() {
		// A start this process counted on the host's clock is judged here
		// if the poll ended before it could (a failed tip, a shutdown):
		// its own reading of the skew at that moment is the one that
		// counts, and the next process would not have it.
		if _, cerr := p.correctSince(); cerr != nil {
			if err == nil {
				err = cerr
			}
		} else {
			p.sinceAt = time.Time{}
		}
	}
	if err == nil && !p.clockKnown() {
		// No answer carried a Date: sync asks once more, and says so.
		// The pass is done; a failure here is the next pass's.
		if serr := p.sync(ctx); serr != nil {
			p.log().Warn("could not learn stripe's clock after the pass; the host's stands in", "err", serr)
		}
	}
	if p.Settled != nil {
		// A failed poll queues nothing more either: the queue must not
		// wait for its pages (Listing) until the next one succeeds.
		p.Settled()
	}
	var skew *float64
	if p.Clock != nil {
		if d, ok := p.Clock.Skew(); ok {
			p.noteSkew(d)
			secs := d.Seconds()
			skew = &secs
		}
	}
	if p.DryRun || ctx.Err() != nil { // a shutdown is not a failed poll
		return res, err
	}
	info := cursor.Poll{At: start, Outcome: "ok", Duration: p.hostNow().Sub(hostStart), Listed: res.Listed, New: res.New,
		ClockSkew: skew}
	if err != nil {
		info.Outcome, info.Error = "error", err.Error()
	}
	if serr := p.savePoll(info); serr != nil && err == nil {
		err = serr
	}
	return res, err
}

// savePoll records how a poll went, keeping when the last one succeeded.
func (p *Poller) savePoll(info cursor.Poll) error {
	return p.update(func(tx Tx) error {
		prev, err := cursor.LoadPoll(tx)
		if err != nil {
			return err
		}
		info.LastSuccess = prev.LastSuccess
		if info.Outcome == "ok" {
			info.LastSuccess = info.At
		}
		return cursor.SavePoll(tx, info)
	})
}

// noteSkew logs when the host's clock moves more than lookback/2 away from
// Stripe's, and when it is back: once each way, not once per poll. A little
// hysteresis keeps a skew right at the threshold from logging every poll.
func (p *Poller) noteSkew(skew time.Duration) {
	limit := p.Lookback / 2
	if limit <= 0 {
		return
	}
	switch off := skew.Abs(); {
	case off > limit && !p.skewWarned:
		p.skewWarned = true
		p.log().Warn("the host's clock is wrong: it is off Stripe's by more than events.lookback/2. "+
			"fulfilld keeps to Stripe's clock and loses nothing, but other software on this host may suffer "+
			"(TLS, logs, schedules); fix the host's time synchronization (chrony, systemd-timesyncd)",
			"clock_skew_seconds", math.Round(skew.Seconds()), "threshold_seconds", limit.Seconds())
	case off <= limit*9/10 && p.skewWarned:
		p.skewWarned = false
		p.log().Info("the host's clock is back within events.lookback/2 of Stripe's",
			"clock_skew_seconds", math.Round(skew.Seconds()), "threshold_seconds", limit.Seconds())
	}
}

func (p *Poller) poll(ctx context.Context, complete bool) (res Result, err error) {
	pos, err := p.load()
	if err != nil {
		return res, err
	}
	if pos.IsZero() {
		return res, errors.New("poll: the cursor was not started")
	}
	// Stripe's clock, when the pass began. Without it the host's stands
	// in until the tip's first answer, which judges what was planned on
	// it before the re-scan commits (see below): the host's may be far
	// off.
	known := p.clockKnown()
	now, hostStart := p.now(), p.hostNow()
	if known && pos.HostSince != nil {
		// A start taken on the host's clock that no answer judged yet
		// (the tip failed, an answer taught the clock first or had no
		// Date, the process ended): judged now, before anything is
		// planned on it.
		if _, err := p.correctSince(); err != nil {
			return res, err
		}
		if pos, err = p.load(); err != nil {
			return res, err
		}
	}
	if known && agedOut(pos, now) {
		if _, err := p.clampStored(now); err != nil {
			return res, err
		}
		if pos, err = p.load(); err != nil {
			return res, err
		}
	}

	// The tip: everything since the previous pass, at most lookback back.
	hostFrom := now.Add(-p.Lookback) // on the host's clock when it is not known
	tipFrom := maxTime(pos.Tip, pos.Settled, hostFrom)
	tipPages := 0
	if p.tipCovered.IsZero() {
		defer func() { // once this first tip listing is done
			if tipPages > 0 {
				p.tipCovered = tipFrom
			}
		}()
	}
	// One call on a quiet stream: the tip reaches back to complete_until,
	// so the same answer serves as the re-scan of what is older than
	// now − lookback. Only after a pass that found nothing new — a busy
	// stream keeps the narrow tip, so each event is listed about twice —
	// and only over a range a quiet stream fills with one page.
	settledFrom := pos.Settled
	p.tipNarrow = tipFrom
	oneCall := p.quiet && len(pos.Scans) == 0 && len(pos.Rescanned) == 0 && pos.Settled.Before(tipFrom) &&
		tipFrom.Sub(pos.Settled) <= maxOneCall
	if oneCall {
		tipFrom = pos.Settled
	}
	defer func() { p.quiet = err == nil && res.New == 0 && tipPages == 1 }()
	_, concurrent := p.Events.(ConcurrentSource)
	side := !tipFrom.Equal(settledFrom) && concurrent && p.listConcurrency() >= 2
	// On an unknown clock the re-scan, planned on the host's, lists beside
	// the tip all the same and commits nothing before the tip's first
	// answer judged the plan (see clockVerdict).
	var verdict *clockVerdict
	if side && !known {
		// Unless the last poll found the host off Stripe by more than
		// clockNoise: then a plan on the host's clock would only be
		// dropped, and the re-scan waits for the tip's first answer.
		skewed, err := p.lastSkewed()
		if err != nil {
			return res, err
		}
		if side = !skewed; side {
			verdict = &clockVerdict{decided: make(chan struct{})}
		}
	}
	tip := func(ctx context.Context) error {
		q := stripeapi.EventQuery{Types: p.Types, CreatedGTE: tipFrom}
		for first := true; ; first = false {
			sent := p.hostNow()
			page, err := p.Events.ListEvents(ctx, q)
			if err != nil {
				return fmt.Errorf("list events since %s: %w", tipFrom.UTC().Format(time.RFC3339), err)
			}
			switch {
			case first && known:
				// The answer told the clock Stripe's time; had the estimate
				// run ahead (a host clock that jumped, read without its
				// monotonic part), the tip and the horizon must not claim
				// what Stripe has not reached.
				now = minTime(now, p.now())
			case first:
				// The first word of Stripe's clock (a pass asks for it with
				// no request of its own): from here on Stripe's time, ahead
				// of the host's or behind it. Where that moves the tip's
				// start, this page is dropped unread and the tip lists from
				// there: begun on a host far behind, it would have listed
				// from long ago page after page; on one ahead, it would
				// have missed what came since. now is when the request
				// was sent, on Stripe's clock: no later than what the
				// answer could have listed.
				now = p.stripeAt(sent)
				off := hostFrom.Sub(p.stripeAt(hostStart).Add(-p.Lookback)) // the host ahead by
				settled := pos.Settled
				if pos.HostSince != nil {
					if settled, err = p.correctSince(); err != nil {
						return err
					}
				}
				from := maxTime(pos.Tip, settled, now.Add(-p.Lookback))
				moved := !oneCall && from.Sub(tipFrom).Abs() > clockNoise
				if moved {
					tipFrom, p.tipNarrow = from, from
					q = stripeapi.EventQuery{Types: p.Types, CreatedGTE: from}
				}
				if verdict != nil {
					// The re-scan was planned up to hostFrom, on the host's
					// clock; it stands if that is within clockNoise of
					// Stripe's now − lookback, the tip still begins there
					// and the cursor is inside Stripe's retention.
					// Otherwise the re-scan is planned again up to where
					// the tip begins (as when it waited for this answer).
					clamped, err := p.clampStored(p.now())
					if err != nil {
						return err
					}
					horizon := now.Add(-p.Lookback)
					if tipFrom.Equal(hostFrom) {
						horizon = tipFrom
					}
					verdict.decide(off.Abs() <= clockNoise && !moved && !clamped && settled.Equal(pos.Settled), horizon)
				}
				if moved {
					continue
				}
			}
			last := !page.HasMore
			tipPages++
			if err := p.commit(&res, page, "tip", now, func(pos *cursor.Position) bool {
				if !last {
					return false
				}
				pos.Tip = now
				// The listing covered [settledFrom, now) after everything
				// older than now − lookback could no longer be late: exactly
				// what the re-scan of that range would have found.
				if horizon := now.Add(-p.Lookback); tipFrom.Equal(settledFrom) && horizon.After(settledFrom) {
					return pos.Record(cursor.Slice{From: settledFrom, To: horizon, Pages: tipPages}, true)
				}
				return false
			}); err != nil {
				return err
			}
			if !page.HasMore || len(page.Events) == 0 {
				return nil
			}
			q.StartingAfter = page.Events[len(page.Events)-1].ID
		}
	}

	// The re-scan: what is now old enough that no late event can still
	// appear in it.
	minRescan := p.MinRescan
	if minRescan == 0 {
		minRescan = p.Lookback / 5
	}
	if complete {
		minRescan = 0
	}
	if !side {
		// The tip first: it is the re-scan as well (one call), or the
		// source lists one page at a time. On an unknown clock its first
		// answer is the first word of Stripe's clock, which the horizon
		// and the retention edge are read on.
		if err := tip(ctx); err != nil {
			return res, err
		}
		horizon := now.Add(-p.Lookback)
		if !known {
			if _, err := p.clampStored(p.now()); err != nil {
				return res, err
			}
			// A tip begun on the host's clock within clockNoise of
			// Stripe's now − lookback kept its start: the re-scan ends
			// there. Past it, it would list the tip's events again (a
			// dry run would count them twice); short of it, the
			// seconds between would wait for the next pass.
			if tipFrom.Equal(hostFrom) {
				horizon = tipFrom
			}
		}
		if err := p.rescan(ctx, &res, horizon, minRescan, nil, nil); err != nil {
			return res, err
		}
	} else {
		horizon := now.Add(-p.Lookback) // read before the tip may move now
		if err := p.tipAndRescan(ctx, tip, func(ctx context.Context, tipDone <-chan struct{}) error {
			return p.rescan(ctx, &res, horizon, minRescan, tipDone, verdict)
		}); err != nil {
			return res, err
		}
	}
	res.Position, err = p.load()
	return res, err
}

// tipAndRescan runs the tip and the re-scan side by side: the tip lists
// from now − lookback on and the re-scan below it, so they never list the
// same range. Waiting for the tip held every slice of a backfill back by a
// request's latency, with nothing in flight meanwhile. now is Stripe's as
// earlier answers set it, or the host's until the tip's first answer
// judges it (clockVerdict); a horizon that the first answers show Stripe
// has not reached stops the re-scan before its first commit
// (errClockBack). The tip holds one of the re-scan's places until tipDone
// closes. The first to fail stops the other; it returns once both have,
// with that failure.
func (p *Poller) tipAndRescan(ctx context.Context, tip func(context.Context) error,
	rescan func(ctx context.Context, tipDone <-chan struct{}) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	tipDone := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(tipDone)
		if err := tip(ctx); err != nil {
			cancel(err)
		}
	})
	wg.Go(func() {
		if err := rescan(ctx, tipDone); err != nil {
			cancel(err)
		}
	})
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// errReplan ends a round of the re-scan whose plan no longer holds: the
// cursor was moved to the retention horizon under it.
var errReplan = errors.New("re-scan plan overtaken by the retention horizon")

// errClockBack ends a round of the re-scan whose horizon Stripe's clock has
// not reached: the estimate it came from ran ahead (a host clock that
// jumped, read without its monotonic part) and the round's first answers
// put it back. It is checked until a page of the round passes it (that
// page is then committed), so it stops a round that committed nothing, and
// the round is planned again up to the horizon Stripe's time gives. Once a
// page passed, the horizon stands, as it did when it waited for the tip's
// first answer: slices in progress are stored with it.
var errClockBack = errors.New("the re-scan horizon is ahead of Stripe's clock")

// clockNoise is how far a time may be off Stripe's clock as its answers
// tell it without meaning anything: their Date is truncated to the second
// and was written before the answer crossed the wire.
const clockNoise = 2 * time.Second

// horizonCheck is a round's errClockBack check: made by each page until
// one passes, and that page is committed, so the horizon stands. A round
// planned on the host's clock waits for the verdict on it first.
type horizonCheck struct {
	verdict        *clockVerdict
	mu             sync.Mutex
	held, violated bool
}

// passed reports whether a page may be committed: the verdict, then ok,
// decide until a page passed or one failed, and that answer stands for the
// round.
func (c *horizonCheck) passed(ctx context.Context, ok func() bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.held && !c.violated {
		c.held = c.verdict.wait(ctx) && ok()
		c.violated = !c.held
	}
	return c.held
}

// clockVerdict is the tip's judgement, at its first answer, of a re-scan
// round planned on the host's clock before Stripe's was known: its pages
// wait for it before they commit. Planning on the host's clock lets the
// slices list from the first moment, beside the tip, where waiting for
// the tip's answer held every one back by a request's latency (each cron
// --once run and each backfill paid it). The plan stands when the host's
// clock was within clockNoise of Stripe's; otherwise the round stops
// before it committed anything and is planned again up to horizon, on
// Stripe's time, as it was when the re-scan waited for the tip.
type clockVerdict struct {
	once    sync.Once
	decided chan struct{}
	ok      bool
	horizon time.Time
}

// decide gives the verdict, once; the first call stands. A tip that fails
// before its first answer gives none: it cancels the re-scan instead.
func (v *clockVerdict) decide(ok bool, horizon time.Time) {
	v.once.Do(func() {
		v.ok, v.horizon = ok, horizon
		close(v.decided)
	})
}

// wait waits for the verdict; true when the plan stands (or there is
// nothing to judge), false when it does not or ctx ended first.
func (v *clockVerdict) wait(ctx context.Context) bool {
	if v == nil {
		return true
	}
	select {
	case <-v.decided:
		return v.ok
	case <-ctx.Done():
		return false
	}
}

// maxClockBacks bounds the rounds planned again for errClockBack in one
// poll: each takes the clock going back once more.
const maxClockBacks = 2

// rescan lists [Settled, horizon) once more, in slices, as many at a time as
// the source suggests. tipDone, when not nil, is a tip listing alongside,
// holding one of those places until it closes.
func (p *Poller) rescan(ctx context.Context, res *Result, horizon time.Time, minRescan time.Duration, tipDone <-chan struct{},
	verdict *clockVerdict) error {
	for backs := 0; ; {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := p.rescanRound(ctx, res, horizon, minRescan, tipDone, verdict)
		if v := verdict; v != nil {
			// A round that committed a page had the plan stand; one that
			// committed none may have had nothing to list up to a horizon
			// the host's clock put too low, so it waits for the verdict.
			// A failure of its own is the poll's at once.
			verdict = nil // it judges the first round only
			if err != nil && !errors.Is(err, errClockBack) && !errors.Is(err, errReplan) {
				return err
			}
			if !v.wait(ctx) {
				if cerr := ctx.Err(); cerr != nil {
					return cerr
				}
				horizon = v.horizon
				continue
			}
		}
		switch {
		case errors.Is(err, errClockBack) && backs < maxClockBacks:
			backs++
			horizon = minTime(horizon, p.now().Add(-p.Lookback))
		case !errors.Is(err, errReplan):
			return err
		}
	}
}

// rescanRound hands slices to workers, as many at a time as ListConcurrency
// suggested when it began (one fewer while a tip is listed beside it, until
// tipDone closes), until the plan has none left or a slice fails. Each
// worker commits its own
// pages; the stored position merges them. After a failure no slice starts,
// the others are cancelled, and the round returns once all have stopped.
func (p *Poller) rescanRound(ctx context.Context, res *Result, horizon time.Time, minRescan time.Duration, tipDone <-chan struct{},
	verdict *clockVerdict) error {
	pos, err := p.load()
	if err != nil {
		return err
	}
	sliceLen := p.SliceLen
	if sliceLen == 0 {
		sliceLen = time.Hour
	}
	// The round lists as many slices at once as it planned: a suggestion
	// that dropped by one as latencies came in left the last slice
	// planned to wait for another to end, and listed alone at the end.
	n := p.listConcurrency()
	plan := newPlan(pos, horizon, sliceLen, minRescan, n)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type listed struct {
		slice cursor.Slice
		pages int
		err   error
	}
	results := make(chan listed)
	check := horizonCheck{verdict: verdict}
	inFlight := 0
	var stop error // the first failure
	for {
		places := n
		if tipDone != nil {
			places = max(n-1, 1) // the tip's
		}
		for stop == nil && inFlight < places {
			s, ok := plan.next()
			if !ok {
				break
			}
			inFlight++
			go func() {
				pages, err := p.listSlice(ctx, res, s, horizon, &check)
				results <- listed{slice: s, pages: pages, err: err}
			}()
		}
		if inFlight == 0 {
			return stop
		}
		var r listed
		select {
		case r = <-results:
		case <-tipDone:
			tipDone = nil // its place is free
			continue
		}
		inFlight--
		switch {
		case r.err == nil:
			plan.done(r.pages)
		case stop != nil:
			// Stopping already; this one was most likely cancelled.
		case errors.Is(r.err, stripeapi.ErrAgedOut):
			p.log().Warn("a re-scan slice's page position aged out of Stripe's retention; restarting the slice", "err", r.err)
			clamped, err := p.clampStored(p.now())
			switch {
			case err != nil:
				stop = err
				cancel()
			case clamped:
				stop = errReplan
				cancel()
			default:
				plan.retry(cursor.Slice{From: r.slice.From, To: r.slice.To})
			}
		default:
			stop = r.err
			cancel()
		}
	}
}

// listSlice lists one slice of the re-scan page by page from its page
// position, committing each page with the slice's progress. It returns how
// many pages the slice took.
func (p *Poller) listSlice(ctx context.Context, res *Result, s cursor.Slice, horizon time.Time, check *horizonCheck) (int, error) {
	left := math.Inf(1) // pages still to list, once this pass has listed one
	var top time.Time   // the newest event this pass listed in the slice
	pages := 0          // pages this pass listed
	told := false       // Ending was called for this slice
	for {
		if err := ctx.Err(); err != nil {
			return s.Pages, err
		}
		page, err := p.Events.ListEvents(stripeapi.Behind(ctx, left), stripeapi.EventQuery{
			Types: p.Types, CreatedGTE: s.From, CreatedLT: s.To, StartingAfter: s.StartingAfter,
		})
		if err != nil {
			return s.Pages, fmt.Errorf("re-scan events %s to %s: %w",
				s.From.UTC().Format(time.RFC3339), s.To.UTC().Format(time.RFC3339), err)
		}
		if !check.passed(ctx, func() bool { return !horizon.After(p.now().Add(clockNoise - p.Lookback)) }) {
			return s.Pages, errClockBack
		}
		next := s
		next.Pages++
		done := !page.HasMore || len(page.Events) == 0
		if !done {
			if pages++; pages == 1 {
				top = page.Events[0].Created
			}
			last := page.Events[len(page.Events)-1]
			next.StartingAfter = last.ID
			left = pagesLeft(s.From, top, last.Created, pages)
		}
		if err := p.commit(res, page, "rescan", horizon, func(pos *cursor.Position) bool {
			return pos.Record(next, done)
		}); err != nil {
			return next.Pages, err
		}
		if done {
			return next.Pages, nil
		}
		if !told && left <= 2 && p.Ending != nil {
			told = true
			p.Ending(s.From, page.Events[len(page.Events)-1].Created, s.To)
		}
		s = next
	}
}

// pagesLeft estimates the pages a slice from `from` has still to list, from
// the pages it listed since `top` and the created time they reached: the
// slices listed side by side pass it to the Stripe client
// (stripeapi.Behind), so that the one furthest behind lists next and they
// end together. It assumes events as dense in the rest of the slice as in
// what it listed. top is the newest event listed, not the slice's end: the
// newest slice ends at the horizon, often well after the last event, and
// counting that stretch made it look further along than it was.
func pagesLeft(from, top, reached time.Time, pages int) float64 {
	done, rest := top.Sub(reached), reached.Sub(from)
	if done <= 0 || pages <= 0 {
		return math.Inf(1)
	}
	return float64(pages) * max(rest.Seconds(), 0) / done.Seconds()
}

// listConcurrency is how many slices to list at once.
func (p *Poller) listConcurrency() int {
	n := 1
	if c, ok := p.Events.(ConcurrentSource); ok {
		n = c.ListConcurrency()
	}
	return min(max(n, 1), maxListConcurrency)
}

// plan hands out the slices of one re-scan round, oldest first: those a
// previous pass left in progress, then the first range from Settled that no
// slice covers yet, planned ahead of the ones still being listed.
type plan struct {
	resume    []cursor.Slice
	covered   []cursor.Range // sorted and merged: listed, in progress or handed out
	from      time.Time      // Settled when the round began
	horizon   time.Time
	sliceLen  time.Duration
	minRescan time.Duration
}

func newPlan(pos cursor.Position, horizon time.Time, sliceLen, minRescan time.Duration, n int) *plan {
	pl := &plan{resume: slices.Clone(pos.Scans), from: pos.Settled, horizon: horizon, sliceLen: sliceLen, minRescan: minRescan}
	frontier := pos.Settled
	if len(pos.Scans) > 0 {
		pl.sliceLen = 0 // as long as the slices in progress
	}
	for _, s := range pos.Scans {
		pl.sliceLen = max(pl.sliceLen, s.To.Sub(s.From))
		pl.cover(cursor.Range{From: s.From, To: s.To})
		frontier = maxTime(frontier, s.To)
	}
	for _, r := range pos.Rescanned {
		pl.cover(r)
		frontier = maxTime(frontier, r.To)
	}
	// Listing n slices at once needs n slices: a range that would take
	// fewer is cut into n instead. A quiet range costs a request or so per
	// slice more; a busy one is listed n times sooner.
	if rest := horizon.Sub(frontier); n > 1 && rest > pl.sliceLen {
		// Rounded up to the second: rounded down, the n slices left the
		// last seconds to a slice of their own, a request for a few
		// events listed after the others.
		pl.sliceLen = min(pl.sliceLen, max(ceilSecond(rest/time.Duration(n)), minSlice))
	}
	return pl
}

// ceilSecond rounds d up to a whole second: Stripe's created filters count
// seconds.
func ceilSecond(d time.Duration) time.Duration {
	if t := d.Truncate(time.Second); t < d {
		return t + time.Second
	}
	return d
}

// next is the next slice to list, if any.
func (pl *plan) next() (cursor.Slice, bool) {
	if len(pl.resume) > 0 {
		s := pl.resume[0]
		pl.resume = pl.resume[1:]
		return s, true
	}
	from, to, tail := pl.from, pl.horizon, true
	for _, r := range pl.covered {
		if r.From.After(from) {
			to, tail = minTime(r.From, pl.horizon), false
			break
		}
		from = maxTime(from, r.To)
	}
	if !from.Before(to) || tail && pl.horizon.Sub(from) < pl.minRescan {
		return cursor.Slice{}, false
	}
	s := cursor.Slice{From: from, To: minTime(from.Add(pl.sliceLen), to)}
	pl.cover(cursor.Range{From: s.From, To: s.To})
	return s, true
}

// retry hands out a slice once more, from its first page.
func (pl *plan) retry(s cursor.Slice) {
	pl.resume = append([]cursor.Slice{s}, pl.resume...)
}

// done adapts the length of the slices planned next to how many pages a
// finished one took.
func (pl *plan) done(pages int) {
	pl.sliceLen = adaptSlice(pl.sliceLen, pages)
}

func (pl *plan) cover(r cursor.Range) {
	i, _ := slices.BinarySearchFunc(pl.covered, r, func(a, b cursor.Range) int { return a.From.Compare(b.From) })
	c := slices.Insert(pl.covered, i, r)
	merged := c[:0]
	for _, r := range c {
		if n := len(merged); n > 0 && !r.From.After(merged[n-1].To) {
			merged[n-1].To = maxTime(merged[n-1].To, r.To)
			continue
		}
		merged = append(merged, r)
	}
	pl.covered = merged
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

// commit records one page and the position change after it in one
// transaction. move changes the position as it stands in the store — other
// slices commit their pages in between — and reports whether Settled moved.
// Pages that slices listed at the same moment share a transaction (see
// groupCommit): each page with its own position change, in order, so the
// cursor still never passes an event that is not durably queued.
func (p *Poller) commit(res *Result, page stripeapi.EventPage, phase string, target time.Time, move func(*cursor.Position) bool) error {
	c := &pageCommit{page: page, phase: phase, move: move}
	now := p.hostNow() // the queues schedule what is queued on the host's clock
	var err error
	if p.DryRun {
		err = p.DB.View(func(tx Tx) error {
			if err := p.applyPage(tx, c, now); err != nil {
				return err
			}
			p.mu.Lock()
			move(&p.dryPos)
			c.settled = p.dryPos.Settled
			p.mu.Unlock()
			return nil
		})
	} else {
		err = p.group.do(c, func(cs []*pageCommit) error { return p.commitPages(cs, now) })
	}
	if err != nil {
		return fmt.Errorf("commit page: %w", err)
	}
	if c.late > 0 {
		p.log().Info("the re-scan found events Stripe listed late (after the tip had passed them); handled now", "events", c.late)
	}
	if c.queued+c.notified > 0 && p.Wake != nil {
		p.Wake()
	}
	if p.Listing != nil {
		p.Listing()
	}
	p.resMu.Lock()
	defer p.resMu.Unlock()
	res.Pages++
	res.Listed += len(page.Events)
	res.New += c.fresh
	res.Queued += c.queued
	if p.Progress != nil {
		p.Progress(Progress{Phase: phase, Listed: res.Listed, Queued: res.Queued, Settled: c.settled, Target: target})
	}
	return nil
}

// pageCommit is one page on its way into the store, and what committing
// it did.
type pageCommit struct {
	page  stripeapi.EventPage
	phase string
	move  func(*cursor.Position) bool

	queued, fresh, notified, late int
	settled                       time.Time
	done                          chan error
}

// commitPages records pages and their position changes, in order, in one
// transaction.
func (p *Poller) commitPages(cs []*pageCommit, now time.Time) error {
	return p.update(func(tx Tx) error {
		for _, c := range cs {
			if err := p.applyPage(tx, c, now); err != nil {
				return err
			}
		}
		pos, err := cursor.Load(tx)
		if err != nil {
			return err
		}
		for _, c := range cs {
			c.move(&pos)
			c.settled = pos.Settled
		}
		// A little at every commit, not all at once when Settled moves: in
		// a backfill Settled jumps over a whole slice, and forgetting all
		// of it in one transaction held the seen-set's pages in memory.
		if _, err := cursor.Prune(tx, pos.Settled.Add(-p.Lookback-pruneMargin), prunePerCommit*len(cs)); err != nil {
			return fmt.Errorf("prune seen events: %w", err)
		}
		return cursor.Save(tx, pos)
	})
}

// applyPage records the events of one page: each new one routed and
// marked seen, deliveries queued, the counts kept. It may run again in a
// fresh transaction, so it starts its tallies afresh.
func (p *Poller) applyPage(tx Tx, c *pageCommit, now time.Time) error {
	c.queued, c.fresh, c.notified, c.late = 0, 0, 0, 0
	counts := map[[2]string]int{}
	for _, ev := range c.page.Events {
		if ev.ID != "" {
			if seen, err := cursor.Seen(tx, ev.ID, ev.Created); err != nil {
				return err
			} else if seen {
				// Handled before, perhaps before a destination was
				// configured (forward turned on, then --since to catch
				// up): a destination with no record of it still gets
				// it; one that has a record, in any state, does not.
				if !p.DryRun && ev.Err == nil {
					if err := p.deliver(tx, c, ev, now); err != nil {
						return err
					}
				}
				continue
			}
		}
		c.fresh++
		if (c.phase == "rescan" || ev.Created.Before(p.tipNarrow)) && !p.tipCovered.IsZero() && !ev.Created.Before(p.tipCovered) {
			c.late++
		}
		outcome, err := p.route(tx, ev, now)
		if err != nil {
			return fmt.Errorf("event %s: %w", ev.ID, err)
		}
		if outcome == OutcomeQueued {
			c.queued++
		}
		counts[[2]string{typeLabel(ev.Type), outcome}]++
		if p.DryRun {
			p.log().Info("dry run: would handle event", "event", ev.ID, "type", ev.Type, "outcome", outcome)
			continue
		}
		if outcome != OutcomeMalformed {
			if err := p.deliver(tx, c, ev, now); err != nil {
				return err
			}
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
	return cursor.Count(tx, counts)
}

// deliver queues a delivery of ev to each destination its type is routed
// to that has no record of it yet.
func (p *Poller) deliver(tx Tx, c *pageCommit, ev stripeapi.Event, now time.Time) error {
	for _, dest := range p.Routes[ev.Type] {
		added, err := fulfill.EnqueueDelivery(tx, dest, ev.ID, ev.Type, ev.Raw, now)
		if err != nil {
			return fmt.Errorf("event %s: %w", ev.ID, err)
		}
		if added {
			c.notified++
		}
	}
	return nil
}

// groupCommit lets the pages that slices listed at the same moment share
// one transaction: a commit waits while another is being written, and
// then the first of those waiting writes all that gathered, up to
// maxGroupPages. A durable commit costs about the same for one page or four;
// a backfill lists up to eight slices at once.
type groupCommit struct {
	mu      sync.Mutex
	queue   []*pageCommit
	leading bool
}

// maxGroupPages bounds the pages of one transaction: a larger one holds
// more dirty pages of the store in memory (16 took 3 MiB more than 4 at
// 100,000 events, for no less CPU).
const maxGroupPages = 4

// errLead hands the writing over to a commit that was waiting.
var errLead = errors.New("write the pages gathered")

// do commits c with whatever gathered meanwhile, through write.
func (g *groupCommit) do(c *pageCommit, write func([]*pageCommit) error) error {
	c.done = make(chan error, 1)
	g.mu.Lock()
	g.queue = append(g.queue, c)
	if g.leading {
		g.mu.Unlock()
		if err := <-c.done; !errors.Is(err, errLead) {
			return err
		}
		g.mu.Lock()
	}
	g.leading = true
	n := min(len(g.queue), maxGroupPages)
	batch := slices.Clone(g.queue[:n])
	g.queue = slices.Delete(g.queue, 0, n)
	g.mu.Unlock()
	err := write(batch)
	g.mu.Lock()
	if len(g.queue) > 0 {
		// The next writer: this goroutine goes back to its slice.
		g.queue[0].done <- errLead
	} else {
		g.leading = false
	}
	g.mu.Unlock()
	for _, b := range batch {
		if b != c {
			b.done <- err
		}
	}
	return err
}

// load reads the position: the stored one, or the dry run's.
func (p *Poller) load() (cursor.Position, error) {
	if p.DryRun {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.dryPos.Clone(), nil
	}
	var pos cursor.Position
	err := p.DB.View(func(tx Tx) (err error) { pos, err = cursor.Load(tx); return err })
	return pos, err
}

// clampStored moves the position to the retention horizon when it fell
// behind it (see clampRetention), and reports whether it did.
func (p *Poller) clampStored(now time.Time) (bool, error) {
	if p.DryRun {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.clampRetention(&p.dryPos, now), nil
	}
	clamped := false
	err := p.update(func(tx Tx) error {
		pos, err := cursor.Load(tx)
		if err != nil {
			return err
		}
		if clamped = p.clampRetention(&pos, now); !clamped {
			return nil
		}
		return cursor.Save(tx, pos)
	})
	if err != nil {
		return false, fmt.Errorf("move the cursor to the retention horizon: %w", err)
	}
	return clamped, nil
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
func (p *Poller) route(tx Tx, ev stripeapi.Event, now time.Time) (string, error) {
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
		id, err := objectID(ev, "checkout.session", "cs_")
		if err != nil {
			return bad(err)
		}
		if p.RelayOnly {
			// No action of fulfilld's own: the forward destination (the
			// shop's own handler) fulfils.
			return OutcomeIgnored, nil
		}
		if p.DryRun {
			return p.dryRunSession(tx, id)
		}
		queued, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: id, EventID: ev.ID, Trigger: fulfill.TriggerEvent, At: now,
			SessionCreated: objectCreated(ev)})
		if err != nil {
			return "", err
		}
		if queued {
			return OutcomeQueued, nil
		}
		return OutcomeHandled, nil
	case ev.Type == TypeAsyncFailed || ev.Type == TypeExpired:
		id, err := objectID(ev, "checkout.session", "cs_")
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
		obj := ev.Head
		if obj == nil {
			// The head did not decode (a field routing does not need,
			// such as created, in an unfamiliar shape): what routing
			// reads decides, as before the head was read while listing.
			var head struct {
				ID               string `json:"id"`
				Object           string `json:"object"`
				Status           string `json:"status"`
				LastPaymentError *struct {
					Message string `json:"message"`
				} `json:"last_payment_error"`
			}
			if err := json.Unmarshal(ev.ObjectJSON(), &head); err != nil {
				return bad(fmt.Errorf("data.object is not a payment_intent"))
			}
			obj = &stripeapi.ObjectHead{ID: head.ID, Object: head.Object, Status: head.Status}
			if head.LastPaymentError != nil {
				obj.LastPaymentError = &struct {
					Message string `json:"message"`
				}{head.LastPaymentError.Message}
			}
		}
		if obj.Object != "payment_intent" || !strings.HasPrefix(obj.ID, "pi_") {
			return bad(fmt.Errorf("data.object is not a payment_intent"))
		}
		if p.DryRun {
			return OutcomeRecorded, nil
		}
		pi := fulfill.PaymentIntent{ID: obj.ID, Status: obj.Status, EventID: ev.ID, EventType: ev.Type, At: ev.Created}
		if obj.LastPaymentError != nil {
			pi.LastError = obj.LastPaymentError.Message
		}
		if err := fulfill.RecordPaymentIntent(tx, pi); err != nil {
			return "", err
		}
		if ev.Type != TypeIntentSucceeded || !p.PaymentIntents || p.RelayOnly {
			return OutcomeRecorded, nil
		}
		return p.enqueueIntent(tx, obj.ID, ev.ID, now)
	}
	return OutcomeIgnored, nil
}

func (p *Poller) dryRunSession(tx Tx, id string) (string, error) {
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

// objectID reads data.object's id, checking it is the expected kind: from
// the head read with the event, else from the object itself.
func objectID(ev stripeapi.Event, object, prefix string) (string, error) {
	var obj struct {
		ID     string `json:"id"`
		Object string `json:"object"`
	}
	if ev.Head != nil {
		obj.ID, obj.Object = ev.Head.ID, ev.Head.Object
	} else if err := json.Unmarshal(ev.ObjectJSON(), &obj); err != nil {
		return "", fmt.Errorf("data.object is not a %s: %w", object, err)
	}
	if obj.Object != object || !strings.HasPrefix(obj.ID, prefix) {
		return "", fmt.Errorf("data.object is not a %s (object %q, id %q)", object, obj.Object, obj.ID)
	}
	return obj.ID, nil
}

// objectCreated is data.object.created, zero when it is missing or odd: it
// only helps the queue list sessions in batches, and a session without it
// is retrieved on its own.
func objectCreated(ev stripeapi.Event) time.Time {
	var obj struct {
		Created int64 `json:"created"`
	}
	if ev.Head != nil {
		obj.Created = ev.Head.Created
	} else if json.Unmarshal(ev.ObjectJSON(), &obj) != nil {
		return time.Time{}
	}
	if obj.Created <= 0 || obj.Created > maxObjectCreated {
		return time.Time{}
	}
	return time.Unix(obj.Created, 0).UTC()
}

// maxObjectCreated is the last second of year 9999.
const maxObjectCreated = 253402300799

func (p *Poller) update(fn func(tx Tx) error) error {
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

// ClientClock is the Clock of a stripeapi.Client, synced through it.
type ClientClock struct{ Client *stripeapi.Client }

// Now is Stripe's time as the client learned it.
func (c ClientClock) Now() time.Time { return c.Client.Clock.Now() }

// Sync lists one event when the client has not observed Stripe's time yet.
func (c ClientClock) Sync(ctx context.Context) error { return c.Client.SyncClock(ctx) }

// Skew is Stripe's time minus the host's.
func (c ClientClock) Skew() (time.Duration, bool) { return c.Client.Clock.Skew() }
