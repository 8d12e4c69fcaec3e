package stripesim

import (
	"cmp"
	"slices"
	"sort"
)

// entry places one object in a timeline. seq is a server-wide insertion
// counter, so (created, seq) is unique and orders ties by insertion.
type entry[T any] struct {
	created int64
	seq     uint64
	v       *T
}

func compareEntries[T any](a, b entry[T]) int {
	if c := cmp.Compare(a.created, b.created); c != 0 {
		return c
	}
	return cmp.Compare(a.seq, b.seq)
}

// timeline keeps objects sorted oldest-first by (created, seq); lists read it
// backwards for Stripe's newest-first order. Appends in time order are O(1);
// objects inserted out of order wait in pending and are merged in on the
// next read, so a bulk load in any order costs one sort.
type timeline[T any] struct {
	sorted  []entry[T]
	pending []entry[T]
}

func (t *timeline[T]) add(created int64, seq uint64, v *T) {
	e := entry[T]{created: created, seq: seq, v: v}
	if len(t.pending) == 0 && (len(t.sorted) == 0 || compareEntries(e, t.sorted[len(t.sorted)-1]) > 0) {
		t.sorted = append(t.sorted, e)
		return
	}
	t.pending = append(t.pending, e)
}

// flush merges pending entries into sorted, back to front, in place.
func (t *timeline[T]) flush() {
	p := t.pending
	if len(p) == 0 {
		return
	}
	slices.SortFunc(p, compareEntries[T])
	i := len(t.sorted) - 1
	t.sorted = append(t.sorted, p...)
	for j, k := len(p)-1, len(t.sorted)-1; j >= 0; k-- {
		if i >= 0 && compareEntries(p[j], t.sorted[i]) < 0 {
			t.sorted[k] = t.sorted[i]
			i--
		} else {
			t.sorted[k] = p[j]
			j--
		}
	}
	if cap(p) > 4096 {
		t.pending = nil
	} else {
		clear(p)
		t.pending = p[:0]
	}
}

// index returns the position of (created, seq), which must be present.
// Call flush first.
func (t *timeline[T]) index(created int64, seq uint64) int {
	key := entry[T]{created: created, seq: seq}
	return sort.Search(len(t.sorted), func(i int) bool { return compareEntries(t.sorted[i], key) >= 0 })
}

// firstCreatedAtLeast returns the position of the oldest entry created at or
// after c. Call flush first.
func (t *timeline[T]) firstCreatedAtLeast(c int64) int {
	return sort.Search(len(t.sorted), func(i int) bool { return t.sorted[i].created >= c })
}

// page collects up to limit matching objects from positions [lo, hi),
// newest first. Without newer it takes the newest matches (a first page or
// starting_after); with newer it takes the oldest matches, i.e. the ones
// immediately newer than an ending_before cursor at lo-1. more reports
// whether further matches lie beyond the page in the direction of travel.
func (t *timeline[T]) page(lo, hi int, newer bool, limit int, match func(*T) bool) (out []*T, more bool) {
	out = make([]*T, 0, min(limit, max(hi-lo, 0)))
	if newer {
		for i := lo; i < hi; i++ {
			v := t.sorted[i].v
			if !match(v) {
				continue
			}
			if len(out) == limit {
				more = true
				break
			}
			out = append(out, v)
		}
		slices.Reverse(out)
		return out, more
	}
	for i := hi - 1; i >= lo; i-- {
		v := t.sorted[i].v
		if !match(v) {
			continue
		}
		if len(out) == limit {
			more = true
			break
		}
		out = append(out, v)
	}
	return out, more
}
