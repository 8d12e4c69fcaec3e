package boltstore

import (
	"go.etcd.io/bbolt"

	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
)

// maxBadEvents bounds the bad events kept: the newest are what an operator
// acts on, and a stream of garbage must not grow the store without end.
const maxBadEvents = 1000

func (t *Tx) getJSON(bucket, key []byte, v any) (bool, error) {
	raw := t.b(bucket).Get(key)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("read %s/%s: %w", bucket, key, err)
	}
	return true, nil
}

func (t *Tx) putJSON(bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := t.b(bucket).Put(key, raw); err != nil {
		return fmt.Errorf("write %s/%s: %w", bucket, key, err)
	}
	return nil
}

// Position implements cursor.Tx.
func (t *Tx) Position() (cursor.Position, error) {
	var p cursor.Position
	_, err := t.getJSON(bucketCursor, keyPosition, &p)
	return p, err
}

// PutPosition implements cursor.Tx.
func (t *Tx) PutPosition(p cursor.Position) error { return t.putJSON(bucketCursor, keyPosition, p) }

// LastPoll implements cursor.Tx.
func (t *Tx) LastPoll() (cursor.Poll, error) {
	var p cursor.Poll
	_, err := t.getJSON(bucketCursor, keyPoll, &p)
	return p, err
}

// PutLastPoll implements cursor.Tx.
func (t *Tx) PutLastPoll(p cursor.Poll) error { return t.putJSON(bucketCursor, keyPoll, p) }

// The seen-set is one bucket, keyed by created time (8 bytes, big-endian
// unix seconds) and event id: what a listing marks seen goes in near its
// end, as the page's events are near one another in time, and pruning
// deletes from its start. Until format 7 a second bucket keyed by id alone
// was kept beside it: each event marked or forgotten there went to a page
// of its own, most of a page commit's work at the local ceiling.

func seenKey(id string, created time.Time) []byte {
	k := make([]byte, 8, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(max(created.Unix(), 0)))
	return append(k, id...)
}

// Seen implements cursor.Tx.
func (t *Tx) Seen(id string, created time.Time) (bool, error) {
	return has(t.b(bucketSeenByTime), seenKey(id, created)), nil
}

// has reports whether a bucket holds key: Get cannot tell a key without a
// value from none.
func has(b *bbolt.Bucket, key []byte) bool {
	k, _ := b.Cursor().Seek(key)
	return bytes.Equal(k, key)
}

// MarkSeen implements cursor.Tx.
func (t *Tx) MarkSeen(id string, created time.Time) error {
	seen, k := t.b(bucketSeenByTime), seenKey(id, created)
	if has(seen, k) {
		return nil
	}
	if err := seen.Put(k, nil); err != nil {
		return fmt.Errorf("mark event %s seen: %w", id, err)
	}
	return addUint(t.b(bucketCursor), keySeenCount, 1)
}

// ForgetSeen implements cursor.Tx.
func (t *Tx) ForgetSeen(before time.Time, limit int) (int, error) {
	var edge [8]byte
	binary.BigEndian.PutUint64(edge[:], uint64(max(before.Unix(), 0)))
	seen := t.b(bucketSeenByTime)
	// Collect first, then delete: deleting under a cursor moves it, and
	// going back to the first key after each delete walks emptied pages.
	var keys [][]byte
	c := seen.Cursor()
	for k, _ := c.First(); k != nil && len(keys) < limit && bytes.Compare(k[:8], edge[:]) < 0; k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := seen.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(keys), addUint(t.b(bucketCursor), keySeenCount, -int64(len(keys)))
}

// SeenCount implements cursor.Tx: the kept size, which costs nothing to
// read however large the set is.
func (t *Tx) SeenCount() (int, error) { return int(getUint(t.b(bucketCursor), keySeenCount)), nil }

// CountEvents implements cursor.Tx.
func (t *Tx) CountEvents(counts map[[2]string]int) error {
	b := t.b(bucketEventStats)
	for k, n := range counts {
		if err := addUint(b, []byte(k[0]+"\x00"+k[1]), int64(n)); err != nil {
			return err
		}
	}
	return nil
}

// EventCounts implements cursor.Tx.
func (t *Tx) EventCounts() ([]cursor.EventCount, error) {
	out := []cursor.EventCount{}
	err := t.b(bucketEventStats).ForEach(func(k, v []byte) error {
		typ, outcome, _ := strings.Cut(string(k), "\x00")
		out = append(out, cursor.EventCount{Type: typ, Outcome: outcome, Count: binary.BigEndian.Uint64(v)})
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].Type != out[j].Type {
			return out[i].Type < out[j].Type
		}
		return out[i].Outcome < out[j].Outcome
	})
	return out, err
}

func badKey(ev cursor.BadEvent) []byte {
	if ev.ID == "" {
		return fmt.Appendf(nil, "unknown-%d", ev.SeenAt.UnixNano())
	}
	return []byte(ev.ID)
}

// RecordBad implements cursor.Tx. Past maxBadEvents the oldest go; that
// reads the kept ones (at most maxBadEvents+1 small records), and only
// when a bad event arrives.
func (t *Tx) RecordBad(ev cursor.BadEvent) error {
	if err := t.putJSON(bucketBad, badKey(ev), ev); err != nil {
		return err
	}
	return t.trimBad()
}

// trimBad keeps the newest maxBadEvents bad events.
func (t *Tx) trimBad() error {
	all, total, err := t.BadEvents(math.MaxInt)
	if err != nil || total <= maxBadEvents {
		return err
	}
	b := t.b(bucketBad)
	for _, old := range all[maxBadEvents:] {
		if err := b.Delete(badKey(old)); err != nil {
			return err
		}
	}
	return nil
}

// BadEvents implements cursor.Tx.
func (t *Tx) BadEvents(limit int) ([]cursor.BadEvent, int, error) {
	var all []cursor.BadEvent
	err := t.b(bucketBad).ForEach(func(_, v []byte) error {
		var ev cursor.BadEvent
		if err := json.Unmarshal(v, &ev); err != nil {
			return err
		}
		all = append(all, ev)
		return nil
	})
	sort.Slice(all, func(i, j int) bool { return all[i].SeenAt.After(all[j].SeenAt) })
	total := len(all)
	if len(all) > limit {
		all = all[:limit]
	}
	return all, total, err
}
