package fulfill

// PaymentIntents without Checkout (fulfill.payment_intents).
//
// A payment_intent.succeeded event queues the PaymentIntent in the same
// ledger and queue as sessions, under its own id (pi_…), so it has the same
// claims, attempts, backoff, dead letter and counters. What differs is the
// attempt, here: before anything runs, fulfilld must know that no Checkout
// Session owns the PaymentIntent, because a Checkout payment is fulfilled
// once, as its session.
//
// How that is known, and what it costs:
//   - When a session is retrieved for its own fulfilment, its
//     payment_intent field names the PaymentIntent it owns; noteOwner
//     records that in the PaymentIntent's record (state owned). A
//     payment_intent.succeeded listed after that costs no request at all.
//   - Otherwise the attempt asks Stripe, GET /v1/checkout/sessions with
//     payment_intent=pi_… and limit=1. Stripe answers from the session,
//     which exists before its PaymentIntent can succeed, so the answer does
//     not depend on the order the two events are listed in. A Checkout
//     payment whose PaymentIntent event comes first costs this one request;
//     the record ends owned and its session's fulfilment does the work.
//   - Only when no session owns it is the PaymentIntent retrieved
//     (GET /v1/payment_intents/:id), which is what the action receives: a
//     Payment Element payment costs two requests.

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// ObjectPaymentIntent is Record.Object for a PaymentIntent's record.
const ObjectPaymentIntent = "payment_intent"

// ErrIntentsOff is returned for a PaymentIntent while
// fulfill.payment_intents is off.
var ErrIntentsOff = errors.New("fulfill.payment_intents is off: PaymentIntents are only fulfilled through their Checkout Session")

// IsPaymentIntentID reports whether id names a PaymentIntent (pi_…), whose
// record is a PaymentIntent fulfilment, rather than a Checkout Session.
func IsPaymentIntentID(id string) bool { return strings.HasPrefix(id, "pi_") }

// IntentSource is what a PaymentIntent fulfilment asks Stripe.
type IntentSource interface {
	GetPaymentIntent(ctx context.Context, id string) (*stripeapi.PaymentIntent, error)
	// SessionOwning is the Checkout Session that owns the PaymentIntent,
	// "" when none does.
	SessionOwning(ctx context.Context, paymentIntentID string) (string, error)
}

// recordLogKey names a record's id in log lines.
func recordLogKey(rec Record) string {
	if IsPaymentIntentID(rec.SessionID) {
		return "payment_intent"
	}
	return "session"
}

// actionIDs are the FULFILLD_*_ID variables of a PaymentIntent's action:
// the session's is set, and empty, so an action can tell the two apart.
func intentActionIDs(id string) []string {
	return []string{"FULFILLD_SESSION_ID=", "FULFILLD_PAYMENT_INTENT_ID=" + id}
}

// attemptIntent is attempt for a PaymentIntent's record: it settles the
// record as owned when a Checkout Session owns the PaymentIntent, waits
// while it has not succeeded, and otherwise runs the action once with the
// PaymentIntent. The caller holds the claim.
func (f *Fulfiller) attemptIntent(ctx context.Context, rec Record, st *stages) (Record, error) {
	log := f.logger().With("payment_intent", rec.SessionID)
	if rec.State == StateOwned {
		return rec, nil
	}
	if f.Intents == nil {
		if rec.Seq == 0 {
			return Record{}, ErrIntentsOff // asked for directly: nothing to record
		}
		// Queued while the setting was on: dead-letter it where an operator
		// sees it, and `retry` brings it back once the setting is on again.
		log.Error("a queued PaymentIntent cannot be fulfilled: fulfill.payment_intents is off; dead-lettered until `fulfilld retry`")
		rec.State, rec.LastError, rec.InFlight = StateFailed, ErrIntentsOff.Error(), false
		return rec, f.save(rec, time.Time{})
	}
	stop := st.stopCtx(ctx)
	owner, pi, err := f.readIntent(stop, rec.SessionID, st)
	if err != nil {
		return f.readFailed(stop, rec, err, "payment intent", log)
	}
	// A PaymentIntent whose action may have run (an attempt cut off by a
	// crash or a timeout) is fulfilled as itself to the end, with its own
	// idempotency key: settling it as its session's now could run the
	// action a second time under the session's key.
	mayHaveRun := rec.Attempts > 0 || rec.InFlight
	if owner != "" && !mayHaveRun {
		return f.settleOwned(rec, owner)
	}
	if owner == "" && pi != nil && pi.Invoice != "" && !mayHaveRun {
		// It pays an invoice: a subscription's (its Checkout Session, in
		// subscription mode, names no PaymentIntent) or a renewal. Not a
		// Payment Element payment, and never this setting's to fulfil.
		return f.settleOwned(rec, pi.Invoice)
	}
	if pi == nil {
		// Owned, but its action may have run: read it to run it again.
		if pi, err = f.Intents.GetPaymentIntent(stop, rec.SessionID); err != nil {
			return f.readFailed(stop, rec, err, "payment intent", log)
		}
	}
	rec.PaymentStatus = pi.Status
	if pi.Status != "succeeded" {
		// Not paid (yet): it waits for its payment_intent.succeeded, which
		// queues it again. A canceled one never succeeds: it ends expired.
		status := ""
		if pi.Status == "canceled" {
			status = "expired"
		}
		return f.settleUnpaid(rec, &stripeapi.Session{ID: pi.ID, Status: status, PaymentStatus: pi.Status})
	}
	return f.act(ctx, rec, st, pi.JSON, intentActionIDs(rec.SessionID), "")
}

// readIntent asks Stripe, holding one fetch slot, which session owns the
// PaymentIntent and, when none does, retrieves it.
func (f *Fulfiller) readIntent(ctx context.Context, id string, st *stages) (owner string, pi *stripeapi.PaymentIntent, err error) {
	if err := st.gate(false).acquire(ctx); err != nil {
		return "", nil, err
	}
	defer st.gate(false).release()
	if owner, err = f.Intents.SessionOwning(ctx, id); err != nil || owner != "" {
		return owner, nil, err
	}
	pi, err = f.Intents.GetPaymentIntent(ctx, id)
	return "", pi, err
}

// settleOwned ends a PaymentIntent's record as owned by a Checkout Session.
func (f *Fulfiller) settleOwned(rec Record, owner string) (Record, error) {
	f.logger().Info("payment intent belongs to a checkout session; the session's fulfillment covers it",
		"payment_intent", rec.SessionID, "session", owner)
	rec.State, rec.Owner, rec.InFlight, rec.LastError = StateOwned, owner, false, ""
	return rec, f.save(rec, time.Time{})
}

// noteOwner records, when a session is retrieved for its fulfilment, that
// it owns its PaymentIntent: a payment_intent.succeeded listed later then
// costs no request and never runs the action. A record already settled or
// being attempted is left alone: that attempt asks Stripe itself. It costs
// one read transaction, and a write the first time. Errors are only logged:
// the attempt's own question to Stripe is the safety net.
func (f *Fulfiller) noteOwner(sessionID, piID string) {
	if f.Intents == nil || piID == "" {
		return
	}
	f.mu.Lock()
	_, busy := f.claims[piID]
	f.mu.Unlock()
	if busy {
		return
	}
	var cur Record
	var ok bool
	if err := f.DB.View(func(tx Tx) (err error) {
		cur, ok, err = Get(tx, piID)
		return err
	}); err != nil || ok && (cur.Ended() || cur.InFlight || cur.Attempts > 0) {
		if ok && cur.State == StateFulfilled {
			f.logger().Error("a checkout session's payment intent was already fulfilled on its own; its session is fulfilled too",
				"session", sessionID, "payment_intent", piID)
		}
		return
	}
	now := f.now()
	err := f.DB.Update(func(tx Tx) error {
		cur, ok, err := Get(tx, piID)
		switch {
		case err != nil:
			return err
		case !ok:
			cur = Record{SessionID: piID, Created: now}
		case cur.Ended() || cur.InFlight || cur.Attempts > 0:
			// Its action may have run as itself: not the session's to take.
			return nil
		}
		cur.State, cur.Owner, cur.NextAttempt, cur.Updated = StateOwned, sessionID, time.Time{}, now
		cur.Seq++
		if err := put(tx, cur); err != nil {
			return err
		}
		return tx.Unschedule(SessionQueue, piID)
	})
	if err != nil {
		f.logger().Warn("could not record which session owns a payment intent; its own event will ask Stripe",
			"session", sessionID, "payment_intent", piID, "err", err)
	}
}
