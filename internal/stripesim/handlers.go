package stripesim

import (
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

type handler func(s *Server, q url.Values, id string) ([]byte, *apiError)

type routed struct {
	key    string // Stats.ByEndpoint key, also the rate limit bucket
	id     string
	handle handler // nil: unrecognized URL
}

func route(r *http.Request) routed {
	unknown := routed{key: "unknown"}
	rest, ok := strings.CutPrefix(r.URL.Path, "/v1/")
	if !ok || r.Method != http.MethodGet {
		return unknown
	}
	parts := strings.Split(rest, "/")
	for _, p := range parts {
		if p == "" {
			return unknown
		}
	}
	switch {
	case len(parts) == 1 && parts[0] == "events":
		return routed{key: "GET /v1/events", handle: (*Server).listEvents}
	case len(parts) == 2 && parts[0] == "events":
		return routed{key: "GET /v1/events/:id", id: parts[1], handle: (*Server).getEvent}
	case len(parts) == 2 && parts[0] == "checkout" && parts[1] == "sessions":
		return routed{key: "GET /v1/checkout/sessions", handle: (*Server).listSessions}
	case len(parts) == 3 && parts[0] == "checkout" && parts[1] == "sessions":
		return routed{key: "GET /v1/checkout/sessions/:id", id: parts[2], handle: (*Server).getSession}
	case len(parts) == 4 && parts[0] == "checkout" && parts[1] == "sessions" && parts[3] == "line_items":
		return routed{key: "GET /v1/checkout/sessions/:id/line_items", id: parts[2], handle: (*Server).listLineItems}
	case len(parts) == 2 && parts[0] == "payment_intents":
		return routed{key: "GET /v1/payment_intents/:id", id: parts[1], handle: (*Server).getIntent}
	}
	return unknown
}

// paramSpec lists the query parameters an endpoint accepts; Stripe rejects
// every other one, which catches typos in our own requests.
type paramSpec struct {
	scalars []string
	arrays  []string            // name[] or name[N]
	nested  map[string][]string // name[sub]
}

type params struct {
	scalar map[string]string
	array  map[string][]string
	nested map[string]map[string]string
}

var (
	listScalars  = []string{"limit", "starting_after", "ending_before"}
	createdSubs  = []string{"gt", "gte", "lt", "lte"}
	expandOnly   = paramSpec{arrays: []string{"expand"}}
	lineItemSpec = paramSpec{scalars: listScalars, arrays: []string{"expand"}}
	eventSpec    = paramSpec{
		scalars: append([]string{"type", "delivery_success", "created"}, listScalars...),
		arrays:  []string{"types", "expand"},
		nested:  map[string][]string{"created": createdSubs},
	}
	sessionSpec = paramSpec{
		scalars: append([]string{"status", "created", "payment_intent", "customer", "payment_link", "subscription"}, listScalars...),
		arrays:  []string{"expand"},
		nested:  map[string][]string{"created": createdSubs, "customer_details": {"email"}},
	}
)

func parseParams(q url.Values, spec paramSpec) (params, *apiError) {
	p := params{scalar: map[string]string{}, array: map[string][]string{}, nested: map[string]map[string]string{}}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		vals := q[k]
		if len(vals) == 0 {
			continue
		}
		name, sub, bracketed := strings.Cut(k, "[")
		if !bracketed {
			switch {
			case slices.Contains(spec.scalars, name):
				p.scalar[name] = vals[0]
				continue
			case slices.Contains(spec.arrays, name):
				return p, errInvalid(name, "Invalid array")
			}
			return p, errUnknownParam(k)
		}
		sub, closed := strings.CutSuffix(sub, "]")
		if !closed || strings.ContainsAny(sub, "[]") {
			return p, errUnknownParam(k)
		}
		if _, err := strconv.ParseUint(sub, 10, 32); (sub == "" || err == nil) && slices.Contains(spec.arrays, name) {
			p.array[name] = append(p.array[name], vals...)
			continue
		}
		if slices.Contains(spec.nested[name], sub) {
			if p.nested[name] == nil {
				p.nested[name] = map[string]string{}
			}
			p.nested[name][sub] = vals[0]
			continue
		}
		return p, errUnknownParam(k)
	}
	return p, nil
}

func errUnknownParam(k string) *apiError {
	return &apiError{status: http.StatusBadRequest, Type: typeInvalidRequest, Code: "parameter_unknown", Param: k, Message: "Received unknown parameter: " + k}
}

func (p params) limit() (int, *apiError) {
	v, ok := p.scalar["limit"]
	if !ok {
		return 10, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	switch {
	case err != nil:
		return 0, &apiError{status: http.StatusBadRequest, Type: typeInvalidRequest, Code: "parameter_invalid_integer", Param: "limit", Message: "Invalid integer: " + v}
	case n < 1:
		return 0, errInvalid("limit", "This value must be greater than or equal to 1.")
	case n > 100:
		return 0, errInvalid("limit", "This value must be less than or equal to 100.")
	}
	return int(n), nil
}

// paging is a list request's limit and cursor.
type paging struct {
	limit               int
	after, before       string
	hasAfter, hasBefore bool
}

// parseList reads a list request: its parameters, its limit and its
// cursor.
func parseList(q url.Values, spec paramSpec) (params, paging, *apiError) {
	var pg paging
	p, e := parseParams(q, spec)
	if e != nil {
		return p, pg, e
	}
	if pg.limit, e = p.limit(); e != nil {
		return p, pg, e
	}
	pg.after, pg.before, pg.hasAfter, pg.hasBefore, e = p.cursors()
	return p, pg, e
}

// cursors returns starting_after and ending_before, refusing both at once.
func (p params) cursors() (after, before string, hasAfter, hasBefore bool, e *apiError) {
	after, hasAfter = p.scalar["starting_after"]
	before, hasBefore = p.scalar["ending_before"]
	if hasAfter && hasBefore {
		e = &apiError{status: http.StatusBadRequest, Type: typeInvalidRequest, Code: "parameters_exclusive", Param: "ending_before",
			Message: "You may only specify one of these parameters: ending_before, starting_after."}
	}
	return
}

// created returns the inclusive range of creation times requested.
func (p params) created() (lo, hi int64, e *apiError) {
	lo, hi = math.MinInt64, math.MaxInt64
	parse := func(param, v string) (int64, *apiError) {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, &apiError{status: http.StatusBadRequest, Type: typeInvalidRequest, Code: "parameter_invalid_integer", Param: param, Message: "Invalid integer: " + v}
		}
		return n, nil
	}
	if v, ok := p.scalar["created"]; ok {
		n, e := parse("created", v)
		if e != nil {
			return 0, 0, e
		}
		lo, hi = n, n
	}
	for _, sub := range createdSubs {
		v, ok := p.nested["created"][sub]
		if !ok {
			continue
		}
		n, e := parse("created["+sub+"]", v)
		if e != nil {
			return 0, 0, e
		}
		switch sub {
		case "gt":
			if n == math.MaxInt64 {
				return 1, 0, nil
			}
			lo = max(lo, n+1)
		case "gte":
			lo = max(lo, n)
		case "lt":
			if n == math.MinInt64 {
				return 1, 0, nil
			}
			hi = min(hi, n-1)
		case "lte":
			hi = min(hi, n)
		}
	}
	return lo, hi, nil
}

func (p params) expands(path string) bool {
	return slices.Contains(p.array["expand"], path)
}

// retentionCutoff is the oldest created second still listed.
func (s *Server) retentionCutoff(now time.Time) int64 {
	c := now.Add(-s.retention)
	sec := c.Unix()
	if c.Nanosecond() > 0 {
		sec++
	}
	return sec
}

// bounds turns a created range into positions [lo, hi) of t. Call flush
// first.
func bounds[T any](t *timeline[T], createdLo, createdHi int64) (lo, hi int) {
	lo = t.firstCreatedAtLeast(createdLo)
	hi = len(t.sorted)
	if createdHi < math.MaxInt64 {
		hi = t.firstCreatedAtLeast(createdHi + 1)
	}
	return lo, hi
}

func (s *Server) listEvents(q url.Values, _ string) ([]byte, *apiError) {
	p, pg, e := parseList(q, eventSpec)
	if e != nil {
		return nil, e
	}
	limit, after, before, hasAfter, hasBefore := pg.limit, pg.after, pg.before, pg.hasAfter, pg.hasBefore
	typ, hasType := p.scalar["type"]
	types := p.array["types"]
	if hasType && len(types) > 0 {
		return nil, &apiError{status: http.StatusBadRequest, Type: typeInvalidRequest, Code: "parameters_exclusive", Param: "types",
			Message: "You may pass either type or types, but not both."}
	}
	if len(types) > 20 {
		return nil, errInvalid("types", "Invalid array: types must contain at most 20 elements, but %d were given.", len(types))
	}
	matchType := func(string) bool { return true }
	switch {
	case hasType:
		matchType = func(t string) bool { return wildcardMatch(typ, t) }
	case len(types) > 0:
		matchType = func(t string) bool { return slices.Contains(types, t) }
	}
	wantFailed, filterDelivery := false, false
	if v, ok := p.scalar["delivery_success"]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil || (v != "true" && v != "false") {
			return nil, errInvalid("delivery_success", "Invalid boolean: %s", v)
		}
		wantFailed, filterDelivery = !b, true
	}
	createdLo, createdHi, e := p.created()
	if e != nil {
		return nil, e
	}

	now := s.now()
	nowNano, cutoff := now.UnixNano(), s.retentionCutoff(now)
	s.mu.Lock()
	s.events.flush()
	lo, hi := bounds(&s.events, max(cutoff, createdLo), createdHi)
	newer := false
	switch {
	case hasAfter:
		ev, e := s.cursorEvent(after, "starting_after", nowNano, cutoff)
		if e != nil {
			s.mu.Unlock()
			return nil, e
		}
		hi = min(hi, s.events.index(ev.created, ev.seq))
	case hasBefore:
		ev, e := s.cursorEvent(before, "ending_before", nowNano, cutoff)
		if e != nil {
			s.mu.Unlock()
			return nil, e
		}
		lo, newer = max(lo, s.events.index(ev.created, ev.seq)+1), true
	}
	page, more := s.events.page(lo, hi, newer, limit, func(ev *event) bool {
		return ev.visibleAt <= nowNano && matchType(ev.typ) && (!filterDelivery || ev.failed == wantFailed)
	})
	s.mu.Unlock()
	// Events are immutable once added, so they render without the lock.
	return appendList("/v1/events", more, len(page), func(b []byte, i int) []byte { return appendEvent(b, page[i]) }), nil
}

// cursorEvent resolves a pagination cursor; s.mu must be held.
func (s *Server) cursorEvent(id, param string, nowNano, cutoff int64) (*event, *apiError) {
	ev := s.eventIDs[id]
	if ev == nil || ev.visibleAt > nowNano {
		return nil, errMissing(http.StatusBadRequest, param, "event", id)
	}
	if ev.created < cutoff {
		days := int(s.retention / (24 * time.Hour))
		return nil, errInvalid(param, "The event '%s' is past the %d-day retention period for events: it has aged out and can no longer be used as a pagination cursor.", id, days)
	}
	return ev, nil
}

func (s *Server) getEvent(q url.Values, id string) ([]byte, *apiError) {
	if _, e := parseParams(q, expandOnly); e != nil {
		return nil, e
	}
	now := s.now()
	s.mu.Lock()
	ev := s.eventIDs[id]
	s.mu.Unlock()
	if ev == nil || ev.visibleAt > now.UnixNano() || ev.created < s.retentionCutoff(now) {
		return nil, errMissing(http.StatusNotFound, "id", "event", id)
	}
	return appendEvent(nil, ev), nil
}

// wildcardMatch matches an event type against a pattern in which * stands
// for any run of characters ("checkout.session.*", "*").
func wildcardMatch(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(s, mid)
		if i < 0 {
			return false
		}
		s = s[i+len(mid):]
	}
	return len(s) >= len(last) && strings.HasSuffix(s, last)
}

// sessionView is a session's state copied under the lock for rendering.
type sessionView struct {
	snap   sessionSnap
	intent *paymentIntent
}

// viewSession copies a session's state; s.mu must be held.
func (s *Server) viewSession(sess *session, withIntent bool) sessionView {
	v := sessionView{snap: sessionSnap{sess: sess, status: sess.status, payment: sess.payment}}
	if withIntent {
		if pi := s.intents[sess.intent]; pi != nil {
			cp := *pi
			v.intent = &cp
		}
	}
	return v
}

func (s *Server) getSession(q url.Values, id string) ([]byte, *apiError) {
	p, e := parseParams(q, expandOnly)
	if e != nil {
		return nil, e
	}
	s.mu.Lock()
	sess := s.sessIDs[id]
	var v sessionView
	if sess != nil {
		v = s.viewSession(sess, p.expands("payment_intent"))
	}
	s.mu.Unlock()
	if sess == nil {
		return nil, errMissing(http.StatusNotFound, "session", "checkout.session", id)
	}
	return renderSession(v.snap.sess, v.snap.status, v.snap.payment, p.expands("line_items"), v.intent), nil
}

func (s *Server) listSessions(q url.Values, _ string) ([]byte, *apiError) {
	p, pg, e := parseList(q, sessionSpec)
	if e != nil {
		return nil, e
	}
	limit, after, before, hasAfter, hasBefore := pg.limit, pg.after, pg.before, pg.hasAfter, pg.hasBefore
	createdLo, createdHi, e := p.created()
	if e != nil {
		return nil, e
	}
	status, hasStatus := p.scalar["status"]
	wantStatus := uint8(0)
	if hasStatus {
		i := slices.Index(statusNames[:], status)
		if i < 0 {
			return nil, errInvalid("status", "Invalid status: must be one of complete, expired, or open")
		}
		wantStatus = uint8(i)
	}
	intent, hasIntent := p.scalar["payment_intent"]
	email, hasEmail := p.nested["customer_details"]["email"]
	_, hasCustomer := p.scalar["customer"]
	_, hasLink := p.scalar["payment_link"]
	_, hasSub := p.scalar["subscription"]
	withItems, withIntent := p.expands("data.line_items"), p.expands("data.payment_intent")

	s.mu.Lock()
	s.sessions.flush()
	lo, hi := bounds(&s.sessions, createdLo, createdHi)
	newer := false
	cursor := func(id, param string) (int, *apiError) {
		sess := s.sessIDs[id]
		if sess == nil {
			return 0, errMissing(http.StatusBadRequest, param, "checkout.session", id)
		}
		return s.sessions.index(sess.created, sess.seq), nil
	}
	switch {
	case hasAfter:
		i, e := cursor(after, "starting_after")
		if e != nil {
			s.mu.Unlock()
			return nil, e
		}
		hi = min(hi, i)
	case hasBefore:
		i, e := cursor(before, "ending_before")
		if e != nil {
			s.mu.Unlock()
			return nil, e
		}
		lo, newer = max(lo, i+1), true
	}
	page, more := s.sessions.page(lo, hi, newer, limit, func(sess *session) bool {
		// Simulated sessions have no customer, payment link or subscription.
		return !sess.deleted && !hasCustomer && !hasLink && !hasSub &&
			(!hasStatus || sess.status == wantStatus) &&
			(!hasIntent || sess.intent == intent) &&
			(!hasEmail || sess.customerEmail() == email)
	})
	views := make([]sessionView, len(page))
	for i, sess := range page {
		views[i] = s.viewSession(sess, withIntent)
	}
	s.mu.Unlock()
	return appendList("/v1/checkout/sessions", more, len(views), func(b []byte, i int) []byte {
		v := views[i]
		return append(b, renderSession(v.snap.sess, v.snap.status, v.snap.payment, withItems, v.intent)...)
	}), nil
}

func (s *Server) listLineItems(q url.Values, id string) ([]byte, *apiError) {
	_, pg, e := parseList(q, lineItemSpec)
	if e != nil {
		return nil, e
	}
	limit, after, before, hasAfter, hasBefore := pg.limit, pg.after, pg.before, pg.hasAfter, pg.hasBefore
	s.mu.Lock()
	sess := s.sessIDs[id]
	s.mu.Unlock()
	if sess == nil {
		return nil, errMissing(http.StatusNotFound, "session", "checkout.session", id)
	}
	c := sess // only its immutable fields are read below
	from, to := 0, min(limit, c.items)
	more := to < c.items
	switch {
	case hasAfter:
		i := c.lineItemIndex(after)
		if i < 0 {
			return nil, errMissing(http.StatusBadRequest, "starting_after", "line item", after)
		}
		from, to = i+1, min(i+1+limit, c.items)
		more = to < c.items
	case hasBefore:
		i := c.lineItemIndex(before)
		if i < 0 {
			return nil, errMissing(http.StatusBadRequest, "ending_before", "line item", before)
		}
		from, to = max(0, i-limit), i
		more = from > 0
	}
	return renderLineItems(c, from, to, more), nil
}

func (s *Server) getIntent(q url.Values, id string) ([]byte, *apiError) {
	if _, e := parseParams(q, expandOnly); e != nil {
		return nil, e
	}
	s.mu.Lock()
	pi := s.intents[id]
	var snap paymentIntent
	if pi != nil {
		snap = *pi
	}
	s.mu.Unlock()
	if pi == nil {
		return nil, errMissing(http.StatusNotFound, "intent", "payment_intent", id)
	}
	return renderIntent(&snap), nil
}
