package cluster_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/internal/cluster"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/pgstore"
	"github.com/fulfilld/fulfilld/internal/store/pgstore/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// leadings records what a Node was told about the lister role.
type leadings struct {
	mu   sync.Mutex
	seen []bool
}

func (l *leadings) note(leading bool, _ int64) {
	l.mu.Lock()
	l.seen = append(l.seen, leading)
	l.mu.Unlock()
}

func (l *leadings) last() (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.seen) == 0 {
		return false, 0
	}
	return l.seen[len(l.seen)-1], len(l.seen)
}

// node is one instance on the database dsn names, with a pool of its own,
// as another process would have.
func node(t *testing.T, dsn, id string) (*cluster.Node, *pgstore.Store, *leadings) {
	t.Helper()
	s := pgtest.OpenDSN(t, dsn, pgstore.Options{})
	l := &leadings{}
	return &cluster.Node{DB: store.As[cluster.Tx](s), Self: cluster.Instance{ID: id, Host: id, PID: 1},
		LeaseTTL: 4 * time.Second, Every: time.Second, OnLeading: l.note}, s, l
}

func beat(t *testing.T, n *cluster.Node) {
	t.Helper()
	if err := n.Beat(); err != nil {
		t.Fatal(err)
	}
}

// moveCursor is a write of the lister: the cursor moving.
func moveCursor(db store.Store, to time.Time) error {
	return db.Update(func(tx store.Tx) error { return cursor.Save(tx, cursor.Position{Settled: to, Tip: to}) })
}

func lister(t *testing.T, db store.Store) cluster.View {
	t.Helper()
	var v cluster.View
	err := db.View(func(tx store.Tx) (err error) { v, _, err = cluster.ReadView(tx); return err })
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// One instance lists; the other stands by, and its writes as a lister are
// refused.
func TestOneListerAtATime(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	a, sa, la := node(t, dsn, "a")
	b, sb, lb := node(t, dsn, "b")
	beat(t, a)
	beat(t, b)
	if leading, _ := la.last(); !leading {
		t.Fatal("a, first to beat, does not list")
	}
	if _, ok := b.Leading(); ok {
		t.Fatal("b lists beside a")
	}
	if _, n := lb.last(); n != 0 {
		t.Fatalf("b was told of the role %d times", n)
	}
	t1 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	if err := moveCursor(a.Fence(sa), t1); err != nil {
		t.Fatalf("the lister's write: %v", err)
	}
	if err := moveCursor(b.Fence(sb), t1.Add(time.Hour)); !errors.Is(err, cluster.ErrFenced) {
		t.Fatalf("the standby's write: %v; want ErrFenced", err)
	}
	v := lister(t, sb)
	if v.Lister != "a" || len(v.Instances) != 2 || a.Live() != 1 || b.Live() != 2 {
		t.Fatalf("view = %+v, live a=%d b=%d", v, a.Live(), b.Live())
	}
}

// A lister whose lease ran out (it died, lost its connection, or was
// paused) is replaced in a new term; when it wakes up believing it still
// lists, its writes are refused by the fence in their own transaction.
func TestPausedListerIsFenced(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	a, sa, la := node(t, dsn, "a")
	b, sb, _ := node(t, dsn, "b")
	beat(t, a)
	termA, _ := a.Leading()
	t1 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	if err := moveCursor(a.Fence(sa), t1); err != nil {
		t.Fatal(err)
	}
	// a stops beating; its lease runs out (here: at once).
	expire(t, sb)
	beat(t, b)
	termB, ok := b.Leading()
	if !ok || termB != termA+1 {
		t.Fatalf("b after a's lease ended: leading %v in term %d; want term %d", ok, termB, termA+1)
	}
	if _, stillThinks := a.Leading(); !stillThinks {
		t.Fatal("test setup: a should still believe it lists")
	}
	if err := moveCursor(a.Fence(sa), t1.Add(-time.Hour)); !errors.Is(err, cluster.ErrFenced) {
		t.Fatalf("the paused lister's write: %v; want ErrFenced", err)
	}
	var pos cursor.Position
	if err := sb.View(func(tx store.Tx) (err error) { pos, err = cursor.Load(tx); return err }); err != nil {
		t.Fatal(err)
	}
	if !pos.Settled.Equal(t1) {
		t.Fatalf("cursor = %v; the fenced write moved it (want %v)", pos.Settled, t1)
	}
	beat(t, a)
	if leading, _ := la.last(); leading {
		t.Fatal("a was not told it stands by")
	}
	if err := moveCursor(b.Fence(sb), t1.Add(time.Minute)); err != nil {
		t.Fatalf("the new lister's write: %v", err)
	}
}

// expire ends the lister's lease now, as if its holder stopped renewing it
// a lease ago.
func expire(t *testing.T, db store.Store) {
	t.Helper()
	err := db.Update(func(tx store.Tx) error {
		ctx := any(tx).(cluster.Tx)
		l, _, err := ctx.Lease(cluster.RoleLister)
		if err != nil {
			return err
		}
		now, err := ctx.Now()
		if err != nil {
			return err
		}
		l.Expires = now.Add(-time.Millisecond)
		return ctx.PutLease(l)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A lister that stops gives the role up: the standby takes it at its next
// beat, not a lease later.
func TestStoppingListerHandsOver(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	a, _, _ := node(t, dsn, "a")
	b, _, _ := node(t, dsn, "b")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	beat(t, a)
	go func() {
		defer close(done)
		a.Run(ctx)
	}()
	cancel()
	<-done
	beat(t, b)
	if _, ok := b.Leading(); !ok {
		t.Fatal("b does not list after a stopped")
	}
}

// A 429 one instance saw reaches the others at their next beat.
func TestThrottleIsShared(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	a, _, _ := node(t, dsn, "a")
	b, _, _ := node(t, dsn, "b")
	at := time.Now().Add(-time.Second)
	a.Throttled = func() time.Time { return at }
	var told []time.Time
	b.ThrottledElsewhere = func(t time.Time) { told = append(told, t) }
	a.ThrottledElsewhere = func(time.Time) { t.Error("a was told of its own 429") }
	beat(t, a)
	beat(t, b)
	beat(t, b)
	// When, on the database's clock: the hosts' may disagree.
	if len(told) != 1 || told[0].Sub(at) > time.Minute || at.Sub(told[0]) > time.Minute {
		t.Fatalf("b was told %v; want once, about %v", told, at)
	}
}

// The shared 429 mark is on the database's clock: an instance whose host
// clock runs an hour ahead must not hide the 429s of the others for that
// hour.
func TestThrottleIsSharedDespiteSkewedClocks(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	a, _, _ := node(t, dsn, "a")
	b, _, _ := node(t, dsn, "b")
	var aAt, bAt time.Time
	a.Throttled = func() time.Time { return aAt }
	b.Throttled = func() time.Time { return bAt }
	var toldA, toldB int
	a.ThrottledElsewhere = func(time.Time) { toldA++ }
	b.ThrottledElsewhere = func(time.Time) { toldB++ }
	aAt = time.Now().Add(time.Hour) // a's host clock is an hour ahead
	beat(t, a)
	beat(t, b)
	if toldB != 1 {
		t.Fatalf("b was told of a's 429 %d times; want 1", toldB)
	}
	bAt = time.Now() // then b is throttled, on a clock that is right
	beat(t, b)
	beat(t, a)
	if toldA != 1 {
		t.Fatalf("a was told of b's 429 %d times; want 1 (a skewed clock hid it)", toldA)
	}
	beat(t, a)
	beat(t, b)
	if toldA != 1 || toldB != 1 {
		t.Fatalf("told a %d, b %d times; want once each", toldA, toldB)
	}
}
