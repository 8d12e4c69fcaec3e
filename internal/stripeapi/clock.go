package stripeapi

import (
	"sync"
	"time"
)

// dateNoise is how far a Date header may lag the clock estimate without
// meaning anything: Date has a resolution of one second and is truncated,
// and the answer spent some time on the wire.
const dateNoise = 2 * time.Second

// Clock is Stripe's clock as learned from its answers: the Date header of
// every response and the created stamps of the objects listed. What the
// event stream covers is decided on this clock, so a host clock that is
// minutes off, or jumps, does not make fulfilld list the wrong times.
//
// It keeps one anchor: Stripe's time from an answer and the host's reading
// when it arrived. Now is the anchor moved on by the host time elapsed
// since. With the real host clock both readings carry Go's monotonic clock,
// so a jump of the host's wall clock does not move Now at all. Safe for
// concurrent use.
type Clock struct {
	// Host is the host's clock (default time.Now).
	Host func() time.Time

	mu       sync.Mutex
	synced   bool
	stripeAt time.Time // Stripe's time at the anchor
	hostAt   time.Time // the host's reading then, monotonic part kept
}

func (c *Clock) host() time.Time {
	if c.Host != nil {
		return c.Host()
	}
	return time.Now()
}

// Now is Stripe's time; the host's until an answer was observed.
func (c *Clock) Now() time.Time {
	h := c.host()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nowAt(h)
}

// nowAt is Stripe's time at host reading h; c.mu held.
func (c *Clock) nowAt(h time.Time) time.Time {
	if !c.synced {
		return h
	}
	return c.stripeAt.Add(h.Sub(c.hostAt))
}

// Synced reports whether Stripe's clock was observed yet.
func (c *Clock) Synced() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.synced
}

// ObserveDate takes the Date of an answer that arrived just now. A Date
// behind the estimate by less than the noise of its one-second resolution
// keeps the anchor (the estimate is the tighter lower bound); one ahead of
// it, or well behind it, replaces it.
func (c *Clock) ObserveDate(date time.Time) {
	h := c.host()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.synced {
		if est := c.nowAt(h); !date.After(est) && est.Sub(date) <= dateNoise {
			return
		}
	}
	c.stripeAt, c.hostAt, c.synced = date, h, true
}

// maxCreatedLead is how far ahead of the estimate a created stamp may be
// and still be believed. The estimate rests on Dates, which a stamp can
// pass only by the second of truncation and the time on the wire; one far
// ahead is a broken object, not Stripe's time.
const maxCreatedLead = time.Minute

// ObserveCreated takes the created stamp of an object Stripe just showed:
// Stripe's clock has reached it, so an estimate behind it moves up to it.
// It never moves the estimate back, and alone it does not sync the clock
// (a stamp is only a lower bound, often an old one).
func (c *Clock) ObserveCreated(created time.Time) {
	h := c.host()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.synced {
		return
	}
	if lead := created.Sub(c.nowAt(h)); lead > 0 && lead <= maxCreatedLead {
		c.stripeAt, c.hostAt = created, h
	}
}

// Skew is Stripe's time minus the host's wall clock; ok is false until
// Stripe's clock was observed.
func (c *Clock) Skew() (skew time.Duration, ok bool) {
	h := c.host()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.synced {
		return 0, false
	}
	return c.nowAt(h).Sub(h.Round(0)), true
}
