package fulfill

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Retention: records that reached a final state keep their full detail for
// store.retention, then only what stops them from ever running again — the
// id, the state and when. Kept output, errors (which may quote it) and
// event bodies (which carry the customer's details) go. A pruned record
// still answers "already fulfilled" to every trigger: a session id seen
// again after retention is never fulfilled twice.

// Prune cuts settled records last updated before the given time down to
// tombstones, oldest first, at most limit of them in this transaction, and
// reports how many it pruned and whether more are due. Call it in a loop of
// small transactions: a writer waits for one batch at most.
//
// With forget set — retention at least Stripe's 30 days of events, so no
// listing can bring a record's event back — records that prevent nothing
// are deleted outright instead of kept as tombstones: deliveries (the event
// can no longer be listed, so never delivered again), PaymentIntent
// statuses, PaymentIntents a session owns, and sessions that ended unpaid
// (expired or payment_failed: their action never ran, and Stripe lists no
// completed session that is not one of them). Fulfilled and dead-lettered
// sessions stay as tombstones: a session id asked for again, by a person or
// `reconcile --since` past 30 days, must still find it fulfilled.
func Prune(tx Tx, before time.Time, limit int, forget bool) (pruned int, more bool, err error) {
	due, more, err := tx.SettledBefore(before, limit)
	if err != nil {
		return 0, false, err
	}
	for _, s := range due {
		switch s.Kind {
		case KindSession:
			err = pruneSession(tx, s.ID, before, forget)
		case KindDelivery:
			err = pruneDelivery(tx, s.ID, before, forget)
		case KindPaymentIntent:
			err = prunePaymentIntent(tx, s.ID, before, forget)
		default:
			err = fmt.Errorf("unknown kind %q", s.Kind)
		}
		if err != nil {
			// A record that cannot be read, or an entry whose record is
			// not there, is passed over, not retried at every run:
			// everything behind it would never be pruned.
			if derr := tx.DropSettled(s); derr != nil {
				return pruned, false, fmt.Errorf("prune %s %s: %w", s.Kind, s.ID, errors.Join(err, derr))
			}
			continue
		}
		pruned++
	}
	return pruned, more, nil
}

// The tombstones. Each is written back (Pruned set), which takes it out of
// the settled index: a record is pruned once.

// errNotSettled: a settled entry whose record is not there, no longer
// settled, or settled again since (an entry left behind): pruning it would
// cut down a record on its way, or one before its time.
var errNotSettled = errors.New("no settled record under this entry")

func pruneSession(tx Tx, id string, before time.Time, forget bool) error {
	rec, ok, err := Get(tx, id)
	if err != nil {
		return err
	}
	if !ok || !rec.Ended() || rec.Pruned || !rec.Updated.Before(before) {
		return errNotSettled
	}
	if forget && (rec.State == StateExpired || rec.State == StatePaymentFailed || rec.State == StateOwned) {
		return tx.DeleteSession(id)
	}
	return put(tx, Record{SessionID: rec.SessionID, Object: rec.Object, Owner: rec.Owner, State: rec.State, Trigger: rec.Trigger, EventID: rec.EventID,
		Attempts: rec.Attempts, Recovered: rec.Recovered, Seq: rec.Seq, Created: rec.Created, Updated: rec.Updated,
		FulfilledAt: rec.FulfilledAt, Pruned: true})
}

func pruneDelivery(tx Tx, key string, before time.Time, forget bool) error {
	n, ok, err := tx.EventDelivery(key)
	if err != nil {
		return err
	}
	if !ok || (n.State != DeliverySent && n.State != DeliveryFailed) || n.Pruned || !n.Updated.Before(before) {
		return errNotSettled
	}
	if forget {
		return tx.DeleteEventDelivery(key)
	}
	return tx.PutEventDelivery(EventDelivery{Destination: n.Destination, EventID: n.EventID, EventType: n.EventType, State: n.State,
		Attempts: n.Attempts, Created: n.Created, Updated: n.Updated, SentAt: n.SentAt, Pruned: true})
}

func prunePaymentIntent(tx Tx, id string, before time.Time, forget bool) error {
	pi, ok, err := tx.PaymentIntent(id)
	if err != nil {
		return err
	}
	if !ok || pi.Pruned || !pi.At.Before(before) {
		return errNotSettled
	}
	if forget {
		return tx.DeletePaymentIntent(id)
	}
	pi.LastError, pi.Pruned = "", true
	return tx.PutPaymentIntent(pi)
}

// pruneBatch is how many records one pruning transaction cuts down: small
// enough that a writer waiting behind it waits milliseconds.
const pruneBatch = 64

// PruneSettled runs Prune in small transactions until nothing settled
// before the given time is left, or ctx ends. It returns how many records
// it pruned.
func PruneSettled(ctx context.Context, db DB, before time.Time, forget bool) (int, error) {
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		var n int
		var more bool
		err := db.Update(func(tx Tx) (err error) {
			n, more, err = Prune(tx, before, pruneBatch, forget)
			return err
		})
		total += n
		// A batch that pruned nothing passed over what it could not
		// prune: the next pass, not this one, tries again.
		if err != nil || !more || n == 0 {
			return total, err
		}
	}
}
