package fulfill

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/bbolt"
)

// The counts that status, /metrics and /healthz show are kept, not
// recomputed: every write of a record adjusts them in the same transaction,
// by what the record was before and what it is now. Reading them costs the
// same with ten records or ten million.
//
// Beside them, two kinds of index, ordered by time:
//   - failed_index: dead letters (sessions and notifications), newest last,
//     so status lists the latest few without reading the rest;
//   - settled_index: records that reached a final state, oldest first, so
//     retention finds what is old enough without reading what is not.
var (
	bucketCounts   = []byte("fulfill_counts") // "session:<state>", "pi:<status>", … → uint64
	bucketFailed   = []byte("failed_index")   // kind + updated (8 bytes) + id → nothing
	bucketSettled  = []byte("settled_index")  // settled (8 bytes) + kind + id → nothing
	countRecovered = "session:recovered"
	countInFlight  = "session:in_flight"
)

// Kinds of record in the indexes.
const (
	kindSession      byte = 's'
	kindNotification byte = 'n'
)

func sessionCount(s State) string  { return "session:" + string(s) }
func piCount(status string) string { return "pi:" + status }
func notifyCount(s string) string  { return "notify:" + s }

// addCount adds delta to a counter; it never goes below zero.
func addCount(tx *bbolt.Tx, key string, delta int64) error {
	if delta == 0 {
		return nil
	}
	b := tx.Bucket(bucketCounts)
	var cur int64
	if v := b.Get([]byte(key)); len(v) == 8 {
		cur = int64(binary.BigEndian.Uint64(v))
	}
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], uint64(max(cur+delta, 0)))
	return b.Put([]byte(key), buf[:])
}

// counts reads every counter whose key starts with prefix, keyed by the rest.
func counts(tx *bbolt.Tx, prefix string) map[string]int {
	out := map[string]int{}
	c := tx.Bucket(bucketCounts).Cursor()
	p := []byte(prefix)
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if len(v) == 8 {
			out[strings.TrimPrefix(string(k), prefix)] = int(binary.BigEndian.Uint64(v))
		}
	}
	return out
}

func timeKey(t time.Time) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(max(t.UnixNano(), 0)))
	return b[:]
}

func failedKey(kind byte, updated time.Time, id string) []byte {
	k := append([]byte{kind}, timeKey(updated)...)
	return append(k, id...)
}

func settledKey(at time.Time, kind byte, id string) []byte {
	k := append(timeKey(at), kind)
	return append(k, id...)
}

// indexed is what the counters and indexes need to know of a record.
type indexed struct {
	state     string
	recovered bool
	inFlight  bool
	updated   time.Time
	settled   bool // in a final state: a candidate for retention
	pruned    bool
}

func sessionIndexed(r Record) indexed {
	return indexed{state: string(r.State), recovered: r.Recovered, inFlight: r.InFlight, updated: r.Updated,
		settled: r.Ended(), pruned: r.Pruned}
}

func notificationIndexed(n Notification) indexed {
	return indexed{state: n.State, inFlight: n.InFlight, updated: n.Updated,
		settled: n.State == NotifySent || n.State == NotifyFailed, pruned: n.Pruned}
}

// reindex moves a record's counts and index entries from what it was (had
// says whether it existed) to what it is now.
func reindex(tx *bbolt.Tx, kind byte, id string, old indexed, had bool, cur indexed) error {
	count := func(x indexed, delta int64) error {
		var err error
		switch kind {
		case kindSession:
			err = addCount(tx, sessionCount(State(x.state)), delta)
			if err == nil && x.recovered {
				err = addCount(tx, countRecovered, delta)
			}
			if err == nil && x.inFlight {
				err = addCount(tx, countInFlight, delta)
			}
		case kindNotification:
			err = addCount(tx, notifyCount(x.state), delta)
		}
		return err
	}
	failedState := string(StateFailed) // NotifyFailed is the same word
	if had {
		if err := count(old, -1); err != nil {
			return err
		}
		if old.state == failedState {
			if err := tx.Bucket(bucketFailed).Delete(failedKey(kind, old.updated, id)); err != nil {
				return err
			}
		}
		if old.settled && !old.pruned {
			if err := tx.Bucket(bucketSettled).Delete(settledKey(old.updated, kind, id)); err != nil {
				return err
			}
		}
	}
	if err := count(cur, 1); err != nil {
		return err
	}
	if cur.state == failedState {
		if err := tx.Bucket(bucketFailed).Put(failedKey(kind, cur.updated, id), nil); err != nil {
			return err
		}
	}
	if cur.settled && !cur.pruned {
		if err := tx.Bucket(bucketSettled).Put(settledKey(cur.updated, kind, id), nil); err != nil {
			return err
		}
	}
	return nil
}

// recentFailed lists the ids of the latest dead letters of one kind, newest
// first, at most limit (0: all).
func recentFailed(tx *bbolt.Tx, kind byte, limit int) []string {
	var ids []string
	c := tx.Bucket(bucketFailed).Cursor()
	// Seek past the kind's last key, then step back over its entries.
	k, _ := c.Seek([]byte{kind + 1})
	if k == nil {
		k, _ = c.Last()
	} else {
		k, _ = c.Prev()
	}
	for ; k != nil && k[0] == kind && (limit <= 0 || len(ids) < limit); k, _ = c.Prev() {
		ids = append(ids, string(k[9:]))
	}
	return ids
}

// Recount rebuilds every counter and index from the records: the upgrade of
// a store written before they were kept, and the check that they are right.
func Recount(tx *bbolt.Tx) error {
	for _, b := range [][]byte{bucketCounts, bucketFailed, bucketSettled} {
		if err := tx.DeleteBucket(b); err != nil && err != bbolt.ErrBucketNotFound {
			return err
		}
		if _, err := tx.CreateBucket(b); err != nil {
			return err
		}
	}
	if err := tx.Bucket(bucketSessions).ForEach(func(k, v []byte) error {
		var r Record
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("recount: record of %s: %w", k, err)
		}
		return reindex(tx, kindSession, string(k), indexed{}, false, sessionIndexed(r))
	}); err != nil {
		return err
	}
	if err := tx.Bucket(bucketNotifications).ForEach(func(k, v []byte) error {
		var n Notification
		if err := json.Unmarshal(v, &n); err != nil {
			return fmt.Errorf("recount: notification of %s: %w", k, err)
		}
		return reindex(tx, kindNotification, string(k), indexed{}, false, notificationIndexed(n))
	}); err != nil {
		return err
	}
	return tx.Bucket(bucketPaymentIntents).ForEach(func(_, v []byte) error {
		var pi PaymentIntent
		if err := json.Unmarshal(v, &pi); err != nil {
			return err
		}
		if err := addCount(tx, piCount(pi.Status), 1); err != nil {
			return err
		}
		return indexPaymentIntent(tx, pi.ID, nil, pi.At)
	})
}
