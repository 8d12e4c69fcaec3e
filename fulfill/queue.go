package fulfill

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sort"
	"sync"
	"time"
)

// place puts id in the queue due at next, or takes it out when next is
// zero.
func place(tx Tx, q Queue, id string, next time.Time) error {
	if next.IsZero() {
		return tx.Unschedule(q, id)
	}
	return tx.Schedule(q, id, next)
}

// recoverCutOff moves the items whose attempt a crash cut off (inFlight
// says which) to the front of the queue: they were already being worked
// on, so they go before the backlog. Call it once at start. The queue is
// gone through recoverBatch items a transaction: on a shared store every
// write holds all instances' writers back, and one transaction over a
// backlog of a backfill would stall the lister's heartbeat past its lease
// (and run into the store's transaction timeout, failing the start).
func recoverCutOff(db DB, q Queue, inFlight func(tx Tx, id string) bool) (int, error) {
	var ids []string
	if err := db.View(func(tx Tx) (err error) {
		ids, err = tx.Queued(q)
		return err
	}); err != nil {
		return 0, err
	}
	n := 0
	for len(ids) > 0 {
		batch := ids[:min(recoverBatch, len(ids))]
		ids = ids[len(batch):]
		moved := 0
		err := db.Update(func(tx Tx) error {
			moved = 0
			for _, id := range batch {
				// Still queued (another instance may have worked it
				// since the list was read), and still cut off.
				if _, queued, err := tx.DueAt(q, id); err != nil || !queued {
					if err != nil {
						return err
					}
					continue
				}
				if !inFlight(tx, id) {
					continue
				}
				if err := tx.Schedule(q, id, time.Unix(0, 0)); err != nil {
					return err
				}
				moved++
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		n += moved
	}
	return n, nil
}

// recoverBatch is how many queued items one transaction of recoverCutOff
// looks at.
const recoverBatch = 500

// RunOptions shape one run of a queue.
type RunOptions struct {
	// Wake is signalled when new work was queued.
	Wake <-chan struct{}
	// UntilIdle makes Run return once Wake is closed and nothing is due or
	// running — a `--once` pass.
	UntilIdle bool
	// Grace is how long running actions may go on after ctx ends before
	// they are cancelled (0: cancelled at once).
	Grace time.Duration
}

// PassResult counts what one run of a queue did.
type PassResult struct {
	Attempted int
	Fulfilled int // fulfilled or sent
	Failed    int // ended failed (dead letter) in this pass
	Waiting   int // will be retried later
}

// Add folds another run's counts into r.
func (r *PassResult) Add(o PassResult) {
	r.Attempted += o.Attempted
	r.Fulfilled += o.Fulfilled
	r.Failed += o.Failed
	r.Waiting += o.Waiting
}

// outcome is how one attempt ended, for PassResult.
type outcome int

const (
	outcomeOther outcome = iota
	outcomeDone
	outcomeFailed
	outcomeWaiting
)

// maxAttemptsPerPass bounds how often one item is attempted in a pass.
const maxAttemptsPerPass = 3

// worker keeps up to concurrency items of a queue in progress.
type worker struct {
	db          DB
	q           Queue
	concurrency int
	// slots, when set, replaces concurrency and is asked again each time
	// the worker looks for work, so the number in progress can follow a
	// budget that changes.
	slots func() int
	now   func() time.Time
	// process attempts one item; a fatal error stops the run.
	process func(ctx context.Context, id string) (outcome, error)
	fatal   func(error) bool
	logger  *slog.Logger
	// flush saves the results kept while the store refused writes, kept
	// says how many there are; the worker flushes as soon as writes work.
	flush func() error
	kept  func() int
}

// Pauses of the worker. An item whose attempt ended in an error and left
// it due at once (a record that cannot be read, a write that fails) is not
// offered again for a while, doubling up to a minute: such an error must
// not become a loop of requests.
// While the store refuses writes, nothing new starts, and the store is
// probed with a backoff of its own.
const (
	errorCooldown    = time.Second
	maxErrorCooldown = time.Minute
	probeWait        = time.Second
	maxProbeWait     = 30 * time.Second
)

// storeErr is why the store cannot take writes now, or nil.
func (w *worker) storeErr() error {
	if h, ok := w.db.(storeHealth); ok {
		return h.Err()
	}
	return nil
}

// dueNow reports whether id is in the queue and due: an attempt that
// ended in an error without moving it would be offered again at once.
func (w *worker) dueNow(id string) bool {
	due := false
	_ = w.db.View(func(tx Tx) error {
		if at, ok, err := tx.DueAt(w.q, id); err == nil && ok && !at.After(w.now()) {
			due = true
		}
		return nil
	})
	return due
}

// probe asks the store whether it may take writes again. A kept result is
// the best probe: saving it is a real write, and the one that matters.
func (w *worker) probe() bool {
	h, ok := w.db.(storeHealth)
	if !ok {
		return true
	}
	if w.kept != nil && w.kept() > 0 {
		if w.flush() != nil {
			return false
		}
		// Saved, or dropped as another instance's now: only a save
		// proved a write, so the health it scored decides.
		if h.Err() == nil {
			return true
		}
	}
	return h.Probe() == nil
}

// finished is an item whose attempt ended; err is set when it ended in an
// error (not a shutdown) that left it due.
type finished struct {
	id  string
	err error
}

// panicRetry is how soon an item whose attempt panicked is offered again.
const panicRetry = time.Minute

// safeProcess turns a panic in one attempt into that attempt's error: the
// daemon goes on with the other items, and the item is offered again a
// minute later (its record may say in flight: then it is repeated with the
// same idempotency key, as after a crash).
func (w *worker) safeProcess(ctx context.Context, id string) (o outcome, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("attempt for %s panicked: %v", id, r)
			o = outcomeOther
			serr := w.db.Update(func(tx Tx) error { return tx.Schedule(w.q, id, w.now().Add(panicRetry)) })
			if w.logger != nil {
				w.logger.Error("an attempt panicked; it will be repeated", "id", id, "panic", r,
					"stack", string(debug.Stack()), "requeue_err", serr)
			}
		}
	}()
	return w.process(ctx, id)
}

func (w *worker) slotCount() int {
	if w.slots != nil {
		return max(w.slots(), 1)
	}
	return max(w.concurrency, 1)
}

// run works the queue: it wakes when new work is queued or a retry comes
// due. When ctx ends it stops starting attempts, gives running ones
// opts.Grace to finish and record their results, and returns.
func (w *worker) run(ctx context.Context, opts RunOptions) (PassResult, error) {
	var (
		res      PassResult
		mu       sync.Mutex // guards res and fatal
		fatal    error
		wg       sync.WaitGroup
		running  = map[string]bool{}
		attempts = map[string]int{}
		done     = make(chan finished)
		wake     = opts.Wake
		polling  = true
		// cool holds items whose last attempt ended in an error and left
		// them due, until when (real time: a cooldown, not a schedule);
		// strikes counts such errors in a row, lastErr keeps the last.
		cool    = map[string]time.Time{}
		strikes = map[string]int{}
		lastErr = map[string]error{}
		probeIn = probeWait
		// halfOpen lets one item through after a probe found the store
		// writable: the store counts as working again only once a real
		// write succeeds (an empty probe can commit on a full disk).
		halfOpen = false
	)
	attemptCtx, cancelAttempts := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelAttempts()
	stopGrace := context.AfterFunc(ctx, func() {
		if opts.Grace <= 0 {
			cancelAttempts()
			return
		}
		t := time.AfterFunc(opts.Grace, cancelAttempts)
		context.AfterFunc(attemptCtx, func() { t.Stop() })
	})
	defer stopGrace()
	defer wg.Wait()
	drain := func() {
		for len(running) > 0 {
			delete(running, (<-done).id)
		}
	}
	// In a pass an item is attempted again only when it is due again at
	// once (new events arrived while it was looked at); the bound stops a
	// loop.
	skipped := func() map[string]bool {
		ex := make(map[string]bool, len(running)+len(cool))
		for id := range running {
			ex[id] = true
		}
		for id, until := range cool {
			if time.Now().Before(until) {
				ex[id] = true
			} else {
				delete(cool, id)
			}
		}
		if opts.UntilIdle {
			for id, n := range attempts {
				if n >= maxAttemptsPerPass {
					ex[id] = true
				}
			}
		}
		return ex
	}
	for {
		storeErr := w.storeErr()
		if storeErr == nil && w.kept != nil && w.kept() > 0 {
			// Writes work (whoever's write proved it): record what was
			// kept before anything else runs.
			_ = w.flush()
		}
		if storeErr != nil && opts.UntilIdle && w.probe() {
			storeErr, halfOpen = nil, false
		}
		if storeErr != nil && opts.UntilIdle {
			// A pass cannot complete on a store that refuses writes: stop,
			// and let the caller exit non-zero.
			drain()
			return res, fmt.Errorf("stop the pass: %w", storeErr)
		}
		slots := w.slotCount()
		if storeErr != nil && halfOpen && len(running) == 0 {
			slots, storeErr, halfOpen = 1, nil, false
		}
		if storeErr == nil && ctx.Err() == nil && len(running) < slots {
			var ids []string
			_ = w.db.View(func(tx Tx) (err error) {
				ids, err = tx.Due(w.q, w.now(), slots-len(running), skipped())
				return err
			})
			for _, id := range ids {
				running[id] = true
				attempts[id]++
				wg.Add(1)
				go func() {
					defer wg.Done()
					o, err := w.safeProcess(attemptCtx, id)
					mu.Lock()
					res.Attempted++
					switch o {
					case outcomeDone:
						res.Fulfilled++
					case outcomeFailed:
						res.Failed++
					case outcomeWaiting:
						res.Waiting++
					}
					if err != nil && fatal == nil && w.fatal != nil && w.fatal(err) {
						fatal = err
					}
					mu.Unlock()
					f := finished{id: id}
					if err != nil && attemptCtx.Err() == nil && w.dueNow(id) {
						f.err = err
					}
					done <- f
				}()
			}
		}
		if opts.UntilIdle && !polling && len(running) == 0 {
			var more bool
			_ = w.db.View(func(tx Tx) error {
				ids, err := tx.Due(w.q, w.now(), 1, skipped())
				more = len(ids) > 0
				return err
			})
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			if !more {
				// Items whose attempt errored and stayed due are work this
				// pass could not do: not a success for cron.
				if len(lastErr) > 0 {
					return res, stuckError(lastErr)
				}
				return res, nil
			}
			continue
		}
		var timer *time.Timer
		var timerC <-chan time.Time
		probing := false
		switch {
		case ctx.Err() != nil:
		case storeErr != nil:
			timer, probing = time.NewTimer(probeIn), true
			timerC = timer.C
		case !opts.UntilIdle && len(running) < slots:
			var next time.Time
			_ = w.db.View(func(tx Tx) (err error) {
				// Items still being attempted are not waited for: they are due
				// until their action starts, and would wake the loop at once.
				// Items cooling down after an error wake it when they thaw.
				ex := make(map[string]bool, len(running)+len(cool))
				for id := range running {
					ex[id] = true
				}
				for id := range cool {
					ex[id] = true
				}
				next, err = tx.NextDue(w.q, ex)
				return err
			})
			wait := time.Duration(-1)
			if !next.IsZero() {
				wait = max(next.Sub(w.now()), 10*time.Millisecond)
			}
			for id, until := range cool {
				if !time.Now().Before(until) {
					// Thawed, and not due (the queue's own time covers it
					// if it is): forget it, or the loop wakes every 10 ms.
					delete(cool, id)
					continue
				}
				if d := time.Until(until); wait < 0 || d < wait {
					wait = max(d, 10*time.Millisecond)
				}
			}
			if w.kept != nil && w.kept() > 0 && (wait < 0 || wait > probeWait) {
				wait = probeWait // try the kept results again
			}
			if wait >= 0 {
				timer = time.NewTimer(wait)
				timerC = timer.C
			}
		}
		select {
		case f := <-done:
			id := f.id
			if f.err != nil {
				strikes[id]++
				lastErr[id] = f.err
				cool[id] = time.Now().Add(min(errorCooldown<<min(strikes[id]-1, 10), maxErrorCooldown))
			} else {
				delete(strikes, id)
				delete(lastErr, id)
				delete(cool, id)
			}
			delete(running, id)
		case _, ok := <-wake:
			if !ok {
				polling, wake = false, nil
			}
		case <-timerC:
			if probing {
				if w.probe() {
					halfOpen = true
				} else {
					probeIn = min(probeIn*2, maxProbeWait)
				}
			}
		case <-ctx.Done():
			drain()
			return res, ctx.Err()
		}
		if timer != nil {
			timer.Stop()
		}
		if storeErr == nil && w.storeErr() == nil {
			probeIn = probeWait
		}
		mu.Lock()
		err := fatal
		mu.Unlock()
		if err != nil {
			drain()
			return res, err
		}
	}
}

// stuckError sums up the items a pass left due because their attempts
// errored.
func stuckError(errs map[string]error) error {
	ids := make([]string, 0, len(errs))
	for id := range errs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return fmt.Errorf("%d item(s) could not be attempted in this pass and stay queued (%s: %w)",
		len(ids), ids[0], errs[ids[0]])
}

// gate admits up to limit() holders at once; the limit is asked again at
// every acquire, so it can follow a budget. A nil gate admits everyone.
type gate struct {
	limit func() int

	mu   sync.Mutex
	n    int
	free chan struct{} // closed when a holder leaves
}

func (g *gate) size() int { return max(g.limit(), 1) }

// acquire waits for a place, or until ctx ends; once ctx has ended it
// takes none, even a free one (a shutdown starts no more actions).
func (g *gate) acquire(ctx context.Context) error {
	if g == nil {
		return ctx.Err()
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		g.mu.Lock()
		if g.n < g.size() {
			g.n++
			g.mu.Unlock()
			return nil
		}
		if g.free == nil {
			g.free = make(chan struct{})
		}
		free := g.free
		g.mu.Unlock()
		select {
		case <-free:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (g *gate) release() {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n--
	if g.free != nil {
		close(g.free)
		g.free = nil
	}
}
