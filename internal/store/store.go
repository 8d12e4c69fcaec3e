// Package store is fulfilld's storage layer as its users see it. Each
// package that keeps state declares the transaction it needs where it uses
// it — cursor.Tx (the stream position), fulfill.Tx (the ledger and the
// queues), poller.Tx (both, in one commit, and the sweeps), stripeapi.UsageTx
// (API usage) — and Tx here is all of them: what a backend implements. One
// package per engine implements it (boltstore: one bbolt file), and
// storetest holds the contract suite every backend must pass.
//
// A backend owns its schema: how records are encoded, the counters and
// indexes kept beside them in the same transaction as each write (so that
// status reads counters, not records), retention's index, and its on-disk
// format version with the upgrade from older ones.
package store

import (
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

// Tx is one transaction of the store: everything its users declare.
type Tx interface {
	poller.Tx // cursor.Tx, fulfill.Tx and poller.SweepTx
	stripeapi.UsageTx
}

// Store is an open store. Update runs fn in one atomic transaction that an
// error rolls back; nothing with side effects outside the store may run
// inside it. View runs a read-only one.
type Store interface {
	View(fn func(Tx) error) error
	Update(fn func(Tx) error) error
	Close() error
}

// Typed is a store seen through a user's transaction interface T.
type Typed[T any] struct{ s Store }

// As presents s to a package whose transaction interface is T (fulfill.Tx,
// poller.Tx, …): T must be one that Tx embeds.
func As[T any](s Store) Typed[T] { return Typed[T]{s: s} }

// View runs fn in a read-only transaction.
func (a Typed[T]) View(fn func(T) error) error {
	return a.s.View(func(tx Tx) error { return fn(any(tx).(T)) })
}

// Update runs fn in a read-write transaction.
func (a Typed[T]) Update(fn func(T) error) error {
	return a.s.Update(func(tx Tx) error { return fn(any(tx).(T)) })
}

// Batcher is a Store that can commit writes from several goroutines in one
// transaction (bbolt's Batch: one commit, one fsync, for all of them). fn
// may run more than once: when another function in the same transaction
// fails, the others run again without it.
type Batcher interface {
	Store
	Batch(fn func(Tx) error) error
}

// Grouped is a store seen through T, as Typed is, whose Batch shares a
// commit with other goroutines' Batch calls. It is asked for by name, for
// the store itself, never found on a store that wraps another: a wrapper
// that overrides Update (a fence, a test's failing disk) would be passed
// by.
type Grouped[T any] struct {
	Typed[T]
	b Batcher
}

// AsGrouped presents b as As does, with Batch.
func AsGrouped[T any](b Batcher) Grouped[T] { return Grouped[T]{Typed: As[T](b), b: b} }

// Batch runs fn in a read-write transaction it may share with other
// goroutines' Batch calls, and returns once it committed.
func (g Grouped[T]) Batch(fn func(T) error) error {
	return g.b.Batch(func(tx Tx) error { return fn(any(tx).(T)) })
}
