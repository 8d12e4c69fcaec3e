package poller_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

// lister wraps the harness's client: it tells the poller how many listings
// to run at once, and lets a test hold, fail and count them.
type lister struct {
	src poller.EventSource
	n   int
	// hook runs before each request is passed on; an error fails it.
	hook func(ctx context.Context, q stripeapi.EventQuery) error

	mu          sync.Mutex
	rescanPages int // re-scan pages listed successfully
	inFlight    int
	maxInFlight int
}

func (l *lister) ListConcurrency() int { return l.n }

func (l *lister) ListEvents(ctx context.Context, q stripeapi.EventQuery) (stripeapi.EventPage, error) {
	l.mu.Lock()
	l.inFlight++
	l.maxInFlight = max(l.maxInFlight, l.inFlight)
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.inFlight--
		l.mu.Unlock()
	}()
	if l.hook != nil {
		if err := l.hook(ctx, q); err != nil {
			return stripeapi.EventPage{}, err
		}
	}
	page, err := l.src.ListEvents(ctx, q)
	if err == nil && isRescan(q) {
		l.mu.Lock()
		l.rescanPages++
		l.mu.Unlock()
	}
	return page, err
}

func (l *lister) stats() (rescanPages, maxInFlight int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rescanPages, l.maxInFlight
}

// isRescan tells the re-scan's requests (a created range with an end) from
// the tip's.
func isRescan(q stripeapi.EventQuery) bool { return !q.CreatedLT.IsZero() }

// wait blocks until ch is closed; a poller that never gets there fails the
// test instead of hanging it.
func wait(ctx context.Context, ch <-chan struct{}, what string) error {
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(10 * time.Second):
		return fmt.Errorf("gave up waiting for %s", what)
	}
}

// together is a hook that holds the first n re-scan requests until all n
// have arrived: a poller gets past them only with n slices in flight at
// once. seen, when not nil, is told of each re-scan request first.
func together(n int, what string, seen func()) func(context.Context, stripeapi.EventQuery) error {
	all := make(chan struct{})
	var mu sync.Mutex
	arrived := 0
	return func(ctx context.Context, q stripeapi.EventQuery) error {
		if !isRescan(q) {
			return nil
		}
		if seen != nil {
			seen()
		}
		mu.Lock()
		arrived++
		if arrived == n {
			close(all)
		}
		first := arrived <= n
		mu.Unlock()
		if first {
			return wait(ctx, all, what)
		}
		return nil
	}
}

// countPages calls reached() once n re-scan pages are committed.
func countPages(n int, reached func()) func(poller.Progress) {
	var mu sync.Mutex
	pages := 0
	return func(pr poller.Progress) {
		if pr.Phase != "rescan" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if pages++; pages == n {
			reached()
		}
	}
}

// fourSlices fills four one-hour slices ending at the horizon (t0 −
// lookback) with the given number of paid sessions each, and returns the
// backfill's start, the session ids and when each was completed. With four
// listings at once and one-hour slices, the re-scan plans exactly these four.
func fourSlices(h *harness, perSlice [4]int) (time.Time, []string, map[string]time.Time) {
	since := t0.Add(-h.poller.Lookback - 4*time.Hour)
	var ids []string
	created := map[string]time.Time{}
	for s, n := range perSlice {
		for i := range n {
			at := since.Add(time.Duration(s)*time.Hour + time.Minute + time.Duration(i)*10*time.Second)
			id := h.paid(at, 1)
			ids = append(ids, id)
			created[id] = at
		}
	}
	h.poller.SliceLen = time.Hour
	return since, ids, created
}

// queued reads which sessions are durably queued or further along.
func queued(t *testing.T, h *harness, ids []string) map[string]bool {
	t.Helper()
	in := map[string]bool{}
	if err := h.db.View(func(tx store.Tx) error {
		for _, id := range ids {
			_, ok, err := fulfill.Get(tx, id)
			if err != nil {
				return err
			}
			in[id] = ok
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return in
}

// checkSettled asserts the promise behind complete_until: every session
// completed before it is durably queued.
func checkSettled(t *testing.T, h *harness, ids []string, created map[string]time.Time) {
	t.Helper()
	pos := h.position()
	in := queued(t, h, ids)
	for _, id := range ids {
		if created[id].Before(pos.Settled) && !in[id] {
			t.Errorf("complete_until %s passed %s (completed %s), which is not queued",
				pos.Settled.Format(time.TimeOnly), id, created[id].Format(time.TimeOnly))
		}
	}
}

// TestParallelBackfillHandlesEachEventOnce: a day's backfill listed with
// eight slices in flight handles every event exactly once and settles at
// the horizon.
func TestParallelBackfillHandlesEachEventOnce(t *testing.T) {
	h := newHarness(t)
	var ids []string
	for i := range 200 { // one every 6 minutes for 20 hours
		ids = append(ids, h.paid(t0.Add(-21*time.Hour+time.Duration(i)*6*time.Minute), 1))
	}
	busy := t0.Add(-5 * time.Hour)
	for i := range 250 { // and a busy hour
		ids = append(ids, h.paid(busy.Add(time.Duration(i)*10*time.Second), 1))
	}
	const n = 8
	l := &lister{src: h.client, n: n, hook: together(n, "eight re-scan listings at once", nil)}
	h.poller.Events = l

	pres, _ := h.pass(t0.Add(-24 * time.Hour))

	for _, id := range ids {
		if runs := len(h.action.calls(id)); runs != 1 {
			t.Errorf("%s: action ran %d times, want once", id, runs)
		}
	}
	if pres.Listed != len(ids) || pres.New != len(ids) {
		t.Errorf("listed %d events (%d new) for %d: slices overlap or miss", pres.Listed, pres.New, len(ids))
	}
	pos := h.position()
	if want := t0.Add(-h.poller.Lookback); !pos.Settled.Equal(want) || pos.Scans != nil || pos.Rescanned != nil || pos.Scan != nil {
		t.Errorf("cursor after a complete pass: %+v, want complete_until %s and nothing in progress", pos, want)
	}
	pages, most := l.stats()
	if most > n {
		t.Errorf("%d listings in flight at once, want at most %d", most, n)
	}
	t.Logf("%d events in %d re-scan pages, at most %d in flight", pres.Listed, pages, most)
}

// TestCutOffBackfillResumesEverySlice: a backfill cut off with several
// slices part-way (one already done) resumes each after its last committed
// page: nothing is listed twice, everything is fulfilled once.
func TestCutOffBackfillResumesEverySlice(t *testing.T) {
	h := newHarness(t)
	since, ids, created := fourSlices(h, [4]int{250, 250, 50, 250}) // 3 + 3 + 1 + 3 pages
	const needed, inFlight = 10, 3
	if _, err := h.poller.Start(context.Background(), since); err != nil {
		t.Fatal(err)
	}
	// Every slice lists up to two pages; once those seven are committed,
	// the process "dies": every later page fails.
	twoPages := make(chan struct{})
	h.poller.Progress = countPages(7, func() { close(twoPages) })
	var mu sync.Mutex
	requests := map[time.Time]int{} // by slice
	cut := &lister{src: h.client, n: 4, hook: func(ctx context.Context, q stripeapi.EventQuery) error {
		if !isRescan(q) {
			return nil
		}
		mu.Lock()
		requests[q.CreatedGTE]++
		third := requests[q.CreatedGTE] > 2
		mu.Unlock()
		if !third {
			return nil
		}
		if err := wait(ctx, twoPages, "two pages of every slice"); err != nil {
			return err
		}
		return errCut
	}}
	h.poller.Events = cut
	if _, err := h.poller.Poll(context.Background(), true); !errors.Is(err, errCut) {
		t.Fatalf("poll: %v, want the cut", err)
	}
	h.poller.Progress = nil

	pos := h.position()
	if !pos.Settled.Equal(since) {
		t.Errorf("complete_until moved to %s with the oldest slice unfinished", pos.Settled)
	}
	if len(pos.Scans) != inFlight || len(pos.Rescanned) != 1 || pos.Scan == nil || !pos.Scan.From.Equal(since) {
		t.Fatalf("position at the cut: %+v, want %d slices in progress and one listed", pos, inFlight)
	}
	for _, s := range pos.Scans {
		if s.Pages != 2 || s.StartingAfter == "" {
			t.Errorf("slice %s: %d pages, after %q: its page position was not kept", s.From.Format(time.TimeOnly), s.Pages, s.StartingAfter)
		}
	}
	checkSettled(t, h, ids, created)

	h.restart()
	rest := &lister{src: h.client, n: 4}
	h.poller.Events = rest
	h.pass(time.Time{})

	before, _ := cut.stats()
	after, _ := rest.stats()
	if total := before + after; total > needed+inFlight {
		t.Errorf("listed %d re-scan pages in all (%d before the cut, %d after), want at most %d + one per slice in flight",
			total, before, after, needed)
	}
	t.Logf("re-scan pages: %d before the cut, %d after, %d needed", before, after, needed)
	for _, id := range ids {
		if runs := len(h.action.calls(id)); runs != 1 {
			t.Errorf("%s: action ran %d times, want once", id, runs)
		}
	}
	if pos := h.position(); !pos.Settled.Equal(t0.Add(-h.poller.Lookback)) || pos.Scans != nil || pos.Rescanned != nil {
		t.Errorf("cursor after the resumed pass: %+v", pos)
	}
}

// TestSettledWaitsForTheOldestSlice: later slices finish while the oldest
// is held; their events are queued, but complete_until stays at the start
// of the oldest until it is listed too, then moves to the horizon at once.
func TestSettledWaitsForTheOldestSlice(t *testing.T) {
	h := newHarness(t)
	since, ids, _ := fourSlices(h, [4]int{250, 50, 50, 50})
	release, othersDone := make(chan struct{}), make(chan struct{})
	h.poller.Events = &lister{src: h.client, n: 4, hook: func(ctx context.Context, q stripeapi.EventQuery) error {
		if isRescan(q) && q.CreatedGTE.Equal(since) && q.StartingAfter != "" {
			return wait(ctx, release, "the test to release the oldest slice")
		}
		return nil
	}}
	var mu sync.Mutex
	var settled []time.Time
	count := countPages(4, func() { close(othersDone) }) // the oldest's first page and the others
	h.poller.Progress = func(pr poller.Progress) {
		if pr.Phase == "rescan" {
			mu.Lock()
			settled = append(settled, pr.Settled)
			mu.Unlock()
		}
		count(pr)
	}
	if _, err := h.poller.Start(context.Background(), since); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := h.poller.Poll(context.Background(), true)
		done <- err
	}()
	if err := wait(context.Background(), othersDone, "the later slices"); err != nil {
		t.Fatal(err)
	}

	pos := h.position()
	horizon := t0.Add(-h.poller.Lookback)
	if !pos.Settled.Equal(since) {
		t.Errorf("complete_until is %s while the oldest slice is unfinished, want %s", pos.Settled, since)
	}
	if len(pos.Scans) != 1 || !pos.Scans[0].From.Equal(since) || pos.Scans[0].Pages != 1 {
		t.Errorf("slices in progress: %+v, want the oldest after its first page", pos.Scans)
	}
	if want := []cursor.Range{{From: since.Add(time.Hour), To: horizon}}; !slices.EqualFunc(pos.Rescanned, want, func(a, b cursor.Range) bool {
		return a.From.Equal(b.From) && a.To.Equal(b.To)
	}) {
		t.Errorf("listed ranges %+v, want %+v", pos.Rescanned, want)
	}
	in := queued(t, h, ids)
	for _, id := range ids[250:] {
		if !in[id] {
			t.Errorf("%s of a finished slice is not queued", id)
		}
	}

	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if pos := h.position(); !pos.Settled.Equal(horizon) || pos.Scans != nil || pos.Rescanned != nil {
		t.Errorf("after the oldest slice: %+v, want complete_until %s", pos, horizon)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, s := range settled {
		if s.After(since) && i < len(settled)-1 {
			t.Errorf("page %d reported complete_until %s before the oldest slice was done", i+1, s)
		}
	}
	for id, ok := range queued(t, h, ids) {
		if !ok {
			t.Errorf("%s is not queued after the pass", id)
		}
	}
}

// TestAgedOutPagePositionRestartsItsSlice: a slice whose page position
// Stripe no longer accepts is listed again from its start; the others go on.
func TestAgedOutPagePositionRestartsItsSlice(t *testing.T) {
	h := newHarness(t)
	since, ids, _ := fourSlices(h, [4]int{50, 150, 50, 150})
	var once sync.Once
	h.poller.Events = &lister{src: h.client, n: 4, hook: func(_ context.Context, q stripeapi.EventQuery) error {
		var err error
		if isRescan(q) && q.CreatedGTE.Equal(since.Add(time.Hour)) && q.StartingAfter != "" {
			once.Do(func() { err = fmt.Errorf("list events: %w", stripeapi.ErrAgedOut) })
		}
		return err
	}}
	h.pass(since)
	for _, id := range ids {
		if runs := len(h.action.calls(id)); runs != 1 {
			t.Errorf("%s: action ran %d times, want once", id, runs)
		}
	}
	if pos := h.position(); !pos.Settled.Equal(t0.Add(-h.poller.Lookback)) || pos.Scans != nil || pos.AgedOut != nil {
		t.Errorf("cursor: %+v", pos)
	}
}

// TestDryRunListsInParallelAndWritesNothing: a dry run keeps its position
// in memory, slices and all.
func TestDryRunListsInParallelAndWritesNothing(t *testing.T) {
	h := newHarness(t)
	since, _, _ := fourSlices(h, [4]int{250, 50, 250, 50})
	h.poller.DryRun = true
	h.poller.Events = &lister{src: h.client, n: 4}
	if _, err := h.poller.Start(context.Background(), since); err != nil {
		t.Fatal(err)
	}
	res, err := h.poller.Poll(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if want := t0.Add(-h.poller.Lookback); !res.Position.Settled.Equal(want) || res.Queued != 600 {
		t.Errorf("dry run: complete_until %s, %d would be queued; want %s and 600", res.Position.Settled, res.Queued, want)
	}
	if pos := h.position(); !pos.IsZero() {
		t.Errorf("the dry run saved a cursor: %+v", pos)
	}
	_ = h.db.View(func(tx store.Tx) error {
		if n, err := fulfill.QueueLen(tx); err != nil || n != 0 {
			t.Errorf("dry run queued %d sessions", n)
		}
		return nil
	})
}

// TestSlicesCoverTheRangeAndTellTheirEnd: a range cut into as many slices as
// are listed at once is cut into exactly that many, whatever its length in
// seconds (rounded down, the last seconds were a slice of their own, a
// request listed after the others); and each slice of several pages tells
// once, a page or two before its end, where its events still to come lie.
func TestSlicesCoverTheRangeAndTellTheirEnd(t *testing.T) {
	h := newHarness(t)
	since := t0.Add(-h.poller.Lookback - 4*time.Hour - 3*time.Second)
	// About 6.5 pages a slice: after its fifth page and its sixth, two
	// or fewer are left, and neither is its last.
	const every = 5500 * time.Millisecond
	for i := range 2600 {
		h.paid(since.Add(time.Minute+time.Duration(i)*every), 1)
	}
	h.poller.SliceLen = 2 * time.Hour // longer than a quarter: the range is cut in four
	var mu sync.Mutex
	ranges := map[[2]time.Time]int{}
	h.poller.Events = &lister{src: h.client, n: 4, hook: func(_ context.Context, q stripeapi.EventQuery) error {
		if isRescan(q) {
			mu.Lock()
			ranges[[2]time.Time{q.CreatedGTE, q.CreatedLT}]++
			mu.Unlock()
		}
		return nil
	}}
	type told struct{ from, reached, to time.Time }
	var ending []told
	h.poller.Ending = func(from, reached, to time.Time) {
		mu.Lock()
		ending = append(ending, told{from, reached, to})
		mu.Unlock()
	}
	if _, err := h.poller.Start(context.Background(), since); err != nil {
		t.Fatal(err)
	}
	if _, err := h.poller.Poll(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ranges) != 4 {
		t.Errorf("the re-scan listed %d slices, want 4: %v", len(ranges), ranges)
	}
	for r, pages := range ranges {
		if pages < 3 {
			t.Errorf("slice %s–%s took %d pages, want several", r[0], r[1], pages)
		}
	}
	if len(ending) != 4 {
		t.Fatalf("Ending was called %d times, want once for each of the 4 slices: %v", len(ending), ending)
	}
	seen := map[time.Time]bool{}
	for _, e := range ending {
		if pages, ok := ranges[[2]time.Time{e.from, e.to}]; !ok || pages == 0 {
			t.Errorf("Ending named %s–%s, not a slice listed", e.from, e.to)
		}
		if seen[e.from] {
			t.Errorf("Ending was called twice for the slice from %s", e.from)
		}
		seen[e.from] = true
		// A page or two left, reached being the oldest event listed so
		// far.
		if left := e.reached.Sub(e.from); left <= 0 || left > 2*100*every {
			t.Errorf("Ending was told with %s of the slice left, want a page or two", left)
		}
	}
}

// TestTipListedBesideTheRescan: with Stripe's clock known, a backfill's
// tip and its re-scan are in flight together — the tip's answer is held
// until a re-scan request arrives, which a poller that lists the tip first
// never sends — and each event is still handled once, with the listings in
// flight never more than the source suggests.
func TestTipListedBesideTheRescan(t *testing.T) {
	h := newHarness(t)
	var ids []string
	for i := range 120 { // every 10 minutes for 20 hours
		ids = append(ids, h.paid(t0.Add(-20*time.Hour+time.Duration(i)*10*time.Minute), 1))
	}
	tipNew := h.paid(t0.Add(-2*time.Minute), 1) // in the tip's range
	ids = append(ids, tipNew)
	rescanning := make(chan struct{})
	var once sync.Once
	const n = 4
	l := &lister{src: h.client, n: n, hook: func(ctx context.Context, q stripeapi.EventQuery) error {
		if isRescan(q) {
			once.Do(func() { close(rescanning) })
			return nil
		}
		return wait(ctx, rescanning, "a re-scan request while the tip is in flight")
	}}
	h.poller.Events = l

	pres, _ := h.pass(t0.Add(-24 * time.Hour))

	for _, id := range ids {
		if runs := len(h.action.calls(id)); runs != 1 {
			t.Errorf("%s: action ran %d times, want once", id, runs)
		}
	}
	if pres.New != len(ids) {
		t.Errorf("%d new events for %d sessions", pres.New, len(ids))
	}
	if _, most := l.stats(); most > n {
		t.Errorf("%d listings in flight at once, want at most %d (the tip takes a re-scan's place)", most, n)
	}
	if pos := h.position(); !pos.Settled.Equal(t0.Add(-h.poller.Lookback)) || pos.Tip.IsZero() {
		t.Errorf("cursor after the pass: %+v, want complete_until at the horizon and the tip recorded", pos)
	}
}

// TestRescanKeepsThePlacesItPlanned: a re-scan planned for four slices at
// once lists them together even when the source's suggestion drops to two
// once latencies come in. Listing by the lower number left the slices
// planned beyond it to wait for others to end, and the last to be listed
// alone, a slice's worth of pages one after another, at the end.
func TestRescanKeepsThePlacesItPlanned(t *testing.T) {
	h := newHarness(t)
	since, ids, _ := fourSlices(h, [4]int{30, 30, 30, 30})
	const n = 4
	l := &dropping{lister: lister{src: h.client, n: n}}
	l.hook = together(n, "the four slices planned, listed at once", func() { l.requested.Store(true) })
	h.poller.Events = l

	h.pass(since)

	for _, id := range ids {
		if runs := len(h.action.calls(id)); runs != 1 {
			t.Errorf("%s: action ran %d times, want once", id, runs)
		}
	}
}

// dropping is a lister whose suggestion drops to two once the re-scan
// asked it for a page.
type dropping struct {
	lister
	requested atomic.Bool
}

func (l *dropping) ListConcurrency() int {
	if l.requested.Load() {
		return 2
	}
	return l.n
}
