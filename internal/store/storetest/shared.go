package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/cluster"
	"github.com/fulfilld/fulfilld/internal/store"
)

// RunShared is the contract of a store several instances may share
// (store.postgres): its transactions are also cluster.Tx. open returns a
// fresh, empty store.
func RunShared(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("the store's clock", func(t *testing.T) { testStoreClock(t, open(t)) })
	t.Run("leases", func(t *testing.T) { testLeases(t, open(t)) })
	t.Run("instances", func(t *testing.T) { testInstances(t, open(t)) })
	t.Run("marks", func(t *testing.T) { testMarks(t, open(t)) })
}

func sharedTx(t *testing.T, tx store.Tx) cluster.Tx {
	t.Helper()
	ctx, ok := any(tx).(cluster.Tx)
	if !ok {
		t.Fatalf("%T is not a cluster.Tx", tx)
	}
	return ctx
}

func testStoreClock(t *testing.T, s store.Store) {
	var a, b time.Time
	view(t, s, func(tx store.Tx) (err error) { a, err = tx.Now(); return err })
	view(t, s, func(tx store.Tx) (err error) { b, err = tx.Now(); return err })
	if d := time.Since(a); d < -time.Minute || d > time.Minute {
		t.Fatalf("the store's clock reads %v, a minute or more from this host's", a)
	}
	if b.Before(a) {
		t.Fatalf("the store's clock went back: %v then %v", a, b)
	}
}

func testLeases(t *testing.T, s store.Store) {
	view(t, s, func(tx store.Tx) error {
		_, ok, err := sharedTx(t, tx).Lease(cluster.RoleLister)
		if ok {
			t.Fatal("a fresh store has a lease")
		}
		return err
	})
	// Times come back exactly, to the nanosecond: the fence compares them.
	want := cluster.Lease{Role: cluster.RoleLister, Holder: "host-a:1:x", Term: 7, Expires: t0.Add(1234567 * time.Nanosecond)}
	update(t, s, func(tx store.Tx) error { return sharedTx(t, tx).PutLease(want) })
	want.Holder, want.Term = "host-b:2:y", 8
	update(t, s, func(tx store.Tx) error { return sharedTx(t, tx).PutLease(want) })
	errRollback := errors.New("rolled back")
	_ = s.Update(func(tx store.Tx) error {
		if err := sharedTx(t, tx).PutLease(cluster.Lease{Role: cluster.RoleLister, Holder: "lost", Term: 9}); err != nil {
			return err
		}
		return errRollback
	})
	view(t, s, func(tx store.Tx) error {
		got, ok, err := sharedTx(t, tx).Lease(cluster.RoleLister)
		if err != nil {
			return err
		}
		if !ok || got.Role != want.Role || got.Holder != want.Holder || got.Term != want.Term || !got.Expires.Equal(want.Expires) {
			t.Fatalf("lease = %+v (found %v), want %+v", got, ok, want)
		}
		_, other, err := sharedTx(t, tx).Lease("another-role")
		if other {
			t.Fatal("a role never written has a lease")
		}
		return err
	})
}

func testInstances(t *testing.T, s store.Store) {
	a := cluster.Instance{ID: "a", Host: "host-a", PID: 11, Version: "v1", Started: t0, Seen: t0}
	b := cluster.Instance{ID: "b", Host: "host-b", PID: 22, Version: "v2", Started: t0, Seen: t0.Add(time.Second)}
	update(t, s, func(tx store.Tx) error {
		if err := sharedTx(t, tx).PutInstance(a); err != nil {
			return err
		}
		return sharedTx(t, tx).PutInstance(b)
	})
	a.Seen = t0.Add(time.Minute)
	update(t, s, func(tx store.Tx) error { return sharedTx(t, tx).PutInstance(a) })
	view(t, s, func(tx store.Tx) error {
		all, err := sharedTx(t, tx).Instances()
		if err != nil {
			return err
		}
		got := map[string]cluster.Instance{}
		for _, in := range all {
			got[in.ID] = in
		}
		if len(all) != 2 || got["a"].Host != "host-a" || got["a"].PID != 11 || got["a"].Version != "v1" ||
			!got["a"].Seen.Equal(a.Seen) || !got["b"].Started.Equal(t0) {
			t.Fatalf("instances = %+v", all)
		}
		return nil
	})
	update(t, s, func(tx store.Tx) error { return sharedTx(t, tx).DeleteInstance("b") })
	view(t, s, func(tx store.Tx) error {
		all, err := sharedTx(t, tx).Instances()
		if len(all) != 1 || all[0].ID != "a" {
			t.Fatalf("after deleting b: %+v", all)
		}
		return err
	})
}

func testMarks(t *testing.T, s store.Store) {
	at := t0.Add(987654321 * time.Nanosecond)
	update(t, s, func(tx store.Tx) error { return sharedTx(t, tx).PutMark(cluster.MarkBackfill, at) })
	view(t, s, func(tx store.Tx) error {
		got, ok, err := sharedTx(t, tx).Mark(cluster.MarkBackfill)
		if !ok || !got.Equal(at) {
			t.Fatalf("mark = %v (found %v), want %v exactly", got, ok, at)
		}
		if _, ok, _ := sharedTx(t, tx).Mark(cluster.MarkThrottled); ok {
			t.Fatal("a mark never written is found")
		}
		return err
	})
	update(t, s, func(tx store.Tx) error { return sharedTx(t, tx).DeleteMark(cluster.MarkBackfill) })
	view(t, s, func(tx store.Tx) error {
		_, ok, err := sharedTx(t, tx).Mark(cluster.MarkBackfill)
		if ok {
			t.Fatal("a deleted mark is found")
		}
		return err
	})
}
