package cluster

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/fulfilld/fulfilld/internal/store"
)

// Lease timing. The lister renews every Every; a lister that dies (or loses
// its connection to the database) is replaced once its lease ends, so a
// standby takes over within LeaseTTL + Every: 25 s with the defaults, well
// inside the minute SPEC allows.
const (
	DefaultLeaseTTL = 20 * time.Second
	DefaultEvery    = 5 * time.Second
	// forgetAfter is how long an instance that stopped beating stays in
	// status before the lister removes its row.
	forgetAfter = 24 * time.Hour
)

// Node is this instance's part in the coordination: its heartbeat, its bid
// for the lister role, and the shared Stripe limits.
type Node struct {
	DB DB
	// Self is this instance; ID must be unique among the instances ever
	// run against the store (host, pid and a random part).
	Self     Instance
	LeaseTTL time.Duration
	Every    time.Duration
	Logger   *slog.Logger
	// OnLeading is told, outside any transaction, when this instance
	// starts or stops listing.
	OnLeading func(leading bool, term int64)
	// Share is told how many instances are alive, after each heartbeat:
	// each takes its share of stripe.rate_limit.
	Share func(live int)
	// Throttled is when this instance was last answered 429 (zero: never);
	// ThrottledElsewhere is told when another one was, so all slow down.
	Throttled          func() time.Time
	ThrottledElsewhere func(at time.Time)

	mu       sync.Mutex
	term     int64
	leading  bool
	deadline time.Time // on this host's monotonic clock: when the lease may have ended
	throttle time.Time // the latest shared 429 acted on or published (the store's clock)
	// published is the latest 429 of this instance's own (its host's
	// clock) that it has passed on.
	published time.Time
	live      int
}

func (n *Node) ttl() time.Duration {
	if n.LeaseTTL > 0 {
		return n.LeaseTTL
	}
	return DefaultLeaseTTL
}

// Interval is how often the heartbeat beats.
func (n *Node) Interval() time.Duration { return n.every() }

func (n *Node) every() time.Duration {
	if n.Every > 0 {
		return n.Every
	}
	return DefaultEvery
}

func (n *Node) logger() *slog.Logger {
	if n.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return n.Logger
}

// Leading reports whether this instance holds the lister role now, and in
// which term. It turns false by itself when the lease may have ended
// without a renewal (a lost connection), before any other instance can
// take it over.
func (n *Node) Leading() (int64, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.term, n.leading && time.Now().Before(n.deadline)
}

// Live is how many instances beat recently, as of the last heartbeat
// (at least this one).
func (n *Node) Live() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return max(n.live, 1)
}

// Run beats until ctx ends, then gives the lister role up (if held) so a
// standby takes over at once rather than after the lease.
func (n *Node) Run(ctx context.Context) {
	t := time.NewTicker(n.every())
	defer t.Stop()
	failing := false
	for {
		if err := n.Beat(); err != nil {
			if !failing {
				n.logger().Error("could not reach the shared store for the heartbeat; retrying", "err", err)
			}
			failing = true
		} else if failing {
			n.logger().Info("heartbeat reaches the shared store again")
			failing = false
		}
		select {
		case <-ctx.Done():
			n.resign()
			return
		case <-t.C:
		}
	}
}

// Beat is one heartbeat: this instance's row, the lister role taken or
// renewed, the live instances counted, a shared 429 passed on.
func (n *Node) Beat() error {
	start := time.Now()
	n.mu.Lock()
	myTerm, wasLeading := n.term, n.leading
	n.mu.Unlock()
	var mine time.Time
	if n.Throttled != nil {
		mine = n.Throttled()
	}
	var (
		lease     Lease
		leading   bool
		live      int
		throttled time.Time
		published time.Time // this instance's 429 passed on in this beat
	)
	err := n.DB.Update(func(tx Tx) error {
		now, err := tx.Now()
		if err != nil {
			return err
		}
		self := n.Self
		self.Seen = now
		if err := tx.PutInstance(self); err != nil {
			return err
		}
		l, ok, err := tx.Lease(RoleLister)
		if err != nil {
			return err
		}
		switch {
		case ok && l.Holder == n.Self.ID && now.Before(l.Expires):
			// Ours (a renewal; or a take-over whose commit we did not
			// hear of, in the term it gave).
		case !ok || !now.Before(l.Expires):
			l = Lease{Role: RoleLister, Holder: n.Self.ID, Term: l.Term + 1}
		default:
			lease, leading = l, false
			return n.shared(tx, now, mine, &live, &throttled, &published, false)
		}
		l.Expires = now.Add(n.ttl())
		if err := tx.PutLease(l); err != nil {
			return err
		}
		lease, leading = l, true
		return n.shared(tx, now, mine, &live, &throttled, &published, true)
	})
	n.mu.Lock()
	if err != nil {
		// Not renewed: the lease runs out on its own, and Leading turns
		// false at the local deadline set when it was last renewed.
		leading = n.leading && time.Now().Before(n.deadline)
		lease.Term = n.term
	} else {
		n.term, n.leading, n.live = lease.Term, leading, live
		if published.After(n.published) {
			n.published = published
		}
		if leading {
			// start is before the transaction read the database's clock,
			// so this deadline comes before the lease's end.
			n.deadline = start.Add(n.ttl() - min(time.Second, n.ttl()/4))
		}
	}
	n.leading = leading
	n.mu.Unlock()
	if err == nil && !throttled.IsZero() && n.ThrottledElsewhere != nil {
		n.ThrottledElsewhere(throttled)
	}
	if err == nil && n.Share != nil {
		n.Share(max(live, 1))
	}
	if leading != wasLeading || leading && lease.Term != myTerm {
		if leading {
			n.logger().Info("this instance lists events now", "term", lease.Term, "instance", n.Self.ID)
		} else {
			n.logger().Info("this instance stands by: another one lists events", "lister", lease.Holder, "term", lease.Term)
		}
		if n.OnLeading != nil {
			n.OnLeading(leading, lease.Term)
		}
	}
	return err
}

// shared counts the live instances, forgets long-gone ones (the lister
// does), and passes a 429 between this instance and the others.
func (n *Node) shared(tx Tx, now, mine time.Time, live *int, throttled, published *time.Time, lister bool) error {
	all, err := tx.Instances()
	if err != nil {
		return err
	}
	*live = 0
	for _, in := range all {
		switch {
		case now.Sub(in.Seen) <= 3*n.every():
			*live++
		case lister && now.Sub(in.Seen) > forgetAfter:
			if err := tx.DeleteInstance(in.ID); err != nil {
				return err
			}
		}
	}
	mark, _, err := tx.Mark(MarkThrottled)
	if err != nil {
		return err
	}
	n.mu.Lock()
	seen, last := n.throttle, n.published
	n.mu.Unlock()
	switch {
	case mine.After(last):
		// A 429 of this instance's own since the last beat: published at
		// the store's time, not the host's, which may run ahead of the
		// others' and hide their 429s behind a mark in their future. Its
		// own mark is not news to it.
		*published = mine
		if now.After(mark) {
			n.setThrottle(now)
			return tx.PutMark(MarkThrottled, now)
		}
		n.setThrottle(mark)
	case mark.After(seen):
		n.setThrottle(mark)
		*throttled = mark
	}
	return nil
}

func (n *Node) setThrottle(t time.Time) {
	n.mu.Lock()
	if t.After(n.throttle) {
		n.throttle = t
	}
	n.mu.Unlock()
}

// resign ends this instance's lease now, if it still holds one.
func (n *Node) resign() {
	n.mu.Lock()
	term, leading := n.term, n.leading
	n.leading = false
	n.mu.Unlock()
	if !leading {
		return
	}
	err := n.DB.Update(func(tx Tx) error {
		l, ok, err := tx.Lease(RoleLister)
		if err != nil || !ok || l.Holder != n.Self.ID || l.Term != term {
			return err
		}
		now, err := tx.Now()
		if err != nil {
			return err
		}
		l.Expires = now
		return tx.PutLease(l)
	})
	if err != nil {
		n.logger().Warn("could not give the lister role up; a standby takes over when the lease ends", "err", err)
	}
}

// Fence is db as the lister writes to it: every Update first checks, in
// its own transaction, that this instance still holds the lister role in
// the term it knows, and fails with ErrFenced otherwise, writing nothing.
// A lister that was paused or cut off past its lease can then neither move
// the cursor nor queue work behind the back of the one that took over.
func (n *Node) Fence(db store.Store) store.Store { return fenced{Store: db, n: n} }

type fenced struct {
	store.Store
	n *Node
}

func (f fenced) Update(fn func(store.Tx) error) error {
	term, _ := f.n.Leading()
	return f.Store.Update(func(tx store.Tx) error {
		if err := f.n.check(tx, term); err != nil {
			return err
		}
		return fn(tx)
	})
}

// check is the fence itself, inside the writer's transaction.
func (n *Node) check(tx store.Tx, term int64) error {
	if _, leading := n.Leading(); !leading {
		return ErrFenced
	}
	ctx, ok := tx.(Tx)
	if !ok {
		return ErrFenced
	}
	l, found, err := ctx.Lease(RoleLister)
	if err != nil {
		return err
	}
	now, err := ctx.Now()
	if err != nil {
		return err
	}
	if !found || l.Holder != n.Self.ID || l.Term != term || !now.Before(l.Expires) {
		return ErrFenced
	}
	return nil
}
