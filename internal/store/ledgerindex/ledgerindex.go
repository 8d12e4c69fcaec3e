// Package ledgerindex is what every backend of the store keeps beside the
// ledger's records, decided in one place: which counters a session, an
// event delivery or a PaymentIntent status adds one to, whether it is a
// dead letter, whether retention has yet to prune it, and what a pruned
// session keeps. Backends differ in how they store these (bbolt buckets,
// PostgreSQL rows); what they mean must not, or status would count
// differently on each engine.
package ledgerindex

import (
	"fmt"
	"strings"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
)

// The kept counters' names. A name is "group:name"; Fold reads them back.
const (
	CountRecovered = "session:recovered"
	CountInFlight  = "session:in_flight"
	// intentGroup counts PaymentIntents fulfilled on their own
	// (fulfill.payment_intents) by state: kept apart from sessions'.
	intentGroup = "pi_fulfill"
)

// DeliveryCount is the counter of a destination's deliveries in a state.
func DeliveryCount(dest, state string) string { return "delivery:" + dest + ":" + state }

// QueueCount is the counter that keeps a queue's length.
func QueueCount(q fulfill.Queue) string { return "queue:" + string(q) }

// Indexed is what the counters and indexes need to know of a record: the
// zero value is a record that is not there.
type Indexed struct {
	Counts  []string // counters this record adds one to
	Failed  bool     // a dead letter: in the failed index at At
	Settled bool     // in a final state and not pruned: in the settled index at At
	At      time.Time
}

// Session is what a session's (or a PaymentIntent fulfilment's) record
// contributes.
func Session(r fulfill.Record) Indexed {
	group := "session:"
	if fulfill.IsPaymentIntentID(r.SessionID) {
		group = intentGroup + ":"
	}
	x := Indexed{Counts: []string{group + string(r.State)}, Failed: r.State == fulfill.StateFailed,
		Settled: r.Ended() && !r.Pruned, At: r.Updated}
	if r.Recovered {
		x.Counts = append(x.Counts, CountRecovered)
	}
	if r.InFlight {
		x.Counts = append(x.Counts, CountInFlight)
	}
	return x
}

// Delivery is what an event delivery's record contributes.
func Delivery(n fulfill.EventDelivery) Indexed {
	return Indexed{Counts: []string{DeliveryCount(n.Destination, n.State)}, Failed: n.State == fulfill.DeliveryFailed,
		Settled: (n.State == fulfill.DeliverySent || n.State == fulfill.DeliveryFailed) && !n.Pruned, At: n.Updated}
}

// Intent is what a PaymentIntent's recorded status contributes.
func Intent(pi fulfill.PaymentIntent) Indexed {
	return Indexed{Counts: []string{"pi:" + pi.Status}, Settled: !pi.Pruned, At: pi.At}
}

// DeliveryKey is the key a delivery is kept under, refusing one that
// names no event or no destination.
func DeliveryKey(n fulfill.EventDelivery) (string, error) {
	if n.Destination == "" || n.EventID == "" {
		return "", fmt.Errorf("write delivery of %q to %q: the event id and the destination are required", n.EventID, n.Destination)
	}
	return n.Key(), nil
}

// Deltas is how each counter moves when a record goes from old (had says
// whether it existed) to cur: counters that do not move are left out.
func Deltas(old Indexed, had bool, cur Indexed) map[string]int64 {
	d := map[string]int64{}
	if had {
		for _, c := range old.Counts {
			d[c]--
		}
	}
	for _, c := range cur.Counts {
		d[c]++
	}
	for c, n := range d {
		if n == 0 {
			delete(d, c)
		}
	}
	return d
}

// Tombstone is what a pruned session record keeps: exactly what prevents a
// repeat and what status counts — the state, the object and its owner, the
// attempts, when it was created, updated and fulfilled (to the second) and
// whether reconciliation recovered it. A backend stores a pruned record so
// that it reads back as Tombstone of what was written.
func Tombstone(r fulfill.Record) fulfill.Record {
	sec := func(t time.Time) time.Time {
		if t.IsZero() || t.Unix() == 0 {
			return time.Time{} // the Unix epoch itself reads as unknown
		}
		return time.Unix(t.Unix(), 0).UTC()
	}
	return fulfill.Record{SessionID: r.SessionID, Pruned: true, State: r.State, Object: r.Object, Owner: r.Owner,
		Attempts: max(r.Attempts, 0), Created: sec(r.Created), Updated: sec(r.Updated), FulfilledAt: sec(r.FulfilledAt),
		Recovered: r.Recovered}
}

// NewCounts is the counts status shows before any counter is read: every
// known state at zero.
func NewCounts() fulfill.Counts {
	c := fulfill.Counts{Sessions: map[fulfill.State]int{}, IntentFulfillments: map[fulfill.State]int{},
		PaymentIntents: map[string]int{}, Deliveries: map[string]map[string]int{}}
	for _, s := range fulfill.States {
		c.Sessions[s] = 0
	}
	for _, s := range fulfill.IntentStates {
		c.IntentFulfillments[s] = 0
	}
	for _, d := range fulfill.Destinations {
		c.Deliveries[d] = map[string]int{}
		for _, s := range fulfill.DeliveryStates {
			c.Deliveries[d][s] = 0
		}
	}
	return c
}

// Fold adds one kept counter to c; counters that are not the ledger's
// (queue lengths, a backend's own) are passed over.
func Fold(c *fulfill.Counts, name string, n int) {
	group, rest, _ := strings.Cut(name, ":")
	switch {
	case name == CountRecovered:
		c.Recovered = n
	case name == CountInFlight:
		c.InFlight = n
	case group == "session":
		c.Sessions[fulfill.State(rest)] = n
	case group == intentGroup:
		c.IntentFulfillments[fulfill.State(rest)] = n
	case group == "pi" && n > 0:
		c.PaymentIntents[rest] = n
	case group == "delivery":
		dest, state, _ := strings.Cut(rest, ":")
		if c.Deliveries[dest] == nil {
			c.Deliveries[dest] = map[string]int{}
		}
		c.Deliveries[dest][state] = n
	}
}
