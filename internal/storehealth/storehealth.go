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

// Store is what a Guard wraps: a store seen through a user's transaction
// type T (store.As), or a test's wrapper that fails on purpose.
type Store[T any] interface {
	View(fn func(T) error) error
	Update(fn func(T) error) error
}

// Health keeps score of whether the store takes writes, for every Guard
// over it: one failing disk pauses every queue and shows once in the log
// and in /healthz. It is safe for concurrent use.
type Health struct {
	logger *slog.Logger
	now    func() time.Time

	mu       sync.Mutex
	failing  error // the first failure of the current spell, nil while writes work
	since    time.Time
	failures int
}

// NewHealth returns a score keeper; logger gets one ERROR when writes start
// failing and one INFO when they work again.
func NewHealth(logger *slog.Logger) *Health {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Health{logger: logger, now: time.Now}
}

// Guard passes transactions through to the store and tells Health whether
// writes succeed.
type Guard[T any] struct {
	store  Store[T]
	health *Health
}

// New wraps store; writes are scored in health.
func New[T any](store Store[T], health *Health) *Guard[T] {
	return &Guard[T]{store: store, health: health}
}

// View runs a read-only transaction.
func (g *Guard[T]) View(fn func(T) error) error { return g.store.View(fn) }

// Update runs a read-write transaction. An error of the write itself is
// returned wrapped in ErrUnwritable and marks the store as failing; an
// error fn returned is returned as it is.
func (g *Guard[T]) Update(fn func(T) error) error {
	return g.write(g.store.Update, fn)
}

// Batch runs a read-write transaction that the store may share with other
// goroutines' Batch calls (store.Grouped), scored as Update is; over a
// store without Batch it is Update.
func (g *Guard[T]) Batch(fn func(T) error) error {
	if b, ok := g.store.(interface{ Batch(func(T) error) error }); ok {
		return g.write(b.Batch, fn)
	}
	return g.write(g.store.Update, fn)
}

// write runs fn through run (Update or Batch) and scores the result. fn
// may run more than once (a conflict, a batch run again): what it returned
// last is what decides.
func (g *Guard[T]) write(run func(func(T) error) error, fn func(T) error) error {
	var fnErr error
	ran := false
	err := run(func(tx T) error {
		ran = true
		fnErr = fn(tx)
		return fnErr
	})
	switch {
	case err == nil:
		g.health.ok()
		return nil
	case ran && fnErr != nil:
		// fn decided; the store returns fn's error after rolling back.
		return err
	case errors.Is(err, bbolt.ErrDatabaseNotOpen):
		// Closed while shutting down: not the disk's fault.
		return err
	}
	g.health.fail(err)
	return fmt.Errorf("%w: %w", ErrUnwritable, err)
}

// Probe tries an empty write, to learn whether the store may take writes
// again. Its success is not scored: an empty transaction can commit on a
// full disk (bbolt rewrites its meta page in place), so the store counts as
// working again only when a real write succeeds.
func (g *Guard[T]) Probe() error {
	if err := g.store.Update(func(T) error { return nil }); err != nil {
		return fmt.Errorf("%w: %w", ErrUnwritable, err)
	}
	return nil
}

// Err is nil while writes work; otherwise it says since when they fail and
// why.
func (g *Guard[T]) Err() error { return g.health.Err() }

// Err is nil while writes work; otherwise it says since when they fail and
// why.
func (h *Health) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failing == nil {
		return nil
	}
	return fmt.Errorf("%w: writes failing since %s (%d refused): %w",
		ErrUnwritable, h.since.UTC().Format(time.RFC3339), h.failures, h.failing)
}

func (h *Health) fail(err error) {
	h.mu.Lock()
	first := h.failing == nil
	if first {
		h.failing, h.since = err, h.now()
	}
	h.failures++
	h.mu.Unlock()
	if first {
		h.logger.Error("the store cannot be written: no new work is started until it can; "+
			"results already in hand are kept and saved when it recovers (check free disk space and the file system)",
			"err", err)
	}
}

func (h *Health) ok() {
	h.mu.Lock()
	was, since, n := h.failing, h.since, h.failures
	h.failing, h.failures = nil, 0
	h.mu.Unlock()
	if was != nil {
		h.logger.Info("the store takes writes again; resuming work",
			"failing_for", h.now().Sub(since).Round(time.Second), "failed_writes", n)
	}
}
