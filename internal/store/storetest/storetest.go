// Package storetest opens real stores for tests, as bbolt's own
// internal/btesting does: a fresh file in t.TempDir() with every bucket,
// closed when the test ends. The contract suite every backend must pass is
// in contract.go.
package storetest

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/store/boltstore"
)

// Open returns a fresh bbolt store that is closed when the test ends.
func Open(t testing.TB) *boltstore.Store {
	t.Helper()
	s, err := boltstore.Open(filepath.Join(t.TempDir(), "fulfilld.db"), false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
