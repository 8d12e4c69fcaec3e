package stripeapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
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
type Transport struct {
	Base       http.RoundTripper
	Limits     Limits
	Account    string // Stripe-Account header for Connect, when set
	MaxRetries int
	// MinBackoff and MaxBackoff bound the exponential backoff between retries.
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger

	once      sync.Once
	global    *rate.Limiter
	mu        sync.Mutex
	endpoints map[string]*rate.Limiter
	usage     Usage
}

// Usage counts requests by endpoint ("GET /v1/events") and HTTP status.
type Usage struct {
	Requests    map[string]int64 `json:"requests"`
	ByStatus    map[string]int64 `json:"by_status"`
	RateLimited int64            `json:"rate_limited"`
	Retries     int64            `json:"retries"`
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
}

func (t *Transport) init() {
	t.once.Do(func() {
		t.global = rate.NewLimiter(rate.Limit(t.Limits.Global), burst(t.Limits.Global))
		t.endpoints = map[string]*rate.Limiter{}
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

// burst keeps bursts small: Stripe counts requests per second, so a burst
// larger than one second's worth earns a 429.
func burst(limit float64) int {
	return max(1, int(limit/5))
}

func (t *Transport) endpointLimiter(endpoint string) *rate.Limiter {
	t.mu.Lock()
	defer t.mu.Unlock()
	l, ok := t.endpoints[endpoint]
	if !ok {
		l = rate.NewLimiter(rate.Limit(t.Limits.Endpoint), burst(t.Limits.Endpoint))
		t.endpoints[endpoint] = l
	}
	return l
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

func (t *Transport) count(endpoint string, status int, retry bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.usage.Requests == nil {
		t.usage.Requests = map[string]int64{}
		t.usage.ByStatus = map[string]int64{}
	}
	t.usage.Requests[endpoint]++
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
}

// RoundTrip paces, sends and, when safe, retries one request.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.init()
	ctx := req.Context()
	endpoint := Endpoint(req.Method, req.URL.Path)
	if t.Account != "" {
		req = req.Clone(ctx)
		req.Header.Set("Stripe-Account", t.Account)
	}
	for attempt := 0; ; attempt++ {
		if err := t.global.Wait(ctx); err != nil {
			return nil, waitError(ctx, err)
		}
		if err := t.endpointLimiter(endpoint).Wait(ctx); err != nil {
			return nil, waitError(ctx, err)
		}
		try, err := rewind(req)
		if err != nil {
			return nil, err
		}
		resp, err := t.Base.RoundTrip(try)
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.count(endpoint, status, attempt > 0)
		if ctx.Err() != nil {
			if resp != nil {
				resp.Body.Close()
			}
			return nil, ctx.Err()
		}
		wait, retry := t.shouldRetry(req, resp, err, attempt)
		if !retry {
			return resp, err
		}
		if resp != nil {
			// Drain so the connection can be reused.
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		t.Logger.Debug("retrying stripe request", "endpoint", endpoint, "status", status,
			"attempt", attempt+1, "wait", wait, "err", err)
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

func waitError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

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
