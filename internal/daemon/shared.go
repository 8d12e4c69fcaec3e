package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/fulfilld/fulfilld/internal/cluster"
	"github.com/fulfilld/fulfilld/internal/store"
)

// With store.postgres several instances share the store (see package
// cluster). Every instance works the queues; only the one holding the
// lister role polls, sweeps on reconcile.schedule and prunes. Its poller
// writes through cluster.Node.Fence, so a lister that lost the role cannot
// move the cursor. A `run --since` on any instance is recorded in the
// store (cluster.MarkBackfill) and carried out by whichever instance lists.

// lists reports whether this instance should do the lister's work now:
// always for a store of its own.
func (d *Daemon) lists() bool {
	if d.Node == nil {
		return true
	}
	_, ok := d.Node.Leading()
	return ok
}

// listing is ctx for the lister's work in the current term: it ends when
// the role is lost, so a poll in progress stops rather than run into the
// fence page after page.
func (d *Daemon) listing(ctx context.Context) (context.Context, context.CancelFunc) {
	if d.Node == nil {
		return context.WithCancel(ctx)
	}
	lctx, cancel := context.WithCancel(ctx)
	d.leadMu.Lock()
	d.leadCancels = append(d.leadCancels, cancel)
	d.leadMu.Unlock()
	return lctx, cancel
}

// leadingChanged is told by the Node when this instance starts or stops
// listing.
func (d *Daemon) leadingChanged(leading bool, _ int64) {
	if leading {
		select {
		case d.leadNow <- struct{}{}:
		default:
		}
		return
	}
	d.leadMu.Lock()
	cancels := d.leadCancels
	d.leadCancels = nil
	d.leadMu.Unlock()
	for _, cancel := range cancels {
		cancel()
	}
}

// RequestBackfill records a `run --since` for the instance that lists: the
// earliest asked and not yet carried out wins.
func (d *Daemon) RequestBackfill(since time.Time) error {
	err := d.DB.Update(func(tx store.Tx) error {
		ctx, ok := any(tx).(cluster.Tx)
		if !ok {
			return errors.New("the store is not shared")
		}
		cur, asked, err := ctx.Mark(cluster.MarkBackfill)
		if err != nil || asked && !since.Before(cur) {
			return err
		}
		return ctx.PutMark(cluster.MarkBackfill, since)
	})
	if err != nil {
		return err
	}
	d.Logger.Info("backfill recorded in the shared store; the instance that lists events carries it out",
		"since", since.UTC().Format(time.RFC3339))
	return nil
}

// startListing prepares the lister's poller: once per term it starts the
// stream (a first start with no cursor learns Stripe's "now"), and it
// carries out a backfill any instance asked for, clearing the request only
// if no earlier one arrived meanwhile.
func (d *Daemon) startListing(ctx context.Context) error {
	if d.Node == nil {
		return nil
	}
	term, _ := d.Node.Leading()
	var since time.Time
	var asked bool
	err := d.DB.View(func(tx store.Tx) (err error) {
		if ctx, ok := any(tx).(cluster.Tx); ok {
			since, asked, err = ctx.Mark(cluster.MarkBackfill)
		}
		return err
	})
	if err != nil {
		return err
	}
	d.leadMu.Lock()
	started := d.startedTerm == term
	d.leadMu.Unlock()
	if started && !asked {
		return nil
	}
	if _, err := d.Poller.Start(ctx, since); err != nil {
		return err
	}
	d.leadMu.Lock()
	d.startedTerm = term
	d.leadMu.Unlock()
	if !asked {
		return nil
	}
	return d.DB.Update(func(tx store.Tx) error {
		ctx := any(tx).(cluster.Tx)
		cur, still, err := ctx.Mark(cluster.MarkBackfill)
		if err != nil || !still || !cur.Equal(since) {
			return err
		}
		return ctx.DeleteMark(cluster.MarkBackfill)
	})
}

// runNode starts the Node's heartbeat, owned by the returned stop, which
// gives the lister role up and waits for it.
func (d *Daemon) runNode(ctx context.Context) (stop func()) {
	if d.Node == nil {
		return func() {}
	}
	nctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Node.Run(nctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// lookForWork wakes the queues at every heartbeat until ctx ends: the
// other instances queue work (the lister all of the stream's) that this
// one's queues are not told of, and a queue with nothing due sleeps until
// it is told.
func (d *Daemon) lookForWork(ctx context.Context, wake func()) {
	if d.Node == nil {
		return
	}
	t := time.NewTicker(d.Node.Interval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			wake()
		}
	}
}
