package cursor_test

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/cursor"
)

// TestPruneForgetsAtMostLimitOldestFirst: one call forgets no more than its
// limit (a transaction stays small however far the edge moved), oldest
// first, never an event at or after the edge; calls repeated drain the rest.
func TestPruneForgetsAtMostLimitOldestFirst(t *testing.T) {
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "fulfilld.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const events, limit = 25, 10
	id := func(i int) string { return fmt.Sprintf("evt_%02d", (i*7)%events) } // ids out of time order
	edge := base.Add(20 * time.Second)                                        // events 0..19 are before it
	if err := db.Update(func(tx *bbolt.Tx) error {
		if err := cursor.Init(tx); err != nil {
			return err
		}
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
		if err := db.Update(func(tx *bbolt.Tx) (err error) { n, err = cursor.Prune(tx, edge, limit); return err }); err != nil {
			t.Fatal(err)
		}
		if n != want {
			t.Fatalf("pruned %d, want %d", n, want)
		}
		gone += n
		_ = db.View(func(tx *bbolt.Tx) error {
			for i := range events {
				if got, want := cursor.Seen(tx, id(i)), i >= gone; got != want {
					t.Errorf("after forgetting %d: event %d (%s) seen = %v, want %v", gone, i, id(i), got, want)
				}
			}
			if n := cursor.SeenCount(tx); n != events-gone {
				t.Errorf("seen count %d, want %d", n, events-gone)
			}
			return nil
		})
	}
}
