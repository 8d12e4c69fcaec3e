// Package fulfill owns the per-session ledger and queue, and runs the
// operator's action for each paid Checkout Session exactly once.
//
// Every trigger — an event, a manual `fulfill`, the landing page, a
// reconciliation sweep — goes through Fulfiller.Fulfill, which holds a
// per-session claim so that one session's action never runs twice at once.
// The action runs outside any bbolt transaction; its start is recorded
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

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// Sentinel errors.
var (
	ErrUnknownSession = errors.New("no such session in the store")
)

// SessionSource retrieves a Checkout Session with all its line items.
type SessionSource interface {
	GetSession(ctx context.Context, id string) (*stripeapi.Session, error)
}

// Fulfiller runs fulfillments.
type Fulfiller struct {
	DB          *bbolt.DB
	Sessions    SessionSource
	Action      Action
	MaxAttempts int
	Concurrency int
	// Backoff is the wait before attempt n+1 after attempt n failed.
	Backoff func(attempt int) time.Duration
	Now     func() time.Time
	Logger  *slog.Logger
	// OnResult, when set, is told the state each attempt ended in.
	OnResult func(Record)

	mu     sync.Mutex
	claims map[string]chan struct{}
}

// DefaultBackoff doubles from 10 s to at most an hour, with jitter, so eight
// attempts span about 40 minutes of an operator's endpoint being down.
func DefaultBackoff(attempt int) time.Duration {
	d := 10 * time.Second << min(max(attempt-1, 0), 12)
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
	release, err := f.claim(ctx, sessionID)
	if err != nil {
		return Record{}, err
	}
	defer release()
	var rec Record
	var found bool
	err = f.DB.View(func(tx *bbolt.Tx) error {
		rec, found, err = Get(tx, sessionID)
		return err
	})
	if err != nil {
		return Record{}, err
	}
	if !found {
		rec = Record{SessionID: sessionID, State: StatePending, Trigger: trigger, EventID: eventID, Created: f.now()}
	}
	if rec.State == StateFulfilled || rec.State == StateFailed && trigger != TriggerManual {
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
	return f.attempt(ctx, rec)
}

// attempt retrieves the session and, when it is paid, runs the action once.
// The caller holds the claim.
func (f *Fulfiller) attempt(ctx context.Context, rec Record) (Record, error) {
	log := f.logger().With("session", rec.SessionID)
	sess, err := f.Sessions.GetSession(ctx, rec.SessionID)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return rec, ctx.Err()
	case errors.Is(err, stripeapi.ErrAuth):
		return rec, err
	case errors.Is(err, stripeapi.ErrNotFound):
		log.Error("checkout session no longer exists in Stripe; marking it failed", "err", err)
		rec.State, rec.LastError, rec.InFlight = StateFailed, err.Error(), false
		return rec, f.save(rec, time.Time{})
	default:
		// Stripe is unavailable or throttling us: try again later without
		// spending one of the action's attempts.
		next := f.now().Add(f.backoff(rec.Attempts + 1))
		rec.LastError, rec.NextAttempt = err.Error(), next
		log.Warn("could not retrieve checkout session; will retry", "err", err, "next_attempt", next)
		return rec, errors.Join(f.save(rec, next), err)
	}
	rec.PaymentStatus, rec.LineItems = sess.PaymentStatus, sess.LineItems
	switch sess.PaymentStatus {
	case "paid", "no_payment_required":
	default:
		return f.settleUnpaid(rec, sess)
	}

	rec.Attempts++
	rec.State, rec.InFlight = StatePending, true
	// While the attempt runs its queue entry is parked far ahead, so the
	// queue does not offer it again; Recover brings it back after a crash.
	if err := f.save(rec, f.now().Add(inFlightLease)); err != nil {
		return rec, err
	}
	env := []string{
		"FULFILLD_SESSION_ID=" + rec.SessionID,
		"FULFILLD_EVENT_ID=" + rec.EventID,
		"FULFILLD_TRIGGER=" + rec.Trigger,
		"FULFILLD_IDEMPOTENCY_KEY=" + rec.IdempotencyKey(),
		"FULFILLD_ATTEMPT=" + strconv.Itoa(rec.Attempts),
	}
	log.Info("running fulfillment action", "attempt", rec.Attempts, "trigger", rec.Trigger, "line_items", sess.LineItems)
	out, actErr := f.Action.Deliver(ctx, Delivery{Body: sess.JSON, Env: env, IdempotencyKey: rec.IdempotencyKey()})
	rec.InFlight, rec.Output = false, out.Output
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
	if err := f.save(rec, next); err != nil {
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
	err := f.DB.Update(func(tx *bbolt.Tx) error {
		cur, ok, err := Get(tx, rec.SessionID)
		if err != nil {
			return err
		}
		if ok && cur.Seq != rec.Seq {
			out = cur
			out.PaymentStatus, out.Updated = sess.PaymentStatus, now
			if cur.State == StatePaymentFailed || cur.State == StateExpired {
				if err := put(tx, out); err != nil {
					return err
				}
				return sessionQueue.remove(tx, rec.SessionID)
			}
			out.State, out.NextAttempt = StatePending, now
			log.Info("new events arrived while the session was being read; reading it again")
			if err := put(tx, out); err != nil {
				return err
			}
			return sessionQueue.schedule(tx, rec.SessionID, now)
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
		return sessionQueue.remove(tx, rec.SessionID)
	})
	return out, err
}

// inFlightLease parks a running attempt's queue entry.
const inFlightLease = 24 * time.Hour

// Recover makes attempts that a crash cut off due now. Call it once at
// start, before Run; only this process could have been running them.
func (f *Fulfiller) Recover() (int, error) {
	n := 0
	err := f.DB.Update(func(tx *bbolt.Tx) error {
		for _, id := range sessionQueue.ids(tx) {
			rec, ok, err := Get(tx, id)
			if err != nil || !ok || !rec.InFlight {
				continue
			}
			if err := sessionQueue.schedule(tx, id, f.now()); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
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
	rec.Updated = f.now()
	return f.DB.Update(func(tx *bbolt.Tx) error {
		if err := put(tx, rec); err != nil {
			return err
		}
		if next.IsZero() {
			return sessionQueue.remove(tx, rec.SessionID)
		}
		return sessionQueue.schedule(tx, rec.SessionID, next)
	})
}

// Run works the session queue: it keeps up to Concurrency sessions in
// progress and wakes when new work is queued or a retry comes due. When ctx
// ends it stops starting attempts, gives running ones opts.Grace to finish
// and record their results, and returns.
func (f *Fulfiller) Run(ctx context.Context, opts RunOptions) (PassResult, error) {
	w := &worker{
		db: f.DB, q: sessionQueue, concurrency: f.Concurrency, now: f.now,
		fatal: func(err error) bool { return errors.Is(err, stripeapi.ErrAuth) },
		process: func(ctx context.Context, id string) (outcome, error) {
			rec, err := f.runQueued(ctx, id)
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
	return w.run(ctx, opts)
}

// runQueued attempts one queued session.
func (f *Fulfiller) runQueued(ctx context.Context, id string) (Record, error) {
	var rec Record
	var ok bool
	err := f.DB.View(func(tx *bbolt.Tx) (err error) {
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
	rec, err = f.Fulfill(ctx, id, trigger, rec.EventID)
	if err != nil && !errors.Is(err, context.Canceled) {
		f.logger().Debug("queued fulfillment did not complete", "session", id, "err", err)
	}
	return rec, err
}
