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
	margin := fulfill.LeaseMargin
	if d, ok := a.testDuration(envTestClaimMargin); ok {
		margin = d
	}
	return fulfill.Sharing{Instance: a.instance().ID, Lease: a.cfg.Fulfill.Timeout + margin}
}

// The two-daemon tests (ha_test.go) kill listers and workers several times
// a run and cannot wait out production leases each time (the lister's
// 20 s, an attempt's fulfill.timeout + 1 min). These variables shorten
// them. They are the test suite's (config leaves FULFILLD_TEST_* alone),
// not settings: no operator sets them, and the README does not offer them.
const (
	// envTestListerLease replaces cluster.DefaultLeaseTTL; the heartbeat
	// then beats every quarter of it.
	envTestListerLease = "FULFILLD_TEST_LISTER_LEASE"
	// envTestClaimMargin replaces fulfill.LeaseMargin.
	envTestClaimMargin = "FULFILLD_TEST_CLAIM_MARGIN"
)

// testDuration reads one of the test suite's timing variables.
func (a *app) testDuration(name string) (time.Duration, bool) {
	if a.lookupEnv == nil {
		return 0, false
	}
	v, ok := a.lookupEnv(name)
	if !ok || v == "" {
		return 0, false
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		a.log.Warn("ignoring a test timing variable that is not a positive duration", "name", name, "value", v)
		return 0, false
	}
	return d, true
}

// node is this instance's part in the coordination of a shared store, its
// Stripe client taking its share of the account's limits.
func (a *app) node(db store.Store, client *stripeapi.Client) *cluster.Node {
	t := client.Transport
	var lease, every time.Duration
	if d, ok := a.testDuration(envTestListerLease); ok {
		lease, every = d, d/4
	}
	return &cluster.Node{
		LeaseTTL:           lease,
		Every:              every,
		DB:                 store.As[cluster.Tx](db),
		Self:               a.instance(),
		Logger:             a.log.With("component", "cluster"),
		Share:              t.SetShare,
		Throttled:          t.Throttled,
		ThrottledElsewhere: t.ThrottledElsewhere,
	}
}
