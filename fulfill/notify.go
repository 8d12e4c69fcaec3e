package fulfill

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
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

// Notification states.
const (
	NotifyPending = "pending"
	NotifySent    = "sent"
	NotifyFailed  = "failed"
)

// Notification is the ledger entry of one event's notify delivery.
type Notification struct {
	EventID     string    `json:"event_id"`
	EventType   string    `json:"event_type"`
	State       string    `json:"state"`
	Attempts    int       `json:"attempts"`
	InFlight    bool      `json:"in_flight,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	Output      string    `json:"output,omitempty"`
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"`
	SentAt      time.Time `json:"sent_at,omitzero"`
	// Event is the body to deliver; it goes once the notification is
	// sent (Stripe keeps the event 30 days), or at retention.
	Event json.RawMessage `json:"event,omitempty"`
	// Pruned is set when store.retention passed (see Record.Pruned).
	Pruned bool `json:"pruned,omitempty"`
}

// IdempotencyKey is stable for the event across attempts and restarts.
func (n Notification) IdempotencyKey() string { return "fulfilld-notify-" + n.EventID }

// EnqueueNotification queues the event's notification, once per event id,
// inside the caller's transaction.
func EnqueueNotification(tx Tx, eventID, eventType string, event json.RawMessage, at time.Time) (bool, error) {
	// A record that cannot be read still means the event was queued once.
	if _, ok, err := tx.Notification(eventID); ok || err != nil {
		return false, nil
	}
	n := Notification{EventID: eventID, EventType: eventType, State: NotifyPending, Created: at, Updated: at,
		NextAttempt: at, Event: event}
	if err := putNotification(tx, n); err != nil {
		return false, err
	}
	return true, tx.Schedule(NotifyQueue, eventID, at)
}

// putNotification writes a notification's record; the store moves the
// counters and indexes with it.
func putNotification(tx Tx, n Notification) error {
	if n.State == NotifyPending {
		n.Pruned = false
	}
	return tx.PutNotification(n)
}

// GetNotification reads an event's notification record.
func GetNotification(tx Tx, eventID string) (Notification, bool, error) {
	return tx.Notification(eventID)
}

// NotifySummary counts notifications by state (kept counters) and lists the
// latest failed ones, at most limit, from the dead-letter index.
func NotifySummary(tx Tx, limit int) (map[string]int, []Notification, error) {
	counts, err := tx.Counts()
	if err != nil {
		return nil, nil, err
	}
	c := counts.Notifications
	var failed []Notification
	if limit <= 0 {
		return c, failed, nil
	}
	ids, err := tx.Failed(KindNotification, limit)
	if err != nil {
		return c, failed, err
	}
	for _, id := range ids {
		n, ok, err := GetNotification(tx, id)
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

// RetryNotifications puts dead-lettered notifications back in the queue;
// with no ids, every failed one.
func RetryNotifications(tx Tx, now time.Time, ids ...string) ([]string, error) {
	all := len(ids) == 0
	if all {
		var err error
		if ids, err = tx.Failed(KindNotification, 0); err != nil {
			return nil, err
		}
	}
	var done []string
	for _, id := range ids {
		n, ok, err := GetNotification(tx, id)
		if err != nil {
			return done, err
		}
		if !ok {
			return done, fmt.Errorf("retry %s: no notification for that event in the store", id)
		}
		if n.State != NotifyFailed {
			return done, fmt.Errorf("retry %s: its notification is %s, not failed", id, n.State)
		}
		if len(n.Event) == 0 {
			if all {
				continue // pruned: --failed requeues what can still be delivered
			}
			return done, fmt.Errorf("retry %s: its event body was pruned after store.retention; "+
				"Stripe keeps events for 30 days, so it can no longer be delivered from here", id)
		}
		n.State, n.Attempts, n.NextAttempt, n.Updated = NotifyPending, 0, now, now
		if err := putNotification(tx, n); err != nil {
			return done, err
		}
		if err := tx.Schedule(NotifyQueue, id, now); err != nil {
			return done, err
		}
		done = append(done, id)
	}
	return done, nil
}

// Notifier delivers queued notifications through the operator's notify
// action, with the same attempts, backoff and dead letter as fulfillment.
type Notifier struct {
	DB          DB
	Action      Action
	MaxAttempts int
	Concurrency int
	Backoff     func(attempt int) time.Duration
	Now         func() time.Time
	Logger      *slog.Logger

	// results are deliveries that ran but could not be recorded yet.
	results unsaved
	// unreadable remembers the events whose record could not be read and
	// was reported.
	unreadable sync.Map
}

// Unsaved is how many deliveries ran but could not be recorded yet; see
// Fulfiller.Unsaved.
func (n *Notifier) Unsaved() int { return n.results.len() }

// SaveKept tries once more to record the kept results; see
// Fulfiller.SaveKept.
func (n *Notifier) SaveKept() error { return n.results.flush() }

func (n *Notifier) now() time.Time {
	if n.Now != nil {
		return n.Now()
	}
	return time.Now()
}

// Recover puts deliveries that a crash cut off first in the queue.
func (n *Notifier) Recover() (int, error) {
	return recoverCutOff(n.DB, NotifyQueue, func(tx Tx, id string) bool {
		rec, ok, err := GetNotification(tx, id)
		return err == nil && ok && rec.InFlight
	})
}

// Run works the notify queue; see Fulfiller.Run.
func (n *Notifier) Run(ctx context.Context, opts RunOptions) (PassResult, error) {
	w := &worker{db: n.DB, q: NotifyQueue, concurrency: n.Concurrency, now: n.now, process: n.attempt, logger: n.Logger,
		flush: n.results.flush, kept: n.results.len}
	return w.run(ctx, opts)
}

// attempt delivers one notification once. The worker never runs two
// attempts for one event at once.
func (n *Notifier) attempt(ctx context.Context, id string) (outcome, error) {
	log := n.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("event", id)
	if kept, err := n.results.flushOne(id); kept {
		// Delivered already; until that is recorded nothing delivers it again.
		return outcomeOther, err
	}
	if err := storeWritable(n.DB); err != nil {
		return outcomeOther, err
	}
	var rec Notification
	var ok bool
	err := n.DB.View(func(tx Tx) (err error) {
		rec, ok, err = GetNotification(tx, id)
		return err
	})
	if err != nil {
		// Not lost: it stays queued and is offered again after a cooldown;
		// said once per event, not at every cooldown.
		if _, said := n.unreadable.LoadOrStore(id, true); !said {
			log.Error("could not read the notification's record; it stays queued", "err", err)
		}
		return outcomeOther, err
	}
	if !ok || rec.State != NotifyPending {
		return outcomeOther, n.DB.Update(func(tx Tx) error { return tx.Unschedule(NotifyQueue, id) })
	}
	rec.Attempts++
	rec.InFlight = true
	if err := n.save(rec, n.now().Add(inFlightLease)); err != nil {
		return outcomeOther, err
	}
	env := []string{
		"FULFILLD_EVENT_ID=" + rec.EventID,
		"FULFILLD_EVENT_TYPE=" + rec.EventType,
		"FULFILLD_IDEMPOTENCY_KEY=" + rec.IdempotencyKey(),
		"FULFILLD_ATTEMPT=" + strconv.Itoa(rec.Attempts),
	}
	out, actErr := n.Action.Deliver(ctx, Delivery{Body: rec.Event, Env: env, IdempotencyKey: rec.IdempotencyKey()})
	rec.InFlight, rec.Output = false, out.Output
	var next time.Time
	result := outcomeWaiting
	switch {
	case actErr == nil:
		// Delivered: the body (the customer's details) is not kept; Stripe
		// keeps the event for 30 days.
		rec.State, rec.LastError, rec.SentAt, rec.Event = NotifySent, "", n.now(), nil
		result = outcomeDone
		log.Info("notified", "type", rec.EventType, "attempt", rec.Attempts)
	case ctx.Err() != nil:
		rec.LastError, next = "attempt interrupted by shutdown", n.now()
	case rec.Attempts >= n.MaxAttempts:
		rec.State, rec.LastError = NotifyFailed, actErr.Error()
		result = outcomeFailed
		log.Error("notify failed for the last time; dead-lettered until `fulfilld retry`", "attempt", rec.Attempts, "err", actErr)
	default:
		backoff := DefaultBackoff
		if n.Backoff != nil {
			backoff = n.Backoff
		}
		next = n.now().Add(backoff(rec.Attempts))
		rec.LastError = actErr.Error()
		log.Warn("notify attempt failed; will retry", "attempt", rec.Attempts, "err", actErr, "next_attempt", next)
	}
	rec.NextAttempt = next
	if err := n.results.save(ctx, id, func() error { return n.save(rec, next) }); err != nil {
		log.Error("the notification's result could not be recorded", "attempt", rec.Attempts, "state", rec.State, "err", err)
		return outcomeOther, err
	}
	return result, nil
}

func (n *Notifier) save(rec Notification, next time.Time) error {
	rec.Updated = n.now()
	return n.DB.Update(func(tx Tx) error {
		if err := putNotification(tx, rec); err != nil {
			return err
		}
		return place(tx, NotifyQueue, rec.EventID, next)
	})
}
