package boltstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
)

// fill writes n session records and then deletes all but keep of them, the
// way settled history leaves a bbolt file: large, and mostly free pages.
func fill(t *testing.T, path string, n, keep int) {
	t.Helper()
	db, err := Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	for start := 0; start < n; start += 1000 {
		if err := db.Update(func(tx store.Tx) error {
			for i := start; i < min(start+1000, n); i++ {
				id := fmt.Sprintf("cs_test_%06d", i)
				if _, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: id, EventID: "evt_" + id, Trigger: fulfill.TriggerEvent, At: now}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.db.Update(func(tx *bbolt.Tx) error {
		// The records and their places in the queue: records are compressed
		// (format 5), so the queue would be most of what is left.
		b, items, index := tx.Bucket([]byte("sessions")), tx.Bucket([]byte("queue")), tx.Bucket([]byte("queue_index"))
		for i := keep; i < n; i++ {
			id := []byte(fmt.Sprintf("cs_test_%06d", i))
			if err := b.Delete(id); err != nil {
				return err
			}
			if err := items.Delete(index.Get(id)); err != nil {
				return err
			}
			if err := index.Delete(id); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestCompactShrinksAndKeepsEverything: the file gets smaller, every record
// that was there is there, and the mode stays 0600.
func TestCompactShrinksAndKeepsEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fulfilld.db")
	fill(t, path, 20000, 10)
	sz, err := Compact(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if sz.After >= sz.Before/4 {
		t.Errorf("compacted %d → %d bytes; want most of the free pages gone", sz.Before, sz.After)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 || info.Size() != sz.After {
		t.Errorf("after compaction: mode %v size %d, want 0600 and %d", info.Mode().Perm(), info.Size(), sz.After)
	}
	db, err := Open(path, true, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx store.Tx) error {
		for i := range 10 {
			id := fmt.Sprintf("cs_test_%06d", i)
			if rec, ok, err := fulfill.Get(tx, id); err != nil || !ok || rec.State != fulfill.StatePending {
				t.Errorf("%s after compaction: %+v %v %v", id, rec, ok, err)
			}
		}
		return nil
	})
	if _, err := os.Stat(path + ".compact"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the temporary file was left behind: %v", err)
	}
}

// TestCompactRefusesAHeldStore: a running daemon holds the store; compact
// must not copy a file that is being written.
func TestCompactRefusesAHeldStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fulfilld.db")
	db, err := Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := Compact(path, 100*time.Millisecond); !errors.Is(err, ErrHeld) {
		t.Fatalf("compact of a held store: %v, want ErrHeld", err)
	}
}

// TestOpenFollowsAReplacedFile: a process that waited for the lock while a
// compaction replaced the file opens the new file, not the unlinked old
// one it was waiting on (whose writes would be lost).
func TestOpenFollowsAReplacedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fulfilld.db")
	holder, err := Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	opened := make(chan *Store, 1)
	go func() {
		db, err := Open(path, false, 10*time.Second)
		if err != nil {
			t.Error(err)
		}
		opened <- db
	}()
	// The replacement: another store with a marker, renamed over the path
	// while the holder still has the old file's lock.
	other := filepath.Join(dir, "new.db")
	ndb, err := Open(other, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := ndb.Update(func(tx store.Tx) error {
		_, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: "cs_marker", Trigger: fulfill.TriggerManual, At: time.Now()})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ndb.Close()
	if err := os.Rename(other, path); err != nil {
		t.Fatal(err)
	}
	holder.Close()
	db := <-opened
	if db == nil {
		t.FailNow()
	}
	defer db.Close()
	_ = db.View(func(tx store.Tx) error {
		if _, ok, _ := fulfill.Get(tx, "cs_marker"); !ok {
			t.Error("the waiting open holds the replaced file, not the store at the path")
		}
		return nil
	})
}
