package boltstore

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/fulfill"
)

// From format 8 a record in a final state lives in a log of its kind, not
// under its id: records settle in the order time passes, so a log keyed by
// when they settled only grows at its end, and retention cuts it from its
// front. Its pages are filled whole (FillPercent 1.0), where a bucket keyed
// by id, whose keys arrive in random order, leaves every page a third empty
// — and the settled index beside it, whose keys arrived a little out of
// order, half. A simulated year (bench store, 5,000 orders a day,
// retention 90d) ended at 1,514 MiB in format 7; most of that was settled
// records, their index and the empty room in their pages.
//
// Each kind (sessions, event deliveries, PaymentIntent statuses) has:
//   - its bucket under the id (sessions, notifications, payment_intents):
//     records on their way (queued, in flight: rewritten within moments,
//     and few at any time), pruned ones (deliveries and PaymentIntents; a
//     session's tombstone has a bucket of its own), and settled records
//     format 7 wrote, until they are written again;
//   - its log (session_log, delivery_log, intent_log): the settled
//     records under a log key;
//   - its index (session_index, …): 8 bytes of the id's hash, mapped to
//     the log keys of every record whose id has that hash (nearly always
//     one). A lookup reads each and keeps the one whose id it is: a
//     session's and a delivery's record name themselves, a PaymentIntent's
//     log value starts with its id.
//
// A log key is the second the record settled (5 bytes: unix seconds) then
// the log's sequence (3 bytes, wrapping). A record that settled a little
// before the log's last entry (a PaymentIntent's event, listed newest
// first; a writer that waited for another) is keyed at that entry's second
// instead, so it still goes at the end: it is pruned that much late, never
// early. One that settled more than settleSlack before it — a backfill's
// old PaymentIntents, a host clock stepped back — goes where its time is,
// as in any index, and the transaction that put it there splits the log's
// pages in halves. So a clock that jumped forward for a while leaves its
// entries at the end, and what is written after still reaches the front in
// its time. A record's settled time is kept to the second.
//
// A log value that cannot be read is not deleted when retention passes
// it over (DropSettled): its id is not known, and it may be what keeps a
// session from running again. It moves to unreadable_log, where a lookup
// under its hash still finds it, and fails, as it did in the log.
//
// Records format 7 wrote stay where they are, their settled entries in
// settled_index, until they are written again or pruned; retention reads
// settled_index beside the logs.
type ledgerKind struct {
	name       string // fulfill.KindSession, …
	mark       byte   // the kind's byte in settled_index and failed_index keys
	byID       []byte
	log, index []byte
	// read reads a record in the log: its id and what it is.
	read func(v []byte) (string, indexed, error)
	// fromLog is a log value as the bucket under the id keeps it.
	fromLog func(v []byte) []byte
}

var (
	sessionKind = &ledgerKind{name: fulfill.KindSession, mark: 's', byID: bucketSessions,
		log: []byte("session_log"), index: []byte("session_index"),
		read: func(v []byte) (string, indexed, error) {
			var r fulfill.Record
			err := decodeRecord(v, &r)
			return r.SessionID, sessionIndexed(r), err
		},
		fromLog: func(v []byte) []byte { return v }}
	deliveryKind = &ledgerKind{name: fulfill.KindDelivery, mark: 'n', byID: bucketDeliveries,
		log: []byte("delivery_log"), index: []byte("delivery_index"),
		read: func(v []byte) (string, indexed, error) {
			n, err := DecodeEventDelivery(v)
			return n.Key(), deliveryIndexed(n), err
		},
		fromLog: func(v []byte) []byte { return v }}
	intentKind = &ledgerKind{name: fulfill.KindPaymentIntent, mark: 'p', byID: bucketIntents,
		log: []byte("intent_log"), index: []byte("intent_index"),
		read: func(v []byte) (string, indexed, error) {
			id, rec, err := intentOfLog(v)
			if err != nil {
				return "", indexed{}, err
			}
			pi, err := DecodePaymentIntent(id, rec)
			return id, intentIndexed(pi), err
		},
		fromLog: func(v []byte) []byte { _, rec, _ := intentOfLog(v); return rec }}

	ledgerKinds = []*ledgerKind{sessionKind, deliveryKind, intentKind}
)

// bucketUnreadable holds log values retention could not read: kind byte +
// log key → the value as it was.
var bucketUnreadable = []byte("unreadable_log")

func unreadableKey(k *ledgerKind, key []byte) []byte { return append([]byte{k.mark}, key...) }

// unreadable reports whether retention set k's log value at key apart.
func (t *Tx) unreadable(k *ledgerKind, key []byte) bool {
	b := t.b(bucketUnreadable)
	return b != nil && b.Get(unreadableKey(k, key)) != nil
}

func kindNamed(name string) *ledgerKind {
	for _, k := range ledgerKinds {
		if k.name == name {
			return k
		}
	}
	return nil
}

// A PaymentIntent's log value: its id (length-prefixed), then its status as
// encodeIntent writes it.
func intentLogValue(id string, rec []byte) []byte {
	v := binary.AppendUvarint(make([]byte, 0, 1+len(id)+len(rec)), uint64(len(id)))
	return append(append(v, id...), rec...)
}

func intentOfLog(v []byte) (string, []byte, error) {
	n, k := binary.Uvarint(v)
	if k <= 0 || uint64(len(v)-k) < n {
		return "", nil, fmt.Errorf("a PaymentIntent status cut short")
	}
	return string(v[k : k+int(n)]), v[k+int(n):], nil
}

const (
	logKeyLen = 8
	maxSecond = 1<<40 - 1
	seqMask   = 1<<24 - 1
)

// settleSlack is how much later than it settled a record may be indexed.
const settleSlack = time.Hour

func logSecond(at time.Time) uint64 { return uint64(min(max(at.Unix(), 0), maxSecond)) }

func keySecond(k []byte) uint64 {
	var b [8]byte
	copy(b[3:], k[:5])
	return binary.BigEndian.Uint64(b[:])
}

// indexHash is what an index keys an id by. A variable so a test can make
// every id collide.
var indexHash = func(id string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(id))
	return h.Sum64()
}

func indexKey(id string) []byte { return binary.BigEndian.AppendUint64(nil, indexHash(id)) }

// logEnd is the last key of a log written by a clock not ahead of this
// host's by more than settleSlack. Entries past it (a clock that ran
// ahead for a while) stay at the very end; what is written after them goes
// just before them, in order, which fills pages as an append does.
func logEnd(c *bbolt.Cursor) []byte {
	var ahead [8]byte
	binary.BigEndian.PutUint64(ahead[:], (logSecond(time.Now().Add(settleSlack))+1)<<24)
	if k, _ := c.Seek(ahead[:]); k == nil {
		k, _ = c.Last()
		return k
	}
	k, _ := c.Prev()
	return k
}

// logPut writes value at the end of a log, or at its time when that is
// more than settleSlack before the end (see above), and returns its key.
func (t *Tx) logPut(k *ledgerKind, at time.Time, value []byte) ([]byte, error) {
	name := k.log
	b := t.b(name)
	last := logEnd(b.Cursor())
	sec := logSecond(at)
	if last != nil {
		if end := keySecond(last); sec < end && sec+uint64(settleSlack/time.Second) >= end {
			sec = end
		}
	}
	var key []byte
	for {
		seq, err := b.NextSequence()
		if err != nil {
			return nil, err
		}
		var seqKey [8]byte
		binary.BigEndian.PutUint64(seqKey[:], sec<<24|seq&seqMask)
		// A wrapped sequence may meet a key of the same second, in the
		// log or set apart (whose lookups must keep failing on it).
		if key = seqKey[:]; b.Get(key) == nil && !t.unreadable(k, key) {
			break
		}
	}
	switch {
	case last != nil && bytes.Compare(key, last) < 0:
		// Written before the log's end: a full page split there would
		// leave a page with a key or two in it for good.
		b.FillPercent = halvesFill
	case b.FillPercent == bbolt.DefaultFillPercent:
		// bbolt splits a transaction's pages when it commits, by the
		// bucket's FillPercent then: whole, unless some write of this
		// transaction (in a Batch, maybe another caller's) went before
		// the end.
		b.FillPercent = 1.0
	}
	if err := b.Put(key, value); err != nil {
		return nil, fmt.Errorf("write %s: %w", name, err)
	}
	return key, nil
}

// halvesFill is how full a log's pages split in a transaction that wrote
// before its end: in halves, as bbolt's default, but told from a bucket
// this transaction has not written yet.
const halvesFill = bbolt.DefaultFillPercent + 0.01

// indexedKeys are the log keys k's index has under id's hash.
func (t *Tx) indexedKeys(k *ledgerKind, id string) [][]byte {
	idx := t.b(k.index)
	if idx == nil {
		return nil // a file older than format 8, opened read-only
	}
	v := idx.Get(indexKey(id))
	var keys [][]byte
	for len(v) >= logKeyLen {
		keys = append(keys, v[:logKeyLen])
		v = v[logKeyLen:]
	}
	return keys
}

// findLogged finds id's record in k's log: match reads a value (into the
// caller's record) and says whether it is id's. The key is nil when there
// is none; then a value under the hash that does not read is an error, as
// it may be id's.
func (t *Tx) findLogged(k *ledgerKind, id string, match func(v []byte) (bool, error)) ([]byte, error) {
	log := t.b(k.log)
	var unread error
	for _, key := range t.indexedKeys(k, id) {
		v := log.Get(key)
		if v == nil {
			if t.unreadable(k, key) && unread == nil {
				unread = fmt.Errorf("read %s/%x (under the hash of %s): a record that cannot be read (set apart in %s)",
					k.log, key, id, bucketUnreadable)
			}
			continue // a record DropSettled moved under its id
		}
		ok, err := match(v)
		if err != nil {
			// Its id cannot be read: it may be this one's, unless this
			// one's is found under the same hash.
			if unread == nil {
				unread = fmt.Errorf("read %s/%x (under the hash of %s): %w", k.log, key, id, err)
			}
			continue
		}
		if ok {
			return bytes.Clone(key), nil
		}
	}
	return nil, unread
}

// reindexLog sets the log key k's index has for id: from old (nil: none)
// to cur (nil: none). Keys of other ids with the same hash stay (set apart
// as unreadable too); keys whose record moved under its id go.
func (t *Tx) reindexLog(k *ledgerKind, id string, old, cur []byte) error {
	idx, log := t.b(k.index), t.b(k.log)
	var v []byte
	for _, key := range t.indexedKeys(k, id) {
		if !bytes.Equal(key, old) && (log.Get(key) != nil || t.unreadable(k, key)) {
			v = append(v, key...)
		}
	}
	v = append(v, cur...)
	if len(v) == 0 {
		return idx.Delete(indexKey(id))
	}
	return idx.Put(indexKey(id), v)
}

// A record's place: the bucket it is in and its key there; zero when it
// has none.
type place struct {
	bucket, key []byte
}

func (p place) found() bool { return p.bucket != nil }

// unplace takes a record of kind k out of where it was, with its entries
// in the index it was found by, or settled_index.
func (t *Tx) unplace(k *ledgerKind, id string, was place, old indexed) error {
	if !was.found() {
		return nil
	}
	if err := t.b(was.bucket).Delete(was.key); err != nil {
		return fmt.Errorf("write %s/%s: %w", was.bucket, id, err)
	}
	if bytes.Equal(was.bucket, k.log) {
		return t.reindexLog(k, id, was.key, nil)
	}
	if old.Settled {
		// Settled where format 7 kept it.
		return t.b(bucketSettled).Delete(settledKey(old.At, k.mark, id))
	}
	return nil
}

// remove deletes a record of kind k for good, with its counts and index
// entries; none when it was not found.
func (t *Tx) remove(k *ledgerKind, id string, was place, old indexed) error {
	if !was.found() {
		return nil
	}
	if err := t.unplace(k, id, was, old); err != nil {
		return err
	}
	return t.reindex(k.name, id, old, true, indexed{})
}

// place puts a record of kind k where it goes now — at the end of its log
// when it is settled (logValue), else under its id in the bucket to
// (value) — then takes it out of where it was: a write that failed half-way
// leaves two copies, never none.
func (t *Tx) place(k *ledgerKind, id string, was place, old indexed, cur indexed, to []byte, value, logValue []byte) error {
	if cur.Settled {
		key, err := t.logPut(k, cur.At, logValue)
		if err != nil {
			return err
		}
		if err := t.reindexLog(k, id, nil, key); err != nil {
			return err
		}
		return t.unplace(k, id, was, old)
	}
	if err := t.b(to).Put([]byte(id), value); err != nil {
		return fmt.Errorf("write %s/%s: %w", to, id, err)
	}
	if bytes.Equal(was.bucket, to) {
		// Written over where it was.
		was.bucket = nil
		if old.Settled {
			return t.b(bucketSettled).Delete(settledKey(old.At, k.mark, id))
		}
	}
	return t.unplace(k, id, was, old)
}

// SettledBefore implements fulfill.Tx: the fronts of the three logs and of
// settled_index (records format 7 wrote), merged oldest first by the time
// each keeps.
func (t *Tx) SettledBefore(before time.Time, limit int) ([]fulfill.Settled, bool, error) {
	type front struct {
		kind *ledgerKind // nil: settled_index
		c    *bbolt.Cursor
		k, v []byte
		// at is when the entry settled; it is due from dueFrom on: a
		// log's second has passed whole.
		at, dueFrom time.Time
	}
	var fronts []*front
	next := func(f *front, k, v []byte) {
		f.k, f.v = k, v
		switch {
		case k == nil:
		case f.kind == nil:
			f.at = keyTime(k)
			f.dueFrom = f.at.Add(time.Nanosecond)
		default:
			f.at = time.Unix(int64(keySecond(k)), 0)
			f.dueFrom = f.at.Add(time.Second)
		}
	}
	if b := t.b(bucketSettled); b != nil {
		f := &front{c: b.Cursor()}
		k, v := f.c.First()
		next(f, k, v)
		fronts = append(fronts, f)
	}
	for _, kind := range ledgerKinds {
		if b := t.b(kind.log); b != nil {
			f := &front{kind: kind, c: b.Cursor()}
			k, v := f.c.First()
			next(f, k, v)
			fronts = append(fronts, f)
		}
	}
	var out []fulfill.Settled
	for {
		var first *front
		for _, f := range fronts {
			if f.k != nil && !before.Before(f.dueFrom) && (first == nil || f.at.Before(first.at)) {
				first = f
			}
		}
		if first == nil {
			return out, false, nil
		}
		if len(out) >= limit {
			return out, true, nil
		}
		if first.kind == nil {
			out = append(out, fulfill.Settled{Kind: byteKind[first.k[8]], ID: string(first.k[9:]), At: first.at})
		} else {
			// One whose id does not read goes as no id: retention finds no
			// record under it, and passes it over (DropSettled).
			id, _, _ := first.kind.read(first.v)
			out = append(out, fulfill.Settled{Kind: first.kind.name, ID: id, At: first.at, Ref: bytes.Clone(first.k)})
		}
		k, v := first.c.Next()
		next(first, k, v)
	}
}

// DropSettled implements fulfill.Tx. An entry of a log is the record
// itself: one that reads moves under its id, where it is still found and
// retention no longer looks (unless a record is there already, which is
// the one its id reads); one that does not read is set apart in
// unreadable_log, where lookups under its hash still fail on it.
func (t *Tx) DropSettled(s fulfill.Settled) error {
	k := kindNamed(s.Kind)
	if k == nil {
		return fmt.Errorf("no record kind %q", s.Kind)
	}
	if len(s.Ref) == 0 {
		return t.b(bucketSettled).Delete(settledKey(s.At, k.mark, s.ID))
	}
	log := t.b(k.log)
	v := bytes.Clone(log.Get(s.Ref))
	if v == nil {
		return nil
	}
	id, _, err := k.read(v)
	if err != nil || id == "" {
		if err := t.b(bucketUnreadable).Put(unreadableKey(k, s.Ref), v); err != nil {
			return err
		}
		return log.Delete(s.Ref)
	}
	if byID := t.b(k.byID); byID.Get([]byte(id)) == nil {
		if err := byID.Put([]byte(id), k.fromLog(v)); err != nil {
			return err
		}
	}
	if err := log.Delete(s.Ref); err != nil {
		return err
	}
	return t.reindexLog(k, id, s.Ref, nil)
}
