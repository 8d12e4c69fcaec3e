package fulfill

import "time"

// Queue names one of the durable queues: items ordered by due time.
type Queue string

// The queues.
const (
	SessionQueue  Queue = "sessions"   // sessions to attempt
	DeliveryQueue Queue = "deliveries" // events to deliver (notify, forward), by DeliveryKey
)

// Kinds of record the store keeps indexes of.
const (
	KindSession       = "session"
	KindDelivery      = "delivery" // an event's delivery to a destination
	KindPaymentIntent = "payment_intent"
)

// Settled names a record that reached a final state: a candidate for
// retention.
type Settled struct {
	Kind string
	ID   string
	At   time.Time // when it settled, as the index has it
	// Ref is the backend's own name for the entry, if it needs one to
	// drop it (DropSettled); opaque to everyone else.
	Ref []byte
}

// Counts are the kept counters: what status, /metrics and /healthz show,
// read without reading the records.
type Counts struct {
	Sessions map[State]int
	// IntentFulfillments counts the PaymentIntents fulfilled on their own
	// (fulfill.payment_intents) by state, owned included; Sessions does
	// not count them.
	IntentFulfillments map[State]int
	Recovered          int
	InFlight           int
	PaymentIntents     map[string]int
	// Deliveries counts event deliveries by destination, then state.
	Deliveries map[string]map[string]int
}

// Tx is the storage the ledger and the queues need, inside one
// transaction. The store (internal/store) implements it for each engine,
// and owns what follows from each write: every Put moves the kept
// counters, the dead-letter index and the settled index with the record,
// in the same transaction.
type Tx interface {
	// Now is the store's clock: what leases of a shared store are measured
	// on (see Sharing); a store of one's own answers the host's.
	Now() (time.Time, error)

	Session(id string) (Record, bool, error)
	PutSession(Record) error
	// EventDelivery reads a delivery by its DeliveryKey.
	EventDelivery(key string) (EventDelivery, bool, error)
	PutEventDelivery(EventDelivery) error
	PaymentIntent(id string) (PaymentIntent, bool, error)
	PutPaymentIntent(PaymentIntent) error

	// Schedule puts id in the queue due at the given time, replacing any
	// earlier place it had; Unschedule takes it out.
	Schedule(q Queue, id string, due time.Time) error
	Unschedule(q Queue, id string) error
	// DueAt is when id is due, if it is queued.
	DueAt(q Queue, id string) (time.Time, bool, error)
	// Due lists up to limit ids due at or before now, earliest first,
	// passing over those in exclude (a few: those being worked on).
	Due(q Queue, now time.Time, limit int, exclude map[string]bool) ([]string, error)
	// NextDue is when the earliest item not in exclude is due; zero when
	// there is none.
	NextDue(q Queue, exclude map[string]bool) (time.Time, error)
	QueueLen(q Queue) (int, error)
	// Queued lists every id in the queue (recovery after a crash).
	Queued(q Queue) ([]string, error)

	Counts() (Counts, error)
	// AddPayments counts n paid sessions queued on the given day; the
	// store keeps the sum per day with the API usage, where the read
	// budget derived from payments reads it (stripeapi.AutoReadBudget).
	AddPayments(day time.Time, n int64) error
	// Failed lists the dead letters of a kind, most recently updated
	// first, at most limit (0: all).
	Failed(kind string, limit int) ([]string, error)
	// SettledBefore lists records that settled before the given time,
	// oldest first, at most limit, and whether there are more. A backend
	// may index a record as settled up to an hour later than it did
	// (bbolt does, to keep its logs append-only): retention then prunes
	// it that much late, never early.
	SettledBefore(before time.Time, limit int) ([]Settled, bool, error)
	// DeleteSession, DeleteEventDelivery and DeletePaymentIntent remove a
	// record for good, with its counts and index entries: retention's end
	// for records that prevent nothing once Stripe can no longer list their
	// events.
	DeleteSession(id string) error
	DeleteEventDelivery(key string) error
	DeletePaymentIntent(id string) error
	// DropSettled takes one entry out of the settled index without
	// touching its record: retention passes over a record it cannot read
	// instead of stopping at it for ever.
	DropSettled(Settled) error
}

// DB is the store as this package uses it. Update must be serializable:
// the ledger's rules read and then write (Enqueue, an attempt's start), so
// transactions must behave as if run one at a time. bbolt has one writer;
// a SQL backend locks rows or uses serializable isolation, and may run fn
// again after a conflict, so fn has no effect outside the transaction. The daemon passes one that
// also keeps score of its writes (storehealth), which the queues read
// through storeHealth.
type DB interface {
	View(fn func(Tx) error) error
	Update(fn func(Tx) error) error
}

// batchDB is a DB that can commit writes from several goroutines in one
// transaction (store.Grouped over bbolt, under storehealth.Guard).
type batchDB interface {
	Batch(fn func(Tx) error) error
}

// write runs fn as Update does, in a transaction it may share with other
// goroutines' writes when db can. An attempt's start and its result are
// two durable commits each, one writer at a time: in a backfill of fast
// actions on a disk whose fsync takes milliseconds, those commits, not
// Stripe, set the pace. fn may run more than once, as the DB contract
// above allows already.
func write(db DB, fn func(Tx) error) error {
	if b, ok := db.(batchDB); ok {
		return b.Batch(fn)
	}
	return db.Update(fn)
}
