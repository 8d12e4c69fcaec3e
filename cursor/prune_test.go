package cursor_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/storetest"
)

// TestPruneForgetsAtMostLimitOldestFirst: one call forgets no more than its
// limit (a transaction stays small however far the edge moved), oldest
// first, never an event at or after the edge; calls repeated drain the rest.
func TestPruneForgetsAtMostLimitOldestFirst(t *testing.T) {
	db := storetest.Open(t)
	const events, limit = 25, 10
	id := func(i int) string { return fmt.Sprintf("evt_%02d", (i*7)%events) } // ids out of time order
	edge := base.Add(20 * time.Second)                                        // events 0..19 are before it
	if err := db.Update(func(tx store.Tx) error {
		for i := range events {
			if err := cursor.MarkSeen(tx, id(i), base.Add(time.Duration(i)*time.Second)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	gone := 0
	for _, want := range []int{10, 10, 0} {
		var n int
		if err := db.Update(func(tx store.Tx) (err error) { n, err = cursor.Prune(tx, edge, limit); return err }); err != nil {
			t.Fatal(err)
		}
		if n != want {
			t.Fatalf("pruned %d, want %d", n, want)
		}
		gone += n
		_ = db.View(func(tx store.Tx) error {
			for i := range events {
				if got, _ := cursor.Seen(tx, id(i), base.Add(time.Duration(i)*time.Second)); got != (i >= gone) {
					want := i >= gone
					t.Errorf("after forgetting %d: event %d (%s) seen = %v, want %v", gone, i, id(i), got, want)
				}
			}
			if n, _ := cursor.SeenCount(tx); n != events-gone {
				t.Errorf("seen count %d, want %d", n, events-gone)
			}
			return nil
		})
	}
}
