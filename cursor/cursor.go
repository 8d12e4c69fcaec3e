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
// store transaction (cursor.Tx), so events are queued and the position moves in one
// commit.
package cursor

import (
	"slices"
	"time"
)

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
	// HostSince is a backfill's start counted back on the host's clock
	// (run --since 24h), until an answer told Stripe's: a host found ahead
	// moves it back by as much. Kept here, so that a process that ends
	// before it could judge leaves it to the next.
	HostSince *time.Time `json:"host_since,omitempty"`
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
	if p.HostSince != nil {
		t := *p.HostSince
		p.HostSince = &t
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

// Load reads the position; a zero Position means the stream never started.
func Load(tx Tx) (Position, error) {
	p, err := tx.Position()
	if err != nil {
		return p, err
	}
	if len(p.Scans) == 0 && p.Scan != nil {
		p.Scans = []Slice{*p.Scan}
	}
	p.settle()
	return p, nil
}

// Save records the position.
func Save(tx Tx, p Position) error {
	p.Scans = slices.Clone(p.Scans)
	p.Rescanned = slices.Clone(p.Rescanned)
	p.settle()
	return tx.PutPosition(p)
}

// LoadPoll reads the last poll's description.
func LoadPoll(tx Tx) (Poll, error) { return tx.LastPoll() }

// SavePoll records the last poll's description.
func SavePoll(tx Tx, p Poll) error { return tx.PutLastPoll(p) }

// Seen reports whether the event, created at created, was already handled.
func Seen(tx Tx, id string, created time.Time) (bool, error) { return tx.Seen(id, created) }

// MarkSeen records that the event was handled.
func MarkSeen(tx Tx, id string, created time.Time) error { return tx.MarkSeen(id, created) }

// Prune forgets up to limit seen events created before the given time; no
// listing reaches back that far any more. It returns how many were
// forgotten. The limit bounds the transaction, which holds every page it
// dirties in memory until it commits: callers prune a little at every
// commit.
func Prune(tx Tx, before time.Time, limit int) (int, error) { return tx.ForgetSeen(before, limit) }

// SeenCount is the size of the seen-set, as kept (reading it costs nothing
// however large the set is).
func SeenCount(tx Tx) (int, error) { return tx.SeenCount() }

// Count adds to the per-type, per-outcome event counters.
func Count(tx Tx, counts map[[2]string]int) error { return tx.CountEvents(counts) }

// EventCount is one row of the event counters.
type EventCount struct {
	Type    string `json:"type"`
	Outcome string `json:"outcome"`
	Count   uint64 `json:"count"`
}

// Counts reads the event counters, sorted by type then outcome.
func Counts(tx Tx) ([]EventCount, error) { return tx.EventCounts() }

// RecordBad keeps an event that could not be handled, for the operator.
func RecordBad(tx Tx, ev BadEvent) error { return tx.RecordBad(ev) }

// BadEvents lists the recorded bad events, newest first, at most limit,
// and how many are kept.
func BadEvents(tx Tx, limit int) ([]BadEvent, int, error) { return tx.BadEvents(limit) }
