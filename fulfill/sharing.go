package fulfill

import (
	"errors"
	"time"
)

// When several instances share one store (store.postgres), a process's
// claims (Fulfiller.claim, the worker's one-attempt-per-key rule) keep its
// own goroutines apart but not the other instances. An attempt's start
// therefore also takes a lease on the record, in the same transaction
// that sets InFlight (writers take turns: see DB): until the lease ends, no
// other instance starts an attempt of that record. The action runs outside any
// transaction, for at most fulfill.timeout, and its result is written only
// while the lease is still this attempt's (same holder, same attempt
// number). An instance that dies holding a lease leaves the record in
// flight with its queue entry parked until the lease ends; whichever
// instance then finds it due repeats the attempt with the same idempotency
// key — the cut-off case of guarantee 2.
//
// Lease ends are on the store's clock (Tx.Now: PostgreSQL's now()), so the
// hosts' clocks may disagree without two instances both believing a lease
// is theirs. A bbolt store is one process's alone: Sharing is zero, an
// in-flight record found is always a cut-off attempt, and nothing here
// applies.

// Lease is an attempt's hold on its record while instances share the store.
type Lease struct {
	Holder string    `json:"holder,omitempty"`
	Until  time.Time `json:"lease_until,omitzero"`
}

// Sharing says whether, and how, a queue shares its store with other
// instances.
type Sharing struct {
	// Instance names this process among the instances sharing the store;
	// empty when the store is this process's alone.
	Instance string
	// Lease is how long an attempt holds its record: at least the action's
	// timeout, plus a margin for recording the result.
	Lease time.Duration
}

// LeaseMargin is what an attempt's lease adds to fulfill.timeout: time to
// record the result (the in-line retries of a refused write included) and
// to stop an action that outlived its timeout.
const LeaseMargin = time.Minute

// Outcomes of a shared store's claims.
var (
	// errClaimed: another instance holds a live lease on the record.
	errClaimed = errors.New("another instance is attempting it now")
	// errChanged: another instance wrote the record since it was read
	// here; what was decided on the stale read is dropped.
	errChanged = errors.New("the record changed since it was read")
	// ErrClaimLost is an attempt whose lease ended before its result could
	// be recorded: another instance has taken the record over (and repeats
	// the attempt with the same idempotency key), so this result is not
	// written over its.
	ErrClaimLost = errors.New("the attempt's lease ended before its result was recorded; " +
		"another instance took it over with the same idempotency key")
)

func (s Sharing) shared() bool { return s.Instance != "" }

// park is how far ahead a running attempt's queue entry is moved, so that
// the queue does not offer it again while it runs: a day for a store of
// one's own (Recover brings it back after a crash), the lease when shared
// (then any instance finds it due once the lease has ended).
func (s Sharing) park(now time.Time) time.Time {
	if s.shared() {
		return now.Add(s.Lease)
	}
	return now.Add(inFlightLease)
}

// heldElsewhere reports whether an in-flight record's lease belongs to a
// live attempt of another instance, and when it ends (on the host's clock,
// for the queue).
func (s Sharing) heldElsewhere(tx Tx, inFlight bool, l Lease, hostNow time.Time) (time.Time, bool, error) {
	if !s.shared() || !inFlight || l.Holder == "" {
		return time.Time{}, false, nil
	}
	now, err := tx.Now()
	if err != nil {
		return time.Time{}, false, err
	}
	if l.Holder == s.Instance || !now.Before(l.Until) {
		return time.Time{}, false, nil
	}
	return hostNow.Add(l.Until.Sub(now)), true, nil
}

// take is the lease a starting attempt writes with InFlight.
func (s Sharing) take(tx Tx) (Lease, error) {
	if !s.shared() {
		return Lease{}, nil
	}
	now, err := tx.Now()
	if err != nil {
		return Lease{}, err
	}
	return Lease{Holder: s.Instance, Until: now.Add(s.Lease)}, nil
}

// stillHeld checks, in the transaction that records an attempt's result,
// that the record is still in flight under this instance's lease for this
// attempt.
func (s Sharing) stillHeld(inFlight bool, l Lease, attempts, attempt int) error {
	if !s.shared() {
		return nil
	}
	if !inFlight || l.Holder != s.Instance || attempts != attempt {
		return ErrClaimLost
	}
	return nil
}

// cutOff reports, for Recover, whether an in-flight record's attempt was
// cut off: always for a store of one's own; for a shared one, only once
// its lease has ended.
func (s Sharing) cutOff(tx Tx, inFlight bool, l Lease) bool {
	if !inFlight {
		return false
	}
	_, busy, err := s.heldElsewhere(tx, inFlight, l, time.Time{})
	if err != nil {
		return false
	}
	if s.shared() && l.Holder == s.Instance {
		// A new process never has an old one's name: still ours means
		// running here now.
		return false
	}
	return !busy
}
