// Package cursor keeps fulfilld's position in Stripe's event stream.
//
// Stripe's events list is only eventually consistent: an event can become
// visible after newer ones, many share one created second, and ids carry no
// order. So the position is not "the last id seen" but two times:
//
//   - Settled (reported as complete_until): every event created before it has
//     been listed after it could no longer be late, and is durably queued.
//   - Tip: the newest listing covered events up to here.
//
// Events between Settled and the tip are listed once at the tip and once more
// when Settled passes them (the re-scan), and a seen-set of event ids makes
// the second listing a no-op. Every function here works inside the caller's
// bbolt transaction, so events are queued and the position moves in one
// commit.
package cursor

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"go.etcd.io/bbolt"
)

var (
	bucketCursor     = []byte("cursor")
	bucketSeen       = []byte("seen")         // event id → created (unix, 8 bytes)
	bucketSeenByTime = []byte("seen_by_time") // created (8 bytes) + event id → nothing
	bucketStats      = []byte("event_stats")  // "type\x00outcome" → count
	bucketBad        = []byte("bad_events")   // event id → BadEvent JSON

	keyPosition  = []byte("position")
	keyPoll      = []byte("last_poll")
	keySeenCount = []byte("seen_count")
)

// maxBadEvents bounds the bad events kept: the newest are what an operator
// acts on, and a stream of garbage must not grow the store without end.
const maxBadEvents = 1000

// Position is where the stream stands.
type Position struct {
	Settled time.Time `json:"complete_until"`
	Tip     time.Time `json:"tip"`
	// Scans are the re-scan slices in progress, oldest first, each with its
	// page position, so that a restart resumes every one of them after its
	// last committed page instead of listing it again.
	Scans []Slice `json:"scans,omitempty"`
	// Rescanned are ranges after Settled that the re-scan listed completely
	// while a slice before them was still in progress: Settled moves over
	// them once everything before them is listed too.
	Rescanned []Range `json:"rescanned,omitempty"`
	// Scan is the oldest slice in progress. Load and Save derive it from
	// Scans: status shows it, and a version that knew a single slice
	// resumes it (Settled is behind every slice, so nothing is skipped).
	// Load reads a lone scan written by such a version into Scans.
	Scan *Slice `json:"scan,omitempty"`
	// AgedOut is a time the stream could not list because the cursor fell
	// past Stripe's 30-day retention; a reconciliation sweep covers it.
	AgedOut *Range `json:"aged_out,omitempty"`
}

// Range is a span of time.
type Range struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
}

// IsZero reports whether the stream was never started.
func (p Position) IsZero() bool { return p.Settled.IsZero() }

// Record notes the progress of one re-scan slice, known by its range: its
// page position when done is false, or that it is completely listed. Settled
// then moves over every completely listed range that joins it, and never
// over a slice in progress or a range not listed yet. It reports whether
// Settled moved.
func (p *Position) Record(s Slice, done bool) bool {
	p.Scans = slices.DeleteFunc(p.Scans, func(o Slice) bool { return o.From.Equal(s.From) && o.To.Equal(s.To) })
	if done {
		p.Rescanned = append(p.Rescanned, Range{From: s.From, To: s.To})
	} else {
		p.Scans = append(p.Scans, s)
	}
	return p.settle()
}

// Clone is a copy that shares nothing with p.
func (p Position) Clone() Position {
	p.Scans = slices.Clone(p.Scans)
	p.Rescanned = slices.Clone(p.Rescanned)
	if p.Scan != nil {
		s := *p.Scan
		p.Scan = &s
	}
	if p.AgedOut != nil {
		r := *p.AgedOut
		p.AgedOut = &r
	}
	return p
}

// ResetScan forgets the re-scan's progress: it starts again from Settled.
func (p *Position) ResetScan() {
	p.Scans, p.Rescanned, p.Scan = nil, nil, nil
}

// settle merges the completely listed ranges, moves Settled over those that
// join it, drops what falls behind it and derives Scan.
func (p *Position) settle() bool {
	before := p.Settled
	slices.SortFunc(p.Rescanned, func(a, b Range) int { return a.From.Compare(b.From) })
	var merged []Range
	for _, r := range p.Rescanned {
		if n := len(merged); n > 0 && !r.From.After(merged[n-1].To) {
			if r.To.After(merged[n-1].To) {
				merged[n-1].To = r.To
			}
			continue
		}
		merged = append(merged, r)
	}
	p.Rescanned = merged[:0]
	for _, r := range merged {
		if r.From.After(p.Settled) {
			p.Rescanned = append(p.Rescanned, r)
		} else if r.To.After(p.Settled) {
			p.Settled = r.To
		}
	}
	if len(p.Rescanned) == 0 {
		p.Rescanned = nil
	}
	p.Scans = slices.DeleteFunc(p.Scans, func(s Slice) bool { return !s.To.After(p.Settled) })
	slices.SortFunc(p.Scans, func(a, b Slice) int { return a.From.Compare(b.From) })
	if len(p.Scans) == 0 {
		p.Scans = nil
	}
	p.Scan = nil
	if len(p.Scans) > 0 {
		oldest := p.Scans[0]
		p.Scan = &oldest
	}
	return !p.Settled.Equal(before)
}

// Slice is one time range of the re-scan being listed newest-first.
type Slice struct {
	From          time.Time `json:"from"`
	To            time.Time `json:"to"`
	StartingAfter string    `json:"starting_after,omitempty"`
	Pages         int       `json:"pages"`
}

// Poll describes the most recent poll.
type Poll struct {
	At       time.Time     `json:"time"`
	Outcome  string        `json:"outcome"` // "ok" or "error"
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration_ns"`
	Listed   int           `json:"events_listed"`
	New      int           `json:"events_new"`
	// LastSuccess is when the most recent successful poll started.
	LastSuccess time.Time `json:"last_success,omitzero"`
	// ClockSkew is Stripe's clock minus the host's, in seconds, as the
	// poll observed it; nil when it did not.
	ClockSkew *float64 `json:"clock_skew_seconds,omitempty"`
}

// BadEvent is an event that could not be handled as its type promised.
type BadEvent struct {
	ID      string    `json:"id"`
	Type    string    `json:"type"`
	Created time.Time `json:"created"`
	Error   string    `json:"error"`
	SeenAt  time.Time `json:"seen_at"`
}

// Init creates the buckets this package owns.
func Init(tx *bbolt.Tx) error {
	for _, b := range [][]byte{bucketCursor, bucketSeen, bucketSeenByTime, bucketStats, bucketBad} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("create bucket %s: %w", b, err)
		}
	}
	return nil
}

// Load reads the position; a zero Position means the stream never started.
func Load(tx *bbolt.Tx) (Position, error) {
	var p Position
	if err := getJSON(tx, bucketCursor, keyPosition, &p); err != nil {
		return p, err
	}
	if len(p.Scans) == 0 && p.Scan != nil {
		p.Scans = []Slice{*p.Scan}
	}
	p.settle()
	return p, nil
}

// Save records the position.
func Save(tx *bbolt.Tx, p Position) error {
	p.Scans = slices.Clone(p.Scans)
	p.Rescanned = slices.Clone(p.Rescanned)
	p.settle()
	return putJSON(tx, bucketCursor, keyPosition, p)
}

// LoadPoll reads the last poll's description.
func LoadPoll(tx *bbolt.Tx) (Poll, error) {
	var p Poll
	err := getJSON(tx, bucketCursor, keyPoll, &p)
	return p, err
}

// SavePoll records the last poll's description.
func SavePoll(tx *bbolt.Tx, p Poll) error {
	return putJSON(tx, bucketCursor, keyPoll, p)
}

// Seen reports whether the event was already handled.
func Seen(tx *bbolt.Tx, id string) bool {
	b := tx.Bucket(bucketSeen)
	return b != nil && b.Get([]byte(id)) != nil
}

// MarkSeen records that the event was handled.
func MarkSeen(tx *bbolt.Tx, id string, created time.Time) error {
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(created.Unix()))
	seen := tx.Bucket(bucketSeen)
	if seen.Get([]byte(id)) == nil {
		if err := addSeen(tx, 1); err != nil {
			return err
		}
	}
	if err := seen.Put([]byte(id), ts[:]); err != nil {
		return fmt.Errorf("mark event %s seen: %w", id, err)
	}
	return tx.Bucket(bucketSeenByTime).Put(append(ts[:], id...), nil)
}

// addSeen moves the kept size of the seen-set.
func addSeen(tx *bbolt.Tx, delta int) error {
	b := tx.Bucket(bucketCursor)
	n := 0
	if v := b.Get(keySeenCount); len(v) == 8 {
		n = int(binary.BigEndian.Uint64(v))
	}
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], uint64(max(n+delta, 0)))
	return b.Put(keySeenCount, buf[:])
}

// CountSeen sets the kept size of the seen-set from the set itself: the
// upgrade of a store from before it was kept.
func CountSeen(tx *bbolt.Tx) error {
	n := tx.Bucket(bucketSeen).Stats().KeyN
	return addSeen(tx, n-SeenCount(tx))
}

// Prune forgets up to limit seen events created before the given time; no
// listing reaches back that far any more. It returns how many were
// forgotten. The limit bounds the transaction: the seen-set is keyed by
// event id, which carries no order, so each id forgotten dirties a leaf
// page of its own, and the transaction holds every dirty page in memory
// until it commits. Callers prune a little at every commit instead.
func Prune(tx *bbolt.Tx, before time.Time, limit int) (int, error) {
	var edge [8]byte
	binary.BigEndian.PutUint64(edge[:], uint64(max(before.Unix(), 0)))
	seen, byTime := tx.Bucket(bucketSeen), tx.Bucket(bucketSeenByTime)
	// Collect first, then delete: deleting under a cursor moves it.
	var keys [][]byte
	c := byTime.Cursor()
	for k, _ := c.First(); k != nil && len(keys) < limit && bytes.Compare(k[:8], edge[:]) < 0; k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := seen.Delete(k[8:]); err != nil {
			return 0, err
		}
		if err := byTime.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(keys), addSeen(tx, -len(keys))
}

// SeenCount is the size of the seen-set, as kept (reading it costs nothing
// however large the set is).
func SeenCount(tx *bbolt.Tx) int {
	if v := tx.Bucket(bucketCursor).Get(keySeenCount); len(v) == 8 {
		return int(binary.BigEndian.Uint64(v))
	}
	return 0
}

// Count adds to the per-type, per-outcome event counters.
func Count(tx *bbolt.Tx, counts map[[2]string]int) error {
	b := tx.Bucket(bucketStats)
	for k, n := range counts {
		key := []byte(k[0] + "\x00" + k[1])
		var cur uint64
		if v := b.Get(key); len(v) == 8 {
			cur = binary.BigEndian.Uint64(v)
		}
		var buf [8]byte
		binary.BigEndian.PutUint64(buf[:], cur+uint64(n))
		if err := b.Put(key, buf[:]); err != nil {
			return err
		}
	}
	return nil
}

// EventCount is one row of the event counters.
type EventCount struct {
	Type    string `json:"type"`
	Outcome string `json:"outcome"`
	Count   uint64 `json:"count"`
}

// Counts reads the event counters, sorted by type then outcome.
func Counts(tx *bbolt.Tx) []EventCount {
	var out []EventCount
	_ = tx.Bucket(bucketStats).ForEach(func(k, v []byte) error {
		typ, outcome, _ := strings.Cut(string(k), "\x00")
		out = append(out, EventCount{Type: typ, Outcome: outcome, Count: binary.BigEndian.Uint64(v)})
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].Type != out[j].Type {
			return out[i].Type < out[j].Type
		}
		return out[i].Outcome < out[j].Outcome
	})
	return out
}

// RecordBad keeps an event that could not be handled, for the operator.
func RecordBad(tx *bbolt.Tx, ev BadEvent) error {
	key := ev.ID
	if key == "" {
		key = fmt.Sprintf("unknown-%d", ev.SeenAt.UnixNano())
	}
	if err := putJSON(tx, bucketBad, []byte(key), ev); err != nil {
		return err
	}
	return trimBad(tx)
}

// trimBad drops the oldest bad events past maxBadEvents. It reads at most
// maxBadEvents+1 small records, and only when a bad event arrives.
func trimBad(tx *bbolt.Tx) error {
	b := tx.Bucket(bucketBad)
	if b.Stats().KeyN <= maxBadEvents {
		return nil
	}
	all, _, err := BadEvents(tx, maxBadEvents+1)
	if err != nil {
		return err
	}
	for _, ev := range all[maxBadEvents:] {
		key := ev.ID
		if key == "" {
			key = fmt.Sprintf("unknown-%d", ev.SeenAt.UnixNano())
		}
		if err := b.Delete([]byte(key)); err != nil {
			return err
		}
	}
	return nil
}

// BadEvents lists the recorded bad events, newest first, at most limit.
func BadEvents(tx *bbolt.Tx, limit int) ([]BadEvent, int, error) {
	b := tx.Bucket(bucketBad)
	var all []BadEvent
	err := b.ForEach(func(_, v []byte) error {
		var ev BadEvent
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

func getJSON(tx *bbolt.Tx, bucket, key []byte, v any) error {
	b := tx.Bucket(bucket)
	if b == nil {
		return nil
	}
	raw := b.Get(key)
	if raw == nil {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("read %s/%s: %w", bucket, key, err)
	}
	return nil
}

func putJSON(tx *bbolt.Tx, bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucket).Put(key, raw); err != nil {
		return fmt.Errorf("write %s/%s: %w", bucket, key, err)
	}
	return nil
}
