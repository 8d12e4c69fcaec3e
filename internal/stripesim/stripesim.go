// Package stripesim is a stateful, in-memory simulation of the parts of the
// Stripe API that fulfilld uses: the event list, Checkout Sessions with their
// line items, and PaymentIntents. It speaks Stripe's real wire format (list
// envelopes, cursors, error bodies, headers) so that stripe-go works against it
// unchanged, and it can misbehave on purpose: rate limits, injected faults,
// latency, late-visible events and the 30-day event retention.
//
// It serves tests through net/http/httptest (New) and the `fulfilld demo`
// command through any listener (NewHandler), so it must not import testing.
package stripesim

import (
	"context"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// APIVersion is the Stripe API version events are rendered in; it is the
// version stripe-go v76 pins.
const APIVersion = "2023-10-16"

// DefaultAPIKey is the secret key accepted when Options.APIKey is empty.
const DefaultAPIKey = "sk_test_sim"

// DefaultRetention is how long Stripe lists events.
const DefaultRetention = 30 * 24 * time.Hour

// requestLogSize bounds Requests().
const requestLogSize = 10000

// Options configures a Server. The zero value is usable.
type Options struct {
	// APIKey is the one secret key accepted (default DefaultAPIKey); any other
	// bearer token is answered with 401.
	APIKey string
	// Now is the simulation clock (default time.Now). It decides event
	// visibility and retention. Rate limits use real time, because a token
	// bucket on a frozen test clock would never refill.
	Now func() time.Time
	// Latency, when set, delays every request before it is answered. The wait
	// ends early when the client goes away or the server closes.
	Latency func() time.Duration
	// GlobalLimit is the request budget per second across all endpoints
	// (0 = unlimited). Excess requests get 429 with
	// Stripe-Rate-Limited-Reason: global-rate.
	GlobalLimit float64
	// EndpointLimit is the request budget per second for each endpoint
	// (0 = unlimited). Excess requests get 429 with
	// Stripe-Rate-Limited-Reason: endpoint-rate.
	EndpointLimit float64
	// Retention is how long events are listed and retrievable
	// (default DefaultRetention).
	Retention time.Duration
	// Fault, when set, may turn an authenticated request into a failure. n is
	// the 1-based sequence number of the request. A nil result means no fault.
	Fault func(r *http.Request, n int64) *Fault
}

// Fault describes an injected failure.
type Fault struct {
	// Status is the HTTP status to answer with (0 means 500). 5xx answers
	// carry a Stripe api_error body, 429 a rate_limit body, anything else an
	// invalid_request_error body.
	Status int
	// Header is added to the response, e.g. Stripe-Should-Retry, Retry-After
	// or Stripe-Rate-Limited-Reason.
	Header http.Header
	// Body, when non-nil, replaces the JSON error body verbatim (for
	// malformed or truncated responses).
	Body []byte
	// Reset hijacks the connection and closes it with a TCP RST instead of
	// answering.
	Reset bool
}

// Stats counts the requests a Server has seen.
type Stats struct {
	// ByEndpoint is keyed like "GET /v1/events" or
	// "GET /v1/checkout/sessions/:id"; requests to routes the simulator does
	// not know count under "unknown".
	ByEndpoint map[string]int64
	// ByStatus counts final statuses. A connection reset by a Fault counts
	// as 0, a request abandoned by its client during Latency as 499.
	ByStatus map[int]int64
	// Total counts every request.
	Total int64
	// RateLimited counts 429 answers, whether from the limiter or a Fault.
	RateLimited int64
}

// Request is one entry of the request log.
type Request struct {
	Method    string
	Path      string
	Query     url.Values
	Endpoint  string // as in Stats.ByEndpoint
	Status    int    // as in Stats.ByStatus
	RequestID string
	Time      time.Time // simulation clock at arrival
}

// Server is a simulated Stripe API. All methods are safe for concurrent use.
type Server struct {
	now       func() time.Time
	latency   func() time.Duration
	retention time.Duration
	srv       *httptest.Server
	closeOnce sync.Once
	closed    chan struct{}
	reqSeq    atomic.Int64

	// mu guards the API state below.
	mu       sync.Mutex
	apiKey   string
	fault    func(r *http.Request, n int64) *Fault
	seq      uint64
	events   timeline[event]
	eventIDs map[string]*event
	sessions timeline[session]
	sessIDs  map[string]*session
	intents  map[string]*paymentIntent
	lastRaw  snapshot // the rawObject of the last AddEvent

	// limMu guards the per-endpoint limiters; rate.Limiter is itself safe.
	limMu         sync.Mutex
	global        *rate.Limiter
	endpointLimit float64
	endpoints     map[string]*rate.Limiter

	// obsMu guards what Stats and Requests report.
	obsMu  sync.Mutex
	stats  Stats
	reqLog []Request
	reqPos int
}

// New returns a started httptest server. Close it when done.
func New(opts Options) *Server {
	s := NewHandler(opts)
	s.srv = httptest.NewServer(s)
	return s
}

// NewHandler returns a Server that is not listening: serve it as an
// http.Handler on a listener of your own. URL returns "" for it.
func NewHandler(opts Options) *Server {
	s := &Server{
		now:           opts.Now,
		latency:       opts.Latency,
		retention:     opts.Retention,
		closed:        make(chan struct{}),
		apiKey:        opts.APIKey,
		fault:         opts.Fault,
		eventIDs:      make(map[string]*event),
		sessIDs:       make(map[string]*session),
		intents:       make(map[string]*paymentIntent),
		endpointLimit: opts.EndpointLimit,
		endpoints:     make(map[string]*rate.Limiter),
		stats:         Stats{ByEndpoint: map[string]int64{}, ByStatus: map[int]int64{}},
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.retention <= 0 {
		s.retention = DefaultRetention
	}
	if s.apiKey == "" {
		s.apiKey = DefaultAPIKey
	}
	if opts.GlobalLimit > 0 {
		s.global = newLimiter(opts.GlobalLimit)
	}
	return s
}

func newLimiter(perSecond float64) *rate.Limiter {
	burst := max(1, int(math.Ceil(perSecond)))
	return rate.NewLimiter(rate.Limit(perSecond), burst)
}

// URL is the base URL to give stripe.BackendConfig.URL ("" for NewHandler).
func (s *Server) URL() string {
	if s.srv == nil {
		return ""
	}
	return s.srv.URL
}

// Close stops the server (when started by New) and ends pending latency
// waits. It is safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.closed) })
	if s.srv != nil {
		s.srv.Close()
	}
}

// SetAPIKey changes the accepted secret key.
func (s *Server) SetAPIKey(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apiKey = key
}

// SetFault replaces the fault injector (nil removes it).
func (s *Server) SetFault(f func(r *http.Request, n int64) *Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
}

// Stats returns a copy of the request counters.
func (s *Server) Stats() Stats {
	s.obsMu.Lock()
	defer s.obsMu.Unlock()
	out := s.stats
	out.ByEndpoint = make(map[string]int64, len(s.stats.ByEndpoint))
	for k, v := range s.stats.ByEndpoint {
		out.ByEndpoint[k] = v
	}
	out.ByStatus = make(map[int]int64, len(s.stats.ByStatus))
	for k, v := range s.stats.ByStatus {
		out.ByStatus[k] = v
	}
	return out
}

// Requests returns the last requests (up to 10,000), oldest first.
func (s *Server) Requests() []Request {
	s.obsMu.Lock()
	defer s.obsMu.Unlock()
	out := make([]Request, 0, len(s.reqLog))
	if len(s.reqLog) == requestLogSize {
		out = append(out, s.reqLog[s.reqPos:]...)
		out = append(out, s.reqLog[:s.reqPos]...)
	} else {
		out = append(out, s.reqLog...)
	}
	return out
}

func (s *Server) record(req Request) {
	s.obsMu.Lock()
	defer s.obsMu.Unlock()
	s.stats.Total++
	s.stats.ByEndpoint[req.Endpoint]++
	s.stats.ByStatus[req.Status]++
	if req.Status == http.StatusTooManyRequests {
		s.stats.RateLimited++
	}
	if len(s.reqLog) < requestLogSize {
		s.reqLog = append(s.reqLog, req)
		return
	}
	s.reqLog[s.reqPos] = req
	s.reqPos = (s.reqPos + 1) % requestLogSize
}

// statusWriter remembers the status written through it and calls
// onHeader with it before the answer leaves.
type statusWriter struct {
	http.ResponseWriter
	status   int
	onHeader func(status int)
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
		if w.onHeader != nil {
			w.onHeader(code)
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

// ServeHTTP answers one API request: latency, authentication, rate limits,
// fault injection, then the endpoint itself.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.reqSeq.Add(1)
	rt := route(r)
	reqID := randomID("req_", 14)
	entry := Request{
		Method:    r.Method,
		Path:      r.URL.Path,
		Query:     r.URL.Query(),
		Endpoint:  rt.key,
		RequestID: reqID,
		Time:      s.now(),
	}
	// A request is counted before its answer is written: a client that has
	// read the answer finds it in Stats and Requests.
	recorded := false
	sw := &statusWriter{ResponseWriter: w, onHeader: func(status int) {
		if entry.Status == 0 {
			entry.Status = status
		}
		s.record(entry)
		recorded = true
	}}
	defer func() {
		if !recorded { // no answer: a reset connection or a client gone during latency
			s.record(entry)
		}
	}()

	if s.latency != nil {
		if d := s.latency(); d > 0 && !s.wait(r.Context(), d) {
			entry.Status = 499
			return
		}
	}

	h := sw.Header()
	h.Set("Request-Id", reqID)
	h.Set("Stripe-Version", APIVersion)
	// Stripe's clock is the simulation's: clients learn it from Date, as
	// they do from Stripe's (net/http keeps a Date set by the handler).
	h.Set("Date", s.now().UTC().Format(http.TimeFormat))

	s.mu.Lock()
	key, fault := s.apiKey, s.fault
	s.mu.Unlock()

	if e := authenticate(r, key); e != nil {
		h.Set("Www-Authenticate", `Basic realm="Stripe"`)
		writeError(sw, reqID, e)
		return
	}
	if reason := s.allow(rt.key); reason != "" {
		h.Set("Stripe-Rate-Limited-Reason", reason)
		writeError(sw, reqID, errRateLimit())
		return
	}
	if fault != nil {
		if f := fault(r, n); f != nil {
			s.applyFault(sw, w, reqID, f)
			return
		}
	}
	if rt.handle == nil {
		writeError(sw, reqID, &apiError{
			status:  http.StatusNotFound,
			Type:    typeInvalidRequest,
			Message: "Unrecognized request URL (" + r.Method + ": " + r.URL.Path + "). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.",
		})
		return
	}
	body, e := rt.handle(s, r.URL.Query(), rt.id)
	if e != nil {
		writeError(sw, reqID, e)
		return
	}
	writeJSON(sw, http.StatusOK, body)
}

// wait sleeps for d unless ctx ends or the server closes first; it reports
// whether the full delay passed.
func (s *Server) wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.closed:
		return false
	}
}

// allow takes a token from the endpoint and global buckets, returning the
// Stripe-Rate-Limited-Reason when either is empty. A refused request consumes
// nothing.
func (s *Server) allow(endpoint string) string {
	now := time.Now()
	var ep *rate.Limiter
	if s.endpointLimit > 0 {
		s.limMu.Lock()
		ep = s.endpoints[endpoint]
		if ep == nil {
			ep = newLimiter(s.endpointLimit)
			s.endpoints[endpoint] = ep
		}
		s.limMu.Unlock()
	}
	var epRes *rate.Reservation
	if ep != nil {
		epRes = ep.ReserveN(now, 1)
		if !epRes.OK() || epRes.DelayFrom(now) > 0 {
			epRes.CancelAt(now)
			return "endpoint-rate"
		}
	}
	if s.global != nil {
		res := s.global.ReserveN(now, 1)
		if !res.OK() || res.DelayFrom(now) > 0 {
			res.CancelAt(now)
			if epRes != nil {
				epRes.CancelAt(now)
			}
			return "global-rate"
		}
	}
	return ""
}

func (s *Server) applyFault(sw *statusWriter, raw http.ResponseWriter, reqID string, f *Fault) {
	if f.Reset {
		if hj, ok := raw.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				if tc, ok := conn.(*net.TCPConn); ok {
					_ = tc.SetLinger(0) // close with RST, like a dropped connection
				}
				_ = conn.Close()
				return
			}
		}
		// Not hijackable (HTTP/2): abort the response instead.
		panic(http.ErrAbortHandler)
	}
	for k, vs := range f.Header {
		for _, v := range vs {
			sw.Header().Add(k, v)
		}
	}
	status := f.Status
	if status == 0 {
		status = http.StatusInternalServerError
	}
	if f.Body != nil {
		writeJSON(sw, status, f.Body)
		return
	}
	var e *apiError
	switch {
	case status == http.StatusTooManyRequests:
		e = errRateLimit()
	case status >= 500:
		e = &apiError{Type: "api_error", Message: "Sorry, something went wrong. We've already been notified of the problem, but if you need any help, you can reach us at support.stripe.com/contact."}
	default:
		e = &apiError{Type: typeInvalidRequest, Message: "Simulated fault (" + http.StatusText(status) + ")."}
	}
	e.status = status
	writeError(sw, reqID, e)
}

// authenticate accepts "Bearer <key>" or HTTP basic auth with the key as the
// user name, as Stripe does.
func authenticate(r *http.Request, key string) *apiError {
	got := ""
	auth := r.Header.Get("Authorization")
	switch {
	case strings.HasPrefix(auth, "Bearer "):
		got = strings.TrimSpace(strings.TrimPrefix(auth, "Bearer "))
	case strings.HasPrefix(auth, "Basic "):
		got, _, _ = r.BasicAuth()
	}
	if got == "" {
		return &apiError{
			status:  http.StatusUnauthorized,
			Type:    typeInvalidRequest,
			Message: "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/.",
		}
	}
	if got != key {
		return &apiError{
			status:  http.StatusUnauthorized,
			Type:    typeInvalidRequest,
			Message: "Invalid API Key provided: " + MaskKey(got),
		}
	}
	return nil
}

// MaskKey hides a key the way Stripe's error messages do: the prefix
// ("sk_test_", "rk_live_", …) and the last four characters stay, everything
// between becomes asterisks.
func MaskKey(key string) string {
	prefix := ""
	for _, p := range []string{"sk_test_", "sk_live_", "rk_test_", "rk_live_", "pk_test_", "pk_live_", "sk_", "rk_", "pk_"} {
		if strings.HasPrefix(key, p) {
			prefix = p
			break
		}
	}
	rest := key[len(prefix):]
	if len(rest) <= 4 {
		return prefix + strings.Repeat("*", len(rest))
	}
	return prefix + strings.Repeat("*", len(rest)-4) + rest[len(rest)-4:]
}
