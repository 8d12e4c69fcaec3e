package fulfill

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// TestRunsAhead: once the queue has settled, the runs an attempt waits
// for are listed, and the others ahead of the attempts only in queue order
// and only as far as the queue's pace says it will take them while their
// lists are fresh, less what is listed and not taken yet; with no pace
// known, none.
func TestRunsAhead(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	base := now.Add(-6 * time.Hour)
	// Four runs of 50, their created times an hour apart with a listed
	// range between each, queued so that run r's sessions take places
	// r*50 … r*50+49 — except run 3, queued first (places 0–49).
	newBatcher := func() (*batcher, [][]string) {
		b := &batcher{due: map[string]time.Time{}, rank: map[string]int{}, waiting: map[string]int{}, cache: map[string]cachedSession{}}
		var groups [][]string
		for r := range 4 {
			var g []string
			for i := range 50 {
				id := fmt.Sprintf("cs_%d_%02d", r, i)
				b.due[id] = base.Add(time.Duration(r)*time.Hour + time.Duration(i)*time.Second)
				place := r*50 + i
				switch r {
				case 3:
					place = i
				case 0:
					place = 150 + i
				}
				b.rank[id] = place
				g = append(g, id)
			}
			groups = append(groups, g)
			gap := base.Add(time.Duration(r)*time.Hour + 30*time.Minute)
			b.listed = append(b.listed, listedRange{lo: gap, hi: gap.Add(time.Minute), at: now})
		}
		return b, groups
	}
	listed := func(runs []plannedRun) (got []string) {
		for _, r := range runs {
			got = append(got, fmt.Sprintf("%s+%t", r.ids[0][:4], r.ahead))
		}
		slices.Sort(got)
		return got
	}

	b, groups := newBatcher()
	b.waiting[groups[1][7]] = 1
	if got, want := listed(b.runs(now)), []string{"cs_1+false"}; !slices.Equal(got, want) {
		t.Errorf("no pace known: listed %v, want only the run waited for, %v", got, want)
	}

	// A pace of 120 sessions a fresh minute: run 3 (places 0–49) and run 1
	// (50–99) fit, run 2 (100–149) does not.
	b, groups = newBatcher()
	b.taken, b.takenAt = 120, now
	if got, want := listed(b.runs(now)), []string{"cs_1+true", "cs_3+true"}; !slices.Equal(got, want) {
		t.Errorf("pace 120: listed %v, want %v", got, want)
	}
	// The same pace with 60 sessions listed and not taken yet: only run 3.
	for i := range 60 {
		b.cache[fmt.Sprintf("cs_x_%02d", i)] = cachedSession{s: &stripeapi.Session{}, at: now}
	}
	if got, want := listed(b.runs(now)), []string{"cs_3+true"}; !slices.Equal(got, want) {
		t.Errorf("pace 120, 60 waiting in the cache: listed %v, want %v", got, want)
	}
	// A pace of a thousand: all four, side by side; the one waited for
	// is not ahead.
	b, groups = newBatcher()
	b.taken, b.takenAt = 1000, now
	b.waiting[groups[0][0]] = 1
	if got, want := listed(b.runs(now)), []string{"cs_0+false", "cs_1+true", "cs_2+true", "cs_3+true"}; !slices.Equal(got, want) {
		t.Errorf("pace 1000: listed %v, want %v", got, want)
	}
	// The pace decays: a minute without taking a session leaves 1000/e.
	if got := b.pace(now.Add(batchFresh)); got < 360 || got > 375 {
		t.Errorf("pace a fresh minute later: %.0f, want about 368", got)
	}
}

// TestWideGapsCutOnlyBetweenClusters: runs are cut where a gap is wide for
// the sessions around it (clusters hours apart), not where sessions are
// merely sparser (a quiet night between busy hours, spread-out sessions
// beside a burst created in one second).
func TestWideGapsCutOnlyBetweenClusters(t *testing.T) {
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	times := func(gaps ...[2]int) []time.Time { // {count, seconds apart}
		out := []time.Time{base}
		for _, g := range gaps {
			for range g[0] {
				out = append(out, out[len(out)-1].Add(time.Duration(g[1])*time.Second))
			}
		}
		return out
	}
	cuts := func(ts []time.Time) []int {
		var at []int
		for i, w := range wideGaps(len(ts), func(i int) time.Time { return ts[i] }) {
			if w {
				at = append(at, i)
			}
		}
		return at
	}
	// Eight clusters of twelve, 40 minutes apart: cut between each.
	var clusters [][2]int
	for c := range 8 {
		if c > 0 {
			clusters = append(clusters, [2]int{1, 2400})
		}
		clusters = append(clusters, [2]int{11, 10})
	}
	if got, want := cuts(times(clusters...)), []int{11, 23, 35, 47, 59, 71, 83}; !slices.Equal(got, want) {
		t.Errorf("clusters 40 min apart cut at %v, want %v, between them", got, want)
	}
	// Two bursts, each created in one second, 200 s apart: clusters too.
	if got := cuts(times([2]int{5, 0}, [2]int{1, 200}, [2]int{5, 0})); !slices.Equal(got, []int{5}) {
		t.Errorf("two bursts 200 s apart cut at %v, want [5]", got)
	}
	// A few due sessions say nothing about a density: never cut.
	for n := range 4 {
		ts := times([2]int{max(n-1, 0), 1})
		if n == 0 {
			ts = nil
		}
		if n == 3 {
			ts = times([2]int{1, 1}, [2]int{1, 120})
		}
		if got := cuts(ts); len(got) != 0 {
			t.Errorf("%d sessions cut at %v, want no cut", len(ts), got)
		}
	}
	// Years apart: no overflow, a cut.
	far := append(times([2]int{5, 10}), base.AddDate(3, 0, 0))
	far = append(far, far[len(far)-1].Add(10*time.Second), far[len(far)-1].Add(20*time.Second))
	if got := cuts(far); !slices.Equal(got, []int{5}) {
		t.Errorf("sessions three years apart cut at %v, want [5]", got)
	}
	// Busy day, quiet night, busy day.
	if got := cuts(times([2]int{50, 10}, [2]int{50, 1200}, [2]int{50, 10})); len(got) != 0 {
		t.Errorf("a quiet night cut at %v, want no cut", got)
	}
	// A burst in one second, then sessions 150 s apart.
	if got := cuts(times([2]int{80, 0}, [2]int{60, 150})); len(got) != 0 {
		t.Errorf("sessions beside a burst cut at %v, want no cut", got)
	}
}

// TestEndingHintStaysInItsSlice: the poller's word that a slice is near its
// end lists a run only within that slice (down to a little below it), not
// the next slice's sessions above it, and only once.
func TestEndingHintStaysInItsSlice(t *testing.T) {
	base := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	f := &Fulfiller{}
	b := &f.batch
	b.due = map[string]time.Time{}
	var above, inside []string
	for i := range 5 {
		id := fmt.Sprintf("cs_in%d", i)
		b.due[id] = base.Add(time.Duration(i) * time.Minute) // the slice: [base, base+1h)
		inside = append(inside, id)
		id = fmt.Sprintf("cs_up%d", i)
		b.due[id] = base.Add(time.Hour + time.Duration(i)*time.Minute) // the next slice's
		above = append(above, id)
	}
	f.Ending(base, base.Add(55*time.Minute), base.Add(time.Hour))
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ends(above) {
		t.Errorf("the next slice's run used the hint")
	}
	if !b.ends(inside) {
		t.Errorf("the slice's own run did not use the hint")
	}
	if b.ends(inside) {
		t.Errorf("a hint was used twice")
	}
}

// TestRunsCutFromTheEndQueuedFirst: a slice listed newest first queues
// its sessions from its top down, so its run grows at the old end. With
// 110 due and an attempt waiting for one of the newest, the run planned is
// the newest hundred, and none is listed beside another attempt's while
// the slice grows; cut from the oldest, the newest ten — which joined first
// and stopped growing at once — were a run of their own, listed alone. A
// backlog queued oldest first is cut from the oldest: its full hundred
// first.
func TestRunsCutFromTheEndQueuedFirst(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	base := now.Add(-6 * time.Hour)
	newBatcher := func(newestFirst bool) (*batcher, []string) {
		b := &batcher{due: map[string]time.Time{}, joined: map[string]time.Time{}, rank: map[string]int{},
			waiting: map[string]int{}, cache: map[string]cachedSession{}}
		var ids []string
		for i := range 110 {
			id := fmt.Sprintf("cs_%03d", i)
			ids = append(ids, id)
			b.due[id] = base.Add(time.Duration(i) * 10 * time.Second)
			b.rank[id] = i
			if newestFirst {
				b.rank[id] = 109 - i
			}
			b.joined[id] = time.Now().Add(time.Minute) // still joining
			if i >= 100 {
				b.joined[id] = time.Now().Add(-time.Second) // the slice's first page
			}
		}
		return b, ids
	}
	span := func(runs []plannedRun) (got [][2]string) {
		for _, r := range runs {
			got = append(got, [2]string{r.ids[0], r.ids[len(r.ids)-1]})
		}
		return got
	}

	b, ids := newBatcher(true)
	b.waiting[ids[105]] = 1
	if runs := b.runs(now); len(runs) != 1 || !slices.Equal(runs[0].ids, ids[10:]) {
		t.Errorf("queued newest first: runs %v, want the newest hundred, %s…%s", span(runs), ids[10], ids[109])
	}
	if more := b.moreRuns(now, false); len(more) != 0 {
		t.Errorf("%d runs listed beside an attempt while the slice grows (the first of %d sessions), want none", len(more), len(more[0].group))
	}

	b, ids = newBatcher(false)
	b.waiting[ids[5]] = 1
	if runs := b.runs(now); len(runs) != 1 || !slices.Equal(runs[0].ids, ids[:100]) {
		t.Errorf("queued oldest first: runs %v, want the oldest hundred, %s…%s", span(runs), ids[0], ids[99])
	}
}
