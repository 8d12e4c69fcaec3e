package boltstore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// Kinds of Item, in the order Export hands them out.
const (
	ItemSession       = "session"        // a session's (or PaymentIntent's) record, tombstones included
	ItemDelivery      = "delivery"       // an event's delivery, with the event while it is pending
	ItemPaymentIntent = "payment_intent" // a PaymentIntent's latest status
	ItemQueued        = "queued"         // a place in a queue, with its due time
	ItemSeen          = "seen"           // an event id of the seen-set
	ItemEventCount    = "event_count"    // one type and outcome's event counter
	ItemBadEvent      = "bad_event"
	ItemUsageDay      = "usage_day" // a day's API usage and payments (older days summed as one)
	ItemSweep         = "last_sweep"
	ItemMisses        = "webhook_misses"
	ItemLastPoll      = "last_poll"
	ItemPosition      = "cursor" // the stream's position: last, so a copy cut short has none
)

// Item is one thing the file holds, decoded, ready to be written into any
// store through its transaction (Put uses only store.Tx's methods, which
// move the target's counters and indexes as they write).
type Item struct {
	Kind string
	Key  string // its key in the file, for messages
	Put  func(store.Tx) error
}

// Export hands fn everything the file holds that fulfilld reads, one Item
// at a time, in one read-only transaction: sessions, deliveries,
// PaymentIntents, both queues, the seen-set, the event counters, bad
// events, API usage, the last sweep and webhook-miss report, the last poll
// and, last, the cursor's position. Counters, the seen-set's size, queue
// lengths and the indexes are not items: a target's Put methods keep its
// own. A record that cannot be decoded stops the export with its key: it
// may be what prevents a repeat, so it is not silently left behind. fn may
// do I/O (nothing writes to the file meanwhile); an error from it stops
// the export.
func (s *Store) Export(fn func(Item) error) error {
	return s.db.View(func(tx *bbolt.Tx) error {
		t := &Tx{tx: tx}
		for _, step := range []func(*Tx, func(Item) error) error{
			exportUnreadable, exportSessions, exportDeliveries, exportIntents, exportQueues, exportSeen,
			exportEventCounts, exportBad, exportUsage, exportSingles,
		} {
			if err := step(t, fn); err != nil {
				return err
			}
		}
		return nil
	})
}

// each calls fn with a copy of every key and value of a bucket; none when
// the file predates the bucket (opened read-only, it was not created).
func each(t *Tx, bucket []byte, fn func(k, v []byte) error) error {
	b := t.b(bucket)
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, v []byte) error { return fn(bytes.Clone(k), bytes.Clone(v)) })
}

func exportSessions(t *Tx, fn func(Item) error) error {
	for _, b := range [][]byte{bucketSessions, bucketTombstones} {
		if err := each(t, b, func(k, v []byte) error {
			r, err := DecodeSession(string(k), v)
			if err != nil {
				return fmt.Errorf("export: record of %s cannot be read: %w", k, err)
			}
			return fn(Item{Kind: ItemSession, Key: string(k), Put: func(tx store.Tx) error { return tx.PutSession(r) }})
		}); err != nil {
			return err
		}
	}
	return exportLog(t, sessionKind, func(id string, v []byte) (Item, error) {
		var r fulfill.Record
		err := decodeRecord(v, &r)
		return Item{Kind: ItemSession, Key: id, Put: func(tx store.Tx) error { return tx.PutSession(r) }}, err
	}, fn)
}

// exportUnreadable refuses a file with log values retention set apart
// because they did not read: see Export.
func exportUnreadable(t *Tx, _ func(Item) error) error {
	if b := t.b(bucketUnreadable); b != nil {
		if k, _ := b.Cursor().First(); k != nil {
			return fmt.Errorf("export: %d records cannot be read (kept in %s, first %x)", b.Stats().KeyN, bucketUnreadable, k)
		}
	}
	return nil
}

// exportLog exports the settled records of a kind's log (format 8): item
// makes one from a record's id and value.
func exportLog(t *Tx, k *ledgerKind, item func(id string, v []byte) (Item, error), fn func(Item) error) error {
	return each(t, k.log, func(key, v []byte) error {
		id, _, err := k.read(v)
		if err != nil {
			return fmt.Errorf("export: %s/%x cannot be read: %w", k.log, key, err)
		}
		it, err := item(id, v)
		if err != nil {
			return fmt.Errorf("export: %s/%x cannot be read: %w", k.log, key, err)
		}
		return fn(it)
	})
}

func exportDeliveries(t *Tx, fn func(Item) error) error {
	if err := each(t, bucketDeliveries, func(k, v []byte) error {
		n, err := DecodeEventDelivery(v)
		if err != nil {
			return fmt.Errorf("export: delivery %s cannot be read: %w", k, err)
		}
		if n.Key() != string(k) {
			return fmt.Errorf("export: delivery %s records itself as %s", k, n.Key())
		}
		return fn(Item{Kind: ItemDelivery, Key: string(k), Put: func(tx store.Tx) error { return tx.PutEventDelivery(n) }})
	}); err != nil {
		return err
	}
	return exportLog(t, deliveryKind, func(key string, v []byte) (Item, error) {
		n, err := DecodeEventDelivery(v)
		return Item{Kind: ItemDelivery, Key: key, Put: func(tx store.Tx) error { return tx.PutEventDelivery(n) }}, err
	}, fn)
}

func exportIntents(t *Tx, fn func(Item) error) error {
	if err := each(t, bucketIntents, func(k, v []byte) error {
		pi, err := DecodePaymentIntent(string(k), v)
		if err != nil {
			return fmt.Errorf("export: payment intent %s cannot be read: %w", k, err)
		}
		return fn(Item{Kind: ItemPaymentIntent, Key: string(k), Put: func(tx store.Tx) error { return tx.PutPaymentIntent(pi) }})
	}); err != nil {
		return err
	}
	return exportLog(t, intentKind, func(id string, v []byte) (Item, error) {
		_, rec, _ := intentOfLog(v)
		pi, err := DecodePaymentIntent(id, rec)
		return Item{Kind: ItemPaymentIntent, Key: id, Put: func(tx store.Tx) error { return tx.PutPaymentIntent(pi) }}, err
	}, fn)
}

func exportQueues(t *Tx, fn func(Item) error) error {
	for _, q := range []fulfill.Queue{fulfill.SessionQueue, fulfill.DeliveryQueue} {
		_, index, err := t.queue(q)
		if err != nil {
			return err
		}
		if err := index.ForEach(func(k, v []byte) error {
			if len(v) < 8 {
				return fmt.Errorf("export: the %s queue's entry of %s cannot be read", q, k)
			}
			id, due := string(k), keyTime(v)
			return fn(Item{Kind: ItemQueued, Key: string(q) + ":" + id,
				Put: func(tx store.Tx) error { return tx.Schedule(q, id, due) }})
		}); err != nil {
			return err
		}
	}
	return nil
}

func exportSeen(t *Tx, fn func(Item) error) error {
	return t.b(bucketSeenByTime).ForEach(func(k, _ []byte) error {
		if len(k) <= 8 {
			return fmt.Errorf("export: seen event %q cannot be read", k)
		}
		id, created := string(k[8:]), time.Unix(int64(binary.BigEndian.Uint64(k[:8])), 0)
		return fn(Item{Kind: ItemSeen, Key: id, Put: func(tx store.Tx) error { return tx.MarkSeen(id, created) }})
	})
}

func exportEventCounts(t *Tx, fn func(Item) error) error {
	return t.b(bucketEventStats).ForEach(func(k, v []byte) error {
		typ, outcome, _ := strings.Cut(string(k), "\x00")
		if len(v) != 8 {
			return fmt.Errorf("export: event count of %s/%s cannot be read", typ, outcome)
		}
		counts := map[[2]string]int{{typ, outcome}: int(binary.BigEndian.Uint64(v))}
		return fn(Item{Kind: ItemEventCount, Key: typ + "/" + outcome, Put: func(tx store.Tx) error { return tx.CountEvents(counts) }})
	})
}

func exportBad(t *Tx, fn func(Item) error) error {
	return each(t, bucketBad, func(k, v []byte) error {
		var ev cursor.BadEvent
		if err := json.Unmarshal(v, &ev); err != nil {
			return fmt.Errorf("export: bad event %s cannot be read: %w", k, err)
		}
		return fn(Item{Kind: ItemBadEvent, Key: string(k), Put: func(tx store.Tx) error { return tx.RecordBad(ev) }})
	})
}

// foldedDay is the day the sum of days past the rolling month is added
// under: long enough ago that a target folds it in turn.
var foldedDay = time.Unix(0, 0).UTC()

func exportUsage(t *Tx, fn func(Item) error) error {
	return each(t, bucketUsage, func(k, v []byte) error {
		var u stripeapi.Usage
		if err := json.Unmarshal(v, &u); err != nil {
			return fmt.Errorf("export: api usage of %s cannot be read: %w", k, err)
		}
		day := foldedDay
		if !bytes.Equal(k, keyFolded) {
			d, err := time.Parse(time.DateOnly, string(k))
			if err != nil {
				return fmt.Errorf("export: api usage day %q: %w", k, err)
			}
			day = d
		}
		return fn(Item{Kind: ItemUsageDay, Key: string(k), Put: func(tx store.Tx) error { return tx.AddUsage(day, u) }})
	})
}

// exportSingles hands out the values kept once: the last sweep and
// webhook-miss report, the last poll, and the position last of all.
func exportSingles(t *Tx, fn func(Item) error) error {
	sw, misses, err := t.LastSweep()
	if err != nil {
		return fmt.Errorf("export: last sweep: %w", err)
	}
	if sw != nil {
		if err := fn(Item{Kind: ItemSweep, Key: string(keyLastSweep), Put: func(tx store.Tx) error { return tx.PutLastSweep(*sw) }}); err != nil {
			return err
		}
	}
	if misses != nil {
		if err := fn(Item{Kind: ItemMisses, Key: string(keyMisses), Put: func(tx store.Tx) error { return tx.PutWebhookMisses(*misses) }}); err != nil {
			return err
		}
	}
	if t.b(bucketCursor).Get(keyPoll) != nil {
		p, err := t.LastPoll()
		if err != nil {
			return fmt.Errorf("export: last poll: %w", err)
		}
		if err := fn(Item{Kind: ItemLastPoll, Key: string(keyPoll), Put: func(tx store.Tx) error { return tx.PutLastPoll(p) }}); err != nil {
			return err
		}
	}
	if t.b(bucketCursor).Get(keyPosition) != nil {
		p, err := t.Position()
		if err != nil {
			return fmt.Errorf("export: cursor position: %w", err)
		}
		if err := fn(Item{Kind: ItemPosition, Key: string(keyPosition), Put: func(tx store.Tx) error { return tx.PutPosition(p) }}); err != nil {
			return err
		}
	}
	return nil
}
