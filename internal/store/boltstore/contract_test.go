package boltstore_test

import (
	"testing"

	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/store/storetest"
)

// TestContract runs the store's contract suite against bbolt.
func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return storetest.Open(t) })
}

// TestContractWithCollidingIds runs it again with every session id under
// one hash in session_index: a lookup must still find each id's own record,
// and a write must keep the others'.
func TestContractWithCollidingIds(t *testing.T) {
	t.Cleanup(boltstore.CollideIndex())
	storetest.Run(t, func(t *testing.T) store.Store { return storetest.Open(t) })
}
