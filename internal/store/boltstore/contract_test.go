package boltstore_test

import (
	"testing"

	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/storetest"
)

// TestContract runs the store's contract suite against bbolt.
func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return storetest.Open(t) })
}
