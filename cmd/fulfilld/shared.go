package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/cluster"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// shared reports whether the store is one that several instances share
// (store.postgres).
func (a *app) shared() bool { return a.cfg.Store.Postgres != "" }

// instance is this process among the instances sharing the store: the
// host, the pid and a random part, so a restarted process (same pid after
// a reboot, say) is never taken for the one before it.
func (a *app) instance() cluster.Instance {
	if a.self.ID == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		a.self = cluster.Instance{ID: fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b[:])),
			Host: host, PID: os.Getpid(), Version: version, Started: time.Now()}
	}
	return a.self
}

// sharing is how the queues share a shared store: attempts lease their
// record for fulfill.timeout plus a margin.
func (a *app) sharing() fulfill.Sharing {
	if !a.shared() {
		return fulfill.Sharing{}
	}
	return fulfill.Sharing{Instance: a.instance().ID, Lease: a.cfg.Fulfill.Timeout + fulfill.LeaseMargin}
}

// node is this instance's part in the coordination of a shared store, its
// Stripe client taking its share of the account's limits.
func (a *app) node(db store.Store, client *stripeapi.Client) *cluster.Node {
	t := client.Transport
	return &cluster.Node{
		DB:                 store.As[cluster.Tx](db),
		Self:               a.instance(),
		Logger:             a.log.With("component", "cluster"),
		Share:              t.SetShare,
		Throttled:          t.Throttled,
		ThrottledElsewhere: t.ThrottledElsewhere,
	}
}
