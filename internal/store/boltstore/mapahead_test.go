package boltstore

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
)

// TestMappedAheadStoreStaysSmall: mapping 1 GiB ahead costs address space,
// not disk: a new store with a few records is a small file, and grows as
// its records do, not by bbolt's default 16 MiB steps.
func TestMappedAheadStoreStaysSmall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fulfilld.db")
	db, err := Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	if err := db.Update(func(tx store.Tx) error {
		for _, id := range []string{"cs_a", "cs_b", "cs_c"} {
			if err := tx.PutSession(fulfill.Record{SessionID: id, State: fulfill.StateFulfilled, Created: now, Updated: now}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 2*allocStep {
		t.Errorf("a store of three records is %d bytes, want at most %d", fi.Size(), 2*allocStep)
	}
	if got := mapAhead(path); got != 1<<30 {
		t.Errorf("a small store is mapped %d bytes ahead, want 1 GiB", got)
	}
}
