package fulfill

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// SessionLister is a SessionSource that can also list complete sessions
// created in a range with their line items, up to a hundred a request (the
// Stripe client). With it the queue reads due sessions in batches instead
// of one retrieve each.
type SessionLister interface {
	ListCompleteSessions(ctx context.Context, gte, lte time.Time, startingAfter string) (stripeapi.CompleteSessionPage, error)
}

// Batching. A queued attempt that misses the cache plans one list: the due
// sessions whose created times lie nearest its own, up to a page of them,
// give the created range. Every paid session the list returns is kept for
// batchFresh, so the attempts for the others (and for sessions queued a
// moment later, as a backfill's listing goes on) find it there. A session
// the list does not return — not listed yet, its created time unknown or
// wrong — is retrieved on its own, as before.
const (
	batchFresh     = time.Minute
	batchGroup     = 100  // sessions one load aims to cover: one page
	batchLookahead = 2000 // due sessions read to plan a load
	batchCacheMax  = 10000
)

// batcher is the queue's cache of listed sessions and its loads in flight.
type batcher struct {
	mu    sync.Mutex
	cache map[string]cachedSession
	loads []*batchLoad

	// Lists, Hits and Misses count list requests, attempts served from a
	// list and queued attempts that retrieved on their own.
	lists, hits, misses atomic.Int64
}

// cachedSession is a listed session; s is nil once taken.
type cachedSession struct {
	s  *stripeapi.Session
	at time.Time
}

// batchLoad is a list in flight over [lo, hi]; done closes when it ends.
type batchLoad struct {
	lo, hi time.Time
	done   chan struct{}
}

func (l *batchLoad) covers(t time.Time) bool { return !t.Before(l.lo) && !t.After(l.hi) }

// BatchStats counts how the queue read its sessions: list requests, attempts
// served by them, and attempts that retrieved on their own.
type BatchStats struct {
	Lists, Served, Retrieved int64
}

// BatchStats reports how the queue has read sessions so far.
func (f *Fulfiller) BatchStats() BatchStats {
	return BatchStats{Lists: f.batch.lists.Load(), Served: f.batch.hits.Load(), Retrieved: f.batch.misses.Load()}
}

// take hands out a fresh listed session once: an attempt that fails and
// comes back later reads Stripe again. The entry stays, emptied, until it
// is stale, so plans do not list its range again for it. known reports a
// fresh entry, with or without a session: one without was listed (unpaid)
// or looked for in a list and not returned, and is retrieved on its own.
func (b *batcher) take(id string, now time.Time) (s *stripeapi.Session, known bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, ok := b.cache[id]
	if !ok || now.Sub(c.at) > batchFresh {
		return nil, false
	}
	b.cache[id] = cachedSession{at: c.at}
	return c.s, true
}

// keep caches the sessions of a listed page, and marks the ids it was
// listed for but did not return. Only paid sessions are kept whole: an
// unpaid one's payment may land any moment, and only a fresh read decides.
func (b *batcher) keep(ss []*stripeapi.Session, wanted []string, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cache == nil {
		b.cache = map[string]cachedSession{}
	}
	if len(b.cache)+len(ss)+len(wanted) > batchCacheMax {
		for id, c := range b.cache {
			if now.Sub(c.at) > batchFresh {
				delete(b.cache, id)
			}
		}
	}
	for _, s := range ss {
		if len(b.cache) >= batchCacheMax {
			return
		}
		c := cachedSession{at: now}
		if s.PaymentStatus == "paid" || s.PaymentStatus == "no_payment_required" {
			c.s = s
		}
		b.cache[s.ID] = c
	}
	for _, id := range wanted {
		if _, ok := b.cache[id]; !ok && len(b.cache) < batchCacheMax {
			b.cache[id] = cachedSession{at: now}
		}
	}
}

// batched is the session rec names from a list, or nil when it must be
// retrieved on its own. The caller holds a fetch slot.
func (f *Fulfiller) batched(ctx context.Context, rec Record) *stripeapi.Session {
	lister, ok := f.Sessions.(SessionLister)
	if !ok || rec.SessionCreated.IsZero() {
		return nil
	}
	b := &f.batch
	s, known := b.take(rec.SessionID, f.now())
	// A load waited for may have ended before reaching this session (its
	// range held more than its pages): plan again, a few times at most.
	for try := 0; !known && try < 3 && ctx.Err() == nil; try++ {
		f.load(ctx, lister, rec.SessionID, rec.SessionCreated)
		s, known = b.take(rec.SessionID, f.now())
	}
	if s == nil {
		b.misses.Add(1)
		return nil
	}
	b.hits.Add(1)
	return s
}

// load lists the sessions around created: it waits for a load in flight
// that covers it, or plans and runs one. Errors are not returned: the
// caller retrieves, and that retrieve reports what is wrong.
func (f *Fulfiller) load(ctx context.Context, lister SessionLister, id string, created time.Time) {
	b := &f.batch
	var group []string
	wait, l, n := b.start(func(loads []*batchLoad) (lo, hi time.Time, n int) {
		lo, hi, group = f.plan(id, created, loads)
		return lo, hi, len(group)
	}, created)
	switch {
	case wait != nil:
		select {
		case <-wait.done:
		case <-ctx.Done():
		}
		return
	case l == nil:
		return
	}
	defer func() {
		b.mu.Lock()
		b.loads = slices.DeleteFunc(b.loads, func(x *batchLoad) bool { return x == l })
		b.mu.Unlock()
		close(l.done)
	}()
	// The range was planned to hold about n sessions; sessions the queue
	// does not want (fulfilled, not paid) may share it, so a page more is
	// allowed, no more: what is still missing is retrieved.
	pages := (n+batchGroup-1)/batchGroup + 1
	after := ""
	var listed []*stripeapi.Session
	complete := false
	defer func() {
		// What the list did not return is marked, so it is retrieved
		// at once rather than listed for again.
		seen := map[string]bool{}
		for _, s := range listed {
			seen[s.ID] = true
		}
		group = slices.DeleteFunc(group, func(id string) bool { return seen[id] })
		if complete {
			b.keep(nil, group, f.now())
		}
	}()
	for range pages {
		b.lists.Add(1)
		page, err := lister.ListCompleteSessions(ctx, l.lo, l.hi, after)
		if err != nil {
			f.logger().Debug("could not list sessions in a batch; retrieving them one by one", "err", err)
			return
		}
		b.keep(page.Sessions, nil, f.now())
		listed = append(listed, page.Sessions...)
		if !page.HasMore || page.Last == "" {
			complete = true
			return
		}
		after = page.Last
	}
}

// start finds a load in flight that covers created (wait for it), or
// plans one and registers it (run it); neither when a list would not pay.
func (b *batcher) start(plan func([]*batchLoad) (lo, hi time.Time, n int), created time.Time) (wait, run *batchLoad, n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range b.loads {
		if l.covers(created) {
			return l, nil, 0
		}
	}
	lo, hi, n := plan(b.loads)
	if n < 2 {
		// A list for one session costs what a retrieve does.
		return nil, nil, 0
	}
	l := &batchLoad{lo: lo, hi: hi, done: make(chan struct{})}
	b.loads = append(b.loads, l)
	return nil, l, n
}

// plan picks the created range of the next load: the due sessions with
// known created times, not cached and not covered by a load in flight,
// sorted by created; the batchGroup of them nearest created. group is what
// it covers. The caller holds b.mu.
func (f *Fulfiller) plan(self string, created time.Time, loads []*batchLoad) (lo, hi time.Time, group []string) {
	type due struct {
		id string
		at time.Time
	}
	all := []due{{self, created}}
	_ = f.DB.View(func(tx Tx) error {
		ids, err := tx.Due(SessionQueue, f.now(), batchLookahead, nil)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if c, cached := f.batch.cache[id]; cached && f.now().Sub(c.at) <= batchFresh || id == self {
				continue
			}
			rec, ok, err := Get(tx, id)
			if err != nil || !ok || rec.SessionCreated.IsZero() {
				continue
			}
			if slices.ContainsFunc(loads, func(l *batchLoad) bool { return l.covers(rec.SessionCreated) }) {
				continue
			}
			all = append(all, due{id, rec.SessionCreated})
		}
		return nil
	})
	slices.SortFunc(all, func(a, b due) int { return a.at.Compare(b.at) })
	i := slices.IndexFunc(all, func(d due) bool { return d.id == self })
	start := max(0, i-batchGroup/2)
	end := min(len(all), start+batchGroup)
	start = max(0, end-batchGroup)
	for _, d := range all[start:end] {
		group = append(group, d.id)
	}
	return all[start].at, all[end-1].at, group
}
