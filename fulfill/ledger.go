package fulfill

import (
	"fmt"
	"time"
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
	// StateOwned ends a PaymentIntent's record when a Checkout Session owns
	// the PaymentIntent: the session's own fulfilment does the work, so the
	// action never runs for the PaymentIntent. Only PaymentIntent records
	// reach it (see intents.go).
	StateOwned State = "owned"
)

// States lists every state, in the order status reports them.
var States = []State{StatePending, StateAwaitingPayment, StateFulfilled, StateFailed, StatePaymentFailed, StateExpired}

// IntentStates lists the states of a PaymentIntent's record
// (fulfill.payment_intents), in the order status reports them.
var IntentStates = []State{StatePending, StateAwaitingPayment, StateFulfilled, StateFailed, StateExpired, StateOwned}

// Triggers: what asked for a fulfillment (FULFILLD_TRIGGER).
const (
	TriggerEvent     = "event"
	TriggerManual    = "manual"
	TriggerReconcile = "reconcile"
	TriggerHTTP      = "http"
)

// Record is the ledger entry of one Checkout Session, or, with
// fulfill.payment_intents, of one PaymentIntent that is fulfilled on its
// own (Object says which; see intents.go). Both kinds share the ledger, the
// queue, the claims, the attempts, the backoff and the dead letter: their
// ids (cs_…, pi_…) never collide.
type Record struct {
	// SessionID is the record's id: a Checkout Session's, or a
	// PaymentIntent's when Object is ObjectPaymentIntent.
	SessionID string `json:"session_id"`
	// Object is empty for a Checkout Session, ObjectPaymentIntent for a
	// PaymentIntent.
	Object string `json:"object,omitempty"`
	// Owner is the Checkout Session that owns a PaymentIntent (state
	// owned): that session is fulfilled instead.
	Owner         string `json:"owner,omitempty"`
	State         State  `json:"state"`
	Trigger       string `json:"trigger"`
	EventID       string `json:"event_id,omitempty"`
	PaymentStatus string `json:"payment_status,omitempty"`
	LineItems     int    `json:"line_items,omitempty"`
	Attempts      int    `json:"attempts"`
	// InFlight is set, durably, before the action runs and cleared with its
	// result: found set after a restart, it means an attempt was cut off and
	// the action may have run.
	InFlight bool `json:"in_flight,omitempty"`
	// Lease is the running attempt's hold on the record when instances
	// share the store (see Sharing); empty otherwise.
	Lease       Lease     `json:"lease,omitzero"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	Output      string    `json:"output,omitempty"`
	Recovered   bool      `json:"recovered,omitempty"`
	// Pruned is set when store.retention passed: only what prevents a
	// repeat is kept (the state and when); output and errors are gone.
	Pruned bool `json:"pruned,omitempty"`
	// Seq changes with every event or request recorded for the session, so
	// an attempt can tell that something happened while it talked to Stripe.
	Seq uint64 `json:"seq"`
	// SessionCreated is the session's own created time, as the event or
	// sweep that queued it said (zero when unknown): the queue reads due
	// sessions in batches by created range (see batcher).
	SessionCreated time.Time `json:"session_created,omitzero"`
	Created        time.Time `json:"created"`
	Updated        time.Time `json:"updated"`
	FulfilledAt    time.Time `json:"fulfilled_at,omitzero"`
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
	case StateFulfilled, StateFailed, StatePaymentFailed, StateExpired, StateOwned:
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
	// Pruned is set when store.retention passed (see Record.Pruned).
	Pruned bool `json:"pruned,omitempty"`
}

// Get reads a session's record; ok is false when there is none.
func Get(tx Tx, sessionID string) (rec Record, ok bool, err error) { return tx.Session(sessionID) }

// put writes a record; the store moves the counters and indexes with it. A
// record that leaves a final state (a retried dead letter, an expired
// session paid after all) is no longer a tombstone: when it settles again,
// retention prunes it again.
func put(tx Tx, rec Record) error {
	if IsPaymentIntentID(rec.SessionID) {
		rec.Object = ObjectPaymentIntent
	}
	if !rec.Ended() {
		rec.Pruned = false
	}
	return tx.PutSession(rec)
}

// Request asks for a session to be fulfilled.
type Request struct {
	SessionID string
	EventID   string
	Trigger   string
	At        time.Time // now
	Recovered bool      // found by reconciliation, not by the stream
	// SessionCreated is the session's created time when the caller knows
	// it (data.object.created, a listed session's created).
	SessionCreated time.Time
}

// Enqueue durably queues a session for fulfillment, inside the caller's
// transaction (the poller's, so the cursor moves with it). A session already
// queued, fulfilled or dead-lettered is left as it is. It reports whether
// the session was newly queued.
func Enqueue(tx Tx, req Request) (bool, error) {
	rec, ok, err := Get(tx, req.SessionID)
	if err != nil {
		return false, err
	}
	if ok {
		switch rec.State {
		case StateFulfilled, StateFailed, StateOwned:
			return false, nil
		case StatePending:
			if _, queued, err := tx.DueAt(SessionQueue, req.SessionID); err != nil {
				return false, err
			} else if queued {
				// An attempt may be running on what it read before this
				// request: let it see that something arrived.
				rec.Seq++
				return false, put(tx, rec)
			}
		}
	} else {
		rec = Record{SessionID: req.SessionID, Created: req.At}
		// A session queued for the first time is a payment (or one on its
		// way): Stripe's read allocation grows by 500 reads for each.
		if err := tx.AddPayments(req.At, 1); err != nil {
			return false, err
		}
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
	if !req.SessionCreated.IsZero() {
		rec.SessionCreated = req.SessionCreated
	}
	rec.Seq++
	rec.Updated = req.At
	rec.NextAttempt = req.At
	if err := put(tx, rec); err != nil {
		return false, err
	}
	return true, tx.Schedule(SessionQueue, req.SessionID, req.At)
}

// End records that a session's payment failed or it expired. A session that
// was already attempted (it was paid) is not touched.
func End(tx Tx, sessionID string, state State, eventID string, at time.Time) (bool, error) {
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
	return true, tx.Unschedule(SessionQueue, sessionID)
}

// Await records a session found complete but unpaid, when the store has no
// record of it yet; its async event (or a later sweep) decides.
func Await(tx Tx, sessionID string, at time.Time) error {
	if _, ok, err := Get(tx, sessionID); err != nil || ok {
		return err
	}
	return put(tx, Record{SessionID: sessionID, State: StateAwaitingPayment, Trigger: TriggerReconcile,
		PaymentStatus: "unpaid", Created: at, Updated: at, Seq: 1})
}

// RecordPaymentIntent keeps the newest known status of a PaymentIntent;
// an older event listed late does not overwrite a newer one.
func RecordPaymentIntent(tx Tx, pi PaymentIntent) error {
	cur, ok, err := tx.PaymentIntent(pi.ID)
	if err == nil && ok && cur.At.After(pi.At) {
		return nil
	}
	// A record that cannot be read is replaced by the news.
	return tx.PutPaymentIntent(pi)
}

// GetPaymentIntent reads a PaymentIntent's record.
func GetPaymentIntent(tx Tx, id string) (PaymentIntent, bool, error) { return tx.PaymentIntent(id) }

// Summary counts sessions by state and PaymentIntents by status.
type Summary struct {
	Sessions       map[State]int  `json:"fulfillments"`
	Intents        map[State]int  `json:"payment_intent_fulfillments"`
	Recovered      int            `json:"recovered"`
	InFlight       int            `json:"in_flight"`
	PaymentIntents map[string]int `json:"payment_intents"`
}

// Summarize reads the counts status shows: kept counters, not a scan.
func Summarize(tx Tx) (Summary, error) {
	c, err := tx.Counts()
	return Summary{Sessions: c.Sessions, Intents: c.IntentFulfillments, Recovered: c.Recovered, InFlight: c.InFlight, PaymentIntents: c.PaymentIntents}, err
}

// Failed returns the dead-lettered sessions, most recently updated first, at
// most limit (0 = all), from the index: its cost is the number listed.
func Failed(tx Tx, limit int) ([]Record, error) {
	ids, err := tx.Failed(KindSession, limit)
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, id := range ids {
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
func Retry(tx Tx, now time.Time, ids ...string) ([]string, error) {
	if len(ids) == 0 {
		var err error
		if ids, err = tx.Failed(KindSession, 0); err != nil {
			return nil, err
		}
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
		if err := tx.Schedule(SessionQueue, id, now); err != nil {
			return done, err
		}
		done = append(done, id)
	}
	return done, nil
}

// QueueLen is how many sessions are queued (due or backing off).
func QueueLen(tx Tx) (int, error) { return tx.QueueLen(SessionQueue) }
