package boltstore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store/ledgerindex"
)

// Every write of a session, event delivery or PaymentIntent status moves, in
// the same transaction, the counters (fulfill_counts) and two indexes:
//   - failed_index: dead letters, by kind and time, so status lists the
//     latest few without reading the rest;
//   - the settled records' logs (logs.go): records in a final state and
//     not yet pruned, by when they settled, so retention finds what is old
//     enough without reading what is not. settled_index, which format 7
//     kept for this, keeps the entries of records it wrote until they are
//     written again or pruned.

// Index kinds, one byte each in the index keys.
var kindByte = map[string]byte{
	fulfill.KindSession:       's',
	fulfill.KindDelivery:      'n',
	fulfill.KindPaymentIntent: 'p',
}

var byteKind = map[byte]string{'s': fulfill.KindSession, 'n': fulfill.KindDelivery, 'p': fulfill.KindPaymentIntent}

// What a record adds to the counters and indexes is decided in ledgerindex,
// for every backend alike.
type indexed = ledgerindex.Indexed

var (
	sessionIndexed  = ledgerindex.Session
	deliveryIndexed = ledgerindex.Delivery
	intentIndexed   = ledgerindex.Intent
)

func failedKey(kind byte, at time.Time, id string) []byte {
	return append(append([]byte{kind}, timeKey(at)...), id...)
}

func settledKey(at time.Time, kind byte, id string) []byte {
	return append(append(timeKey(at), kind), id...)
}

// reindex moves a record's counts and failed-index entry from what it was
// (had says whether it existed) to what it is now. Its settled entry is
// its place in its kind's log (logs.go), or settled_index's entry for
// what format 7 wrote, which place and unplace move.
func (t *Tx) reindex(kind string, id string, old indexed, had bool, cur indexed) error {
	k := kindByte[kind]
	counts, failed := t.b(bucketCounts), t.b(bucketFailed)
	for c, n := range ledgerindex.Deltas(old, had, cur) {
		if err := addUint(counts, []byte(c), n); err != nil {
			return err
		}
	}
	if had && old.Failed {
		if err := failed.Delete(failedKey(k, old.At, id)); err != nil {
			return err
		}
	}
	if cur.Failed {
		if err := failed.Put(failedKey(k, cur.At, id), nil); err != nil {
			return err
		}
	}
	return nil
}

// Session implements fulfill.Tx.
func (t *Tx) Session(id string) (fulfill.Record, bool, error) {
	r, where, err := t.session(id)
	return r, where.bucket != nil, err
}

// session reads a session's record and says where it is: sessions (on its
// way; or settled, or a tombstone, as an older format left it),
// session_log or tombstones.
func (t *Tx) session(id string) (fulfill.Record, place, error) {
	if raw := t.b(bucketSessions).Get([]byte(id)); raw != nil {
		r, err := DecodeSession(id, raw)
		if err != nil {
			return fulfill.Record{}, place{}, fmt.Errorf("read record of %s: %w", id, err)
		}
		return r, place{bucketSessions, []byte(id)}, nil
	}
	var r fulfill.Record
	key, err := t.findLogged(sessionKind, id, func(v []byte) (bool, error) {
		r = fulfill.Record{}
		err := decodeRecord(v, &r)
		return r.SessionID == id, err
	})
	if err != nil {
		return fulfill.Record{}, place{}, err
	}
	if key != nil {
		return r, place{sessionKind.log, key}, nil
	}
	// A file older than format 6, opened read-only, has no tombstones
	// bucket: its tombstones are all in sessions.
	tombs := t.b(bucketTombstones)
	if tombs == nil {
		return fulfill.Record{}, place{}, nil
	}
	raw := tombs.Get([]byte(id))
	if raw == nil {
		return fulfill.Record{}, place{}, nil
	}
	if r, err = DecodeSession(id, raw); err != nil {
		return fulfill.Record{}, place{}, fmt.Errorf("read record of %s: %w", id, err)
	}
	return r, place{bucketTombstones, []byte(id)}, nil
}

// PutSession implements fulfill.Tx. Where a record goes depends on what
// it is:
//   - on its way (queued, in flight, retrying): sessions, as plain JSON. It
//     is rewritten within moments: compressing it, with the dictionary
//     read into the compressor each time, took more CPU than the rest of
//     queueing a session (40 µs of it at the local ceiling);
//   - settled: compressed, at the end of session_log (logs.go);
//   - pruned: a tombstone, in a compact binary form, in a bucket of its
//     own: tombstones are most of what a store holds after a year, and
//     they only come, so their pages stay full.
func (t *Tx) PutSession(r fulfill.Record) error {
	old, was, err := t.session(r.SessionID)
	if err != nil {
		return err
	}
	cur := sessionIndexed(r)
	var value, logValue []byte
	to := bucketSessions
	switch {
	case r.Pruned:
		// Index it as it will read back: what a tombstone keeps.
		to, value = bucketTombstones, encodeTombstone(r)
		if r, err = decodeTombstone(r.SessionID, value); err != nil {
			return err
		}
		cur = sessionIndexed(r)
	case cur.Settled:
		logValue, err = encodeRecord(r)
	default:
		value, err = json.Marshal(r)
	}
	if err != nil {
		return err
	}
	if err := t.place(sessionKind, r.SessionID, was, sessionIndexed(old), cur, to, value, logValue); err != nil {
		return err
	}
	return t.reindex(fulfill.KindSession, r.SessionID, sessionIndexed(old), was.found(), cur)
}

// DecodeSession reads a session record as the sessions bucket holds it
// (a tombstone, compressed JSON or, written before format 5, plain JSON):
// for tools that read the file itself.
func DecodeSession(id string, raw []byte) (fulfill.Record, error) {
	if len(raw) > 0 && raw[0] == tombstoneMark {
		return decodeTombstone(id, raw)
	}
	var r fulfill.Record
	err := decodeRecord(raw, &r)
	return r, err
}

// DecodeEventDelivery reads a delivery as the notifications bucket holds
// it, and DecodePaymentIntent a status as payment_intents does: for tools
// that read the file itself.
func DecodeEventDelivery(raw []byte) (fulfill.EventDelivery, error) {
	var n fulfill.EventDelivery
	err := decodeRecord(raw, &n)
	return n, err
}

// DecodePaymentIntent: see DecodeEventDelivery. id is the key it is kept
// under.
func DecodePaymentIntent(id string, raw []byte) (fulfill.PaymentIntent, error) {
	if len(raw) > 0 && raw[0] == intentMark {
		return decodeIntent(id, raw)
	}
	var pi fulfill.PaymentIntent
	err := decodeRecord(raw, &pi)
	return pi, err
}

// DeleteSession implements fulfill.Tx.
func (t *Tx) DeleteSession(id string) error {
	old, was, err := t.session(id)
	if err != nil {
		return err
	}
	return t.remove(sessionKind, id, was, sessionIndexed(old))
}

// A tombstone: tombstoneMark, then the state, object and owner as
// length-prefixed strings, then attempts and the created, updated and
// fulfilled times (unix seconds) as varints, then a flags byte. What a
// pruned record keeps is exactly what prevents a repeat and what status
// counts.
const tombstoneMark = 0x01

func encodeTombstone(r fulfill.Record) []byte {
	b := []byte{tombstoneMark}
	for _, s := range []string{string(r.State), r.Object, r.Owner} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = binary.AppendUvarint(b, uint64(max(r.Attempts, 0)))
	for _, tm := range []time.Time{r.Created, r.Updated, r.FulfilledAt} {
		if tm.IsZero() {
			b = binary.AppendVarint(b, 0)
		} else {
			b = binary.AppendVarint(b, tm.Unix())
		}
	}
	var flags byte
	if r.Recovered {
		flags |= 1
	}
	return append(b, flags)
}

func decodeTombstone(id string, b []byte) (fulfill.Record, error) {
	r := fulfill.Record{SessionID: id, Pruned: true}
	b = b[1:]
	bad := fmt.Errorf("a tombstone cut short")
	str := func() (string, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return "", false
		}
		s := string(b[k : k+int(n)])
		b = b[k+int(n):]
		return s, true
	}
	state, ok1 := str()
	object, ok2 := str()
	owner, ok3 := str()
	if !ok1 || !ok2 || !ok3 {
		return r, bad
	}
	r.State, r.Object, r.Owner = fulfill.State(state), object, owner
	n, k := binary.Uvarint(b)
	if k <= 0 {
		return r, bad
	}
	r.Attempts, b = int(n), b[k:]
	for _, tm := range []*time.Time{&r.Created, &r.Updated, &r.FulfilledAt} {
		v, k := binary.Varint(b)
		if k <= 0 {
			return r, bad
		}
		if v != 0 {
			*tm = time.Unix(v, 0).UTC()
		}
		b = b[k:]
	}
	if len(b) < 1 {
		return r, bad
	}
	r.Recovered = b[0]&1 != 0
	return r, nil
}

// A PaymentIntent status (format 6): intentMark, then the status, last
// payment error, event id and event type (without "payment_intent.", which
// flag 2 then says) as length-prefixed strings, the event's created time
// as unix seconds and nanoseconds + 1 (varints; 0 for none), and a flags
// byte (1: pruned). The poller writes one for most events it lists: compressing
// a record this small took longer than the rest of the event's work (the
// preset dictionary is read into the compressor for every record) and
// still left it larger than this.
const intentMark = 0x03

const intentTypePrefix = "payment_intent."

func encodeIntent(pi fulfill.PaymentIntent) []byte {
	var flags byte
	if pi.Pruned {
		flags |= 1
	}
	typ, short := strings.CutPrefix(pi.EventType, intentTypePrefix)
	if short {
		flags |= 2
	}
	b := make([]byte, 0, 24+len(pi.Status)+len(pi.LastError)+len(pi.EventID)+len(typ))
	b = append(b, intentMark)
	for _, s := range []string{pi.Status, pi.LastError, pi.EventID, typ} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	if pi.At.IsZero() {
		b = append(b, 0, 0)
	} else {
		b = binary.AppendVarint(b, pi.At.Unix())
		b = binary.AppendUvarint(b, uint64(pi.At.Nanosecond())+1)
	}
	return append(b, flags)
}

func decodeIntent(id string, b []byte) (fulfill.PaymentIntent, error) {
	pi := fulfill.PaymentIntent{ID: id}
	bad := fmt.Errorf("a PaymentIntent status cut short")
	b = b[1:]
	var strs [4]string
	for i := range strs {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return pi, bad
		}
		strs[i], b = string(b[k:k+int(n)]), b[k+int(n):]
	}
	pi.Status, pi.LastError, pi.EventID, pi.EventType = strs[0], strs[1], strs[2], strs[3]
	sec, k := binary.Varint(b)
	if k <= 0 {
		return pi, bad
	}
	b = b[k:]
	nsec, k := binary.Uvarint(b)
	if k <= 0 || nsec > 1e9 {
		return pi, bad
	}
	b = b[k:]
	if nsec > 0 {
		pi.At = time.Unix(sec, int64(nsec-1)).UTC()
	}
	if len(b) != 1 || b[0]&^3 != 0 {
		return pi, fmt.Errorf("a PaymentIntent status that cannot be read")
	}
	pi.Pruned = b[0]&1 != 0
	if b[0]&2 != 0 {
		pi.EventType = intentTypePrefix + pi.EventType
	}
	return pi, nil
}

// delivery reads a delivery and says where it is: notifications (on its
// way or pruned; settled, as format 7 left it) or delivery_log.
func (t *Tx) delivery(key string) (fulfill.EventDelivery, place, error) {
	var n fulfill.EventDelivery
	if raw := t.b(bucketDeliveries).Get([]byte(key)); raw != nil {
		// Where it is, even when it does not read: a write over it goes
		// there, or takes it out.
		if err := decodeRecord(raw, &n); err != nil {
			return fulfill.EventDelivery{}, place{bucketDeliveries, []byte(key)}, fmt.Errorf("read delivery %s: %w", key, err)
		}
		return n, place{bucketDeliveries, []byte(key)}, nil
	}
	at, err := t.findLogged(deliveryKind, key, func(v []byte) (bool, error) {
		n = fulfill.EventDelivery{}
		err := decodeRecord(v, &n)
		return n.Key() == key, err
	})
	if err != nil || at == nil {
		return fulfill.EventDelivery{}, place{}, err
	}
	return n, place{deliveryKind.log, at}, nil
}

// EventDelivery implements fulfill.Tx.
func (t *Tx) EventDelivery(key string) (fulfill.EventDelivery, bool, error) {
	n, where, err := t.delivery(key)
	return n, where.found(), err
}

// PutEventDelivery implements fulfill.Tx. A record that cannot be read
// counts as absent: writing this one repairs it.
func (t *Tx) PutEventDelivery(n fulfill.EventDelivery) error {
	key, err := ledgerindex.DeliveryKey(n)
	if err != nil {
		return err
	}
	old, was, err := t.delivery(key)
	had := err == nil && was.found()
	if err != nil {
		// Counted as absent; one under its key that does not read is
		// replaced (one in the log under its hash stays, for retention
		// to set apart).
		old = fulfill.EventDelivery{}
		if !bytes.Equal(was.bucket, bucketDeliveries) {
			was = place{}
		}
	}
	raw, err := encodeRecord(n)
	if err != nil {
		return err
	}
	if err := t.place(deliveryKind, key, was, deliveryIndexed(old), deliveryIndexed(n), bucketDeliveries, raw, raw); err != nil {
		return err
	}
	return t.reindex(fulfill.KindDelivery, key, deliveryIndexed(old), had, deliveryIndexed(n))
}

// intent reads a PaymentIntent's status and says where it is:
// payment_intents (pruned; or settled, as format 7 left it) or intent_log.
func (t *Tx) intent(id string) (fulfill.PaymentIntent, place, error) {
	if raw := t.b(bucketIntents).Get([]byte(id)); raw != nil {
		pi, err := DecodePaymentIntent(id, raw)
		if err != nil { // see delivery
			return fulfill.PaymentIntent{}, place{bucketIntents, []byte(id)}, fmt.Errorf("read %s/%s: %w", bucketIntents, id, err)
		}
		return pi, place{bucketIntents, []byte(id)}, nil
	}
	var pi fulfill.PaymentIntent
	at, err := t.findLogged(intentKind, id, func(v []byte) (bool, error) {
		got, rec, err := intentOfLog(v)
		if err != nil || got != id {
			return false, err
		}
		pi, err = DecodePaymentIntent(id, rec)
		return true, err
	})
	if err != nil || at == nil {
		return fulfill.PaymentIntent{}, place{}, err
	}
	return pi, place{intentKind.log, at}, nil
}

// PaymentIntent implements fulfill.Tx.
func (t *Tx) PaymentIntent(id string) (fulfill.PaymentIntent, bool, error) {
	pi, where, err := t.intent(id)
	return pi, where.found(), err
}

// PutPaymentIntent implements fulfill.Tx.
func (t *Tx) PutPaymentIntent(pi fulfill.PaymentIntent) error {
	old, was, err := t.intent(pi.ID)
	had := err == nil && was.found()
	if err != nil { // see PutEventDelivery
		old = fulfill.PaymentIntent{}
		if !bytes.Equal(was.bucket, bucketIntents) {
			was = place{}
		}
	}
	raw := encodeIntent(pi)
	if err := t.place(intentKind, pi.ID, was, intentIndexed(old), intentIndexed(pi), bucketIntents, raw, intentLogValue(pi.ID, raw)); err != nil {
		return err
	}
	return t.reindex(fulfill.KindPaymentIntent, pi.ID, intentIndexed(old), had, intentIndexed(pi))
}

// DeleteEventDelivery implements fulfill.Tx.
func (t *Tx) DeleteEventDelivery(key string) error {
	old, was, err := t.delivery(key)
	if err != nil {
		return err
	}
	return t.remove(deliveryKind, key, was, deliveryIndexed(old))
}

// DeletePaymentIntent implements fulfill.Tx.
func (t *Tx) DeletePaymentIntent(id string) error {
	old, was, err := t.intent(id)
	if err != nil {
		return err
	}
	return t.remove(intentKind, id, was, intentIndexed(old))
}

// Counts implements fulfill.Tx: kept counters, not a scan.
func (t *Tx) Counts() (fulfill.Counts, error) {
	c := ledgerindex.NewCounts()
	err := t.b(bucketCounts).ForEach(func(k, v []byte) error {
		ledgerindex.Fold(&c, string(k), int(binary.BigEndian.Uint64(v)))
		return nil
	})
	return c, err
}

// Failed implements fulfill.Tx, from the dead-letter index.
func (t *Tx) Failed(kind string, limit int) ([]string, error) {
	k := kindByte[kind]
	var ids []string
	c := t.b(bucketFailed).Cursor()
	// Seek past the kind's last key, then step back over its entries.
	key, _ := c.Seek([]byte{k + 1})
	if key == nil {
		key, _ = c.Last()
	} else {
		key, _ = c.Prev()
	}
	for ; key != nil && key[0] == k && (limit <= 0 || len(ids) < limit); key, _ = c.Prev() {
		ids = append(ids, string(key[9:]))
	}
	return ids, nil
}

// recount rebuilds every counter and index from the records: the upgrade
// of a file written before they were kept, and a test's check that what is
// kept is what the records say. The logs' indexes are rebuilt from the
// logs; a settled record under its id (as format 7 left it) gets its entry
// in settled_index.
func (t *Tx) recount() error {
	// The indexes lead lookups to values set apart as unreadable; a
	// rebuild from the logs would lose them, and their sessions would
	// read as absent.
	if b := t.b(bucketUnreadable); b != nil {
		if k, _ := b.Cursor().First(); k != nil {
			return fmt.Errorf("recount: %s holds records that cannot be read: restore the store from a backup first", bucketUnreadable)
		}
	}
	rebuilt := [][]byte{bucketCounts, bucketFailed, bucketSettled}
	for _, k := range ledgerKinds {
		rebuilt = append(rebuilt, k.index)
	}
	for _, name := range rebuilt {
		if t.tx.Bucket(name) != nil {
			if err := t.tx.DeleteBucket(name); err != nil {
				return err
			}
		}
		if _, err := t.tx.CreateBucket(name); err != nil {
			return err
		}
	}
	count := func(k *ledgerKind, id string, x indexed, logged []byte) error {
		if logged != nil {
			if err := t.reindexLog(k, id, nil, bytes.Clone(logged)); err != nil {
				return err
			}
		} else if x.Settled {
			if err := t.b(bucketSettled).Put(settledKey(x.At, k.mark, id), nil); err != nil {
				return err
			}
		}
		return t.reindex(k.name, id, indexed{}, false, x)
	}
	for _, b := range [][]byte{bucketSessions, bucketTombstones} {
		if err := t.b(b).ForEach(func(k, v []byte) error {
			r, err := DecodeSession(string(k), v)
			if err != nil {
				return fmt.Errorf("record of %s: %w", k, err)
			}
			return count(sessionKind, string(k), sessionIndexed(r), nil)
		}); err != nil {
			return err
		}
	}
	if err := t.b(bucketDeliveries).ForEach(func(k, v []byte) error {
		n, err := DecodeEventDelivery(v)
		if err != nil {
			return fmt.Errorf("delivery %s: %w", k, err)
		}
		return count(deliveryKind, string(k), deliveryIndexed(n), nil)
	}); err != nil {
		return err
	}
	if err := t.b(bucketIntents).ForEach(func(k, v []byte) error {
		pi, err := DecodePaymentIntent(string(k), v)
		if err != nil {
			return fmt.Errorf("payment intent %s: %w", k, err)
		}
		return count(intentKind, string(k), intentIndexed(pi), nil)
	}); err != nil {
		return err
	}
	for _, kind := range ledgerKinds {
		if err := t.b(kind.log).ForEach(func(k, v []byte) error {
			id, x, err := kind.read(v)
			if err != nil {
				return fmt.Errorf("%s/%x: %w", kind.log, k, err)
			}
			return count(kind, id, x, k)
		}); err != nil {
			return err
		}
	}
	for name, b := range queues {
		if err := putUint(t.b(bucketCounts), queueCount(fulfill.Queue(name)), uint64(t.b(b.index).Stats().KeyN)); err != nil {
			return err
		}
	}
	// Counted key by key: Stats reads the bucket as committed, and the
	// upgrade may have written it in this transaction (dropSeenByID).
	seen := 0
	if err := t.b(bucketSeenByTime).ForEach(func(_, _ []byte) error { seen++; return nil }); err != nil {
		return err
	}
	return putUint(t.b(bucketCursor), keySeenCount, uint64(seen))
}

// Recount is recount for tests: the kept counters and indexes must equal a
// count made from the records themselves.
func (t *Tx) Recount() error { return t.recount() }

// keyDeliveries is the upgrade to format 3: a notification was kept under
// its event id alone, in the record bucket and the queue; it becomes the
// notify destination's delivery of that event, under its DeliveryKey, due
// when it was due. The counters and indexes are rebuilt by recount after.
func (t *Tx) keyDeliveries() error {
	records := t.b(bucketDeliveries)
	type moved struct {
		old, key []byte
		val      []byte
	}
	var todo []moved
	if err := records.ForEach(func(k, v []byte) error {
		if bytes.IndexByte(k, ':') >= 0 {
			return nil // already a DeliveryKey
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(v, &fields); err != nil {
			// Unreadable before, unreadable after: left where it is, as
			// everywhere else, rather than failing the upgrade.
			return nil
		}
		fields["destination"] = json.RawMessage(`"` + fulfill.DestNotify + `"`)
		nv, err := json.Marshal(fields)
		if err != nil {
			return err
		}
		todo = append(todo, moved{old: bytes.Clone(k), key: []byte(fulfill.DeliveryKey(fulfill.DestNotify, string(k))), val: nv})
		return nil
	}); err != nil {
		return err
	}
	for _, m := range todo {
		if err := records.Delete(m.old); err != nil {
			return err
		}
		if err := records.Put(m.key, m.val); err != nil {
			return err
		}
	}
	items, index, err := t.queue(fulfill.DeliveryQueue)
	if err != nil {
		return err
	}
	var queued []moved
	if err := index.ForEach(func(k, v []byte) error {
		if bytes.IndexByte(k, ':') < 0 && len(v) >= 8 {
			queued = append(queued, moved{old: bytes.Clone(k), val: bytes.Clone(v)})
		}
		return nil
	}); err != nil {
		return err
	}
	for _, q := range queued {
		if err := items.Delete(q.val); err != nil {
			return err
		}
		if err := index.Delete(q.old); err != nil {
			return err
		}
		key := fulfill.DeliveryKey(fulfill.DestNotify, string(q.old))
		item := append(bytes.Clone(q.val[:8]), key...)
		if err := items.Put(item, nil); err != nil {
			return err
		}
		if err := index.Put([]byte(key), item); err != nil {
			return err
		}
	}
	return nil
}
