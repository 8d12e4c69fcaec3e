// Package cluster coordinates the instances of fulfilld that share one
// store (store.postgres): which one lists events (a lease with a term,
// renewed on the store's clock, that fences the lister's writes), which
// instances are alive (a heartbeat row each), and what they share of
// Stripe's limits (the request rate split between the live instances, a
// 429 seen by one slowing all). A store of one's own (bbolt) needs none of
// it: its file lock already makes its process the only one.
//
// Every time here is the store's (Tx.Now: the database's clock), so the
// hosts' clocks may disagree without two instances both holding the lease.
package cluster

import (
	"errors"
	"time"
)

// Tx is what the coordination needs of a transaction of a shared store.
type Tx interface {
	// Now is the store's clock.
	Now() (time.Time, error)
	Lease(role string) (Lease, bool, error)
	PutLease(Lease) error
	Instances() ([]Instance, error)
	PutInstance(Instance) error
	DeleteInstance(id string) error
	// Mark and PutMark keep named times that the instances share: a
	// backfill asked for (MarkBackfill), Stripe's last 429 (MarkThrottled).
	Mark(name string) (time.Time, bool, error)
	PutMark(name string, at time.Time) error
	DeleteMark(name string) error
}

// DB runs transactions of a shared store.
type DB interface {
	View(fn func(Tx) error) error
	Update(fn func(Tx) error) error
}

// Lease is a role held by one instance until Expires, in a numbered term:
// every change of holder starts a new term, so a holder that lost the role
// and got it back is told apart from one that never lost it.
type Lease struct {
	Role    string    `json:"role"`
	Holder  string    `json:"holder"`
	Term    int64     `json:"term"`
	Expires time.Time `json:"expires"`
}

// Instance is one running fulfilld, as its heartbeat last told.
type Instance struct {
	ID      string    `json:"id"`
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	Seen    time.Time `json:"last_seen"`
}

// RoleLister is the role of the one instance that lists events, runs the
// reconcile sweeps and retention.
const RoleLister = "lister"

// Shared marks.
const (
	// MarkBackfill is the earliest `run --since` asked of any instance and
	// not yet carried out by the lister.
	MarkBackfill = "backfill_since"
	// MarkThrottled is when an instance was last answered 429.
	MarkThrottled = "stripe_throttled"
)

// ErrFenced is a write of a lister that no longer holds the role: another
// instance lists now, and this one's cursor moves and queued work would
// race it.
var ErrFenced = errors.New("this instance no longer holds the lister role (another instance took it over); the write was refused")

// View is the instances as status shows them: each with whether it beat
// recently and whether it lists.
type View struct {
	Instances []InstanceView `json:"instances"`
	// Lister is the instance that holds the lister role now ("" when none
	// does: the lease ran out and no standby has taken it yet).
	Lister string `json:"lister"`
	Term   int64  `json:"lister_term"`
}

// InstanceView is one instance in View.
type InstanceView struct {
	Instance
	Alive  bool `json:"alive"`
	Lister bool `json:"lister"`
}

// ReadView reads the instances and the lister role from tx, when tx is a
// shared store's (ok false otherwise).
func ReadView(tx any) (v View, ok bool, err error) {
	ctx, ok := tx.(Tx)
	if !ok {
		return v, false, nil
	}
	now, err := ctx.Now()
	if err != nil {
		return v, true, err
	}
	all, err := ctx.Instances()
	if err != nil {
		return v, true, err
	}
	l, held, err := ctx.Lease(RoleLister)
	if err != nil {
		return v, true, err
	}
	if held && now.Before(l.Expires) {
		v.Lister, v.Term = l.Holder, l.Term
	}
	v.Instances = []InstanceView{}
	for _, in := range all {
		v.Instances = append(v.Instances, InstanceView{Instance: in, Alive: now.Sub(in.Seen) <= 3*DefaultEvery,
			Lister: in.ID == v.Lister})
	}
	return v, true, nil
}
