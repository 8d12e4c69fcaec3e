package fulfill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// NotifyTypes are the events that tell the customer their payment did not
// go through (SPEC.md, notify).
var NotifyTypes = map[string]bool{
	"checkout.session.async_payment_failed": true,
	"checkout.session.expired":              true,
	"payment_intent.payment_failed":         true,
}

// Destinations of event deliveries. notify and forward are one mechanism:
// a listed event is delivered once to each destination whose types name
// it, through one queue, one runner, one set of counters and one dead
// letter.
const (
	DestNotify  = "notify"  // the operator's notify action (payment failures, expiries)
	DestForward = "forward" // an existing webhook endpoint (forward.url)
	// DestRepair is forward.url too, in repair mode
	// (forward.undelivered_only): the events a sweep found Stripe could not
	// deliver. Its own name keeps its counts, dead letters and idempotency
	// keys apart from what the stream forwarded.
	DestRepair = "repair"
)

// Destinations lists every destination, in the order status shows them.
var Destinations = []string{DestForward, DestRepair, DestNotify}

// sameReceiver names the destinations that reach one receiver: forward and
// repair both POST to forward.url, so an event one of them queued is never
// queued by the other (a shop that switches between the modes gets no
// event twice from fulfilld).
var sameReceiver = map[string][]string{DestForward: {DestRepair}, DestRepair: {DestForward}}

// Delivery states.
const (
	DeliveryPending = "pending"
	DeliverySent    = "sent"
	DeliveryFailed  = "failed"
)

// DeliveryStates lists them, in the order status shows them.
var DeliveryStates = []string{DeliveryPending, DeliverySent, DeliveryFailed}

// Routes says which destinations get the events of each type.
type Routes map[string][]string

// Add routes the given types to dest.
func (r Routes) Add(dest string, types ...string) {
	for _, t := range types {
		if !slices.Contains(r[t], dest) {
			r[t] = append(r[t], dest)
		}
	}
}

// EventDelivery is the ledger entry of one event's delivery to one
// destination, keyed by both (Key).
type EventDelivery struct {
	Destination string    `json:"destination"`
	EventID     string    `json:"event_id"`
	EventType   string    `json:"event_type"`
	State       string    `json:"state"`
	Attempts    int       `json:"attempts"`
	InFlight    bool      `json:"in_flight,omitempty"`
	Lease       Lease     `json:"lease,omitzero"` // see Record.Lease
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	Output      string    `json:"output,omitempty"`
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"`
	SentAt      time.Time `json:"sent_at,omitzero"`
	// Event is the body to deliver; it goes once the delivery is sent
	// (Stripe keeps the event 30 days), or at retention.
	Event json.RawMessage `json:"event,omitempty"`
	// Pruned is set when store.retention passed (see Record.Pruned).
	Pruned bool `json:"pruned,omitempty"`
}

// DeliveryKey names one event's delivery to one destination: its record's
// key and its id in the delivery queue. Event ids never hold a colon.
func DeliveryKey(dest, eventID string) string { return dest + ":" + eventID }

// SplitDeliveryKey is DeliveryKey's inverse.
func SplitDeliveryKey(key string) (dest, eventID string, ok bool) {
	return strings.Cut(key, ":")
}

// Key is the delivery's DeliveryKey.
func (n EventDelivery) Key() string { return DeliveryKey(n.Destination, n.EventID) }

// IdempotencyKey is stable for the event and destination across attempts
// and restarts: fulfilld-notify-<event id>, fulfilld-forward-<event id>,
// fulfilld-repair-<event id>.
func (n EventDelivery) IdempotencyKey() string { return "fulfilld-" + n.Destination + "-" + n.EventID }

// EnqueueDelivery queues the event's delivery to dest, once per event id
// and receiver, inside the caller's transaction: a record that exists in
// any state — sent, failed, pruned, or one that cannot be read — means it
// was queued once, so a re-listing never delivers it again. A record of a
// destination with the same receiver (forward, repair) counts too.
func EnqueueDelivery(tx Tx, dest, eventID, eventType string, event json.RawMessage, at time.Time) (bool, error) {
	key := DeliveryKey(dest, eventID)
	for _, d := range append([]string{dest}, sameReceiver[dest]...) {
		if _, ok, err := tx.EventDelivery(DeliveryKey(d, eventID)); ok || err != nil {
			return false, nil
		}
	}
	n := EventDelivery{Destination: dest, EventID: eventID, EventType: eventType, State: DeliveryPending,
		Created: at, Updated: at, NextAttempt: at, Event: event}
	if err := tx.PutEventDelivery(n); err != nil {
		return false, err
	}
	return true, tx.Schedule(DeliveryQueue, key, at)
}

// GetDelivery reads the record of an event's delivery to dest.
func GetDelivery(tx Tx, dest, eventID string) (EventDelivery, bool, error) {
	return tx.EventDelivery(DeliveryKey(dest, eventID))
}

// DeliverySummary counts deliveries by destination and state (kept
// counters) and lists the latest failed ones, at most limit, from the
// dead-letter index.
func DeliverySummary(tx Tx, limit int) (map[string]map[string]int, []EventDelivery, error) {
	counts, err := tx.Counts()
	if err != nil {
		return nil, nil, err
	}
	c := counts.Deliveries
	var failed []EventDelivery
	if limit <= 0 {
		return c, failed, nil
	}
	keys, err := tx.Failed(KindDelivery, limit)
	if err != nil {
		return c, failed, err
	}
	for _, key := range keys {
		n, ok, err := tx.EventDelivery(key)
		if err != nil {
			return c, failed, err
		}
		if ok {
			n.Event = nil
			failed = append(failed, n)
		}
	}
	return c, failed, nil
}

// RetryDeliveries puts dead-lettered deliveries back in the queue: for
// each event id given, its failed delivery to every destination; with no
// ids, every failed one. It returns the keys it requeued.
func RetryDeliveries(tx Tx, now time.Time, eventIDs ...string) ([]string, error) {
	var keys []string
	all := len(eventIDs) == 0
	if all {
		var err error
		if keys, err = tx.Failed(KindDelivery, 0); err != nil {
			return nil, err
		}
	}
	for _, id := range eventIDs {
		found, failed := 0, 0
		var state string
		for _, dest := range Destinations {
			n, ok, err := GetDelivery(tx, dest, id)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
			found++
			state = n.State
			if n.State == DeliveryFailed {
				failed++
				keys = append(keys, n.Key())
			}
		}
		switch {
		case found == 0:
			return nil, fmt.Errorf("retry %s: no delivery (notify, forward or repair) of that event in the store", id)
		case failed == 0:
			return nil, fmt.Errorf("retry %s: its delivery is %s, not failed", id, state)
		}
	}
	var done []string
	for _, key := range keys {
		n, ok, err := tx.EventDelivery(key)
		if err != nil {
			return done, err
		}
		if !ok || n.State != DeliveryFailed {
			continue
		}
		if len(n.Event) == 0 {
			if all {
				continue // pruned: --failed requeues what can still be delivered
			}
			return done, fmt.Errorf("retry %s: its event body was pruned after store.retention; "+
				"Stripe keeps events for 30 days, so it can no longer be delivered from here", n.EventID)
		}
		n.State, n.Attempts, n.NextAttempt, n.Updated, n.Pruned = DeliveryPending, 0, now, now, false
		if err := tx.PutEventDelivery(n); err != nil {
			return done, err
		}
		if err := tx.Schedule(DeliveryQueue, key, now); err != nil {
			return done, err
		}
		done = append(done, key)
	}
	return done, nil
}

// Deliverer works the delivery queue: each queued event goes to its
// destination's action, with the same attempts, backoff and dead letter as
// fulfillment. Deliveries of different events run in parallel, up to
// Concurrency; one that fails waits in the queue and holds nothing back.
type Deliverer struct {
	DB DB
	// Destinations maps a destination to its action: a command (notify)
	// or a URL (notify, forward).
	Destinations map[string]Action
	// Routes says which destinations get which event types; the poller
	// queues by it.
	Routes      Routes
	MaxAttempts int
	Concurrency int
	Backoff     func(attempt int) time.Duration
	Now         func() time.Time
	Logger      *slog.Logger
	// Sharing is set when other instances work the same store's queue.
	Sharing Sharing

	// results are deliveries that ran but could not be recorded yet.
	results unsaved
	// unreadable remembers the deliveries whose record could not be read
	// and was reported.
	unreadable sync.Map
}

// Unsaved is how many deliveries ran but could not be recorded yet; see
// Fulfiller.Unsaved.
func (n *Deliverer) Unsaved() int { return n.results.len() }

// SaveKept tries once more to record the kept results; see
// Fulfiller.SaveKept.
func (n *Deliverer) SaveKept() error { return n.results.flush() }

func (n *Deliverer) now() time.Time {
	if n.Now != nil {
		return n.Now()
	}
	return time.Now()
}

// Recover puts deliveries that a crash cut off first in the queue.
func (n *Deliverer) Recover() (int, error) {
	return recoverCutOff(n.DB, DeliveryQueue, func(tx Tx, key string) bool {
		rec, ok, err := tx.EventDelivery(key)
		return err == nil && ok && n.Sharing.cutOff(tx, rec.InFlight, rec.Lease)
	})
}

// Run works the delivery queue; see Fulfiller.Run.
func (n *Deliverer) Run(ctx context.Context, opts RunOptions) (PassResult, error) {
	w := &worker{db: n.DB, q: DeliveryQueue, concurrency: n.Concurrency, now: n.now, process: n.attempt, logger: n.Logger,
		flush: n.results.flush, kept: n.results.len}
	return w.run(ctx, opts)
}

// noDestination is how long a delivery waits when its destination is no
// longer configured: it stays queued, for a configuration that has it
// again, and says so.
const noDestination = time.Hour

// attempt delivers one event to one destination once. The worker never
// runs two attempts for one key at once.
func (n *Deliverer) attempt(ctx context.Context, key string) (outcome, error) {
	log := n.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dest, eventID, _ := SplitDeliveryKey(key)
	log = log.With("event", eventID, "destination", dest)
	if kept, err := n.results.flushOne(key); kept {
		// Delivered already; until that is recorded nothing delivers it again.
		return outcomeOther, err
	}
	if err := storeWritable(n.DB); err != nil {
		return outcomeOther, err
	}
	var rec EventDelivery
	var ok, busy bool
	var until time.Time
	err := n.DB.View(func(tx Tx) (err error) {
		if rec, ok, err = tx.EventDelivery(key); err != nil || !ok {
			return err
		}
		until, busy, err = n.Sharing.heldElsewhere(tx, rec.InFlight, rec.Lease, n.now())
		return err
	})
	if err != nil {
		// Not lost: it stays queued and is offered again after a cooldown;
		// said once per delivery, not at every cooldown.
		if _, said := n.unreadable.LoadOrStore(key, true); !said {
			log.Error("could not read the delivery's record; it stays queued", "err", err)
		}
		return outcomeOther, err
	}
	if !ok || rec.State != DeliveryPending {
		return outcomeOther, n.DB.Update(func(tx Tx) error {
			// Read again under the write: a `retry` (from another host,
			// or the admin socket) may have made it pending and queued
			// it since the look above, and its entry must stay.
			if cur, ok, err := tx.EventDelivery(key); err != nil || ok && cur.State == DeliveryPending {
				return err
			}
			return tx.Unschedule(DeliveryQueue, key)
		})
	}
	if busy {
		// Another instance delivers it now: looked at again when that
		// attempt's lease ends.
		return outcomeOther, n.DB.Update(func(tx Tx) error { return tx.Schedule(DeliveryQueue, key, until) })
	}
	action := n.Destinations[dest]
	if action == nil {
		log.Warn("a queued delivery's destination is not configured; it waits for a configuration that has it",
			"next_attempt", n.now().Add(noDestination))
		return outcomeOther, n.DB.Update(func(tx Tx) error { return tx.Schedule(DeliveryQueue, key, n.now().Add(noDestination)) })
	}
	switch rec, err = n.start(key, rec.Attempts); {
	case errors.Is(err, errClaimed), errors.Is(err, errSettled):
		return outcomeOther, nil
	case err != nil:
		return outcomeOther, err
	}
	attempt := rec.Attempts
	env := []string{
		"FULFILLD_EVENT_ID=" + rec.EventID,
		"FULFILLD_EVENT_TYPE=" + rec.EventType,
		"FULFILLD_IDEMPOTENCY_KEY=" + rec.IdempotencyKey(),
		"FULFILLD_ATTEMPT=" + strconv.Itoa(rec.Attempts),
	}
	out, actErr := action.Deliver(ctx, Delivery{Body: rec.Event, Env: env, IdempotencyKey: rec.IdempotencyKey()})
	rec.InFlight, rec.Lease, rec.Output = false, Lease{}, out.Output
	if actErr == nil && len(rec.Output) > sentOutputKept {
		// A receiver's page on success is not worth 64 KiB per event for
		// the retention: the start is kept, as a receipt.
		rec.Output = rec.Output[:sentOutputKept] + "…"
	}
	var next time.Time
	result := outcomeWaiting
	switch {
	case actErr == nil:
		// Delivered: the body (the customer's details) is not kept; Stripe
		// keeps the event for 30 days.
		rec.State, rec.LastError, rec.SentAt, rec.Event = DeliverySent, "", n.now(), nil
		result = outcomeDone
		log.Info("delivered", "type", rec.EventType, "attempt", rec.Attempts)
	case ctx.Err() != nil:
		rec.LastError, next = "attempt interrupted by shutdown", n.now()
	case rec.Attempts >= n.MaxAttempts:
		rec.State, rec.LastError = DeliveryFailed, actErr.Error()
		result = outcomeFailed
		log.Error("delivery failed for the last time; dead-lettered until `fulfilld retry "+rec.EventID+"`",
			"attempt", rec.Attempts, "err", actErr)
	default:
		backoff := DefaultBackoff
		if n.Backoff != nil {
			backoff = n.Backoff
		}
		next = n.now().Add(backoff(rec.Attempts))
		rec.LastError = actErr.Error()
		log.Warn("delivery attempt failed; will retry", "attempt", rec.Attempts, "err", actErr, "next_attempt", next)
	}
	rec.NextAttempt = next
	err = n.results.save(ctx, key, func() error { return n.save(rec, attempt, next) })
	if errors.Is(err, ErrClaimLost) {
		log.Error("this delivery's result is not recorded: it outlived its lease and another instance took it over",
			"attempt", attempt, "lease", n.Sharing.Lease)
		return outcomeOther, err
	}
	if err != nil {
		log.Error("the delivery's result could not be recorded", "attempt", rec.Attempts, "state", rec.State, "err", err)
		return outcomeOther, err
	}
	return result, nil
}

// errSettled: the delivery was settled (sent, dead-lettered), removed or
// attempted elsewhere since it was looked at.
var errSettled = errors.New("the delivery is no longer pending")

// start records, before the delivery is attempted, that it is about to
// be: one more attempt, in flight, its queue entry parked (and, when the
// store is shared, leased to this instance). It reads the record again in
// the same transaction, so two instances never both start one.
func (n *Deliverer) start(key string, attempts int) (EventDelivery, error) {
	now := n.now()
	var rec EventDelivery
	var held bool
	err := n.DB.Update(func(tx Tx) error {
		held = false
		cur, ok, err := tx.EventDelivery(key)
		switch {
		case err != nil:
			return err
		case !ok || cur.State != DeliveryPending:
			return errSettled
		case cur.Attempts != attempts:
			// Another instance attempted it since it was read here: its
			// result stands, and the retry it scheduled.
			return errSettled
		}
		if until, busy, err := n.Sharing.heldElsewhere(tx, cur.InFlight, cur.Lease, now); err != nil {
			return err
		} else if busy {
			// Parked until that attempt's lease ends, in this
			// transaction: its result, recorded after, decides the entry.
			held = true
			return tx.Schedule(DeliveryQueue, key, until)
		}
		if cur.Lease, err = n.Sharing.take(tx); err != nil {
			return err
		}
		cur.Attempts++
		cur.InFlight, cur.Updated = true, now
		rec = cur
		if err := tx.PutEventDelivery(cur); err != nil {
			return err
		}
		return tx.Schedule(DeliveryQueue, key, n.Sharing.park(now))
	})
	if err == nil && held {
		return rec, errClaimed
	}
	return rec, err
}

// save records a delivery's state, when attempt is not 0 only while that
// attempt still holds it (see Sharing.stillHeld).
func (n *Deliverer) save(rec EventDelivery, attempt int, next time.Time) error {
	rec.Updated = n.now()
	return n.DB.Update(func(tx Tx) error {
		if attempt != 0 && n.Sharing.shared() {
			cur, _, err := tx.EventDelivery(rec.Key())
			if err != nil {
				return err
			}
			if err := n.Sharing.stillHeld(cur.InFlight, cur.Lease, cur.Attempts, attempt); err != nil {
				return err
			}
		}
		if err := tx.PutEventDelivery(rec); err != nil {
			return err
		}
		return place(tx, DeliveryQueue, rec.Key(), next)
	})
}

// NotifyRoutes routes NotifyTypes to the notify destination.
func NotifyRoutes() Routes {
	r := Routes{}
	for t := range NotifyTypes {
		r.Add(DestNotify, t)
	}
	return r
}

// sentOutputKept bounds what a successful delivery keeps of the receiver's
// answer.
const sentOutputKept = 512
