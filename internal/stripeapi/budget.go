package stripeapi

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// AIMD tuning. Stripe counts requests per second, so a budget is cut at most
// once a second, and only for a request that was paced at the rate in force
// after the previous cut: the requests already on the wire when the first 429
// came back say nothing new.
const (
	// cutFactor is the multiplicative decrease on a 429. 0.7 rather than
	// TCP's 0.5: a stray 429 at the right rate then costs little, and a rate
	// configured far too high still converges in a few seconds, because the
	// cut starts from what was actually sent in the last second.
	cutFactor = 0.7
	// maxCut bounds one cut to a quarter of the current rate.
	maxCut = 0.25
	// cutInterval is the least time between two cuts of one budget.
	cutInterval = time.Second
	// growShare is the additive increase per second, as a share of the rate
	// at which the last 429 came (or of the current rate once past it): back
	// from a cut in about six seconds, whatever the scale.
	growShare = 0.05
	// minRate is the floor a budget is never cut below (unless its limit is).
	minRate = 1.0
	// maxPause bounds how long a Retry-After may hold a whole budget.
	maxPause = 5 * time.Minute
)

// budget is one request budget — global, or one endpoint — paced by a token
// bucket whose rate follows AIMD: it starts at the configured limit, is cut
// multiplicatively on a 429 attributed to it, and climbs back additively,
// never above the limit. A limit of 0 or less means unlimited.
type budget struct {
	limit float64 // configured requests/second; +Inf when unlimited
	lim   *rate.Limiter
	// turn lets one request of this budget at a time wait for a token;
	// the others wait behind it holding none. So a request of another
	// endpoint finds at most one reservation per endpoint ahead of it at
	// the global budget: the event list, which pages one request after
	// the other, is never stuck behind a crowd of prefetched retrieves.
	// Who waits longest is up to Behind (turn.go).
	turn turn

	mu         sync.Mutex
	rate       float64   // in force now
	ceiling    float64   // rate at which the last 429 came
	lastCut    time.Time // zero: never cut
	lastGrow   time.Time
	pauseUntil time.Time // a Retry-After holds the whole budget
	cuts       int64
	sent       sendWindow
}

func newBudget(limit float64) *budget {
	if limit <= 0 || math.IsInf(limit, 1) || math.IsNaN(limit) {
		limit = math.Inf(1)
	}
	b := &budget{limit: limit, rate: limit, ceiling: limit}
	b.lim = rate.NewLimiter(rate.Limit(limit), burst(limit))
	return b
}

// burst keeps bursts small: Stripe counts requests per second, so a burst
// larger than one second's worth earns a 429.
func burst(limit float64) int {
	if math.IsInf(limit, 1) {
		return 1
	}
	return max(1, int(limit/5))
}

// reserve takes a token for a request about to be sent at now, after the
// additive increase due by now.
func (b *budget) reserve(now time.Time) *rate.Reservation {
	b.mu.Lock()
	b.growLocked(now)
	b.mu.Unlock()
	return b.lim.ReserveN(now, 1)
}

// paused is when a Retry-After on this budget ends; zero if none.
func (b *budget) paused(now time.Time) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pauseUntil.After(now) {
		return b.pauseUntil
	}
	return time.Time{}
}

// note records a request sent at t, so a cut knows the rate really used.
func (b *budget) note(t time.Time) {
	b.mu.Lock()
	b.sent.add(t)
	b.mu.Unlock()
}

func (b *budget) growLocked(now time.Time) {
	if b.rate >= b.limit {
		b.lastGrow = now
		return
	}
	since := b.lastGrow
	if b.lastCut.After(since) {
		since = b.lastCut
	}
	dt := now.Sub(since).Seconds()
	if dt < 0.05 {
		return
	}
	b.lastGrow = now
	step := growShare * max(b.ceiling, b.rate)
	b.setRateLocked(now, min(b.limit, b.rate+step*dt))
}

func (b *budget) setRateLocked(now time.Time, r float64) {
	b.rate = r
	b.lim.SetLimitAt(now, rate.Limit(r))
	b.lim.SetBurstAt(now, burst(r))
}

// throttled is told that a request sent at sentAt was answered 429 at now,
// with Retry-After d (0 if none). It reports whether the budget was cut.
func (b *budget) throttled(sentAt, now time.Time, retryAfter time.Duration) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if retryAfter > 0 {
		if until := now.Add(min(retryAfter, maxPause)); until.After(b.pauseUntil) {
			b.pauseUntil = until
		}
	}
	if !b.lastCut.IsZero() && (sentAt.Before(b.lastCut) || now.Sub(b.lastCut) < cutInterval) {
		return false
	}
	b.growLocked(now)
	used := min(b.rate, b.sent.perSecond(now))
	next := max(cutFactor*used, maxCut*b.rate, min(minRate, b.limit))
	if math.IsInf(b.rate, 1) {
		// An unlimited budget that meets a limit starts from what it sent.
		next = max(cutFactor*b.sent.perSecond(now), minRate)
	}
	if next >= b.rate {
		// Already at the floor: nothing left to cut, but the clock restarts.
		b.lastCut = now
		return false
	}
	b.ceiling = min(b.rate, max(used, next))
	b.lastCut, b.lastGrow = now, now
	b.cuts++
	b.setRateLocked(now, next)
	return true
}

// setLimit changes the configured limit (an instance's share of it): the
// rate in force drops to it at once, and climbs to a higher one
// additively, as after a cut.
func (b *budget) setLimit(limit float64, now time.Time) {
	if limit <= 0 || math.IsInf(b.limit, 1) {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.limit = limit
	b.ceiling = min(b.ceiling, limit)
	if b.rate > limit {
		b.setRateLocked(now, limit)
	}
}

// current is the rate in force now.
func (b *budget) current(now time.Time) float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.growLocked(now)
	return b.rate
}

// BudgetState is a budget as it stands, for status and tests.
type BudgetState struct {
	Limit float64 `json:"limit"` // configured; 0 = unlimited
	Rate  float64 `json:"rate"`  // in force now
	Cuts  int64   `json:"cuts"`  // times a 429 cut it
}

func (b *budget) state(now time.Time) BudgetState {
	r := b.current(now)
	b.mu.Lock()
	defer b.mu.Unlock()
	s := BudgetState{Limit: b.limit, Rate: r, Cuts: b.cuts}
	if math.IsInf(s.Limit, 1) {
		s.Limit, s.Rate = 0, 0
	}
	return s
}

// sendWindow counts sends over the last second in ten 100 ms buckets.
type sendWindow struct {
	counts [10]int
	slots  [10]int64 // the 100 ms slot each bucket counts
}

func (w *sendWindow) add(t time.Time) {
	slot := t.UnixMilli() / 100
	i := slot % 10
	if w.slots[i] != slot {
		w.slots[i], w.counts[i] = slot, 0
	}
	w.counts[i]++
}

func (w *sendWindow) perSecond(now time.Time) float64 {
	slot := now.UnixMilli() / 100
	n := 0
	for i := range w.counts {
		if slot-w.slots[i] < 10 {
			n += w.counts[i]
		}
	}
	return float64(n)
}
