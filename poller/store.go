package poller

import (
	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
)

// SweepTx is the storage reconciliation needs of its own: the last sweep
// and the last webhook-miss report.
type SweepTx interface {
	LastSweep() (*Sweep, *WebhookMisses, error)
	PutLastSweep(Sweep) error
	PutWebhookMisses(WebhookMisses) error
}

// Tx is one transaction of the store as the poller uses it: a page of
// events is queued (fulfill) and the position moves (cursor) in one
// commit. The store (internal/store) implements it for each engine.
type Tx interface {
	cursor.Tx
	fulfill.Tx
	SweepTx
}

// DB is the store as the poller uses it.
type DB interface {
	View(fn func(Tx) error) error
	Update(fn func(Tx) error) error
}
