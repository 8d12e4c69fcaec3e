package cursor

import "time"

// Tx is the storage the stream's position needs, inside one transaction
// of the caller's, so events are queued and the position moves in one
// commit. The store (internal/store) implements it for each engine.
type Tx interface {
	// Position is the position as stored; Load reads it for use.
	Position() (Position, error)
	PutPosition(Position) error
	LastPoll() (Poll, error)
	PutLastPoll(Poll) error

	// The seen-set: events already handled, each known by its id and its
	// created time together (Stripe never changes either), so a store
	// may keep them in created order, as the listing meets them; a store
	// may also key them by id alone (PostgreSQL does). Callers pass the
	// created time the event was listed with, always the same for an id.
	Seen(eventID string, created time.Time) (bool, error)
	MarkSeen(eventID string, created time.Time) error
	// ForgetSeen drops up to limit ids created before the given time,
	// oldest first, and says how many.
	ForgetSeen(before time.Time, limit int) (int, error)
	SeenCount() (int, error)

	// CountEvents adds to the per-type, per-outcome event counters.
	CountEvents(counts map[[2]string]int) error
	// EventCounts reads them, sorted by type then outcome.
	EventCounts() ([]EventCount, error)
	// RecordBad keeps a bad event; the store keeps the newest few only.
	RecordBad(BadEvent) error
	// BadEvents lists them newest first, at most limit, and how many are kept.
	BadEvents(limit int) ([]BadEvent, int, error)
}
