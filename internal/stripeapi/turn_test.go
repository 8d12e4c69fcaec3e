package stripeapi

import (
	"context"
	"math"
	"slices"
	"testing"
	"time"
)

// TestTurnGoesToWhoIsFurthestBehind: requests that said nothing go first,
// in the order they came; then the one with the most work left, ties in
// order; a request whose context ends while it waits gives up its place.
func TestTurnGoesToWhoIsFurthestBehind(t *testing.T) {
	var tn turn
	if err := tn.acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 8)
	waiting := func() int { tn.mu.Lock(); defer tn.mu.Unlock(); return len(tn.waiting) }
	start := func(name string, ctx context.Context) {
		before := waiting()
		go func() {
			if err := tn.acquire(ctx); err != nil {
				order <- name + " gave up"
				return
			}
			order <- name
			tn.release()
		}()
		// Queued in this order: wait until it is.
		for deadline := time.Now().Add(5 * time.Second); waiting() == before && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}
	bg := context.Background()
	start("slice 2 left", Behind(bg, 2))
	start("first plain", bg)
	start("slice 9 left", Behind(bg, 9))
	cancelled, cancel := context.WithCancel(Behind(bg, 100))
	start("cancelled", cancelled)
	start("second plain", bg)
	start("slice 2 left, later", Behind(bg, 2))
	start("unknown", Behind(bg, math.Inf(1)))
	if n := waiting(); n != 7 {
		t.Fatalf("%d waiting, want 7", n)
	}
	cancel()
	if got := <-order; got != "cancelled gave up" {
		t.Fatalf("first out: %q, want the cancelled one giving up", got)
	}
	tn.release()
	var got []string
	for range 6 {
		got = append(got, <-order)
	}
	want := []string{"first plain", "second plain", "unknown", "slice 9 left", "slice 2 left", "slice 2 left, later"}
	if !slices.Equal(got, want) {
		t.Errorf("turns went\n%q, want\n%q", got, want)
	}
	if err := tn.acquire(bg); err != nil {
		t.Fatalf("the turn was not free after all: %v", err)
	}
}
