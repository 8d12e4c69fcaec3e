package stripesim

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// Session statuses and payment statuses are stored as small codes so that an
// event's snapshot of its session stays a few bytes.
const (
	statusOpen uint8 = iota
	statusComplete
	statusExpired
)

const (
	payUnpaid uint8 = iota
	payPaid
	payNoPaymentRequired
)

var (
	statusNames = [...]string{statusOpen: "open", statusComplete: "complete", statusExpired: "expired"}
	payNames    = [...]string{payUnpaid: "unpaid", payPaid: "paid", payNoPaymentRequired: "no_payment_required"}
)

// event is kept compact: a benchmark holds a million of them. Its JSON is
// rendered on request.
type event struct {
	id        string
	typ       string
	created   int64
	seq       uint64
	visibleAt int64 // UnixNano; 0 = visible at once
	failed    bool  // webhook delivery failed: pending_webhooks 1
	obj       snapshot
}

// snapshot is an event's data.object as it was when the event happened.
type snapshot interface {
	appendJSON(b []byte) []byte
}

// rawObject is a data.object given verbatim to AddEvent.
type rawObject []byte

func (r rawObject) appendJSON(b []byte) []byte {
	if len(r) == 0 {
		return append(b, "null"...)
	}
	return append(b, r...)
}

// session is a Checkout Session. The fields up to seq never change after
// CreateSession, so snapshots render them without the lock; status, payment
// and deleted are guarded by Server.mu. One allocation per session keeps a
// million of them affordable.
type session struct {
	id        string
	created   int64
	expiresAt int64
	amount    int64
	currency  string
	mode      string
	metadata  map[string]string
	intent    string // PaymentIntent id, "" outside payment mode
	email     string // "" = derived from the id
	items     int
	seq       uint64

	status  uint8
	payment uint8
	deleted bool
}

func (c *session) customerEmail() string {
	if c.email != "" {
		return c.email
	}
	return "customer-" + c.id[len(c.id)-8:] + "@example.com"
}

// sessionSnap is a session as it was when an event happened.
type sessionSnap struct {
	sess    *session
	status  uint8
	payment uint8
}

func (s *sessionSnap) appendJSON(b []byte) []byte {
	return append(b, renderSession(s.sess, s.status, s.payment, false, nil)...)
}

// paymentIntent is small enough to copy whole for an event's snapshot.
type paymentIntent struct {
	id       string
	amount   int64
	currency string
	created  int64
	status   string
	lastErr  string
}

func (p *paymentIntent) appendJSON(b []byte) []byte {
	return append(b, renderIntent(p)...)
}

// SessionParams describes a Checkout Session to create.
type SessionParams struct {
	Created     time.Time
	LineItems   int   // number of line items (0 means 1)
	AmountTotal int64 // 0 means 1000 per line item
	Currency    string
	Mode        string // default "payment"; only payment mode gets a PaymentIntent
	Metadata    map[string]string
	Email       string // customer_details.email; generated when empty
}

type eventOpts struct {
	visibleAt time.Time
	failed    bool
}

// EventOpt adjusts an emitted event.
type EventOpt func(*eventOpts)

// VisibleAt hides the event from lists and retrieval until the simulation
// clock reaches t, like Stripe's eventually consistent event list.
func VisibleAt(t time.Time) EventOpt {
	return func(o *eventOpts) { o.visibleAt = t }
}

// DeliveryFailed marks the event's webhook delivery as failed
// (delivery_success=false, pending_webhooks 1).
func DeliveryFailed() EventOpt {
	return func(o *eventOpts) { o.failed = true }
}

// CreateSession adds an open, unpaid Checkout Session and returns its id. It
// emits no event.
func (s *Server) CreateSession(p SessionParams) string {
	if p.LineItems <= 0 {
		p.LineItems = 1
	}
	if p.AmountTotal <= 0 {
		p.AmountTotal = 1000 * int64(p.LineItems)
	}
	if p.Currency == "" {
		p.Currency = "usd"
	}
	if p.Mode == "" {
		p.Mode = "payment"
	}
	if p.Created.IsZero() {
		p.Created = s.now()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	sess := &session{
		id:        s.uniqueID("cs_test_", 58, func(id string) bool { return s.sessIDs[id] != nil }),
		created:   p.Created.Unix(),
		expiresAt: p.Created.Add(24 * time.Hour).Unix(),
		amount:    p.AmountTotal,
		currency:  p.Currency,
		mode:      p.Mode,
		metadata:  maps.Clone(p.Metadata),
		email:     p.Email,
		items:     p.LineItems,
		seq:       s.seq,
		status:    statusOpen,
		payment:   payUnpaid,
	}
	if p.Mode == "payment" {
		pi := &paymentIntent{
			id:       s.uniqueID("pi_", 24, func(id string) bool { return s.intents[id] != nil }),
			amount:   p.AmountTotal,
			currency: p.Currency,
			created:  sess.created,
			status:   "requires_payment_method",
		}
		sess.intent = pi.id
		s.intents[pi.id] = pi
	}
	s.sessIDs[sess.id] = sess
	s.sessions.add(sess.created, sess.seq, sess)
	return sess.id
}

// CompleteSession marks the session complete with paymentStatus ("paid",
// "unpaid" for a delayed payment method, or "no_payment_required") and emits
// checkout.session.completed created at at. It returns the event id.
func (s *Server) CompleteSession(id, paymentStatus string, at time.Time, opts ...EventOpt) string {
	var pay uint8
	switch paymentStatus {
	case "paid":
		pay = payPaid
	case "unpaid":
		pay = payUnpaid
	case "no_payment_required":
		pay = payNoPaymentRequired
	default:
		panic(fmt.Sprintf("stripesim: CompleteSession: payment status %q is not paid, unpaid or no_payment_required", paymentStatus))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.mustSession("CompleteSession", id)
	sess.status, sess.payment = statusComplete, pay
	switch pay {
	case payPaid:
		s.setIntentStatus(sess.intent, "succeeded", "")
	case payUnpaid:
		s.setIntentStatus(sess.intent, "processing", "")
	}
	return s.emitSession("checkout.session.completed", sess, at, opts)
}

// AsyncPaymentSucceeded marks the session paid and emits
// checkout.session.async_payment_succeeded.
func (s *Server) AsyncPaymentSucceeded(id string, at time.Time, opts ...EventOpt) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.mustSession("AsyncPaymentSucceeded", id)
	sess.status, sess.payment = statusComplete, payPaid
	s.setIntentStatus(sess.intent, "succeeded", "")
	return s.emitSession("checkout.session.async_payment_succeeded", sess, at, opts)
}

// AsyncPaymentFailed emits checkout.session.async_payment_failed; the
// session stays complete and unpaid.
func (s *Server) AsyncPaymentFailed(id string, at time.Time, opts ...EventOpt) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.mustSession("AsyncPaymentFailed", id)
	sess.status, sess.payment = statusComplete, payUnpaid
	s.setIntentStatus(sess.intent, "requires_payment_method", "The payment failed.")
	return s.emitSession("checkout.session.async_payment_failed", sess, at, opts)
}

// ExpireSession marks the session expired and emits checkout.session.expired.
func (s *Server) ExpireSession(id string, at time.Time, opts ...EventOpt) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.mustSession("ExpireSession", id)
	sess.status = statusExpired
	s.setIntentStatus(sess.intent, "canceled", "")
	return s.emitSession("checkout.session.expired", sess, at, opts)
}

// intentStatusFor maps payment_intent.* event types to the status the
// PaymentIntent has in that event.
var intentStatusFor = map[string]string{
	"payment_intent.created":                   "requires_payment_method",
	"payment_intent.succeeded":                 "succeeded",
	"payment_intent.processing":                "processing",
	"payment_intent.payment_failed":            "requires_payment_method",
	"payment_intent.canceled":                  "canceled",
	"payment_intent.amount_capturable_updated": "requires_capture",
	"payment_intent.requires_action":           "requires_action",
	"payment_intent.partially_funded":          "requires_payment_method",
}

// PaymentIntentEvent updates the PaymentIntent piID (creating it if unknown)
// to the status that eventType implies and emits the event with a snapshot of
// it. lastErrorMessage becomes last_payment_error.message (for
// payment_intent.payment_failed). It returns the event id.
func (s *Server) PaymentIntentEvent(eventType, piID string, at time.Time, lastErrorMessage string, opts ...EventOpt) string {
	status, ok := intentStatusFor[eventType]
	if !ok {
		status = "processing"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	pi := s.intents[piID]
	if pi == nil {
		pi = &paymentIntent{id: piID, amount: 1000, currency: "usd", created: at.Unix()}
		s.intents[piID] = pi
	}
	pi.status, pi.lastErr = status, lastErrorMessage
	snap := *pi
	return s.insertEvent("", eventType, at, &snap, opts)
}

// AddEvent adds an event with a verbatim data.object, which may be anything,
// even invalid JSON (empty means null). An empty id gets a random one. It
// returns the id.
func (s *Server) AddEvent(id, eventType string, created time.Time, dataObject json.RawMessage, opts ...EventOpt) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Bulk loads repeat one payload; sharing it keeps a million events small.
	if s.lastRaw == nil || !bytes.Equal(s.lastRaw.(rawObject), dataObject) {
		s.lastRaw = rawObject(bytes.Clone(dataObject))
	}
	return s.insertEvent(id, eventType, created, s.lastRaw, opts)
}

// DeleteSession removes the session: later retrieves answer 404
// resource_missing and lists leave it out. Its past events stay.
func (s *Server) DeleteSession(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess := s.sessIDs[id]; sess != nil {
		sess.deleted = true
		delete(s.sessIDs, id)
	}
}

// Session returns the current status and payment_status of a session, for
// tests and the demo; ok is false when it does not exist.
func (s *Server) Session(id string) (status, paymentStatus string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.sessIDs[id]
	if sess == nil {
		return "", "", false
	}
	return statusNames[sess.status], payNames[sess.payment], true
}

// PaymentIntentID returns the PaymentIntent of a session ("" if none).
func (s *Server) PaymentIntentID(sessionID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess := s.sessIDs[sessionID]; sess != nil {
		return sess.intent
	}
	return ""
}

// EventCount returns how many events the server holds, visible or not.
func (s *Server) EventCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.eventIDs)
}

func (s *Server) mustSession(op, id string) *session {
	sess := s.sessIDs[id]
	if sess == nil {
		panic(fmt.Sprintf("stripesim: %s: no such checkout.session %q", op, id))
	}
	return sess
}

func (s *Server) setIntentStatus(id, status, lastErr string) {
	if pi := s.intents[id]; pi != nil {
		pi.status, pi.lastErr = status, lastErr
	}
}

func (s *Server) emitSession(typ string, sess *session, at time.Time, opts []EventOpt) string {
	snap := &sessionSnap{sess: sess, status: sess.status, payment: sess.payment}
	return s.insertEvent("", typ, at, snap, opts)
}

// insertEvent must be called with s.mu held.
func (s *Server) insertEvent(id, typ string, at time.Time, obj snapshot, opts []EventOpt) string {
	var o eventOpts
	for _, opt := range opts {
		opt(&o)
	}
	if id == "" {
		id = s.uniqueID("evt_", 24, func(id string) bool { return s.eventIDs[id] != nil })
	} else if s.eventIDs[id] != nil {
		panic(fmt.Sprintf("stripesim: AddEvent: duplicate event id %q", id))
	}
	s.seq++
	ev := &event{id: id, typ: typ, created: at.Unix(), seq: s.seq, failed: o.failed, obj: obj}
	if !o.visibleAt.IsZero() {
		ev.visibleAt = o.visibleAt.UnixNano()
	}
	s.eventIDs[id] = ev
	s.events.add(ev.created, ev.seq, ev)
	return id
}

func (s *Server) uniqueID(prefix string, n int, taken func(string) bool) string {
	for {
		id := randomID(prefix, n)
		if !taken(id) {
			return id
		}
	}
}

const alnum = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// randomID returns prefix followed by n random alphanumerics, like Stripe's
// ids: random, so they carry no order.
func randomID(prefix string, n int) string {
	var b strings.Builder
	b.Grow(len(prefix) + n)
	b.WriteString(prefix)
	var r uint64
	for i := range n {
		if i%10 == 0 { // 62^10 < 2^64: ten characters per draw
			r = rand.Uint64()
		}
		b.WriteByte(alnum[r%uint64(len(alnum))])
		r /= uint64(len(alnum))
	}
	return b.String()
}

// derivedID names a line item or price: random-looking like Stripe's, but
// derived from the session so line items need no storage.
func derivedID(prefix, sessionID string, i int) string {
	sum := sha256.Sum256([]byte(prefix + sessionID + ":" + strconv.Itoa(i)))
	b := make([]byte, 24)
	for k := range b {
		b[k] = alnum[int(sum[k])%len(alnum)]
	}
	return prefix + string(b)
}

// lineItem is computed from the session: the total is spread over the items
// so that they add up to amount_total.
type lineItem struct {
	id, priceID string
	amount      int64
	index       int
}

func (c *session) lineItem(i int) lineItem {
	n := int64(c.items)
	amount := c.amount / n
	if int64(i) < c.amount%n {
		amount++
	}
	return lineItem{id: derivedID("li_", c.id, i), priceID: derivedID("price_", c.id, i), amount: amount, index: i}
}

// lineItemIndex finds a line item by id; -1 if it is not one of c's.
func (c *session) lineItemIndex(id string) int {
	for i := range c.items {
		if derivedID("li_", c.id, i) == id {
			return i
		}
	}
	return -1
}
