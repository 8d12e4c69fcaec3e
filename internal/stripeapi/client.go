// Package stripeapi is fulfilld's one door to Stripe: stripe-go v76 with an
// explicit backend (never the global key) over a Transport that paces,
// retries and counts every request. Lists are read as raw JSON through
// stripe-go's backend (events undecoded, then read by decode.go) so that
// one malformed object is reported on its own instead of failing the
// whole page.
package stripeapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
	"github.com/stripe/stripe-go/v76/form"
)

// APIVersion is the Stripe API version stripe-go v76 pins for every request.
const APIVersion = stripe.APIVersion

// Sentinel errors callers branch on.
var (
	ErrNotFound = errors.New("no such object in stripe")
	ErrAuth     = errors.New("stripe rejected the api key")
	ErrAgedOut  = errors.New("past stripe's 30-day event retention")
)

// Config builds a Client.
type Config struct {
	APIKey     string
	APIBase    string
	Account    string
	Limits     Limits
	MaxRetries int // per request, on 429/5xx/connection failures; default 8
	Logger     *slog.Logger
	// Now is the host's clock for Clock (default time.Now).
	Now func() time.Time
}

// Client calls Stripe through stripe-go with an explicit backend.
type Client struct {
	api       *client.API
	backend   *stripe.BackendImplementation
	http      *http.Client
	key       string
	Transport *Transport
	// Clock is Stripe's clock, learned from every answer.
	Clock  *Clock
	logger *slog.Logger
}

// New builds a client. It makes no request.
func New(cfg Config) *Client {
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = 8
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	tr := &Transport{
		Base: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 60 * time.Second,
			MaxIdleConnsPerHost:   32,
			IdleConnTimeout:       90 * time.Second,
			ForceAttemptHTTP2:     true,
		},
		Limits:     cfg.Limits,
		Account:    cfg.Account,
		MaxRetries: cfg.MaxRetries,
		Logger:     logger,
		Clock:      &Clock{Host: cfg.Now},
	}
	base := strings.TrimRight(cfg.APIBase, "/")
	if base == "" {
		base = stripe.APIURL
	}
	// Stripe never redirects: a redirect is an error of the request,
	// never followed with the key to wherever it points, and never an
	// answer read as a page.
	hc := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return errRedirect }}
	backend := stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL:               stripe.String(base),
		HTTPClient:        hc,
		MaxNetworkRetries: stripe.Int64(0), // Transport retries, watching the context
		EnableTelemetry:   stripe.Bool(false),
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
	})
	api := client.New(cfg.APIKey, &stripe.Backends{API: backend, Connect: backend, Uploads: backend})
	return &Client{api: api, backend: backend.(*stripe.BackendImplementation), http: hc, key: cfg.APIKey, Transport: tr, Clock: tr.Clock, logger: logger}
}

// SyncClock makes sure Clock has observed Stripe's time: when no answer
// was seen yet it lists one event, the cheapest request that shows Stripe's
// Date. Without a Date in the answer the clock stays the host's, and the
// log says so.
func (c *Client) SyncClock(ctx context.Context) error {
	if c.Clock.Synced() {
		return nil
	}
	if _, err := c.ListEvents(ctx, EventQuery{Limit: 1}); err != nil {
		// An error answer carries Stripe's Date too: the clock is learned
		// all the same, and the list is retried by the poll that needs it.
		if c.Clock.Synced() && !errors.Is(err, ErrAuth) && ctx.Err() == nil {
			return nil
		}
		return fmt.Errorf("learn stripe's clock: %w", err)
	}
	if !c.Clock.Synced() {
		c.logger.Warn("stripe's answer carried no Date header (a proxy in between?); using the host's clock, which must then be right")
	}
	return nil
}

// list fetches one page the way stripe-go's own list clients do (form
// values through CallRaw), into a raw container.
func (c *Client) list(ctx context.Context, path string, params stripe.ListParamsContainer, into *rawList) error {
	values := &form.Values{}
	form.AppendTo(values, params)
	p := params.GetListParams().GetParams()
	p.Context = ctx
	return c.backend.CallRaw(http.MethodGet, path, c.key, values, p, into)
}

// stream makes a GET and hands its answer's body over undecoded: a request
// stripe-go builds (key, API version, user agent), sent through the same
// Transport as every other call, an error answer read by stripe-go. The
// buffered call (CallRaw) decodes every body with encoding/json first,
// half of what reading a page of events cost; stripe-go v76's streaming
// call, which does not, panics on a list's params (it reflects on fields
// they lack) and on a request that got no answer (it dereferences the
// missing response), so it is not used. The query is encoded as
// stripe-go's own lists encode it.
func (c *Client) stream(ctx context.Context, path string, params stripe.ListParamsContainer) ([]byte, error) {
	query := &form.Values{}
	form.AppendTo(query, params)
	if !query.Empty() {
		path += "?" + query.Encode()
	}
	req, err := c.backend.NewRequest(http.MethodGet, path, c.key, "application/x-www-form-urlencoded", &stripe.Params{Context: ctx})
	if err != nil {
		return nil, err
	}
	res, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, fmt.Errorf("read the answer: %w", err)
	}
	if res.StatusCode >= 400 {
		err := c.backend.ResponseToError(res, body)
		if se := (*stripe.Error)(nil); !errors.As(err, &se) {
			// Not Stripe's error (a proxy's page): its status still says
			// what it is, and its body, which may echo the request, stays
			// out of the log.
			err = &stripe.Error{HTTPStatusCode: res.StatusCode, Msg: "the answer " + res.Status + " is not a Stripe error"}
		}
		return nil, err
	}
	return body, nil
}

var errRedirect = errors.New("stripe answered with a redirect, which Stripe never sends: check stripe.api_base and any proxy")

// rawList is a Stripe list whose items stay undecoded.
type rawList struct {
	stripe.APIResource
	stripe.ListMeta
	Data []json.RawMessage `json:"data"`
}

// Event is a listed event, decoded only as far as routing it needs.
type Event struct {
	ID      string
	Type    string
	Created time.Time
	// Object is data.object as sent when Head is nil; empty when the
	// listing read only Head (ObjectJSON reads it from Raw then).
	Object json.RawMessage
	// Head is what routing reads of data.object, decoded with the event;
	// nil when the object does not decode as ObjectHead (then routing
	// reads Object itself, and says what is wrong with it).
	Head *ObjectHead
	Raw  json.RawMessage // the whole event
	// Err is set when the event could not be read; ID and Type are filled
	// in as far as they could be.
	Err error
}

// EventQuery selects one page of events.
type EventQuery struct {
	Types           []string
	CreatedGTE      time.Time // zero: no bound
	CreatedLT       time.Time // zero: no bound
	StartingAfter   string
	DeliverySuccess *bool
	Limit           int // default 100
}

// EventPage is one page of events, newest first as Stripe lists them.
type EventPage struct {
	Events  []Event
	HasMore bool
}

// ListEvents fetches one page of GET /v1/events.
func (c *Client) ListEvents(ctx context.Context, q EventQuery) (EventPage, error) {
	params := &stripe.EventListParams{DeliverySuccess: q.DeliverySuccess}
	params.Context = ctx
	params.Limit = stripe.Int64(int64(cmp(q.Limit, 100)))
	params.Single = true
	if q.StartingAfter != "" {
		params.StartingAfter = stripe.String(q.StartingAfter)
	}
	switch {
	case len(q.Types) == 1:
		params.Type = stripe.String(q.Types[0])
	case len(q.Types) > 1:
		params.Types = stripe.StringSlice(q.Types)
	}
	params.CreatedRange = createdRange(q.CreatedGTE, q.CreatedLT)
	body, err := c.stream(ctx, "/v1/events", params)
	if err != nil {
		return EventPage{}, wrap("list events", err)
	}
	events, hasMore, err := decodeEventPage(body)
	if err != nil {
		return EventPage{}, &Error{Op: "list events", Msg: err.Error()}
	}
	page := EventPage{HasMore: hasMore, Events: events}
	var newest time.Time
	for _, ev := range events {
		if ev.Err == nil && ev.Created.After(newest) {
			newest = ev.Created
		}
	}
	c.Clock.ObserveCreated(newest)
	return page, nil
}

func cmp(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// maxCreated is the last Unix second of year 9999: a later created time is
// not a time.
const maxCreated = 253402300799

// ObjectHead is the part of an event's data.object that routing reads.
type ObjectHead struct {
	ID               string `json:"id"`
	Object           string `json:"object"`
	Created          int64  `json:"created"`
	Status           string `json:"status"`
	LastPaymentError *struct {
		Message string `json:"message"`
	} `json:"last_payment_error"`
}

// ObjectJSON is data.object as sent: Object, or read from Raw when the
// listing decoded only its head.
func (e Event) ObjectJSON() json.RawMessage {
	if len(e.Object) > 0 || len(e.Raw) == 0 {
		return e.Object
	}
	var ev struct {
		Data struct {
			Object json.RawMessage `json:"object"`
		} `json:"data"`
	}
	if json.Unmarshal(e.Raw, &ev) != nil {
		return nil
	}
	return ev.Data.Object
}

// createdRange is a created[gte]/created[lt] filter; nil when both are zero.
func createdRange(gte, lt time.Time) *stripe.RangeQueryParams {
	if gte.IsZero() && lt.IsZero() {
		return nil
	}
	r := &stripe.RangeQueryParams{}
	if !gte.IsZero() {
		r.GreaterThanOrEqual = gte.Unix()
	}
	if !lt.IsZero() {
		r.LesserThan = lt.Unix()
	}
	return r
}

// Session is a Checkout Session as retrieved, with every line item.
type Session struct {
	ID            string
	Status        string
	PaymentStatus string
	PaymentIntent string
	Created       time.Time
	LineItems     int
	// JSON is the session as Stripe sent it, line_items expanded and
	// completed across pages: what the operator's action receives.
	JSON []byte
}

// GetSession retrieves a Checkout Session with line_items expanded, then
// pages through the rest of the line items when Stripe says there are more.
func (c *Client) GetSession(ctx context.Context, id string) (*Session, error) {
	params := &stripe.CheckoutSessionParams{}
	params.Context = ctx
	params.AddExpand("line_items")
	cs, err := c.api.CheckoutSessions.Get(id, params)
	if err != nil {
		return nil, wrap("retrieve checkout session "+id, err)
	}
	return c.complete(ctx, "retrieve checkout session "+id, cs.LastResponse.RawJSON)
}

// complete turns a session as Stripe sent it, line_items expanded (by a
// retrieve, or by a list with data.line_items), into a Session whose line
// items are complete: the rest are paged through the line-items list.
func (c *Client) complete(ctx context.Context, op string, raw []byte) (*Session, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, fmt.Errorf("%s: decode: %w", op, err)
	}
	var head struct {
		ID            string          `json:"id"`
		Status        string          `json:"status"`
		PaymentStatus string          `json:"payment_status"`
		Created       int64           `json:"created"`
		PaymentIntent json.RawMessage `json:"payment_intent"`
	}
	if err := json.Unmarshal(raw, &head); err != nil || head.ID == "" {
		return nil, &Error{Op: op, Msg: "the answer is not a checkout session"}
	}
	id := head.ID
	var expanded rawList
	if li, ok := fields["line_items"]; ok {
		if err := json.Unmarshal(li, &expanded); err != nil {
			return nil, fmt.Errorf("%s: decode line_items: %w", op, err)
		}
	}
	items := expanded.Data
	for more := expanded.HasMore; more; {
		if len(items) == 0 {
			// has_more with nothing listed gives no page position to go on
			// from: an answer we cannot read, retried later.
			return nil, &Error{Op: op, Msg: "line_items says has_more but lists no items"}
		}
		last, err := itemID(items[len(items)-1])
		if err != nil {
			return nil, fmt.Errorf("list line items of %s: %w", id, err)
		}
		lp := &stripe.CheckoutSessionListLineItemsParams{Session: stripe.String(id)}
		lp.Context = ctx
		lp.Limit = stripe.Int64(100)
		lp.StartingAfter = stripe.String(last)
		var page rawList
		path := "/v1/checkout/sessions/" + id + "/line_items"
		if err := c.list(ctx, path, lp, &page); err != nil {
			return nil, wrap("list line items of "+id, err)
		}
		if len(page.Data) == 0 {
			break
		}
		items = append(items, page.Data...)
		more = page.HasMore
	}
	complete, err := json.Marshal(struct {
		Object  string            `json:"object"`
		Data    []json.RawMessage `json:"data"`
		HasMore bool              `json:"has_more"`
		URL     string            `json:"url"`
	}{"list", nonNil(items), false, "/v1/checkout/sessions/" + id + "/line_items"})
	if err != nil {
		return nil, err
	}
	fields["line_items"] = complete
	body, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	if head.Created > 0 && head.Created <= maxCreated {
		c.Clock.ObserveCreated(time.Unix(head.Created, 0))
	}
	s := &Session{
		ID:            id,
		Status:        head.Status,
		PaymentStatus: head.PaymentStatus,
		Created:       time.Unix(head.Created, 0).UTC(),
		LineItems:     len(items),
		JSON:          body,
		PaymentIntent: objectRef(head.PaymentIntent),
	}
	return s, nil
}

// objectRef is the id of a field that holds an id or, expanded, an object.
func objectRef(raw json.RawMessage) string {
	var id string
	if json.Unmarshal(raw, &id) == nil {
		return id
	}
	var obj struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(raw, &obj)
	return obj.ID
}

// CompleteSessionPage is one page of complete Checkout Sessions listed with
// their line items, each made whole like GetSession's.
type CompleteSessionPage struct {
	Sessions []*Session
	// Unreadable counts listed sessions that could not be made whole (a
	// malformed object, a line-items page that failed): their callers
	// retrieve them one by one.
	Unreadable int
	HasMore    bool
	// Last is the id to list on from (starting_after).
	Last string
}

// ListCompleteSessions fetches one page of GET /v1/checkout/sessions with
// status=complete, created in [gte, lte], and expand[]=data.line_items: up
// to 100 sessions with their first page of line items in one request,
// where GetSession takes one each. Line items beyond that first page are
// paged through as GetSession does.
func (c *Client) ListCompleteSessions(ctx context.Context, gte, lte time.Time, startingAfter string) (CompleteSessionPage, error) {
	params := &stripe.CheckoutSessionListParams{Status: stripe.String(string(stripe.CheckoutSessionStatusComplete))}
	params.Context = ctx
	params.Single = true
	params.Limit = stripe.Int64(100)
	params.AddExpand("data.line_items")
	if startingAfter != "" {
		params.StartingAfter = stripe.String(startingAfter)
	}
	params.CreatedRange = &stripe.RangeQueryParams{GreaterThanOrEqual: gte.Unix(), LesserThanOrEqual: lte.Unix()}
	var list rawList
	if err := c.list(ctx, "/v1/checkout/sessions", params, &list); err != nil {
		return CompleteSessionPage{}, wrap("list checkout sessions with line items", err)
	}
	page := CompleteSessionPage{HasMore: list.HasMore}
	for _, raw := range list.Data {
		if id, err := itemID(raw); err == nil {
			page.Last = id
		}
		s, err := c.complete(ctx, "list checkout sessions with line items", raw)
		switch {
		case ctx.Err() != nil:
			return CompleteSessionPage{}, wrap("list checkout sessions with line items", ctx.Err())
		case err != nil:
			page.Unreadable++
			continue
		}
		page.Sessions = append(page.Sessions, s)
	}
	return page, nil
}

func nonNil(items []json.RawMessage) []json.RawMessage {
	if items == nil {
		return []json.RawMessage{}
	}
	return items
}

func itemID(raw json.RawMessage) (string, error) {
	var v struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(raw, &v); err != nil || v.ID == "" {
		return "", errors.New("line item without an id")
	}
	return v.ID, nil
}

// retrieveEndpoint is the endpoint GetSession paces on.
const retrieveEndpoint = "GET /v1/checkout/sessions/:id"

// RetrieveConcurrency is how many GetSession calls are worth having in
// flight: what the request budget allows per second times the latency
// observed (see Transport.SuggestedInFlight). The fulfiller sizes its
// prefetch by it.
func (c *Client) RetrieveConcurrency() int {
	return c.Transport.SuggestedInFlight(retrieveEndpoint)
}

// eventsEndpoint is the endpoint ListEvents paces on.
const eventsEndpoint = "GET /v1/events"

// ListConcurrency is how many ListEvents calls are worth having in flight:
// what the request budget allows per second times the latency observed
// (see Transport.SuggestedInFlight). The poller's re-scan lists that many
// slices at once.
func (c *Client) ListConcurrency() int {
	return c.Transport.SuggestedInFlight(eventsEndpoint)
}

// SessionQuery selects one page of Checkout Sessions.
type SessionQuery struct {
	Status        string
	CreatedGTE    time.Time
	CreatedLT     time.Time
	StartingAfter string
	Limit         int
}

// SessionSummary is a listed Checkout Session.
type SessionSummary struct {
	ID            string `json:"id"`
	Status        string `json:"status"`
	PaymentStatus string `json:"payment_status"`
	Created       int64  `json:"created"`
	ExpiresAt     int64  `json:"expires_at"`
}

// SessionPage is one page of Checkout Sessions, newest first.
type SessionPage struct {
	Sessions []SessionSummary
	HasMore  bool
}

// ListSessions fetches one page of GET /v1/checkout/sessions.
func (c *Client) ListSessions(ctx context.Context, q SessionQuery) (SessionPage, error) {
	params := &stripe.CheckoutSessionListParams{}
	params.Context = ctx
	params.Single = true
	params.Limit = stripe.Int64(int64(cmp(q.Limit, 100)))
	if q.Status != "" {
		params.Status = stripe.String(q.Status)
	}
	if q.StartingAfter != "" {
		params.StartingAfter = stripe.String(q.StartingAfter)
	}
	params.CreatedRange = createdRange(q.CreatedGTE, q.CreatedLT)
	var list rawList
	if err := c.list(ctx, "/v1/checkout/sessions", params, &list); err != nil {
		return SessionPage{}, wrap("list checkout sessions", err)
	}
	page := SessionPage{HasMore: list.HasMore}
	var newest int64
	for _, raw := range list.Data {
		var s SessionSummary
		if err := json.Unmarshal(raw, &s); err != nil || s.ID == "" {
			continue // not a session we can act on; its events (if any) are reported by the poller
		}
		newest = max(newest, s.Created)
		page.Sessions = append(page.Sessions, s)
	}
	if newest > 0 && newest <= maxCreated {
		c.Clock.ObserveCreated(time.Unix(newest, 0))
	}
	return page, nil
}

// Error is a failed Stripe call in words that are safe to log: Stripe's own
// message is dropped for authentication failures, because it echoes part of
// the key.
type Error struct {
	Op        string
	Status    int
	Code      string
	Msg       string
	RequestID string
	kind      error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	b.WriteString(": ")
	if e.Status > 0 {
		fmt.Fprintf(&b, "stripe answered %d", e.Status)
		if e.Code != "" {
			b.WriteString(" " + e.Code)
		}
		if e.Msg != "" {
			b.WriteString(": " + e.Msg)
		}
	} else {
		b.WriteString(e.Msg)
	}
	if e.RequestID != "" {
		b.WriteString(" (request " + e.RequestID + ")")
	}
	return b.String()
}

// Unwrap lets errors.Is find ErrNotFound, ErrAuth and ErrAgedOut.
func (e *Error) Unwrap() error { return e.kind }

// Retryable reports whether trying again later may succeed.
func (e *Error) Retryable() bool {
	return e.kind == nil && (e.Status == 0 || e.Status == 409 || e.Status == 429 || e.Status >= 500)
}

func wrap(op string, err error) error {
	// Cut off by shutdown: say so, without the request's URL.
	for _, ctxErr := range []error{context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, ctxErr) {
			return fmt.Errorf("%s: %w", op, ctxErr)
		}
	}
	var se *stripe.Error
	if !errors.As(err, &se) {
		return &Error{Op: op, Msg: redactURL(err.Error())}
	}
	e := &Error{Op: op, Status: se.HTTPStatusCode, Code: string(se.Code), Msg: se.Msg, RequestID: se.RequestID}
	switch {
	case se.HTTPStatusCode == http.StatusUnauthorized:
		e.kind = ErrAuth
		e.Msg = "the API key was not accepted; check stripe.api_key, STRIPE_API_KEY or stripe.api_key_file"
	case se.HTTPStatusCode == http.StatusForbidden:
		e.kind = ErrAuth
		e.Msg = "the API key lacks a permission fulfilld needs (restricted keys need read access to Events and Checkout Sessions, and to PaymentIntents with fulfill.payment_intents)"
	case se.HTTPStatusCode == http.StatusNotFound || se.Code == stripe.ErrorCodeResourceMissing && se.HTTPStatusCode < 500:
		e.kind = ErrNotFound
	case se.HTTPStatusCode == http.StatusBadRequest && isAgedOut(se.Msg):
		e.kind = ErrAgedOut
	}
	return e
}

func isAgedOut(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "aged out") || strings.Contains(m, "retention") || strings.Contains(m, "30 days")
}

// redactURL keeps transport errors short and free of query strings.
func redactURL(s string) string {
	if i := strings.Index(s, "?"); i >= 0 {
		if j := strings.IndexAny(s[i:], "\": "); j >= 0 {
			return s[:i] + s[i+j:]
		}
		return s[:i]
	}
	return s
}
