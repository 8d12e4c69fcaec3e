package pgstore_test

import (
	"testing"

	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/pgstore/pgtest"
	"github.com/fulfilld/fulfilld/internal/store/storetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestContract runs the store's contract suite against PostgreSQL.
func TestContract(t *testing.T) {
	pgtest.ServerDSN(t)
	storetest.Run(t, func(t *testing.T) store.Store { return pgtest.Open(t) })
}

// TestSharedContract runs what a store shared by instances must do.
func TestSharedContract(t *testing.T) {
	pgtest.ServerDSN(t)
	storetest.RunShared(t, func(t *testing.T) store.Store { return pgtest.Open(t) })
}
