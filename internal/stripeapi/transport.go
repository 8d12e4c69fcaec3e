package stripeapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Stripe's published limits. A sandbox allows 25 requests/s in all, live mode 100;
// each endpoint allows 25 requests/s in either mode.
const (
	sandboxGlobalLimit = 25
	liveGlobalLimit    = 100
	endpointLimit      = 25
	// autoHeadroom leaves room for the operator's own API traffic when the
	// budget is picked automatically.
	autoHeadroom = 0.8
)

// Limits is the request budget every Stripe call passes through.
type Limits struct {
	Global   float64 // requests/second across all endpoints
	Endpoint float64 // requests/second for any one endpoint
}

// AutoLimits picks a budget from the key's mode (rateLimit 0) or honours an
// explicit one, never letting one endpoint exceed Stripe's per-endpoint limit.
func AutoLimits(rateLimit float64, live bool) Limits {
	if rateLimit > 0 {
		return Limits{Global: rateLimit, Endpoint: min(rateLimit, endpointLimit)}
	}
	global := float64(sandboxGlobalLimit)
	if live {
		global = liveGlobalLimit
	}
	return Limits{Global: global * autoHeadroom, Endpoint: endpointLimit * autoHeadroom}
}

// Transport sits under stripe-go's backend. It is the one place that paces
// requests, retries what Stripe says is safe to retry, and counts usage:
// stripe-go itself is configured with no retries because it neither retries
// a 429 rate_limit nor watches the context while it sleeps.
//
// Pacing is a global budget and one budget per endpoint; a request is sent
// once both allow it. A 429 slows the budget it names
// (Stripe-Rate-Limited-Reason): global-* the global one, endpoint-* that
// endpoint's, and both when Stripe names none. See budget for the AIMD rule.
type Transport struct {
	Base       http.RoundTripper
	Limits     Limits
	Account    string // Stripe-Account header for Connect, when set
	MaxRetries int
	// MinBackoff and MaxBackoff bound the exponential backoff between retries.
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
	// Clock, when set, learns Stripe's time from each answer's Date.
	Clock *Clock

	once      sync.Once
	global    *budget
	mu        sync.Mutex
	endpoints map[string]*budget
	latency   map[string]time.Duration // moving average per endpoint
	anyLat    time.Duration            // moving average over all endpoints
	usage     Usage
	sent      int64 // every request ever sent, never reset
	// downSince is when the current spell of failed requests (no answer,
	// or a 5xx) began, zero while Stripe answers; downFailures counts them.
	downSince    time.Time
	downFailures int
	// share is how many instances split Limits (SetShare); last429 is
	// when this one was last answered 429.
	share   int
	last429 time.Time
}

// Usage counts requests by endpoint ("GET /v1/events") and HTTP status.
type Usage struct {
	Requests    map[string]int64 `json:"requests"`
	ByStatus    map[string]int64 `json:"by_status"`
	RateLimited int64            `json:"rate_limited"`
	Retries     int64            `json:"retries"`
	// Payments counts paid sessions queued: Stripe's read allocation
	// grows with them (see ReadBudget). Not a request.
	Payments int64 `json:"payments,omitempty"`
}

// Total is the number of requests sent.
func (u Usage) Total() int64 {
	var n int64
	for _, c := range u.Requests {
		n += c
	}
	return n
}

// Add folds other into u.
func (u *Usage) Add(other Usage) {
	if u.Requests == nil {
		u.Requests = map[string]int64{}
	}
	if u.ByStatus == nil {
		u.ByStatus = map[string]int64{}
	}
	for k, v := range other.Requests {
		u.Requests[k] += v
	}
	for k, v := range other.ByStatus {
		u.ByStatus[k] += v
	}
	u.RateLimited += other.RateLimited
	u.Retries += other.Retries
	u.Payments += other.Payments
}

func (t *Transport) init() {
	t.once.Do(func() {
		t.global = newBudget(t.Limits.Global)
		t.endpoints = map[string]*budget{}
		t.latency = map[string]time.Duration{}
		if t.Base == nil {
			t.Base = http.DefaultTransport
		}
		if t.MinBackoff == 0 {
			t.MinBackoff = 500 * time.Millisecond
		}
		if t.MaxBackoff == 0 {
			t.MaxBackoff = 30 * time.Second
		}
		if t.Logger == nil {
			t.Logger = slog.New(slog.DiscardHandler)
		}
	})
}

func (t *Transport) endpointBudget(endpoint string) *budget {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, ok := t.endpoints[endpoint]
	if !ok {
		b = newBudget(t.Limits.Endpoint)
		if t.share > 1 {
			b.setLimit(t.Limits.Endpoint/float64(t.share), time.Now())
		}
		t.endpoints[endpoint] = b
	}
	return b
}

// SetShare splits the configured limits between n instances that share
// the Stripe account (store.postgres): each paces itself at 1/n of
// stripe.rate_limit, globally and per endpoint, so that all of them
// together stay within it. Stripe's limits belong to the account, not to
// a host.
func (t *Transport) SetShare(n int) {
	t.init()
	n = max(n, 1)
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.share == n || t.share == 0 && n == 1 {
		return
	}
	t.share = n
	t.global.setLimit(t.Limits.Global/float64(n), now)
	for _, b := range t.endpoints {
		b.setLimit(t.Limits.Endpoint/float64(n), now)
	}
}

// Throttled is when Stripe last answered this transport 429 (zero: never).
func (t *Transport) Throttled() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last429
}

// ThrottledElsewhere is told that another instance on the same account was
// answered 429 at at: the account's budget is spent, so this one slows
// down too (one AIMD cut of the global budget).
func (t *Transport) ThrottledElsewhere(at time.Time) {
	t.init()
	now := time.Now()
	if t.global.throttled(now, now, 0) {
		t.Logger.Info("another instance was throttled by Stripe; slowing down too",
			"at", at.UTC().Format(time.RFC3339), "global_rate", round(t.global.current(now)))
	}
}

// TakeUsage returns the usage counted since the last call and resets it.
func (t *Transport) TakeUsage() Usage {
	t.init()
	t.mu.Lock()
	defer t.mu.Unlock()
	u := t.usage
	t.usage = Usage{}
	return u
}

// Sent is the number of requests sent since the transport was made. Unlike
// TakeUsage it never resets, so callers can take differences.
func (t *Transport) Sent() int64 {
	t.init()
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sent
}

// Budgets reports the global budget (key "global") and each endpoint's as
// they stand: a rate below the limit means Stripe throttled us recently.
func (t *Transport) Budgets() map[string]BudgetState {
	t.init()
	now := time.Now()
	t.mu.Lock()
	eps := make(map[string]*budget, len(t.endpoints))
	for k, b := range t.endpoints {
		eps[k] = b
	}
	t.mu.Unlock()
	out := map[string]BudgetState{"global": t.global.state(now)}
	for k, b := range eps {
		out[k] = b.state(now)
	}
	return out
}

// Latency defaults: assumed before anything was measured, and the bounds of
// what SuggestedInFlight offers.
const (
	assumedLatency = 300 * time.Millisecond
	maxInFlight    = 32
)

// SuggestedInFlight is how many requests to endpoint are worth having in
// flight at once: the rate its budgets allow now times the latency observed
// for it (Little's law), with a quarter more and one extra so that the pacer
// always has a request ready when a token comes. More would only queue at
// the pacer; fewer would leave budget unused while requests are on the wire.
func (t *Transport) SuggestedInFlight(endpoint string) int {
	t.init()
	now := time.Now()
	r := min(t.global.current(now), t.endpointBudget(endpoint).current(now))
	t.mu.Lock()
	lat, ok := t.latency[endpoint]
	if !ok {
		lat = t.anyLat
	}
	t.mu.Unlock()
	if lat <= 0 {
		lat = assumedLatency
	}
	n := r*lat.Seconds()*1.25 + 1
	if math.IsInf(n, 1) || n > maxInFlight {
		return maxInFlight
	}
	return max(1, int(math.Ceil(n)))
}

func (t *Transport) count(endpoint string, status int, retry bool, took time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.usage.Requests == nil {
		t.usage.Requests = map[string]int64{}
		t.usage.ByStatus = map[string]int64{}
	}
	t.usage.Requests[endpoint]++
	t.sent++
	key := "error"
	if status > 0 {
		key = strconv.Itoa(status)
	}
	t.usage.ByStatus[key]++
	if status == http.StatusTooManyRequests {
		t.usage.RateLimited++
	}
	if retry {
		t.usage.Retries++
	}
	if status > 0 && took > 0 {
		t.latency[endpoint] = average(t.latency[endpoint], took)
		t.anyLat = average(t.anyLat, took)
	}
}

// average is an exponentially weighted moving average, weight 1/8.
func average(avg, sample time.Duration) time.Duration {
	if avg == 0 {
		return sample
	}
	return avg + (sample-avg)/8
}

// RoundTrip paces, sends and, when safe, retries one request.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.init()
	ctx := req.Context()
	endpoint := Endpoint(req.Method, req.URL.Path)
	ep := t.endpointBudget(endpoint)
	if t.Account != "" {
		req = req.Clone(ctx)
		req.Header.Set("Stripe-Account", t.Account)
	}
	for attempt := 0; ; attempt++ {
		sentAt, err := t.pace(ctx, ep)
		if err != nil {
			return nil, err
		}
		try, err := rewind(req)
		if err != nil {
			return nil, err
		}
		resp, err := t.Base.RoundTrip(try)
		t.observeDate(resp)
		now := time.Now()
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.count(endpoint, status, attempt > 0, now.Sub(sentAt))
		if ctx.Err() != nil {
			if resp != nil {
				resp.Body.Close()
			}
			return nil, ctx.Err()
		}
		if status == http.StatusTooManyRequests {
			t.throttled(endpoint, ep, resp, sentAt, now)
			t.mu.Lock()
			t.last429 = now
			t.mu.Unlock()
		}
		wait, retry := t.shouldRetry(req, resp, err, attempt)
		t.noteOutcome(endpoint, status, err, retry, wait)
		if !retry {
			return resp, err
		}
		if resp != nil {
			// Drain so the connection can be reused.
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

// noteOutcome tells the operator about an outage once when it begins and
// once when it ends: the first request that gets no answer or a 5xx is a
// WARN with the reason, later ones only DEBUG, and the first answer after
// them an INFO with how long it lasted. A 429 is throttling, not an outage
// (throttled logs it).
func (t *Transport) noteOutcome(endpoint string, status int, err error, retry bool, wait time.Duration) {
	failed := err != nil || status >= 500
	if !failed && status == http.StatusTooManyRequests {
		return
	}
	now := time.Now()
	t.mu.Lock()
	began, ended := false, false
	var since time.Time
	var failures int
	switch {
	case failed && t.downSince.IsZero():
		t.downSince, t.downFailures, began = now, 1, true
	case failed:
		t.downFailures++
	case !t.downSince.IsZero():
		since, failures, ended = t.downSince, t.downFailures, true
		t.downSince, t.downFailures = time.Time{}, 0
	}
	t.mu.Unlock()
	reason := "no answer"
	switch {
	case err != nil:
		reason = err.Error()
	case status > 0:
		reason = "HTTP " + strconv.Itoa(status)
	}
	next := "retrying"
	if !retry {
		next = "giving up on this request"
	}
	switch {
	case began:
		t.Logger.Warn("stripe request failed; "+next+" (further failures are logged at debug until Stripe answers again)",
			"endpoint", endpoint, "reason", reason, "retry_in", wait.Round(time.Millisecond))
	case failed:
		t.Logger.Debug("stripe request failed; "+next, "endpoint", endpoint, "reason", reason,
			"retry_in", wait.Round(time.Millisecond))
	case ended:
		t.Logger.Info("stripe answers again", "after", now.Sub(since).Round(time.Second), "failed_requests", failures)
	}
}

// observeDate tells the clock Stripe's time from an answer's Date header.
func (t *Transport) observeDate(resp *http.Response) {
	if t.Clock == nil || resp == nil {
		return
	}
	if at, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
		t.Clock.ObserveDate(at)
	}
}

// pace waits until the global budget and the endpoint's both allow a
// request, or ctx ends, and returns when the request may go.
func (t *Transport) pace(ctx context.Context, ep *budget) (time.Time, error) {
	if err := ep.turn.acquire(ctx); err != nil {
		return time.Now(), err
	}
	defer ep.turn.release()
	for {
		now := time.Now()
		if until := later(t.global.paused(now), ep.paused(now)); !until.IsZero() {
			if err := sleep(ctx, until.Sub(now)); err != nil {
				return now, err
			}
			continue
		}
		g, e := t.global.reserve(now), ep.reserve(now)
		if !g.OK() || !e.OK() {
			g.CancelAt(now)
			e.CancelAt(now)
			return now, errors.New("stripe request budget cannot admit a request")
		}
		if d := max(g.DelayFrom(now), e.DelayFrom(now)); d > 0 {
			if err := sleep(ctx, d); err != nil {
				// Give the tokens back: the request was never sent.
				g.Cancel()
				e.Cancel()
				return now, err
			}
			now = time.Now()
		}
		t.global.note(now)
		ep.note(now)
		return now, nil
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// throttled slows the budget a 429 names. A Retry-After holds that budget
// as a whole, not only this request.
func (t *Transport) throttled(endpoint string, ep *budget, resp *http.Response, sentAt, now time.Time) {
	reason := resp.Header.Get("Stripe-Rate-Limited-Reason")
	after := retryAfter(resp)
	var cut []string
	switch {
	case strings.HasPrefix(reason, "global"):
		if t.global.throttled(sentAt, now, after) {
			cut = append(cut, "global")
		}
	case strings.HasPrefix(reason, "endpoint"):
		if ep.throttled(sentAt, now, after) {
			cut = append(cut, endpoint)
		}
	case reason == "":
		// Stripe named no budget: slow both.
		if t.global.throttled(sentAt, now, after) {
			cut = append(cut, "global")
		}
		if ep.throttled(sentAt, now, after) {
			cut = append(cut, endpoint)
		}
	default:
		// resource-specific and the like concern one object, not our
		// pace: the request's own backoff is enough.
	}
	if len(cut) > 0 {
		now := time.Now()
		t.Logger.Info("stripe throttled us; slowing down", "endpoint", endpoint, "reason", reason,
			"budget", strings.Join(cut, ","), "global_rate", round(t.global.current(now)),
			"endpoint_rate", round(ep.current(now)))
	}
}

func round(f float64) float64 { return math.Round(f*100) / 100 }

// rewind gives each attempt a fresh body. stripe-go sets GetBody for the
// requests it builds; GETs have none.
func rewind(req *http.Request) (*http.Request, error) {
	if req.Body == nil || req.Body == http.NoBody || req.GetBody == nil {
		return req, nil
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, err
	}
	try := req.Clone(req.Context())
	try.Body = body
	return try, nil
}

// shouldRetry follows Stripe's advice: Stripe-Should-Retry wins; a 429 (of any
// kind — stripe-go gives up on rate_limit), 409 and 5xx are retried, and
// connection failures are retried for GETs, which change nothing on Stripe's side.
func (t *Transport) shouldRetry(req *http.Request, resp *http.Response, err error, attempt int) (time.Duration, bool) {
	if attempt >= t.MaxRetries {
		return 0, false
	}
	backoff := t.backoff(attempt)
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return 0, false
		}
		return backoff, req.Method == http.MethodGet
	}
	switch resp.Header.Get("Stripe-Should-Retry") {
	case "false":
		return 0, false
	case "true":
		return max(backoff, retryAfter(resp)), true
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		return max(backoff, retryAfter(resp)), true
	case resp.StatusCode == http.StatusConflict:
		return backoff, true
	case resp.StatusCode >= 500 && req.Method != http.MethodPost:
		return max(backoff, retryAfter(resp)), true
	case resp.StatusCode == http.StatusServiceUnavailable:
		return max(backoff, retryAfter(resp)), true
	}
	return 0, false
}

// backoff is exponential with full jitter, capped.
func (t *Transport) backoff(attempt int) time.Duration {
	d := t.MinBackoff << min(attempt, 16)
	if d <= 0 || d > t.MaxBackoff {
		d = t.MaxBackoff
	}
	return d/2 + rand.N(d/2+1)
}

func retryAfter(resp *http.Response) time.Duration {
	v := strings.TrimSpace(resp.Header.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil && secs > 0 {
		return min(time.Duration(secs)*time.Second, 5*time.Minute)
	}
	if at, err := http.ParseTime(v); err == nil {
		return min(max(time.Until(at), 0), 5*time.Minute)
	}
	return 0
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// Endpoint names a request by method and path pattern, ids replaced by ":id",
// so that "GET /v1/checkout/sessions/cs_123/line_items" becomes
// "GET /v1/checkout/sessions/:id/line_items". Stripe's per-endpoint limits and
// our counters work on these names.
func Endpoint(method, path string) string {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for i, s := range segs {
		if isID(s) {
			segs[i] = ":id"
		}
	}
	return method + " /" + strings.Join(segs, "/")
}

// isID tells an object id (evt_1Nx…, cs_test_a1…) from a path word
// (line_items): ids carry a prefix, an underscore and mixed-case or digits.
func isID(s string) bool {
	if !strings.Contains(s, "_") {
		return false
	}
	return strings.IndexFunc(s, func(r rune) bool {
		return (r >= '0' && r <= '9') || (r >= 'A' && r <= 'Z')
	}) >= 0
}
