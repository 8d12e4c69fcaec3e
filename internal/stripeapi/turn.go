package stripeapi

import (
	"context"
	"math"
	"sync"
)

// Behind asks that a request wait for its endpoint's turn (see budget.turn)
// ahead of requests that are further along: left is about how much work
// its caller has left (a re-scan slice: its pages still to list). Requests
// without it go first, in the order they came; among the others the one
// with the most left goes first, ties in order. It orders requests only:
// how many go, and when, is the budget's.
//
// A re-scan lists its slices side by side, each a page after the other,
// and the budget hands out its tokens in turn. A slice whose answers came
// slower got fewer of them and ended pages behind the others, listing its
// last pages alone, one request's latency each, while the budget stood
// idle (0.6–0.9 s at the end of a backfill's benchmark).
func Behind(ctx context.Context, left float64) context.Context {
	return context.WithValue(ctx, behindKey{}, left)
}

type behindKey struct{}

// leftOf is the work Behind gave ctx; +Inf without it.
func leftOf(ctx context.Context) float64 {
	if v, ok := ctx.Value(behindKey{}).(float64); ok && !math.IsNaN(v) {
		return v
	}
	return math.Inf(1)
}

// turn lets one request at a time hold it; the others wait, and the one
// with the most left takes it next (first come among equals).
type turn struct {
	mu      sync.Mutex
	held    bool
	seq     uint64
	waiting []*turnWaiter
}

type turnWaiter struct {
	left  float64
	seq   uint64
	ready chan struct{} // closed when the turn is handed to this waiter
}

// acquire waits for the turn, or for ctx to end.
func (t *turn) acquire(ctx context.Context) error {
	t.mu.Lock()
	if !t.held {
		t.held = true
		t.mu.Unlock()
		return nil
	}
	t.seq++
	w := &turnWaiter{left: leftOf(ctx), seq: t.seq, ready: make(chan struct{})}
	t.waiting = append(t.waiting, w)
	t.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		t.mu.Lock()
		for i, x := range t.waiting {
			if x == w {
				t.waiting = append(t.waiting[:i], t.waiting[i+1:]...)
				t.mu.Unlock()
				return ctx.Err()
			}
		}
		t.mu.Unlock()
		// Handed over as ctx ended: pass it on.
		t.release()
		return ctx.Err()
	}
}

// release hands the turn to the waiter with the most left, or frees it.
func (t *turn) release() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.waiting) == 0 {
		t.held = false
		return
	}
	next := 0
	for i, w := range t.waiting {
		if b := t.waiting[next]; w.left > b.left || w.left == b.left && w.seq < b.seq {
			next = i
		}
	}
	w := t.waiting[next]
	t.waiting = append(t.waiting[:next], t.waiting[next+1:]...)
	close(w.ready)
}
