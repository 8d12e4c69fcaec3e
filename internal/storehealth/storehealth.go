// Package storehealth watches whether the store takes writes. A disk that
// is full, a file system gone read-only or an I/O error must not turn into
// a loop that asks Stripe for the same session thousands of times a second,
// nor into one log line per queued item: the queues stop taking new work
// while writes fail, /healthz says why, and the log says it once when
// writes start failing and once when they work again.
package storehealth

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/bbolt"
)

// ErrUnwritable wraps an error that bbolt returned for the write itself
// (beginning or committing the transaction), not one the caller's function
// returned.
var ErrUnwritable = errors.New("the store cannot be written")

// Store is what Guard wraps: bbolt's transactions (a *bbolt.DB, or a test's
// wrapper that fails on purpose).
type Store interface {
	View(fn func(*bbolt.Tx) error) error
	Update(fn func(*bbolt.Tx) error) error
}

// Guard passes transactions through to the store and keeps score of
// whether writes succeed. It is safe for concurrent use.
type Guard struct {
	store  Store
	logger *slog.Logger
	now    func() time.Time

	mu       sync.Mutex
	failing  error // the first failure of the current spell, nil while writes work
	since    time.Time
	failures int
}

// New wraps store. logger gets one ERROR when writes start failing and one
// INFO when they work again.
func New(store Store, logger *slog.Logger) *Guard {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Guard{store: store, logger: logger, now: time.Now}
}

// View runs a read-only transaction.
func (g *Guard) View(fn func(*bbolt.Tx) error) error { return g.store.View(fn) }

// Update runs a read-write transaction. An error of the write itself is
// returned wrapped in ErrUnwritable and marks the store as failing; an
// error fn returned is returned as it is.
func (g *Guard) Update(fn func(*bbolt.Tx) error) error {
	var fnErr error
	ran := false
	err := g.store.Update(func(tx *bbolt.Tx) error {
		ran = true
		fnErr = fn(tx)
		return fnErr
	})
	switch {
	case err == nil:
		g.ok()
		return nil
	case ran && fnErr != nil:
		// fn decided; bbolt returns fn's error after rolling back.
		return err
	case errors.Is(err, bbolt.ErrDatabaseNotOpen):
		// Closed while shutting down: not the disk's fault.
		return err
	}
	g.fail(err)
	return fmt.Errorf("%w: %w", ErrUnwritable, err)
}

// Probe tries an empty write, to learn whether the store takes writes
// again. bbolt commits even an empty transaction to disk (its meta page).
func (g *Guard) Probe() error {
	return g.Update(func(*bbolt.Tx) error { return nil })
}

// Err is nil while writes work; otherwise it says since when they fail and
// why.
func (g *Guard) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.failing == nil {
		return nil
	}
	return fmt.Errorf("%w: writes failing since %s (%d refused): %w",
		ErrUnwritable, g.since.UTC().Format(time.RFC3339), g.failures, g.failing)
}

func (g *Guard) fail(err error) {
	g.mu.Lock()
	first := g.failing == nil
	if first {
		g.failing, g.since = err, g.now()
	}
	g.failures++
	g.mu.Unlock()
	if first {
		g.logger.Error("the store cannot be written: no new work is started until it can; "+
			"results already in hand are kept and saved when it recovers (check free disk space and the file system)",
			"err", err)
	}
}

func (g *Guard) ok() {
	g.mu.Lock()
	was, since, n := g.failing, g.since, g.failures
	g.failing, g.failures = nil, 0
	g.mu.Unlock()
	if was != nil {
		g.logger.Info("the store takes writes again; resuming work",
			"failing_for", g.now().Sub(since).Round(time.Second), "failed_writes", n)
	}
}
