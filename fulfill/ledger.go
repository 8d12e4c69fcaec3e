package fulfill

import (
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// State is where a session stands. See SPEC.md.
type State string

const (
	StatePending         State = "pending"          // queued: an attempt is due now or after a backoff
	StateAwaitingPayment State = "awaiting_payment" // complete but unpaid; waits for its async event
	StateFulfilled       State = "fulfilled"        // the action succeeded; never runs again
	StateFailed          State = "failed"           // dead letter: out of attempts, or the session is gone
	StatePaymentFailed   State = "payment_failed"   // async payment failed; never fulfilled
	StateExpired         State = "expired"          // expired unpaid; never fulfilled
)

// States lists every state, in the order status reports them.
var States = []State{StatePending, StateAwaitingPayment, StateFulfilled, StateFailed, StatePaymentFailed, StateExpired}

// Triggers: what asked for a fulfillment (FULFILLD_TRIGGER).
const (
	TriggerEvent     = "event"
	TriggerManual    = "manual"
	TriggerReconcile = "reconcile"
	TriggerHTTP      = "http"
)

var (
	bucketSessions       = []byte("sessions")        // session id → Record JSON
	bucketPaymentIntents = []byte("payment_intents") // pi id → PaymentIntent JSON
)

// Record is the ledger entry of one Checkout Session.
type Record struct {
	SessionID     string `json:"session_id"`
	State         State  `json:"state"`
	Trigger       string `json:"trigger"`
	EventID       string `json:"event_id,omitempty"`
	PaymentStatus string `json:"payment_status,omitempty"`
	LineItems     int    `json:"line_items,omitempty"`
	Attempts      int    `json:"attempts"`
	// InFlight is set, durably, before the action runs and cleared with its
	// result: found set after a restart, it means an attempt was cut off and
	// the action may have run.
	InFlight    bool      `json:"in_flight,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	Output      string    `json:"output,omitempty"`
	Recovered   bool      `json:"recovered,omitempty"`
	// Pruned is set when store.retention passed: only what prevents a
	// repeat is kept (the state and when); output and errors are gone.
	Pruned bool `json:"pruned,omitempty"`
	// Seq changes with every event or request recorded for the session, so
	// an attempt can tell that something happened while it talked to Stripe.
	Seq         uint64    `json:"seq"`
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"`
	FulfilledAt time.Time `json:"fulfilled_at,omitzero"`
}

// IdempotencyKey is the same for a session across attempts, restarts and
// even a lost store, so the operator's action can recognise a repeat.
func (r Record) IdempotencyKey() string { return IdempotencyKey(r.SessionID) }

// IdempotencyKey derives a session's idempotency key.
func IdempotencyKey(sessionID string) string { return "fulfilld-" + sessionID }

// triggeringEvent is FULFILLD_EVENT_ID: the event that asked for this
// attempt, empty when a person, the landing page or a sweep asked (the
// record keeps the event that first queued the session either way).
func (r Record) triggeringEvent() string {
	if r.Trigger != TriggerEvent {
		return ""
	}
	return r.EventID
}

// Ended reports whether the session will never be fulfilled by the queue.
func (r Record) Ended() bool {
	switch r.State {
	case StateFulfilled, StateFailed, StatePaymentFailed, StateExpired:
		return true
	}
	return false
}

// PaymentIntent is the latest known status of a PaymentIntent.
type PaymentIntent struct {
	ID        string    `json:"id"`
	Status    string    `json:"status"`
	LastError string    `json:"last_payment_error,omitempty"`
	EventID   string    `json:"event_id"`
	EventType string    `json:"event_type"`
	At        time.Time `json:"at"` // created time of the event that set it
}

// Init creates the buckets this package owns.
func Init(tx *bbolt.Tx) error {
	for _, b := range [][]byte{bucketSessions, bucketPaymentIntents, bucketNotifications,
		sessionQueue.items, sessionQueue.index, notifyQueue.items, notifyQueue.index,
		bucketCounts, bucketFailed, bucketSettled} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("create bucket %s: %w", b, err)
		}
	}
	return nil
}

// Get reads a session's record; ok is false when there is none.
func Get(tx *bbolt.Tx, sessionID string) (rec Record, ok bool, err error) {
	raw := tx.Bucket(bucketSessions).Get([]byte(sessionID))
	if raw == nil {
		return Record{}, false, nil
	}
	if err := json.Unmarshal(raw, &rec); err != nil {
		return Record{}, false, fmt.Errorf("read record of %s: %w", sessionID, err)
	}
	return rec, true, nil
}

// put writes a record, and moves the counters and indexes with it.
func put(tx *bbolt.Tx, rec Record) error {
	b := tx.Bucket(bucketSessions)
	var old Record
	had := false
	if prev := b.Get([]byte(rec.SessionID)); prev != nil {
		if err := json.Unmarshal(prev, &old); err != nil {
			return fmt.Errorf("read record of %s: %w", rec.SessionID, err)
		}
		had = true
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := b.Put([]byte(rec.SessionID), raw); err != nil {
		return fmt.Errorf("write record of %s: %w", rec.SessionID, err)
	}
	return reindex(tx, kindSession, rec.SessionID, sessionIndexed(old), had, sessionIndexed(rec))
}

// Request asks for a session to be fulfilled.
type Request struct {
	SessionID string
	EventID   string
	Trigger   string
	At        time.Time // now
	Recovered bool      // found by reconciliation, not by the stream
}

// Enqueue durably queues a session for fulfillment, inside the caller's
// transaction (the poller's, so the cursor moves with it). A session already
// queued, fulfilled or dead-lettered is left as it is. It reports whether
// the session was newly queued.
func Enqueue(tx *bbolt.Tx, req Request) (bool, error) {
	rec, ok, err := Get(tx, req.SessionID)
	if err != nil {
		return false, err
	}
	if ok {
		switch rec.State {
		case StateFulfilled, StateFailed:
			return false, nil
		case StatePending:
			if sessionQueue.has(tx, req.SessionID) {
				// An attempt may be running on what it read before this
				// request: let it see that something arrived.
				rec.Seq++
				return false, put(tx, rec)
			}
		}
	} else {
		rec = Record{SessionID: req.SessionID, Created: req.At}
	}
	// awaiting_payment, payment_failed and expired are queued too: the
	// attempt re-reads the session, and Stripe's answer decides. Events are
	// listed out of order, so the completed event may come after the one
	// that ended the session; the attempt keeps the ended state then.
	if rec.State != StatePaymentFailed && rec.State != StateExpired {
		rec.State = StatePending
	}
	rec.Trigger, rec.EventID = req.Trigger, req.EventID
	rec.Recovered = rec.Recovered || req.Recovered
	rec.Seq++
	rec.Updated = req.At
	rec.NextAttempt = req.At
	if err := put(tx, rec); err != nil {
		return false, err
	}
	return true, sessionQueue.schedule(tx, req.SessionID, req.At)
}

// End records that a session's payment failed or it expired. A session that
// was already attempted (it was paid) is not touched.
func End(tx *bbolt.Tx, sessionID string, state State, eventID string, at time.Time) (bool, error) {
	rec, ok, err := Get(tx, sessionID)
	if err != nil {
		return false, err
	}
	if ok && (rec.State == StateFulfilled || rec.State == StateFailed || rec.Attempts > 0 || rec.InFlight) {
		return false, nil
	}
	if !ok {
		rec = Record{SessionID: sessionID, Created: at, Trigger: TriggerEvent}
	}
	rec.State, rec.EventID, rec.Updated = state, eventID, at
	rec.NextAttempt = time.Time{}
	rec.Seq++
	if err := put(tx, rec); err != nil {
		return false, err
	}
	return true, sessionQueue.remove(tx, sessionID)
}

// Await records a session found complete but unpaid, when the store has no
// record of it yet; its async event (or a later sweep) decides.
func Await(tx *bbolt.Tx, sessionID string, at time.Time) error {
	if _, ok, err := Get(tx, sessionID); err != nil || ok {
		return err
	}
	return put(tx, Record{SessionID: sessionID, State: StateAwaitingPayment, Trigger: TriggerReconcile,
		PaymentStatus: "unpaid", Created: at, Updated: at, Seq: 1})
}

// RecordPaymentIntent keeps the newest known status of a PaymentIntent;
// an older event listed late does not overwrite a newer one.
func RecordPaymentIntent(tx *bbolt.Tx, pi PaymentIntent) error {
	b := tx.Bucket(bucketPaymentIntents)
	var old *PaymentIntent
	if raw := b.Get([]byte(pi.ID)); raw != nil {
		var cur PaymentIntent
		if json.Unmarshal(raw, &cur) == nil {
			if cur.At.After(pi.At) {
				return nil
			}
			if err := addCount(tx, piCount(cur.Status), -1); err != nil {
				return err
			}
			old = &cur
		}
	}
	raw, err := json.Marshal(pi)
	if err != nil {
		return err
	}
	if err := b.Put([]byte(pi.ID), raw); err != nil {
		return err
	}
	if err := addCount(tx, piCount(pi.Status), 1); err != nil {
		return err
	}
	return indexPaymentIntent(tx, pi.ID, old, pi.At)
}

// GetPaymentIntent reads a PaymentIntent's record.
func GetPaymentIntent(tx *bbolt.Tx, id string) (PaymentIntent, bool) {
	raw := tx.Bucket(bucketPaymentIntents).Get([]byte(id))
	if raw == nil {
		return PaymentIntent{}, false
	}
	var pi PaymentIntent
	return pi, json.Unmarshal(raw, &pi) == nil
}

// Summary counts sessions by state and PaymentIntents by status.
type Summary struct {
	Sessions       map[State]int  `json:"fulfillments"`
	Recovered      int            `json:"recovered"`
	InFlight       int            `json:"in_flight"`
	PaymentIntents map[string]int `json:"payment_intents"`
}

// Summarize reads the counts status shows: kept counters, not a scan.
func Summarize(tx *bbolt.Tx) (Summary, error) {
	s := Summary{Sessions: map[State]int{}, PaymentIntents: counts(tx, "pi:")}
	for _, st := range States {
		s.Sessions[st] = 0
	}
	for k, n := range counts(tx, "session:") {
		switch k {
		case "recovered":
			s.Recovered = n
		case "in_flight":
			s.InFlight = n
		default:
			s.Sessions[State(k)] = n
		}
	}
	return s, nil
}

// Failed returns the dead-lettered sessions, most recently updated first, at
// most limit (0 = all), from the index: its cost is the number listed.
func Failed(tx *bbolt.Tx, limit int) ([]Record, error) {
	var out []Record
	for _, id := range recentFailed(tx, kindSession, limit) {
		rec, ok, err := Get(tx, id)
		if err != nil {
			return out, err
		}
		if ok {
			out = append(out, rec)
		}
	}
	return out, nil
}

// Retry puts dead-lettered sessions back in the queue with a fresh set of
// attempts. With no ids it retries every failed session. It returns the ids
// requeued; an id that is not failed is an error naming its state.
func Retry(tx *bbolt.Tx, now time.Time, ids ...string) ([]string, error) {
	if len(ids) == 0 {
		ids = recentFailed(tx, kindSession, 0)
	}
	var done []string
	for _, id := range ids {
		rec, ok, err := Get(tx, id)
		if err != nil {
			return done, err
		}
		if !ok {
			return done, fmt.Errorf("retry %s: %w", id, ErrUnknownSession)
		}
		if rec.State != StateFailed {
			return done, fmt.Errorf("retry %s: it is %s, not failed", id, rec.State)
		}
		rec.State, rec.Attempts, rec.NextAttempt, rec.Updated = StatePending, 0, now, now
		if err := put(tx, rec); err != nil {
			return done, err
		}
		if err := sessionQueue.schedule(tx, id, now); err != nil {
			return done, err
		}
		done = append(done, id)
	}
	return done, nil
}

// QueueLen is how many sessions are queued (due or backing off).
func QueueLen(tx *bbolt.Tx) int { return sessionQueue.len(tx) }
