// Package fulfill owns the per-session ledger and queue, and runs the
// operator's action for each paid Checkout Session exactly once.
//
// Every trigger — an event, a manual `fulfill`, the landing page, a
// reconciliation sweep — goes through Fulfiller.Fulfill, which holds a
// per-session claim so that one session's action never runs twice at once.
// The action runs outside any store transaction; its start is recorded
// before it runs and its result after, so a crash between the two is seen on
// restart and the attempt is repeated with the same idempotency key.
package fulfill

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// Sentinel errors.
var (
	ErrUnknownSession = errors.New("no such session in the store")
)

// storeHealth is a DB that keeps score of its writes. The queues stop
// taking work while Err is set, and Probe tells them when to go on.
type storeHealth interface {
	Err() error
	Probe() error
}

// SessionSource retrieves a Checkout Session with all its line items.
type SessionSource interface {
	GetSession(ctx context.Context, id string) (*stripeapi.Session, error)
}

// retrieveSizer is a SessionSource that knows how many retrieves are worth
// having in flight — the Stripe client, from its request budget and the
// latency it observes. Without it, Run retrieves Concurrency at a time.
type retrieveSizer interface {
	RetrieveConcurrency() int
}

// Fulfiller runs fulfillments.
type Fulfiller struct {
	DB       DB
	Sessions SessionSource
	// Intents, when set (fulfill.payment_intents), lets the ledger fulfil
	// PaymentIntents that no Checkout Session owns; see intents.go.
	Intents     IntentSource
	Action      Action
	MaxAttempts int
	// Concurrency bounds how many actions Run keeps running at once. The
	// session retrieves before them are prefetched with a concurrency of
	// their own, sized by the Stripe request budget (see Run).
	Concurrency int
	// Backoff is the wait before attempt n+1 after attempt n failed.
	Backoff func(attempt int) time.Duration
	Now     func() time.Time
	Logger  *slog.Logger
	// OnResult, when set, is told the state each attempt ended in.
	OnResult func(Record)
	// Sharing is set when other instances work the same store's queue.
	Sharing Sharing

	mu     sync.Mutex
	claims map[string]chan struct{}
	// results are attempts that ran but could not be recorded yet.
	results unsaved
	// batch holds paid sessions listed a hundred at a time for the queue.
	batch batcher
}

// Unsaved is how many attempts ran but could not be recorded because the
// store refused the write; they are saved when it takes writes again, and
// repeated (same idempotency key) only if the process ends first.
func (f *Fulfiller) Unsaved() int { return f.results.len() }

// SaveKept tries once more to record the results kept in memory; a process
// about to end calls it before it reports what stays unsaved.
func (f *Fulfiller) SaveKept() error { return f.results.flush() }

// DefaultBackoff doubles from 30 s to at most an hour, less up to a quarter
// for jitter: with the default eight attempts the last comes 48-64 minutes
// after the first, so an operator's endpoint may be down for most of an
// hour before a session is dead-lettered.
func DefaultBackoff(attempt int) time.Duration {
	d := 30 * time.Second << min(max(attempt-1, 0), 12)
	d = min(d, time.Hour)
	return d - rand.N(d/4+1)
}

func (f *Fulfiller) now() time.Time {
	if f.Now != nil {
		return f.Now()
	}
	return time.Now()
}

func (f *Fulfiller) logger() *slog.Logger {
	if f.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return f.Logger
}

// claim blocks until this goroutine holds the session, or ctx ends.
func (f *Fulfiller) claim(ctx context.Context, id string) (release func(), err error) {
	for {
		f.mu.Lock()
		if f.claims == nil {
			f.claims = map[string]chan struct{}{}
		}
		held, busy := f.claims[id]
		if !busy {
			done := make(chan struct{})
			f.claims[id] = done
			f.mu.Unlock()
			return func() {
				f.mu.Lock()
				delete(f.claims, id)
				f.mu.Unlock()
				close(done)
			}, nil
		}
		f.mu.Unlock()
		select {
		case <-held:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Fulfill is the one idempotent path to a session's fulfillment. It returns
// the session's record as it stands afterwards. A session already fulfilled
// is returned as it is; a dead-lettered one is attempted again only on a
// manual trigger.
func (f *Fulfiller) Fulfill(ctx context.Context, sessionID, trigger, eventID string) (Record, error) {
	return f.fulfill(ctx, sessionID, trigger, eventID, nil)
}

// fulfill is Fulfill, with the queue's stages when Run asks (nil for a
// direct call, which waits for no slot).
func (f *Fulfiller) fulfill(ctx context.Context, sessionID, trigger, eventID string, st *stages) (Record, error) {
	release, err := f.claim(st.stopCtx(ctx), sessionID)
	if err != nil {
		return Record{}, err
	}
	defer release()
	if kept, err := f.results.flushOne(sessionID); kept && err != nil {
		// Its action ran; until that is recorded nothing runs it again.
		// The record as the store has it (in flight) says so.
		rec := Record{SessionID: sessionID, State: StatePending, InFlight: true}
		_ = f.DB.View(func(tx Tx) error {
			if cur, found, gerr := Get(tx, sessionID); gerr == nil && found {
				rec = cur
			}
			return nil
		})
		return rec, err
	}
	if err := storeWritable(f.DB); err != nil {
		return Record{}, err
	}
	var rec Record
	var found, busy bool
	var until time.Time
	err = f.DB.View(func(tx Tx) error {
		if rec, found, err = Get(tx, sessionID); err != nil || !found {
			return err
		}
		until, busy, err = f.Sharing.heldElsewhere(tx, rec.InFlight, rec.Lease, f.now())
		return err
	})
	if err != nil {
		return Record{}, err
	}
	if !found {
		rec = Record{SessionID: sessionID, State: StatePending, Trigger: trigger, EventID: eventID, Created: f.now()}
	}
	if busy {
		// Another instance is attempting it right now: looked at again
		// when that attempt's lease ends (this host's clock may read
		// that the entry is due before the store's does).
		return rec, f.DB.Update(func(tx Tx) error { return tx.Schedule(SessionQueue, sessionID, until) })
	}
	if rec.State == StateFulfilled || rec.State == StateFailed && trigger != TriggerManual {
		if st != nil {
			// The queue offered it: an entry left behind by an instance
			// that found another one's attempt running, which then
			// settled it. Offered again, it would be again and again.
			return rec, f.dropSettled(sessionID)
		}
		return rec, nil
	}
	if rec.InFlight {
		f.logger().Warn("an earlier attempt was cut off before its result was recorded; repeating it with the same idempotency key",
			"session", sessionID, "attempt", rec.Attempts, "idempotency_key", rec.IdempotencyKey())
	}
	if trigger != TriggerEvent && trigger != TriggerReconcile || rec.Trigger == "" {
		// The queue keeps what first asked; a direct call says who asks now.
		rec.Trigger = trigger
		if eventID != "" {
			rec.EventID = eventID
		}
	}
	return f.attempt(ctx, rec, st)
}

// dropSettled takes a settled session out of the queue, unless something
// (a `retry`) made it pending again since it was read.
func (f *Fulfiller) dropSettled(sessionID string) error {
	return f.DB.Update(func(tx Tx) error {
		cur, ok, err := Get(tx, sessionID)
		if err != nil || ok && cur.State != StateFulfilled && cur.State != StateFailed {
			return err
		}
		return tx.Unschedule(SessionQueue, sessionID)
	})
}

// attempt retrieves the session and, when it is paid, runs the action once.
// The caller holds the claim. With stages, the retrieve waits for a fetch
// slot and the action for an action slot; both waits, and the retrieve,
// end at once when the run stops — only a running action gets the grace.
func (f *Fulfiller) attempt(ctx context.Context, rec Record, st *stages) (Record, error) {
	if IsPaymentIntentID(rec.SessionID) {
		return f.attemptIntent(ctx, rec, st)
	}
	log := f.logger().With("session", rec.SessionID)
	stop := st.stopCtx(ctx)
	sess, err := f.retrieve(stop, rec, st)
	if err != nil {
		return f.readFailed(stop, rec, err, "checkout session", log)
	}
	rec.PaymentStatus, rec.LineItems = sess.PaymentStatus, sess.LineItems
	f.noteOwner(rec.SessionID, sess.PaymentIntent)
	switch sess.PaymentStatus {
	case "paid", "no_payment_required":
	default:
		return f.settleUnpaid(rec, sess)
	}
	return f.act(ctx, rec, st, sess.JSON, []string{"FULFILLD_SESSION_ID=" + rec.SessionID}, sess.PaymentIntent)
}

// readFailed settles an attempt whose read from Stripe failed: a shutdown
// or a rejected key is returned as it is; an id that Stripe does not know
// is a wrong id when a person asked for it directly, else a dead letter;
// anything else (Stripe away or throttling) is retried later without
// spending one of the action's attempts.
func (f *Fulfiller) readFailed(stop context.Context, rec Record, err error, object string, log *slog.Logger) (Record, error) {
	switch {
	case stop.Err() != nil:
		return rec, stop.Err()
	case errors.Is(err, stripeapi.ErrAuth):
		return rec, err
	case errors.Is(err, stripeapi.ErrNotFound) && rec.Seq == 0 && rec.Attempts == 0:
		// Asked for directly (a person, the landing page) and unknown to
		// Stripe and to the ledger: a wrong id, not a dead letter.
		return Record{}, err
	case errors.Is(err, stripeapi.ErrNotFound):
		log.Error(object+" no longer exists in Stripe; marking it failed", "err", err)
		rec.State, rec.LastError, rec.InFlight = StateFailed, err.Error(), false
		return rec, f.save(rec, time.Time{})
	}
	next := f.now().Add(f.backoff(rec.Attempts + 1))
	rec.LastError, rec.NextAttempt = err.Error(), next
	// Debug: the Stripe client already said, once, that Stripe is away.
	log.Debug("could not read the "+object+" from Stripe; will retry", "err", err, "next_attempt", next)
	return rec, errors.Join(f.save(rec, next), err)
}

// act runs the action once for a paid record (a session, or a
// PaymentIntent that no session owns) with body on stdin and ids (the
// FULFILLD_*_ID variables) in its environment, and records the result.
// The caller holds the claim.
//
// owns is the PaymentIntent a session's payment went through (""
// otherwise): with fulfill.payment_intents on, the attempt's start and the
// PaymentIntent's own fulfilment exclude each other in the store, so a
// payment is never fulfilled both as its session and as its PaymentIntent,
// even if Stripe's list of sessions by PaymentIntent lagged.
func (f *Fulfiller) act(ctx context.Context, rec Record, st *stages, body []byte, ids []string, owns string) (Record, error) {
	log := f.logger().With(recordLogKey(rec), rec.SessionID)
	stop := st.stopCtx(ctx)
	// Paid is final, so a session read while actions were busy is still
	// good when a slot frees.
	if err := st.gate(true).acquire(stop); err != nil {
		return rec, err
	}
	// The slot bounds the actions running at once: it is given back as
	// soon as the action ended, so that its result is recorded beside the
	// next attempt's start (write lets them share a commit) rather than
	// before it. The claim on the session is the caller's, and lasts
	// until the result is recorded.
	held := true
	release := func() {
		if held {
			held = false
			st.gate(true).release()
		}
	}
	defer release()
	rec.Attempts++
	rec.State, rec.InFlight = StatePending, true
	// While the attempt runs its queue entry is parked far ahead, so the
	// queue does not offer it again; Recover brings it back after a crash.
	switch err := f.startAttempt(&rec, owns); {
	case errors.Is(err, errClaimed):
		// Another instance started it since it was looked at: it is that
		// instance's attempt, not a failed one of this.
		rec.Attempts--
		log.Info("another instance is attempting it now; not running the action here", "holder", rec.Lease.Holder)
		return rec, nil
	case errors.Is(err, errChanged), errors.Is(err, errAttemptedElsewhere):
		// rec is the record as it stands now.
		log.Info("not running the action: another instance settled or attempted it since it was read",
			"state", rec.State, "attempts", rec.Attempts)
		return rec, nil
	case errors.Is(err, errCovered):
		log.Info("not running the action: this payment was fulfilled the other way (as its session, or as its payment intent)",
			"state", rec.State, "owner", rec.Owner)
		return rec, nil
	case errors.Is(err, errPaymentBusy):
		next := f.now().Add(f.backoff(max(rec.Attempts-1, 1)))
		rec.State, rec.InFlight, rec.NextAttempt = StatePending, false, next
		rec.Attempts--
		log.Info("its payment intent is being fulfilled on its own right now; looking again in a minute",
			"payment_intent", owns)
		return rec, f.save(rec, next)
	case err != nil:
		return rec, err
	}
	env := append(ids[:len(ids):len(ids)],
		"FULFILLD_EVENT_ID="+rec.triggeringEvent(),
		"FULFILLD_TRIGGER="+rec.Trigger,
		"FULFILLD_IDEMPOTENCY_KEY="+rec.IdempotencyKey(),
		"FULFILLD_ATTEMPT="+strconv.Itoa(rec.Attempts),
	)
	log.Info("running fulfillment action", "attempt", rec.Attempts, "trigger", rec.Trigger, "line_items", rec.LineItems)
	out, actErr := f.Action.Deliver(ctx, Delivery{Body: body, Env: env, IdempotencyKey: rec.IdempotencyKey()})
	release()
	attempt := rec.Attempts
	rec.InFlight, rec.Lease, rec.Output = false, Lease{}, out.Output
	var next time.Time
	switch {
	case actErr == nil:
		rec.State, rec.LastError, rec.FulfilledAt = StateFulfilled, "", f.now()
		log.Info("fulfilled", "attempt", rec.Attempts, "duration", out.Duration)
	case ctx.Err() != nil:
		// Shutdown cut the attempt off: like a crash, it is repeated on
		// the next start with the same idempotency key.
		rec.LastError = "attempt interrupted by shutdown"
		next = f.now()
		log.Warn("fulfillment attempt interrupted by shutdown; it will be repeated", "attempt", rec.Attempts)
	case rec.Attempts >= f.MaxAttempts:
		rec.State, rec.LastError = StateFailed, actErr.Error()
		log.Error("fulfillment failed for the last time; dead-lettered until `fulfilld retry`",
			"attempt", rec.Attempts, "err", actErr)
	default:
		next = f.now().Add(f.backoff(rec.Attempts))
		rec.LastError = actErr.Error()
		log.Warn("fulfillment attempt failed; will retry", "attempt", rec.Attempts, "err", actErr, "next_attempt", next)
	}
	rec.NextAttempt = next
	err := f.results.save(ctx, rec.SessionID, func() error { return f.saveResult(rec, attempt, next) })
	if errors.Is(err, ErrClaimLost) {
		log.Error("this attempt's result is not recorded: it outlived its lease and another instance took the session over",
			"attempt", attempt, "state", rec.State, "lease", f.Sharing.Lease)
		return rec, err
	}
	if err != nil {
		log.Error("the action's result could not be recorded", "attempt", rec.Attempts, "state", rec.State, "err", err)
		return rec, err
	}
	if f.OnResult != nil {
		f.OnResult(rec)
	}
	if actErr != nil && ctx.Err() == nil {
		return rec, fmt.Errorf("fulfill %s: %w", rec.SessionID, actErr)
	}
	return rec, nil
}

// settleUnpaid records a session Stripe says is not paid. Events recorded
// while Stripe was being asked win: a session that meanwhile ended stays
// ended, and one that was asked for again is looked at again.
func (f *Fulfiller) settleUnpaid(rec Record, sess *stripeapi.Session) (Record, error) {
	log := f.logger().With("session", rec.SessionID)
	now := f.now()
	out := rec
	err := f.DB.Update(func(tx Tx) error {
		cur, ok, err := Get(tx, rec.SessionID)
		if err != nil {
			return err
		}
		if ok && f.Sharing.shared() && !cur.Updated.Equal(rec.Updated) && cur.Seq == rec.Seq {
			// Another instance wrote it since it was read here: its
			// write stands (a result is never undone by a stale read).
			out = cur
			return nil
		}
		if ok && cur.Seq != rec.Seq {
			out = cur
			if f.Sharing.shared() && cur.Ended() && cur.State != StatePaymentFailed && cur.State != StateExpired {
				return nil
			}
			out.PaymentStatus, out.Updated = sess.PaymentStatus, now
			if cur.State == StatePaymentFailed || cur.State == StateExpired {
				if err := put(tx, out); err != nil {
					return err
				}
				return tx.Unschedule(SessionQueue, rec.SessionID)
			}
			out.State, out.NextAttempt = StatePending, now
			log.Info("new events arrived while the session was being read; reading it again")
			if err := put(tx, out); err != nil {
				return err
			}
			return tx.Schedule(SessionQueue, rec.SessionID, now)
		}
		switch {
		case rec.State == StatePaymentFailed || rec.State == StateExpired:
		case sess.Status == "expired":
			out.State = StateExpired
		default:
			out.State = StateAwaitingPayment
		}
		out.LastError, out.InFlight, out.NextAttempt, out.Updated = "", false, time.Time{}, now
		log.Info("checkout session is not paid; waiting for its payment", "payment_status", sess.PaymentStatus, "state", out.State)
		if err := put(tx, out); err != nil {
			return err
		}
		return tx.Unschedule(SessionQueue, rec.SessionID)
	})
	return out, err
}

// inFlightLease parks a running attempt's queue entry.
const inFlightLease = 24 * time.Hour

// Recover puts attempts that a crash cut off first in the queue. Call it
// once at start, before Run.
func (f *Fulfiller) Recover() (int, error) {
	return recoverCutOff(f.DB, SessionQueue, func(tx Tx, id string) bool {
		rec, ok, err := Get(tx, id)
		return err == nil && ok && f.Sharing.cutOff(tx, rec.InFlight, rec.Lease)
	})
}

func (f *Fulfiller) backoff(attempt int) time.Duration {
	if f.Backoff != nil {
		return f.Backoff(attempt)
	}
	return DefaultBackoff(attempt)
}

// save writes the record and its place in the queue: due at next, or out of
// the queue when next is zero. It does not depend on the caller's context:
// a result must be recorded even while shutting down.
func (f *Fulfiller) save(rec Record, next time.Time) error {
	return f.saveResult(rec, 0, next)
}

// saveResult records an attempt's result, when attempt is not 0 only while
// that attempt still holds the record (see Sharing.stillHeld).
func (f *Fulfiller) saveResult(rec Record, attempt int, next time.Time) error {
	read := rec.Updated
	rec.Updated = f.now()
	err := write(f.DB, func(tx Tx) error {
		if f.Sharing.shared() {
			cur, ok, err := Get(tx, rec.SessionID)
			if err != nil {
				return err
			}
			if attempt != 0 {
				if err := f.Sharing.stillHeld(cur.InFlight, cur.Lease, cur.Attempts, attempt); err != nil {
					return err
				}
			} else if ok && !cur.Updated.Equal(read) {
				return errChanged
			}
		}
		if err := put(tx, rec); err != nil {
			return err
		}
		return place(tx, SessionQueue, rec.SessionID, next)
	})
	if errors.Is(err, errChanged) {
		// Another instance wrote the record after it was read here (a
		// result, an attempt): its write stands, and so does the queue
		// entry it left.
		f.logger().Debug("not recording: another instance changed the record since it was read", "id", rec.SessionID)
		return nil
	}
	return err
}

// retrieve reads the session from Stripe holding a fetch slot, released
// whatever happens (a panic included: a leaked slot would wedge the queue).
// A queued attempt takes it from a batch listed moments ago when it can
// (see batcher; that takes no slot), and retrieves it alone when it cannot.
func (f *Fulfiller) retrieve(ctx context.Context, rec Record, st *stages) (*stripeapi.Session, error) {
	if st != nil {
		if s := f.batched(ctx, rec); s != nil {
			return s, nil
		}
	}
	if err := st.gate(false).acquire(ctx); err != nil {
		return nil, err
	}
	defer st.gate(false).release()
	return f.Sessions.GetSession(ctx, rec.SessionID)
}

// startAttempt records, before the action runs, that it is about to: the
// record with InFlight set, its queue entry parked until lease. The
// sequence number is the store's when newer, so events recorded while the
// session was read or waited for a slot still count as news.
func (f *Fulfiller) startAttempt(rec *Record, owns string) error {
	read := rec.Updated
	rec.Updated = f.now()
	park := f.Sharing.park(rec.Updated)
	var covered, changed *Record
	// The outcomes that are not failures are noted, not returned: an
	// error rolls back a shared commit (write) and runs the others again.
	var held, elsewhere, busy bool
	err := write(f.DB, func(tx Tx) error {
		covered, changed, held, elsewhere, busy = nil, nil, false, false, false
		cur, ok, err := Get(tx, rec.SessionID)
		if err != nil {
			return err
		}
		if until, busy, err := f.Sharing.heldElsewhere(tx, cur.InFlight, cur.Lease, rec.Updated); err != nil {
			return err
		} else if busy {
			// Looked at again when that attempt's lease ends, whatever
			// came of it; parked in this transaction, so that attempt's
			// result, recorded after, decides the entry.
			rec.Lease, held = cur.Lease, true
			return tx.Schedule(SessionQueue, rec.SessionID, until)
		}
		if f.Sharing.shared() && ok && !cur.Updated.Equal(read) {
			// Written since it was read here — by another instance's
			// attempt or result, or by a new event: what this instance
			// decided may be stale, so it decides nothing. The queue
			// entry stays as that write left it.
			changed = &cur
			return nil
		}
		if rec.Lease, err = f.Sharing.take(tx); err != nil {
			return err
		}
		if ok && IsPaymentIntentID(rec.SessionID) && cur.State == StateOwned {
			// A session claimed this PaymentIntent since it was looked at.
			covered = &cur
			return nil
		} else if ok {
			if cur.State == StateFulfilled || cur.Attempts >= rec.Attempts {
				// Another instance attempted it since this one looked
				// (the claim keeps only this process's goroutines apart):
				// its result stands, and its schedule.
				covered, elsewhere = &cur, true
				return nil
			}
			if cur.Seq > rec.Seq {
				rec.Seq = cur.Seq
			}
			// `retry` reset the attempts while this one was reading Stripe:
			// count from the fresh start it gave.
			if cur.Attempts < rec.Attempts-1 {
				rec.Attempts = cur.Attempts + 1
			}
		}
		if owns != "" {
			// Checked whatever fulfill.payment_intents says now: it may
			// have been on when the PaymentIntent was fulfilled.
			c, err := f.claimPayment(tx, rec, owns, f.Intents != nil)
			if errors.Is(err, errPaymentBusy) {
				busy = true // nothing was written
				return nil
			}
			if err != nil || c != nil {
				covered = c
				return err
			}
		}
		if err := put(tx, *rec); err != nil {
			return err
		}
		return tx.Schedule(SessionQueue, rec.SessionID, park)
	})
	if err == nil && held {
		return errClaimed
	}
	if err == nil && changed != nil {
		*rec = *changed
		return errChanged
	}
	if err == nil && elsewhere {
		*rec = *covered
		return errAttemptedElsewhere
	}
	if err == nil && covered != nil {
		*rec = *covered
		return errCovered
	}
	if err == nil && busy {
		// Nothing was written: the record is still the one read, which
		// the caller's save of the wait checks it against.
		rec.Updated, rec.Lease = read, Lease{}
		return errPaymentBusy
	}
	return err
}

// Outcomes of an attempt's start that are not errors.
var (
	errCovered = errors.New("the payment was fulfilled the other way")
	// errAttemptedElsewhere: between this instance's look at the record
	// and its attempt's start, another instance attempted it.
	errAttemptedElsewhere = errors.New("another instance attempted it since it was looked at")
	errPaymentBusy        = errors.New("the payment intent is being fulfilled on its own")
)

// claimPayment, inside an attempt's start for a session whose payment went
// through PaymentIntent piID, marks the PaymentIntent as owned by the
// session, unless it was already fulfilled on its own (then the session is
// covered: it ends fulfilled without running the action) or is being
// attempted now (then the session waits). The PaymentIntent's own start
// reads the same record in a serializable transaction, so one of the two
// runs and never both.
func (f *Fulfiller) claimPayment(tx Tx, rec *Record, piID string, claim bool) (*Record, error) {
	pi, ok, err := Get(tx, piID)
	if err != nil {
		return nil, err
	}
	now := f.now()
	switch {
	case ok && pi.State == StateFailed && pi.Attempts > 0:
		// Its action ran, as the PaymentIntent's, and is dead-lettered:
		// the payment is the operator's to retry, as that PaymentIntent.
		dead := *rec
		dead.Attempts--
		dead.State, dead.InFlight, dead.NextAttempt, dead.Owner, dead.Updated = StateFailed, false, time.Time{}, piID, now
		dead.LastError = "its payment intent " + piID + " was attempted on its own and is dead-lettered; `fulfilld retry " + piID + "`"
		if err := put(tx, dead); err != nil {
			return nil, err
		}
		return &dead, tx.Unschedule(SessionQueue, dead.SessionID)
	case ok && pi.State == StatePending && pi.Attempts > 0:
		// Its action may have run (a timeout, a crash): the PaymentIntent
		// is repeated with its own key, and the session waits for it.
		return nil, errPaymentBusy
	case ok && pi.State == StateFulfilled:
		done := *rec
		done.Attempts--
		done.State, done.InFlight, done.LastError, done.NextAttempt = StateFulfilled, false, "", time.Time{}
		done.Owner, done.FulfilledAt, done.Updated = piID, now, now
		if err := put(tx, done); err != nil {
			return nil, err
		}
		return &done, tx.Unschedule(SessionQueue, done.SessionID)
	case ok && pi.InFlight:
		return nil, errPaymentBusy
	case ok && pi.State == StateOwned && pi.Owner == rec.SessionID:
		return nil, nil
	case !claim:
		return nil, nil
	}
	if !ok {
		pi = Record{SessionID: piID, Object: ObjectPaymentIntent, Created: now}
	}
	pi.State, pi.Owner, pi.NextAttempt, pi.Updated = StateOwned, rec.SessionID, time.Time{}, now
	pi.Seq++
	if err := put(tx, pi); err != nil {
		return nil, err
	}
	return nil, tx.Unschedule(SessionQueue, piID)
}

// stages bound the two halves of a queued attempt: the retrieve from
// Stripe and the operator's action. stop is the run's context, so waits
// and retrieves end at once on shutdown.
type stages struct {
	stop  context.Context
	fetch *gate
	act   *gate
}

// stopCtx is what waits and retrieves run under: the run's context for a
// queued attempt, the caller's for a direct one.
func (st *stages) stopCtx(ctx context.Context) context.Context {
	if st == nil {
		return ctx
	}
	return st.stop
}

// gate is the action gate or the fetch gate; nil (admit all) without stages.
func (st *stages) gate(action bool) *gate {
	switch {
	case st == nil:
		return nil
	case action:
		return st.act
	}
	return st.fetch
}

// Run works the session queue in two stages. Session retrieves are
// prefetched with as many in flight as the Stripe request budget can use
// (the budget times observed latency, from Sessions' RetrieveConcurrency;
// Concurrency when Sessions cannot say), and actions run at most
// Concurrency at once. Each session still holds its claim from before its
// retrieve until its result is recorded. Run wakes when new work is queued
// or a retry comes due. When ctx ends it stops starting attempts and ends
// retrieves and waits at once, gives running actions opts.Grace to finish
// and record their results, and returns.
func (f *Fulfiller) Run(ctx context.Context, opts RunOptions) (PassResult, error) {
	st := &stages{
		stop:  ctx,
		fetch: &gate{limit: f.fetchSlots},
		act:   &gate{limit: func() int { return max(f.Concurrency, 1) }},
	}
	w := &worker{
		db: f.DB, q: SessionQueue, now: f.now, flush: f.results.flush, kept: f.results.len,
		// Enough sessions in progress to keep both stages busy: a
		// prefetch at most one fetch stage deep ahead of the actions,
		// besides the attempts waiting for their batch's page to fill.
		slots:  func() int { return st.fetch.size() + st.act.size() + f.batch.lingerSlots() },
		fatal:  func(err error) bool { return errors.Is(err, stripeapi.ErrAuth) },
		logger: f.logger(),
		process: func(ctx context.Context, id string) (outcome, error) {
			rec, err := f.runQueued(ctx, id, st)
			switch rec.State {
			case StateFulfilled:
				return outcomeDone, err
			case StateFailed:
				return outcomeFailed, err
			case StatePending:
				return outcomeWaiting, err
			}
			return outcomeOther, err
		},
	}
	res, err := w.run(ctx, opts)
	f.batch.aheadLoads.Wait()
	return res, err
}

// fetchSlots is how many retrieves Run keeps in flight.
func (f *Fulfiller) fetchSlots() int {
	if s, ok := f.Sessions.(retrieveSizer); ok {
		return s.RetrieveConcurrency()
	}
	return f.Concurrency
}

// runQueued attempts one queued session.
func (f *Fulfiller) runQueued(ctx context.Context, id string, st *stages) (Record, error) {
	var rec Record
	var ok bool
	err := f.DB.View(func(tx Tx) (err error) {
		rec, ok, err = Get(tx, id)
		return err
	})
	if err != nil {
		return rec, err
	}
	trigger := TriggerEvent
	if ok && rec.Trigger != "" {
		trigger = rec.Trigger
	}
	rec, err = f.fulfill(ctx, id, trigger, rec.EventID, st)
	if err != nil && !errors.Is(err, context.Canceled) {
		f.logger().Debug("queued fulfillment did not complete", "session", id, "err", err)
	}
	return rec, err
}

// storeWritable asks a store that keeps score of its writes whether it
// takes them; one that failed is probed once more first. Work that would
// have to record its start is not begun against a store that refuses.
func storeWritable(db DB) error {
	h, ok := db.(storeHealth)
	if !ok || h.Err() == nil {
		return nil
	}
	return h.Probe()
}
