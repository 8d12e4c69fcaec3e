package fulfill

import (
	"cmp"
	"context"
	"math"
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

// Batching. A queued attempt that misses the cache looks at every due
// session with a known created time that no fresh list covered or is
// covering: sorted by created, the run of them around its own, cut where a
// listed range lies in between, gives the next list's created range. It
// lists at once when the run fills a page (batchGroup); otherwise it waits
// for the page to fill — in a backfill the poller queues a page of events
// every few tens of milliseconds — and lists what there is once no session
// joined the queue for batchSettle, or after batchLinger at the most. So a
// backfill reads full pages of a hundred, and each created range is listed
// once.
//
// Every paid session a list returns is kept for batchFresh (sessions the
// events have not queued yet among them: a backfill queues them moments
// later), and a fully listed range is remembered as long: a session queued
// in it that the list did not return — not listed yet, its created time
// unknown or wrong — is retrieved on its own, as is one whose run stays
// alone. What reaches the action is always what Stripe answered a moment
// ago, never an event's snapshot.
const (
	batchFresh     = time.Minute
	batchGroup     = 100  // sessions one load aims to cover: one page
	batchLookahead = 5000 // due sessions read to plan a load
	batchCacheMax  = 10000
	batchSettle    = 150 * time.Millisecond
	// batchRunSettle: a run that no session joined for this long is
	// listed even while the queue grows elsewhere. In a backfill each
	// slice the poller lists adds to a run of its own, a page of events
	// every few tenths of a second; a run that stopped growing is most
	// likely a slice's last, and waiting for the whole poll to end left
	// its sessions to be listed and run after it (about half a second at
	// the end of the benchmark's backfill). Listed wider below (see
	// startLoad), it also holds what a slow slice queues next.
	batchRunSettle = 500 * time.Millisecond
	batchLinger    = 5 * time.Second
	// batchTries bounds the loads one attempt runs, batchWaits those it
	// waits for, before it retrieves its session on its own.
	batchTries = 3
	batchWaits = 10
)

// batcher is the queue's cache of listed sessions and its loads in flight.
type batcher struct {
	mu     sync.Mutex
	cache  map[string]cachedSession
	loads  []*batchLoad
	listed []listedRange
	// due is what plans learnt of the due sessions: their created times,
	// read once. grew is when a plan last found one it did not know (the
	// queue still growing); changed is closed and replaced when a load
	// starts or ends, so attempts waiting for their page look again.
	// joined is when plans first found each due session (real time).
	due     map[string]time.Time
	grew    time.Time
	joined  map[string]time.Time
	changed chan struct{}
	// failedAt is when a load last failed or ended without listing its
	// run (real time).
	failedAt time.Time
	// waiting counts the attempts in batched per session: the sessions
	// someone is waiting for now, as opposed to all that are due.
	waiting map[string]int
	// settle and linger replace batchSettle and batchLinger when set.
	settle, linger time.Duration
	// rank is each due session's place in the queue, as plans read it.
	rank map[string]int
	// taken counts the sessions attempts took from lists, decaying with
	// time constant batchFresh (at takenAt): at a steady pace, about how
	// many the queue takes in batchFresh.
	taken   float64
	takenAt time.Time
	// settledAt is when a poll last said it listed all it will (Settle).
	settledAt time.Time
	// pagedAt is when the poller last committed a page (Listing): time
	// since batchEpoch on the monotonic clock, plus one; 0 after Settle.
	// Atomic, so that the poller never waits for a plan.
	pagedAt atomic.Int64
	// ending holds the poller's word that a slice is near its end (Ending),
	// until a run there is listed or batchEndFresh passes; endingMu
	// guards it, so that the poller never waits for a plan.
	endingMu sync.Mutex
	ending   []endingHint
	// aheadLoads are the loads read ahead of the attempts, which no
	// attempt waits for: Run waits for them before it returns, so that
	// none makes a request after it (uncounted in the read budget).
	aheadLoads sync.WaitGroup

	// Lists, Hits and Misses count list requests, attempts served from a
	// list and queued attempts that retrieved on their own; lingering
	// counts the attempts waiting for their page to fill.
	lists, hits, misses atomic.Int64
	lingering           atomic.Int64
}

// maxLingerSlots bounds the places in the queue that attempts waiting for
// their page may take on top of the fetch and action slots.
const maxLingerSlots = 32

// lingerSlots is how many more attempts the queue keeps in progress
// because attempts wait for their page: they make no request and run no
// action, and must not keep sessions whose page was read from their turn.
func (b *batcher) lingerSlots() int { return int(min(b.lingering.Load(), maxLingerSlots)) }

// cachedSession is a listed session; s is nil once taken.
type cachedSession struct {
	s  *stripeapi.Session
	at time.Time
}

// batchLoad is a list in flight over [lo, hi], planned for sessions
// created in [own, hi]; done closes when it ends.
type batchLoad struct {
	lo, hi, own time.Time
	done        chan struct{}
}

func (l *batchLoad) covers(t time.Time) bool { return !t.Before(l.lo) && !t.After(l.hi) }

// listedRange is a created range listed completely at a time.
type listedRange struct {
	lo, hi, at time.Time
}

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
	if c.s != nil {
		b.taken = b.pace(now) + 1
		b.takenAt = now
	}
	return c.s, true
}

// pace is taken as of now. The caller holds b.mu.
func (b *batcher) pace(now time.Time) float64 {
	if b.takenAt.IsZero() {
		return 0
	}
	return b.taken * math.Exp(-max(now.Sub(b.takenAt), 0).Seconds()/batchFresh.Seconds())
}

// Settle tells the queue that the stream is listed up to now (a poll
// reached its horizon): the due sessions will not grow in number until
// something else queues more, so the runs that wait for their page to
// fill are listed at once, rather than after batchSettle of quiet.
func (f *Fulfiller) Settle() {
	b := &f.batch
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pagedAt.Store(0)
	b.grew, b.settledAt = time.Time{}, f.now()
	b.signal()
}

// Listing tells the queue that a poll committed a page and is listing on:
// the due sessions may grow yet, though none joined for a while. A pause
// in what the pages queue (pages with no paid session, a slow commit) is
// not taken for the end of the stream, which listed every run as it stood
// — partial pages, each a list — and left their slices' remainders to
// lists of a few sessions at the end (28 lists where 24 do, in the
// benchmark's backfill). It does not wait for the queue's plans.
func (f *Fulfiller) Listing() { f.batch.pagedAt.Store(int64(time.Since(batchEpoch)) + 1) }

// batchEpoch anchors pagedAt on the monotonic clock: a host clock that
// steps back must not keep the queue growing.
var batchEpoch = time.Now()

// quiet is how long the queue has not grown: since a plan last found a due
// session it did not know, or the poller last committed a page, whichever
// is later. The caller holds b.mu.
func (b *batcher) quiet() time.Duration {
	q := time.Since(b.grew)
	if at := b.pagedAt.Load(); at != 0 {
		q = min(q, time.Since(batchEpoch)-time.Duration(at-1))
	}
	return q
}

// Ending tells the queue that a slice the poller lists has a page or two
// left, of events created in [from, to) and listed down to reached: the
// run of sessions the slice queued so far will grow by those pages at
// most. Waiting for it to stop growing (batchRunSettle) or for the whole
// poll to end (Settle) left each slice's last run to be listed after its
// last page, a request's latency after the poll. Listed now, wider below
// (see startLoad), the list is in flight beside the last pages and holds
// what they queue. It does not wait for the queue's plans.
func (f *Fulfiller) Ending(from, reached, to time.Time) {
	b := &f.batch
	b.endingMu.Lock()
	b.ending = slices.DeleteFunc(b.ending, func(h endingHint) bool { return time.Since(h.at) > batchEndFresh })
	hi := reached.Add(batchEndSlack)
	if !hi.Before(to) {
		// The slice ends before to: sessions created from then on
		// complete in later slices' events.
		hi = to.Add(-time.Nanosecond)
	}
	if len(b.ending) < maxEndingHints {
		b.ending = append(b.ending, endingHint{lo: from.Add(-batchEndSlack), hi: hi, at: time.Now()})
	}
	b.endingMu.Unlock()
	go func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.signal()
	}()
}

// endingHint is where a slice near its end queues its last sessions,
// created in [lo, hi], told at a real time.
type endingHint struct {
	lo, hi, at time.Time
}

const (
	// batchEndSlack: a session is created before the event that
	// completes it, most often minutes before; a run within this below a
	// slice's rest is that slice's.
	batchEndSlack = 10 * time.Minute
	// batchEndFresh: a hint no run used within this is dropped (the
	// slice had no run left to list, or its last page came already).
	batchEndFresh = time.Second
	// maxEndingHints bounds the hints kept: as many slices as the poller
	// lists at once, and then some.
	maxEndingHints = 32
)

// ends reports whether run lies where a slice is near its end, and uses
// that hint up: one early list for each, so that a slice whose end was
// misjudged does not list each page's few sessions on their own. The
// caller holds b.mu, after a plan.
func (b *batcher) ends(run []string) bool {
	b.endingMu.Lock()
	defer b.endingMu.Unlock()
	b.ending = slices.DeleteFunc(b.ending, func(h endingHint) bool { return time.Since(h.at) > batchEndFresh })
	for i, h := range b.ending {
		if slices.ContainsFunc(run, func(id string) bool {
			at := b.due[id]
			return !at.Before(h.lo) && !at.After(h.hi)
		}) {
			b.ending = slices.Delete(b.ending, i, i+1)
			return true
		}
	}
	return false
}

// queuedSince reports whether rec was queued after the last Settle: a
// plan that finds it finds the queue still growing. Sessions the settled
// poll queued are found after it, by the attempts it woke. The caller
// holds b.mu.
func (b *batcher) queuedSince(rec Record) bool {
	return b.settledAt.IsZero() || rec.Updated.After(b.settledAt)
}

// keep caches the sessions of a listed page, and marks the ids it was
// listed for but did not return. Only paid sessions are kept whole: an
// unpaid one's payment may land any moment, and only a fresh read decides.
func (b *batcher) keep(ss []*stripeapi.Session, wanted []string, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.keepLocked(ss, wanted, now)
}

func (b *batcher) keepLocked(ss []*stripeapi.Session, wanted []string, now time.Time) {
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
// retrieved on its own. It takes no fetch slot: an attempt served from the
// cache or waiting for its page makes no request, and lists, a hundred
// sessions each, are few; the Stripe client paces them with the rest.
func (f *Fulfiller) batched(ctx context.Context, rec Record) *stripeapi.Session {
	lister, ok := f.Sessions.(SessionLister)
	if !ok || rec.SessionCreated.IsZero() {
		return nil
	}
	b := &f.batch
	b.wait(rec.SessionID, 1)
	defer b.wait(rec.SessionID, -1)
	since := time.Now() // real time: how long this attempt waited for its page
	for tries, waits := 0, 0; ctx.Err() == nil; {
		if s, known := b.take(rec.SessionID, f.now()); known {
			if s == nil {
				break
			}
			b.hits.Add(1)
			return s
		}
		if tries >= batchTries {
			break
		}
		step := f.nextStep(rec, time.Since(since))
		switch {
		case step.wait != nil:
			// A load planned for other sessions that covers this one's
			// created time ends listed, or short of it (then the range
			// left is planned again): not a try of this attempt's, but
			// bounded all the same, against a list that keeps failing.
			if waits++; waits > batchWaits {
				tries = batchTries
			}
			select {
			case <-step.wait.done:
			case <-ctx.Done():
			}
		case step.run != nil:
			tries++
			var wg sync.WaitGroup
			for _, r := range step.more {
				if !r.ahead {
					wg.Go(func() { f.load(ctx, lister, r.l, r.group) })
					continue
				}
				// Read ahead for attempts to come: this one does not
				// wait for it.
				b.aheadLoads.Go(func() { f.load(ctx, lister, r.l, r.group) })
			}
			f.load(ctx, lister, step.run, step.group)
			wg.Wait()
		case step.linger > 0:
			for _, r := range step.more {
				b.aheadLoads.Go(func() { f.load(ctx, lister, r.l, r.group) })
			}
			b.lingering.Add(1)
			t := time.NewTimer(step.linger)
			select {
			case <-t.C:
			case <-step.changed:
			case <-ctx.Done():
			}
			t.Stop()
			b.lingering.Add(-1)
		default:
			b.misses.Add(1)
			return nil
		}
	}
	b.misses.Add(1)
	return nil
}

// wait counts an attempt for id in or out of batched.
func (b *batcher) wait(id string, d int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.waiting == nil {
		b.waiting = map[string]int{}
	}
	if b.waiting[id] += d; b.waiting[id] <= 0 {
		delete(b.waiting, id)
	}
}

// batchStep is what an attempt that missed the cache does next: wait for a
// load in flight that covers its session, run a load it planned, linger
// until its page fills or the queue settles (or changed closes), or else
// retrieve the session on its own.
type batchStep struct {
	wait    *batchLoad
	run     *batchLoad
	group   []string
	more    []batchRun // other loads to run beside run
	linger  time.Duration
	changed <-chan struct{}
}

// batchRun is a load planned and the due sessions it is for.
type batchRun struct {
	l     *batchLoad
	group []string
	ahead bool // no attempt waits for it yet
}

// startLoad registers a load for group, sorted by created, at now. The
// caller holds b.mu.
//
// While the queue grows (widen), a run shorter than a page is listed over a
// wider range than its own:
// down to where the run's own density of sessions would fill the page.
// Lists run newest first, so the run's sessions come first in that page
// whatever the range below holds, and the load stops once it has reached
// past them (see load). What else the page returns is kept like any listed
// session. In a backfill that is what the poller queues next: a slice
// lists its events newest first, so the sessions its next pages queue are
// older than those it queued so far, and a last run listed while its slice
// still had a page to go was followed by a list of a few sessions just
// below it (0.4–0.6 s at the end of a backfill's benchmark, a request's
// latency and the queue's turn). Once the queue stopped growing nothing
// more is coming, and a wider list would only bring sessions fulfilled
// long ago (and their line items beyond the first ten, a request each).
// The range stops short of anything
// another load covers, a fresh list covered, or a due session outside the
// run (which has a run of its own), and of an hour below the run.
func (b *batcher) startLoad(group []string, now time.Time, widen bool) *batchLoad {
	lo, hi := b.due[group[0]], b.due[group[len(group)-1]]
	l := &batchLoad{lo: lo, hi: hi, own: lo, done: make(chan struct{})}
	if n := len(group); widen && n < batchGroup {
		reach := min(hi.Sub(lo)*time.Duration(batchGroup-n)/time.Duration(n), maxWiden)
		floor := lo.Add(-reach)
		in := make(map[string]bool, n)
		for _, id := range group {
			in[id] = true
		}
		for id, at := range b.due {
			if in[id] || at.IsZero() || !at.Before(lo) || at.Before(floor) {
				continue
			}
			if c, cached := b.cache[id]; cached && now.Sub(c.at) <= batchFresh {
				continue // listed already: it plans no run
			}
			floor = at.Add(time.Second)
		}
		for _, x := range b.loads {
			if x.hi.Before(lo) && !x.hi.Before(floor) {
				floor = x.hi.Add(time.Second)
			}
		}
		for _, r := range b.listed {
			if r.hi.Before(lo) && !r.hi.Before(floor) {
				floor = r.hi.Add(time.Second)
			}
		}
		if floor.Before(lo) {
			l.lo = floor
		}
	}
	b.loads = append(b.loads, l)
	return l
}

// maxWiden bounds how far below its own sessions a short run is listed.
const maxWiden = time.Hour

// runs cuts the due sessions that no load covers and no list returned yet
// into runs of up to batchGroup, sorted by created and never spanning a
// covered range. Runs of one are left to their attempts. Runs that an
// attempt waits for come first; then, ahead of the attempts, the others in
// queue order while every session of the run is among the next ones the
// queue's pace (sessions taken from lists in the last batchFresh, less
// those listed and not taken yet) will take before their lists go stale:
// a backlog the actions drain slower than that would otherwise be listed
// whole again every batchFresh, more requests than a retrieve each. The
// caller holds b.mu, after a plan.
func (b *batcher) runs(now time.Time) []plannedRun {
	type due struct {
		id string
		at time.Time
	}
	var all []due
	for id, at := range b.due {
		if at.IsZero() || b.covered(at) {
			continue
		}
		if c, cached := b.cache[id]; cached && now.Sub(c.at) <= batchFresh {
			continue
		}
		all = append(all, due{id, at})
	}
	slices.SortFunc(all, func(a, b due) int { return a.at.Compare(b.at) })
	wide := wideGaps(len(all), func(i int) time.Time { return all[i].at })
	// Runs end where a listed range or a wide gap lies between, and are cut
	// into hundreds from the end that was queued first, so that the
	// remainder is where the run still grows: a backfill's slices are
	// listed newest first and grow at the old end (cut from the oldest
	// up, their newest few were a run that stopped growing at once and
	// was listed alone, ten sessions a list); a backlog queued oldest
	// first grows at the new end.
	var cut [][]string
	var seg []string
	for i, d := range all {
		if len(seg) > 0 && (b.coveredBetween(all[i-1].at, d.at) || wide[i-1]) {
			cut = append(cut, b.hundreds(seg)...)
			seg = nil
		}
		seg = append(seg, d.id)
	}
	cut = append(cut, b.hundreds(seg)...)
	var out, ahead []plannedRun
	for _, r := range cut {
		switch {
		case len(r) < 2:
		case slices.ContainsFunc(r, func(id string) bool { return b.waiting[id] > 0 }):
			out = append(out, plannedRun{ids: r})
		default:
			last := 0
			for _, id := range r {
				k, ok := b.rank[id]
				if !ok {
					last = math.MaxInt
					break
				}
				last = max(last, k)
			}
			ahead = append(ahead, plannedRun{ids: r, ahead: true, last: last})
		}
	}
	if len(ahead) == 0 {
		return out
	}
	pending := 0
	for _, c := range b.cache {
		if c.s != nil && now.Sub(c.at) <= batchFresh {
			pending++
		}
	}
	reach := int(b.pace(now)) - pending
	slices.SortFunc(ahead, func(x, y plannedRun) int { return cmp.Compare(x.last, y.last) })
	for _, r := range ahead {
		if r.last >= reach {
			break
		}
		out = append(out, r)
	}
	return out
}

// hundreds cuts a run of due sessions, sorted by created, into pieces of
// up to batchGroup from the end queued first (the newest when it was
// queued before the oldest). The caller holds b.mu, after a plan.
func (b *batcher) hundreds(run []string) [][]string {
	if len(run) <= batchGroup {
		return [][]string{run}
	}
	first, okf := b.rank[run[0]]
	last, okl := b.rank[run[len(run)-1]]
	var out [][]string
	if okf && okl && last < first {
		for end := len(run); end > 0; end -= batchGroup {
			out = append(out, slices.Clone(run[max(0, end-batchGroup):end]))
		}
		return out
	}
	for start := 0; start < len(run); start += batchGroup {
		out = append(out, slices.Clone(run[start:min(len(run), start+batchGroup)]))
	}
	return out
}

// plannedRun is a run of due sessions to list; ahead when no attempt waits
// for it yet, last the furthest of its sessions' places in the queue.
type plannedRun struct {
	ids   []string
	ahead bool
	last  int
}

// nextStep decides an attempt's next step; waited is how long it has
// waited for its page so far.
func (f *Fulfiller) nextStep(rec Record, waited time.Duration) batchStep {
	id, created := rec.SessionID, rec.SessionCreated
	b := &f.batch
	b.mu.Lock()
	defer b.mu.Unlock()
	now := f.now()
	for _, l := range b.loads {
		if l.covers(created) {
			return batchStep{wait: l}
		}
	}
	if b.listedAt(created, now) {
		// Listed a moment ago and not returned: a list would miss it again.
		b.keepLocked(nil, []string{id}, now)
		return batchStep{}
	}
	run := f.plan(rec, now)
	settle, linger := b.settle, b.linger
	if settle <= 0 {
		settle = batchSettle
	}
	if linger <= 0 {
		linger = batchLinger
	}
	quiet, quietFor := b.quiet(), settle
	if b.pagedAt.Load() != 0 {
		// A poll listing on: its answers come a request's latency apart
		// where its slices are in step (at its start, a gap of 150 ms
		// between the first pages and the next listed every run there
		// was, ten sessions each, in the benchmark's backfill), so
		// quiet counts only when it lasts as long as a run's would.
		quietFor = max(settle, batchRunSettle)
	}
	// A session alone in its run gains nothing from pages that come
	// without its neighbours: it waits only for the queue to stop
	// growing, as before the poller told of its pages.
	grown := time.Since(b.grew)
	switch {
	case len(run) >= batchGroup, len(run) >= 2 && (quiet >= quietFor || waited >= linger || b.still(run) >= batchRunSettle || b.ends(run)):
		step := batchStep{run: b.startLoad(run, now, b.growing()), group: run}
		// When the queue stopped growing, what is due will not fill its
		// pages any further, so every run is listed now, side by side,
		// rather than each when an attempt of its own comes to it; while
		// it grows, the runs that stopped growing are.
		step.more = b.moreRuns(now, quiet >= quietFor)
		b.signal()
		return step
	case len(run) < 2 && (grown >= settle || waited >= linger):
		// Alone in its run: a list for one session costs what a retrieve
		// does.
		return batchStep{}
	}
	step := batchStep{more: b.moreRuns(now, false)}
	if len(step.more) > 0 {
		b.signal()
	}
	if b.changed == nil {
		b.changed = make(chan struct{})
	}
	wait := min(settle-grown, linger-waited)
	if len(run) >= 2 {
		wait = min(quietFor-quiet, linger-waited, batchRunSettle-b.still(run))
	}
	step.linger, step.changed = max(wait, time.Millisecond), b.changed
	return step
}

// moreRuns starts the loads of the runs an attempt lists beside its own:
// every run when all is set, else those no session joined for
// batchRunSettle and those where a slice is near its end. The caller holds b.mu, after a plan.
func (b *batcher) moreRuns(now time.Time, all bool) []batchRun {
	if !all && time.Since(b.failedAt) < batchRunSettle {
		// A list that came back short or failed a moment ago: the
		// attempts' own tries, which are bounded, go on; runs are not
		// listed again and again beside them.
		return nil
	}
	var more []batchRun
	for _, g := range b.runs(now) {
		if all || b.still(g.ids) >= batchRunSettle || b.ends(g.ids) {
			more = append(more, batchRun{l: b.startLoad(g.ids, now, !all && b.growing()), group: g.ids, ahead: g.ahead})
		}
	}
	return more
}

// growing reports whether sessions joined the queue within batchSettle:
// only then is a short run listed wider (see startLoad). A poll whose pages
// bring none (a live stream's, a latency apart) has nothing coming below
// the run, and a wider list would bring sessions fulfilled long ago. The
// caller holds b.mu.
func (b *batcher) growing() bool {
	settle := b.settle
	if settle <= 0 {
		settle = batchSettle
	}
	return time.Since(b.grew) < settle
}

// still is how long no session has joined run (real time). The caller
// holds b.mu, after a plan.
func (b *batcher) still(run []string) time.Duration {
	var last time.Time
	for _, id := range run {
		if t := b.joined[id]; t.After(last) {
			last = t
		}
	}
	return time.Since(last)
}

// signal wakes the attempts lingering for their page. The caller holds
// b.mu.
func (b *batcher) signal() {
	if b.changed != nil {
		close(b.changed)
		b.changed = nil
	}
}

// listedAt reports whether a fresh complete list covered created. The
// caller holds b.mu.
func (b *batcher) listedAt(created, now time.Time) bool {
	b.listed = slices.DeleteFunc(b.listed, func(r listedRange) bool { return now.Sub(r.at) > batchFresh })
	return slices.ContainsFunc(b.listed, func(r listedRange) bool { return !created.Before(r.lo) && !created.After(r.hi) })
}

// covered reports whether t lies in a load in flight or a fresh listed
// range. The caller holds b.mu.
func (b *batcher) covered(t time.Time) bool {
	return slices.ContainsFunc(b.loads, func(l *batchLoad) bool { return l.covers(t) }) ||
		slices.ContainsFunc(b.listed, func(r listedRange) bool { return !t.Before(r.lo) && !t.After(r.hi) })
}

// wideGaps marks the gaps between due sessions, sorted by created (at(i)
// for i < n), where a run is cut: wide[i] for the gap after session i, when
// it is more than a hundred times the median of the gaps on either side of
// it (up to sparseNear each, at least two, the larger of the two). Lists return every complete session in their
// range, queued or not, and at the density those gaps show, such a gap
// holds a page of sessions no attempt asked for. At the start of a
// backfill each slice the poller lists queues a cluster at its own end of
// the range, hours apart: one run across them was listed a page or two at
// a time from the newest, and returned the clusters below only on later
// requests. The median is a local one, so that a quiet night between busy
// days, or a burst of sessions created in one second, does not cut runs
// where the sessions are merely sparser.
func wideGaps(n int, at func(int) time.Time) []bool {
	if n < 3 {
		return make([]bool, max(n-1, 0))
	}
	gaps := make([]time.Duration, n-1)
	for i := range gaps {
		gaps[i] = at(i + 1).Sub(at(i))
	}
	wide := make([]bool, len(gaps))
	near := make([]time.Duration, 0, sparseNear)
	median := func(side []time.Duration) time.Duration {
		if len(side) == 0 {
			return 0
		}
		near = append(near[:0], side...)
		slices.Sort(near)
		return near[(len(near)-1)/2]
	}
	for i, g := range gaps {
		// The denser side must not decide alone: where busy hours meet a
		// quiet night, the gap is ordinary for the night. A side of
		// fewer than two gaps says nothing about a density, so the gap
		// is not cut: a few due sessions are one run, as before.
		left, right := gaps[max(0, i-sparseNear):i], gaps[i+1:min(len(gaps), i+1+sparseNear)]
		if len(left) < 2 || len(right) < 2 {
			continue
		}
		m := max(median(left), median(right), time.Second)
		wide[i] = m <= time.Duration(math.MaxInt64)/batchGroup && g > m*batchGroup
	}
	return wide
}

// sparseNear is how many gaps on each side give a gap's local median.
const sparseNear = 8

// coveredBetween reports whether a load in flight or a fresh listed range
// lies between a and b (a before b): a run that spanned it would list that
// range again. The caller holds b.mu.
func (b *batcher) coveredBetween(a, c time.Time) bool {
	in := func(lo, hi time.Time) bool { return lo.After(a) && lo.Before(c) || hi.After(a) && hi.Before(c) }
	return slices.ContainsFunc(b.loads, func(l *batchLoad) bool { return in(l.lo, l.hi) }) ||
		slices.ContainsFunc(b.listed, func(r listedRange) bool { return in(r.lo, r.hi) })
}

// load lists the range of l page by page, keeping every paid session it
// returns, then ends l. Errors are not returned: the attempts retrieve,
// and those retrieves report what is wrong.
func (f *Fulfiller) load(ctx context.Context, lister SessionLister, l *batchLoad, group []string) {
	b := &f.batch
	// The range holds the len(group) sessions it was planned for; sessions
	// the queue does not want yet (fulfilled, not paid, or not queued yet
	// by the events) may share it, so a page more is allowed, no more:
	// what is still missing is planned again, or retrieved.
	pages := (len(group)+batchGroup-1)/batchGroup + 1
	after := ""
	var listed []*stripeapi.Session
	// complete: the whole range listed; ownListed: the list reached past
	// the sessions it was planned for (a wider range's first page), so
	// all of [own, hi] is listed.
	complete, ownListed := false, false
	unreadable := 0
	var reached time.Time // the oldest created time listed so far
	// A range counts as listed from when its listing began, so it goes
	// stale no later than the sessions listed in it: one whose cached copy
	// went stale while its range still counted as listed would be
	// retrieved on its own, although the list returned it.
	began := f.now()
	defer func() {
		now := f.now()
		b.mu.Lock()
		defer b.mu.Unlock()
		b.loads = slices.DeleteFunc(b.loads, func(x *batchLoad) bool { return x == l })
		switch {
		case complete, ownListed:
			if complete {
				b.listed = append(b.listed, listedRange{lo: l.lo, hi: l.hi, at: began})
			} else {
				b.listed = append(b.listed, listedRange{lo: reached.Add(time.Second), hi: l.hi, at: began})
			}
			// What the list did not return is marked, so it is retrieved
			// at once rather than listed for again.
			seen := make(map[string]bool, len(listed))
			for _, s := range listed {
				seen[s.ID] = true
			}
			b.keepLocked(nil, slices.DeleteFunc(group, func(id string) bool { return seen[id] }), now)
		case !reached.IsZero() && reached.After(l.lo):
			// Lists run newest first: the seconds after the oldest one
			// reached are listed completely.
			b.listed = append(b.listed, listedRange{lo: reached.Add(time.Second), hi: l.hi, at: began})
			b.failedAt = time.Now()
		default:
			b.failedAt = time.Now()
		}
		close(l.done)
		b.signal()
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
		for _, s := range page.Sessions {
			if reached.IsZero() || s.Created.Before(reached) {
				reached = s.Created
			}
		}
		unreadable += page.Unreadable
		if !page.HasMore || page.Last == "" {
			complete = unreadable == 0
			return
		}
		if !reached.IsZero() && reached.Before(l.own) {
			// Newest first: everything created from own on came before.
			ownListed = unreadable == 0
			return
		}
		after = page.Last
	}
}

// plan returns the run of due sessions around id for the next load, sorted
// by created: due sessions with a known created time, not cached and not
// covered by a load in flight or a fresh listed range, at most batchGroup
// of them, never spanning a covered range. The caller holds b.mu.
func (f *Fulfiller) plan(rec Record, now time.Time) []string {
	self, created := rec.SessionID, rec.SessionCreated
	b := &f.batch
	type due struct {
		id string
		at time.Time
	}
	known, joined := b.due, b.joined
	if _, ok := known[self]; !ok && b.queuedSince(rec) {
		b.grew = time.Now()
	}
	b.joined = make(map[string]time.Time, len(joined))
	seen := func(id string) {
		if t, ok := joined[id]; ok {
			b.joined[id] = t
		} else {
			b.joined[id] = time.Now()
		}
	}
	seen(self)
	b.due = map[string]time.Time{self: created}
	b.rank = map[string]int{} // self's is its place among the due, when it is there
	all := []due{{self, created}}
	_ = f.DB.View(func(tx Tx) error {
		ids, err := tx.Due(SessionQueue, now, batchLookahead, nil)
		if err != nil {
			return err
		}
		for i, id := range ids {
			b.rank[id] = i
			if id == self {
				continue
			}
			at, ok := known[id]
			if !ok {
				rec, found, err := Get(tx, id)
				if err != nil || !found {
					continue
				}
				at = rec.SessionCreated
				if b.queuedSince(rec) {
					b.grew = time.Now()
				}
			}
			b.due[id] = at
			seen(id)
			if at.IsZero() {
				continue
			}
			if c, cached := b.cache[id]; cached && now.Sub(c.at) <= batchFresh || b.covered(at) {
				continue
			}
			all = append(all, due{id, at})
		}
		return nil
	})
	slices.SortFunc(all, func(a, b due) int { return a.at.Compare(b.at) })
	i := slices.IndexFunc(all, func(d due) bool { return d.id == self })
	// The run: neighbours not separated from self by a covered range.
	lo, hi := i, i+1
	wide := wideGaps(len(all), func(i int) time.Time { return all[i].at })
	for lo > 0 && !b.coveredBetween(all[lo-1].at, all[lo].at) && !wide[lo-1] {
		lo--
	}
	for hi < len(all) && !b.coveredBetween(all[hi-1].at, all[hi].at) && !wide[hi-1] {
		hi++
	}
	// A window of up to batchGroup sessions that holds self: one at an end
	// of the run when self is near it, so what stays is one piece rather
	// than a few sessions on either side; else, of those that hold self,
	// the one with the narrowest created range. A range also holds
	// sessions not queued (yet), and the narrowest holds the fewest of
	// them, so its load fills the fewest pages. In a backfill the queue
	// grows in one place per slice the poller lists, and this keeps a
	// list within one.
	n := min(hi-lo, batchGroup)
	var start int
	switch {
	case i >= hi-n:
		start = hi - n
	case i < lo+n:
		start = lo
	default:
		start = i - n + 1
		for s := start + 1; s <= i && s+n <= hi; s++ {
			if all[s+n-1].at.Sub(all[s].at) < all[start+n-1].at.Sub(all[start].at) {
				start = s
			}
		}
	}
	end := start + n
	group := make([]string, 0, end-start)
	for _, d := range all[start:end] {
		group = append(group, d.id)
	}
	return group
}
