package fulfill

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// Retention: records that reached a final state keep their full detail for
// store.retention, then only what stops them from ever running again — the
// id, the state and when. Kept output, errors (which may quote it) and
// event bodies (which carry the customer's details) go. A pruned record
// still answers "already fulfilled" to every trigger: a session id seen
// again after retention is never fulfilled twice.

// kindPaymentIntent marks PaymentIntent statuses in the settled index.
const kindPaymentIntent byte = 'p'

// Prune cuts settled records last updated before the given time down to
// tombstones, oldest first, at most limit of them in this transaction, and
// reports how many it pruned and whether more are due. Call it in a loop of
// small transactions: a writer waits for one batch at most.
func Prune(tx *bbolt.Tx, before time.Time, limit int) (pruned int, more bool, err error) {
	idx := tx.Bucket(bucketSettled)
	c := idx.Cursor()
	edge := timeKey(before)
	for k, _ := c.First(); k != nil; k, _ = c.First() {
		if bytes.Compare(k[:8], edge) >= 0 {
			return pruned, false, nil
		}
		if pruned >= limit {
			return pruned, true, nil
		}
		key := bytes.Clone(k)
		if err := c.Delete(); err != nil {
			return pruned, false, err
		}
		kind, id := key[8], string(key[9:])
		switch kind {
		case kindSession:
			err = pruneSession(tx, id)
		case kindNotification:
			err = pruneNotification(tx, id)
		case kindPaymentIntent:
			err = prunePaymentIntent(tx, id)
		}
		if err != nil {
			return pruned, false, fmt.Errorf("prune %s: %w", id, err)
		}
		pruned++
	}
	return pruned, false, nil
}

func pruneSession(tx *bbolt.Tx, id string) error {
	rec, ok, err := Get(tx, id)
	if err != nil || !ok || !rec.Ended() || rec.Pruned {
		return err
	}
	return put(tx, Record{SessionID: rec.SessionID, State: rec.State, Trigger: rec.Trigger, EventID: rec.EventID,
		Attempts: rec.Attempts, Recovered: rec.Recovered, Seq: rec.Seq, Created: rec.Created, Updated: rec.Updated,
		FulfilledAt: rec.FulfilledAt, Pruned: true})
}

func pruneNotification(tx *bbolt.Tx, id string) error {
	n, ok, err := GetNotification(tx, id)
	if err != nil || !ok || n.State == NotifyPending || n.Pruned {
		return err
	}
	return putNotification(tx, Notification{EventID: n.EventID, EventType: n.EventType, State: n.State,
		Attempts: n.Attempts, Created: n.Created, Updated: n.Updated, SentAt: n.SentAt, Pruned: true})
}

func prunePaymentIntent(tx *bbolt.Tx, id string) error {
	b := tx.Bucket(bucketPaymentIntents)
	raw := b.Get([]byte(id))
	if raw == nil {
		return nil
	}
	var pi PaymentIntent
	if err := json.Unmarshal(raw, &pi); err != nil {
		return err
	}
	pi.LastError = ""
	out, err := json.Marshal(pi)
	if err != nil {
		return err
	}
	return b.Put([]byte(id), out)
}

// indexPaymentIntent files a PaymentIntent's status under the time it was
// set, replacing where an older status was filed.
func indexPaymentIntent(tx *bbolt.Tx, id string, old *PaymentIntent, at time.Time) error {
	idx := tx.Bucket(bucketSettled)
	if old != nil {
		if err := idx.Delete(settledKey(old.At, kindPaymentIntent, id)); err != nil {
			return err
		}
	}
	return idx.Put(settledKey(at, kindPaymentIntent, id), nil)
}

// settledBefore counts the index entries older than before (tests and the
// benchmark read it; it walks only that part of the index).
func settledBefore(tx *bbolt.Tx, before time.Time) int {
	n := 0
	c := tx.Bucket(bucketSettled).Cursor()
	for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k[:8]) < uint64(max(before.UnixNano(), 0)); k, _ = c.Next() {
		n++
	}
	return n
}

// pruneBatch is how many records one pruning transaction cuts down: small
// enough that a writer waiting behind it waits milliseconds.
const pruneBatch = 500

// PruneSettled runs Prune in small transactions until nothing settled
// before the given time is left, or ctx ends. It returns how many records
// it pruned.
func PruneSettled(ctx context.Context, db DB, before time.Time) (int, error) {
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		var n int
		var more bool
		err := db.Update(func(tx *bbolt.Tx) (err error) {
			n, more, err = Prune(tx, before, pruneBatch)
			return err
		})
		total += n
		if err != nil || !more {
			return total, err
		}
	}
}
