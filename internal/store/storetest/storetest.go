// Package storetest opens real stores for tests, as bbolt's own
// internal/btesting does: a fresh file in t.TempDir() with every bucket,
// closed when the test ends.
package storetest

import (
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/internal/store"
)

// Open returns a fresh store that is closed when the test ends.
func Open(t testing.TB) *bbolt.DB {
	t.Helper()
	db, err := store.Open(filepath.Join(t.TempDir(), "fulfilld.db"), false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
