package bench

// The store benchmark (`fulfilld bench store`): a simulated year of orders
// written through the real store code — the poller's page commit, the
// fulfiller's ledger writes, the notifier, retention — on a simulated clock,
// while a reader scrapes /metrics and reads status as an operator's
// Prometheus and shell would. It answers issue 9: does the file stay small,
// do scrapes stay fast at any size, and does a writer ever wait on a reader.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/metrics"
	"github.com/fulfilld/fulfilld/internal/status"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

// StoreConfig is one run of the store benchmark.
type StoreConfig struct {
	Days         int
	OrdersPerDay int
	// Retention is store.retention: settled records older than this are
	// pruned to tombstones.
	Retention time.Duration
	// OutputBytes is how much output the fulfillment action prints; it is
	// kept with the record until retention.
	OutputBytes int
	// Path is the bbolt file; "" = one in a temporary directory, removed
	// after. An existing file is refused: the benchmark starts empty.
	Path string
	// Status reads what `fulfilld status` shows and returns its counts of
	// fulfillments by state. The command passes its own status read (it
	// lives in package main); without it status is neither timed nor
	// checked.
	Status func(db status.Store, now time.Time) (map[string]int, error)
	// Progress, when set, gets a line every simulated month.
	Progress io.Writer
	// TxPerWrite gives every ledger write of the fulfiller and the notifier
	// a transaction of its own, as the daemon does. Without it they go
	// through bbolt's Batch, many to a transaction: the same writes in the
	// same order per record, about five times faster to simulate (a year
	// is some seven million of them). Page commits and pruning are the
	// daemon's own transactions either way.
	TxPerWrite bool
}

// Latency summarises the samples of one kind of read.
type Latency struct {
	N           int
	Median, Max time.Duration
}

func summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	return Latency{N: len(s), Median: s[len(s)/2], Max: s[len(s)-1]}
}

// Stall is the longest write seen: a db.Update from call to return, so it
// includes waiting for the writer lock and, when the file grew, waiting for
// every open read transaction before bbolt can remap it.
type Stall struct {
	Took time.Duration
	Op   string // "page", "fulfill", "notify", "prune", "usage"
	Day  int    // simulated day it happened on
	// Where it went: waiting to start (the writer lock; for a batched
	// write also the batch's other calls), in the write itself, and after
	// it — the commit, where bbolt allocates pages and, when the file must
	// grow its map, waits for every open read transaction.
	Wait, Body, Commit time.Duration
}

// Commit is one commit's time: in bbolt's spill (splitting pages and
// allocating them: from the free list, or by growing the file, which
// remaps it), in writing the pages, and how much of it the writing thread
// was on a CPU (-1 when not measured): the rest it waited for one.
type Commit struct {
	Took, Spill, Write, CPU time.Duration
	Op                      string
	Day                     int
}

// ReaderWait is the longest a write waited on a reader. In bbolt that
// happens in one place only: a commit that needs pages past the file's
// map remaps it, and the remap waits for every open read transaction to
// end. The benchmark counts remaps (bbolt's NodeDeref moves only then) and
// bounds each one's wait by the read transactions open during that
// commit: it waited no longer than the longest of them lasted from the
// commit's start.
type ReaderWait struct {
	Remaps int           // commits that remapped the file
	Max    time.Duration // the longest a remap can have waited on readers
	Day    int
}

// BucketSize is what one top-level bucket holds in the compacted file.
type BucketSize struct {
	Name  string
	Keys  int
	Bytes int64 // pages allocated to it (leaf + branch + inline)
}

// StoreReport is what a run measured and checked.
type StoreReport struct {
	Config StoreConfig
	Orders int
	Events int
	Wall   time.Duration
	// Load is the machine's load average (1, 5, 15 minutes) when the year
	// was written: other work competes with the reader for a CPU.
	Load string
	// Phases is wall time by kind of work.
	Phases map[string]time.Duration

	SizeBefore, SizeAfter int64
	// Buckets are what each bucket holds in the compacted file, and
	// BucketsBefore in the file the year left.
	Buckets, BucketsBefore []BucketSize

	// Scrape and Status are measured while the year is written (Run) and
	// after it, on the year-end store before compaction (End).
	ScrapeRun, StatusRun Latency
	ScrapeEnd, StatusEnd Latency
	// ScrapeRunCPU and StatusRunCPU are the reads during the year on a
	// CPU: what they cost themselves, without the time they waited for one
	// on a busy machine (N = 0 where that cannot be measured).
	ScrapeRunCPU, StatusRunCPU Latency

	Stall      Stall
	ReaderWait ReaderWait
	// LongestCommit is the longest commit of any write (the Commit part of
	// its Stall), and LongestOwnCommit the longest of a write in a
	// transaction of its own (a page commit, pruning, usage), with where
	// its time went.
	LongestCommit    time.Duration
	LongestOwnCommit Commit
	Writes           int64 // write transactions
	// SlowWrites counts writes that took longer than 100 ms.
	SlowWrites int64

	// What the invariants were checked against.
	Fulfilled, Expired, Sent, PaymentIntents int
	Pruned                                   int // records cut to tombstones
	Doubled                                  int // sessions whose action ran more than once
	StatusFulfilled                          int // -1 when no status read was given
	RepeatRan                                bool
}

// Targets of issue 9.
const (
	TargetFileSize   = 1 << 30
	TargetRead       = 50 * time.Millisecond
	TargetWriteStall = 100 * time.Millisecond
)

// simClock is the simulated time, read by every component the run drives.
type simClock struct{ ns atomic.Int64 }

func (c *simClock) Now() time.Time  { return time.Unix(0, c.ns.Load()).UTC() }
func (c *simClock) Set(t time.Time) { c.ns.Store(t.UnixNano()) }
func (c *simClock) day0() time.Time { return benchEpoch }
func dayOf(t time.Time) int         { return int(t.Sub(benchEpoch) / (24 * time.Hour)) }
func (c *simClock) day() int        { return dayOf(c.Now()) }
func (c *simClock) hour(d, h int) time.Time {
	return c.day0().Add(time.Duration(d)*24*time.Hour + time.Duration(h)*time.Hour)
}

// benchEpoch is where the simulated year starts.
var benchEpoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// writeStats times every write transaction, whoever makes it.
type writeStats struct {
	clock  *simClock
	db     *boltstore.Store
	views  viewLog
	mu     sync.Mutex
	max    Stall
	commit time.Duration
	own    Commit
	waits  ReaderWait
	n      int64
	slow   int64
}

// remaps reads bbolt's count of node dereferences: it moves only when a
// commit remaps the file.
func (s *writeStats) remaps() int64 {
	st := s.db.Stats()
	return st.TxStats.GetNodeDeref()
}

// viewLog keeps when read transactions ran: those open now, and the last
// few hundred that ended.
type viewLog struct {
	mu   sync.Mutex
	next int
	open map[int]time.Time
	done [512]struct{ from, to time.Time }
	i    int
}

func (l *viewLog) begin() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open == nil {
		l.open = map[int]time.Time{}
	}
	l.next++
	l.open[l.next] = time.Now()
	return l.next
}

func (l *viewLog) end(id int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.done[l.i%len(l.done)] = struct{ from, to time.Time }{l.open[id], time.Now()}
	l.i++
	delete(l.open, id)
}

// longestDuring is the longest any read transaction ran between from and
// to: the most a remap in that span can have waited on readers.
func (l *viewLog) longestDuring(from, to time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var longest time.Duration
	span := func(a, b time.Time) {
		if a.Before(from) {
			a = from
		}
		if b.After(to) {
			b = to
		}
		longest = max(longest, b.Sub(a))
	}
	for _, start := range l.open {
		span(start, to)
	}
	for _, v := range l.done {
		if v.to.After(from) {
			span(v.from, v.to)
		}
	}
	return longest
}

// timedDB is the store as one component sees it, with its writes timed.
// With batch set its writes go through bbolt's Batch: each is the same
// function, run in a transaction it may share with writes from other
// goroutines (see StoreConfig.TxPerWrite).
type timedDB struct {
	db    *boltstore.Store
	op    string
	stats *writeStats
	batch bool
}

func (t timedDB) View(fn func(store.Tx) error) error {
	id := t.stats.views.begin()
	defer t.stats.views.end(id)
	return t.db.View(fn)
}

// Close is the store's: timedDB is a store.Store for store.As.
func (t timedDB) Close() error { return nil }

func (t timedDB) Update(fn func(store.Tx) error) error {
	remaps := t.stats.remaps()
	start := time.Now()
	var in, out time.Time
	var cpuOut time.Duration
	timed := func(tx store.Tx) error {
		in = time.Now()
		err := fn(tx)
		out, cpuOut = time.Now(), threadCPU()
		return err
	}
	var err error
	var before, after bbolt.TxStats
	if t.batch {
		err = t.db.Batch(timed)
	} else {
		// A transaction of its own commits on this goroutine, locked to
		// its thread: the thread's CPU time is the commit's.
		runtime.LockOSThread()
		before = t.db.Stats().TxStats
		err = t.db.Update(timed)
		after = t.db.Stats().TxStats
		if cpuEnd := threadCPU(); cpuOut >= 0 && cpuEnd >= 0 && !out.IsZero() {
			cpuOut = cpuEnd - cpuOut
		} else {
			cpuOut = -1
		}
		runtime.UnlockOSThread()
	}
	end := time.Now()
	took := end.Sub(start)
	s := t.stats
	remapped := s.remaps() != remaps
	var readers time.Duration
	if remapped {
		// out is when this call's function returned; in a batch the
		// commit may start later, never earlier.
		readers = s.views.longestDuring(cmp.Or(out, start), end)
	}
	s.mu.Lock()
	s.n++
	if remapped {
		s.waits.Remaps++
		if readers > s.waits.Max {
			s.waits.Max, s.waits.Day = readers, s.clock.day()
		}
	}
	if !out.IsZero() {
		s.commit = max(s.commit, end.Sub(out))
		if !t.batch && end.Sub(out) > s.own.Took {
			// Between the two reads of the totals only this transaction
			// committed: bbolt has one writer.
			s.own = Commit{Took: end.Sub(out), Spill: after.GetSpillTime() - before.GetSpillTime(),
				Write: after.GetWriteTime() - before.GetWriteTime(), CPU: cpuOut, Op: t.op, Day: s.clock.day()}
		}
	}
	if took > TargetWriteStall {
		s.slow++
	}
	if took > s.max.Took {
		s.max = Stall{Took: took, Op: t.op, Day: s.clock.day()}
		if !in.IsZero() {
			s.max.Wait, s.max.Body, s.max.Commit = in.Sub(start), out.Sub(in), end.Sub(out)
		}
	}
	s.mu.Unlock()
	return err
}

// Sizes of what the simulated traffic carries.
const (
	pageSize      = 100 // events per list page, as Stripe pages them
	fulfillers    = 4   // sessions fulfilled at once (fulfill.concurrency's default)
	lookback      = 10 * time.Minute
	seenMargin    = time.Hour // poller's pruneMargin
	endSamples    = 50        // reads timed at the end
	readerPause   = 5 * time.Millisecond
	notifyOutputB = 120
)

// RunStore writes the simulated year and measures it. The checks are part
// of the run: a result that breaks an invariant is an error, not a figure.
func RunStore(ctx context.Context, cfg StoreConfig) (*StoreReport, error) {
	if cfg.Days <= 0 || cfg.OrdersPerDay <= 0 {
		return nil, fmt.Errorf("bench store: --days and --orders-per-day must be at least 1")
	}
	if cfg.Retention <= 0 {
		return nil, fmt.Errorf("bench store: --retention must be positive")
	}
	path := cfg.Path
	if path == "" {
		dir, err := os.MkdirTemp("", "fulfilld-bench-store-")
		if err != nil {
			return nil, fmt.Errorf("bench store: %w", err)
		}
		defer os.RemoveAll(dir)
		path = filepath.Join(dir, "fulfilld.db")
	} else if _, err := os.Stat(path); err == nil {
		return nil, fmt.Errorf("bench store: %s exists; the benchmark starts from an empty store", path)
	}
	db, err := boltstore.Open(path, false, time.Second)
	if err != nil {
		return nil, fmt.Errorf("bench store: %w", err)
	}
	// The figures are about size and about readers; a year of fsyncs would
	// measure the disk instead and take hours. Every other write is the
	// daemon's, transaction for transaction.
	// A batch closes when the previous one has committed or after this
	// long: short, so that the concurrent writers never idle waiting.
	db.Tune(true, 200*time.Microsecond)
	closed := false
	defer func() {
		if !closed {
			db.Close()
		}
	}()

	r := &StoreReport{Config: cfg, Phases: map[string]time.Duration{}, StatusFulfilled: -1}
	s := &storeRun{cfg: cfg, db: db, rep: r, clock: &simClock{}, ids: newIDs(1)}
	s.clock.Set(benchEpoch)
	s.stats = &writeStats{clock: s.clock, db: db}
	s.body = newBodies(cfg.OutputBytes)

	start := time.Now()
	readCtx, stopReader := context.WithCancel(ctx)
	var reads readSamples
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.read(readCtx, &reads)
	}()
	err = s.year(ctx)
	stopReader()
	wg.Wait()
	r.Wall = time.Since(start)
	if l, err := os.ReadFile("/proc/loadavg"); err == nil {
		r.Load = strings.Join(strings.Fields(string(l))[:3], " ")
	}
	if err != nil {
		return r, err
	}
	r.ScrapeRun, r.StatusRun = summarize(reads.scrape), summarize(reads.status)
	r.ScrapeRunCPU, r.StatusRunCPU = summarize(reads.scrapeCPU), summarize(reads.statusCPU)
	r.Stall, r.Writes, r.SlowWrites = s.stats.max, s.stats.n, s.stats.slow
	r.ReaderWait, r.LongestCommit, r.LongestOwnCommit = s.stats.waits, s.stats.commit, s.stats.own

	// At the end: what an operator's scrape and status see on the store
	// the year left, before anything compacts it.
	var end readSamples
	for range endSamples {
		if err := s.readOnce(&end); err != nil {
			return r, err
		}
	}
	r.ScrapeEnd, r.StatusEnd = summarize(end.scrape), summarize(end.status)
	if err := s.check(ctx); err != nil {
		return r, err
	}
	if err := db.Close(); err != nil {
		return r, fmt.Errorf("bench store: close: %w", err)
	}
	closed = true
	if r.BucketsBefore, err = bucketSizes(path); err != nil {
		return r, err
	}
	sz, err := boltstore.Compact(path, time.Second)
	if err != nil {
		return r, fmt.Errorf("bench store: %w", err)
	}
	r.SizeBefore, r.SizeAfter = sz.Before, sz.After
	if r.Buckets, err = bucketSizes(path); err != nil {
		return r, err
	}
	return r, nil
}

// storeRun is the state of one run.
type storeRun struct {
	cfg   StoreConfig
	db    *boltstore.Store
	rep   *StoreReport
	clock *simClock
	stats *writeStats
	ids   *ids
	body  *bodies
	// ran counts the action's runs per session of the hour being worked;
	// sessions of earlier hours must not run again.
	ranMu sync.Mutex
	ran   map[string]int
	late  atomic.Int64 // runs for a session of an earlier hour
	first string       // the first paid session, asked for again at the end
}

// dbFor is the store as one component sees it. The fulfiller's and the
// notifier's writes are batched unless TxPerWrite says otherwise.
func (s *storeRun) dbFor(op string) timedDB {
	batch := !s.cfg.TxPerWrite && (op == "fulfill" || op == "notify")
	return timedDB{db: s.db, op: op, stats: s.stats, batch: batch}
}

// order is one simulated order: a paid session, an abandoned one, a
// PaymentIntent.
type order struct {
	paid, abandoned, pi string
	evPaid, evExp, evPI string
	created             time.Time
}

// year writes every simulated hour: list, fulfil, notify, prune.
func (s *storeRun) year(ctx context.Context) error {
	f := &fulfill.Fulfiller{
		DB:          store.As[fulfill.Tx](s.dbFor("fulfill")),
		Sessions:    s.body,
		Action:      actionFunc(s.fulfilled),
		MaxAttempts: 8,
		Now:         s.clock.Now,
	}
	n := &fulfill.Deliverer{
		DB:           store.As[fulfill.Tx](s.dbFor("notify")),
		Destinations: map[string]fulfill.Action{fulfill.DestNotify: actionFunc(s.notified)},
		MaxAttempts:  8,
		Concurrency:  fulfillers,
		Now:          s.clock.Now,
	}
	closedWake := make(chan struct{})
	close(closedWake)
	rng := rand.New(rand.NewPCG(2, 9))
	var pos cursor.Position
	month := time.Now()
	for d := range s.cfg.Days {
		for h := range 24 {
			if err := ctx.Err(); err != nil {
				return err
			}
			from := s.clock.hour(d, h)
			k := s.cfg.OrdersPerDay*(h+1)/24 - s.cfg.OrdersPerDay*h/24
			orders := make([]order, k)
			for i := range orders {
				orders[i] = s.ids.order(from.Add(time.Duration(rng.Int64N(int64(time.Hour)))))
			}
			slices.SortFunc(orders, func(a, b order) int { return a.created.Compare(b.created) })
			s.clock.Set(from.Add(time.Hour))
			if s.first == "" && k > 0 {
				s.first = orders[0].paid
			}

			t := time.Now()
			pages, err := s.list(orders, &pos)
			if err != nil {
				return err
			}
			s.phase("list events (page commits)", t)

			// Both queues are worked at once, as in the daemon.
			t = time.Now()
			var res fulfill.PassResult
			var nerr error
			notified := make(chan struct{})
			go func() {
				defer close(notified)
				res, nerr = n.Run(ctx, fulfill.RunOptions{Wake: closedWake, UntilIdle: true})
			}()
			ferr := s.fulfil(ctx, f, orders)
			<-notified
			if ferr != nil {
				return ferr
			}
			if nerr != nil {
				return fmt.Errorf("notify: %w", nerr)
			}
			if res.Fulfilled != k {
				return fmt.Errorf("day %d hour %d: %d notifications sent, want %d", d, h, res.Fulfilled, k)
			}
			s.phase("fulfil and notify (Fulfiller.Fulfill, Deliverer.Run)", t)

			t = time.Now()
			// The daemon prunes hourly, on Stripe's clock.
			pruned, err := fulfill.PruneSettled(ctx, store.As[fulfill.Tx](s.dbFor("prune")), s.clock.Now().Add(-s.cfg.Retention),
				s.cfg.Retention >= 31*24*time.Hour)
			if err != nil {
				return fmt.Errorf("prune: %w", err)
			}
			s.rep.Pruned += pruned
			s.phase("retention (PruneSettled)", t)

			t = time.Now()
			if err := s.usage(from, pages, k); err != nil {
				return err
			}
			s.phase("api usage", t)
			s.rep.Orders += k
			s.rep.Events += 3 * k
		}
		if s.cfg.Progress != nil && ((d+1)%30 == 0 || d+1 == s.cfg.Days) {
			size := int64(0)
			if fi, err := os.Stat(s.db.Path()); err == nil {
				size = fi.Size()
			}
			s.stats.mu.Lock()
			stall := s.stats.max
			s.stats.mu.Unlock()
			fmt.Fprintf(s.cfg.Progress, "day %3d: %d orders, file %s, longest write so far %s (%s); %s for the last %d days\n",
				d+1, s.rep.Orders, mib(size), ms(stall.Took), stall.Op, time.Since(month).Round(time.Second), min(30, (d+1)-d/30*30))
			month = time.Now()
		}
	}
	if late := s.late.Load(); late > 0 {
		return fmt.Errorf("the action ran %d times for sessions fulfilled in an earlier hour", late)
	}
	return nil
}

func (s *storeRun) phase(name string, since time.Time) {
	s.rep.Phases[name] += time.Since(since)
}

// list commits the hour's events the way the poller commits a page: each
// page's events routed, deduplicated against the seen-set and marked seen,
// the event counters and the position moved, all in one transaction; the
// seen-set pruned when complete_until moves. It returns the pages listed.
func (s *storeRun) list(orders []order, pos *cursor.Position) (int, error) {
	now := s.clock.Now()
	type event struct {
		id, typ string
		created time.Time
		o       *order
	}
	evs := make([]event, 0, 3*len(orders))
	for i := range orders {
		o := &orders[i]
		evs = append(evs,
			event{o.evPaid, poller.TypeCompleted, o.created, o},
			event{o.evExp, poller.TypeExpired, o.created, o},
			event{o.evPI, "payment_intent.succeeded", o.created, o})
	}
	db := s.dbFor("page")
	pages := 0
	for len(evs) > 0 {
		page := evs[:min(pageSize, len(evs))]
		evs = evs[len(page):]
		pages++
		last := page[len(page)-1].created
		err := db.Update(func(tx store.Tx) error {
			counts := map[[2]string]int{}
			for _, ev := range page {
				if seen, err := cursor.Seen(tx, ev.id, ev.created); err != nil {
					return err
				} else if seen {
					continue
				}
				var outcome string
				switch ev.typ {
				case poller.TypeCompleted:
					queued, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: ev.o.paid, EventID: ev.id,
						Trigger: fulfill.TriggerEvent, At: now})
					if err != nil {
						return err
					}
					outcome = poller.OutcomeHandled
					if queued {
						outcome = poller.OutcomeQueued
					}
				case poller.TypeExpired:
					if _, err := fulfill.End(tx, ev.o.abandoned, fulfill.StateExpired, ev.id, now); err != nil {
						return err
					}
					outcome = poller.OutcomeEnded
					if _, err := fulfill.EnqueueDelivery(tx, fulfill.DestNotify, ev.id, ev.typ, s.body.expired(ev.id, ev.o), now); err != nil {
						return err
					}
				default:
					if err := fulfill.RecordPaymentIntent(tx, fulfill.PaymentIntent{ID: ev.o.pi, Status: "succeeded",
						EventID: ev.id, EventType: ev.typ, At: ev.created}); err != nil {
						return err
					}
					outcome = poller.OutcomeRecorded
				}
				counts[[2]string{ev.typ, outcome}]++
				if err := cursor.MarkSeen(tx, ev.id, ev.created); err != nil {
					return err
				}
			}
			if err := cursor.Count(tx, counts); err != nil {
				return err
			}
			p, err := cursor.Load(tx)
			if err != nil {
				return err
			}
			// The tip follows the page; complete_until trails it by the
			// lookback, as the re-scan would leave it.
			p.Tip = last
			if settled := last.Add(-lookback); settled.After(p.Settled) {
				p.Settled = settled
				if _, err := cursor.Prune(tx, settled.Add(-lookback-seenMargin), 200); err != nil {
					return fmt.Errorf("prune seen events: %w", err)
				}
			}
			if err := cursor.Save(tx, p); err != nil {
				return err
			}
			*pos = p
			return cursor.SavePoll(tx, cursor.Poll{At: now, Outcome: "ok", Listed: len(page), New: len(page),
				LastSuccess: now})
		})
		if err != nil {
			return pages, fmt.Errorf("commit page: %w", err)
		}
	}
	return pages, nil
}

// fulfil runs each paid session of the hour through Fulfiller.Fulfill, a
// few at once, as the queue worker would.
func (s *storeRun) fulfil(ctx context.Context, f *fulfill.Fulfiller, orders []order) error {
	s.ranMu.Lock()
	s.ran = make(map[string]int, len(orders))
	for _, o := range orders {
		s.ran[o.paid] = 0
	}
	s.ranMu.Unlock()
	next := make(chan order)
	errs := make(chan error, fulfillers)
	var wg sync.WaitGroup
	for range fulfillers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for o := range next {
				rec, err := f.Fulfill(ctx, o.paid, fulfill.TriggerEvent, o.evPaid)
				if err == nil && rec.State != fulfill.StateFulfilled {
					err = fmt.Errorf("session %s ended %s", o.paid, rec.State)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for _, o := range orders {
		select {
		case next <- o:
		case err = <-errs:
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	if err != nil {
		return fmt.Errorf("fulfil: %w", err)
	}
	s.ranMu.Lock()
	defer s.ranMu.Unlock()
	for id, n := range s.ran {
		if n != 1 {
			s.rep.Doubled++
			if n == 0 {
				return fmt.Errorf("fulfil: the action never ran for %s", id)
			}
		}
	}
	return nil
}

// usage records the hour's API requests as the Stripe transport does after
// each poll, so the usage days fold as a year of them would.
func (s *storeRun) usage(day time.Time, pages, sessions int) error {
	u := stripeapi.Usage{
		Requests: map[string]int64{"GET /v1/events": int64(pages), "GET /v1/checkout/sessions/:id": int64(sessions)},
		ByStatus: map[string]int64{"200": int64(pages + sessions)},
	}
	return s.dbFor("usage").Update(func(tx store.Tx) error { return stripeapi.SaveUsage(tx, day, u) })
}

// fulfilled is the fulfillment action: it counts the run and prints the
// configured amount of output.
func (s *storeRun) fulfilled(_ context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	id := ""
	for _, e := range d.Env {
		if v, ok := strings.CutPrefix(e, "FULFILLD_SESSION_ID="); ok {
			id = v
		}
	}
	s.ranMu.Lock()
	if _, ok := s.ran[id]; ok {
		s.ran[id]++
	} else {
		s.late.Add(1)
	}
	s.ranMu.Unlock()
	return fulfill.Outcome{Output: s.body.output(id, s.clock.Now())}, nil
}

func (s *storeRun) notified(context.Context, fulfill.Delivery) (fulfill.Outcome, error) {
	return fulfill.Outcome{Output: s.body.notifyOutput}, nil
}

type actionFunc func(context.Context, fulfill.Delivery) (fulfill.Outcome, error)

func (a actionFunc) Deliver(ctx context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	return a(ctx, d)
}

// readSamples are read latencies.
type readSamples struct {
	mu             sync.Mutex
	scrape, status []time.Duration
	// scrapeCPU and statusCPU are the same reads' time on a CPU, when the
	// reader's thread could be measured (Linux).
	scrapeCPU, statusCPU []time.Duration
}

// threadCPU is the calling thread's CPU time, or -1 where the system
// cannot tell. The reader locks its goroutine to its thread, so this is
// the reads' own CPU: the rest of a read's wall time it spent waiting —
// for a CPU, or for bbolt.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return -1
	}
	return time.Duration(ts.Nano())
}

// read scrapes and reads status over and over until ctx ends, as an
// impatient operator would: the harshest reader a writer could meet.
func (s *storeRun) read(ctx context.Context, out *readSamples) {
	m := metrics.New(s.dbFor("read"), s.clock.Now)
	for ctx.Err() == nil {
		if err := s.readWith(m, out); err != nil {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(readerPause):
		}
	}
}

func (s *storeRun) readOnce(out *readSamples) error {
	return s.readWith(metrics.New(s.dbFor("read"), s.clock.Now), out)
}

func (s *storeRun) readWith(m *metrics.Metrics, out *readSamples) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c, t := threadCPU(), time.Now()
	if _, err := m.Registry.Gather(); err != nil {
		return fmt.Errorf("scrape: %w", err)
	}
	scrape, scrapeCPU := time.Since(t), threadCPU()-c
	var status, statusCPU time.Duration
	if s.cfg.Status != nil {
		c, t = threadCPU(), time.Now()
		if _, err := s.cfg.Status(s.dbFor("read"), s.clock.Now()); err != nil {
			return fmt.Errorf("status: %w", err)
		}
		status, statusCPU = time.Since(t), threadCPU()-c
	}
	out.mu.Lock()
	out.scrape = append(out.scrape, scrape)
	if c >= 0 {
		out.scrapeCPU = append(out.scrapeCPU, scrapeCPU)
	}
	if s.cfg.Status != nil {
		out.status = append(out.status, status)
		if c >= 0 {
			out.statusCPU = append(out.statusCPU, statusCPU)
		}
	}
	out.mu.Unlock()
	return nil
}

// check holds the year to what fulfilld promises: every order fulfilled
// once and counted, expiries and notifications counted, records past
// retention cut to tombstones that still stop a repeat.
func (s *storeRun) check(ctx context.Context) error {
	r := s.rep
	var notes map[string]int
	err := s.db.View(func(tx store.Tx) error {
		sum, err := fulfill.Summarize(tx)
		if err != nil {
			return err
		}
		r.Fulfilled, r.Expired = sum.Sessions[fulfill.StateFulfilled], sum.Sessions[fulfill.StateExpired]
		r.PaymentIntents = sum.PaymentIntents["succeeded"]
		all, _, err := fulfill.DeliverySummary(tx, 0)
		if err != nil {
			return err
		}
		notes = all[fulfill.DestNotify]
		r.Sent = notes[fulfill.DeliverySent]
		return nil
	})
	if err != nil {
		return fmt.Errorf("bench store: read the counts: %w", err)
	}
	var problems []string
	want := func(what string, got int) {
		if got != r.Orders {
			problems = append(problems, fmt.Sprintf("%s: %d, want %d (the orders)", what, got, r.Orders))
		}
	}
	// Past a retention of 31 days or more, records that prevent nothing
	// (expired sessions, sent notifications, PaymentIntent statuses) are
	// deleted: only the last retention's worth of them stays, give or take
	// the hour being pruned.
	forgotten := func(what string, got int) {
		days := int(s.cfg.Retention / (24 * time.Hour))
		if s.cfg.Retention < 31*24*time.Hour || days >= s.cfg.Days {
			want(what, got)
			return
		}
		low := s.cfg.OrdersPerDay * days
		if got < low || got > low+s.cfg.OrdersPerDay {
			problems = append(problems, fmt.Sprintf("%s: %d, want the last %d days' %d (records past retention are deleted)", what, got, days, low))
		}
	}
	want("fulfilled", r.Fulfilled)
	forgotten("expired", r.Expired)
	forgotten("notifications sent", r.Sent)
	forgotten("payment intents succeeded", r.PaymentIntents)
	if r.Doubled > 0 {
		problems = append(problems, fmt.Sprintf("%d sessions' action ran more than once", r.Doubled))
	}
	if s.cfg.Status != nil {
		st, err := s.cfg.Status(s.db, s.clock.Now())
		if err != nil {
			return fmt.Errorf("bench store: status: %w", err)
		}
		r.StatusFulfilled = st[string(fulfill.StateFulfilled)]
		want("status: fulfilled", r.StatusFulfilled)
		forgotten("status: expired", st[string(fulfill.StateExpired)])
	}
	// The oldest order is past retention when the year is longer than it.
	if old := benchEpoch.Add(time.Hour); s.clock.Now().Add(-s.cfg.Retention).After(old) && s.first != "" {
		err := s.db.View(func(tx store.Tx) error {
			rec, ok, err := fulfill.Get(tx, s.first)
			if err != nil || !ok {
				return cmp.Or(err, errors.New("the first session has no record"))
			}
			if !rec.Pruned || rec.Output != "" || rec.State != fulfill.StateFulfilled {
				problems = append(problems, fmt.Sprintf("%s is past retention but not a fulfilled tombstone (pruned %t, %d bytes of output, %s)",
					s.first, rec.Pruned, len(rec.Output), rec.State))
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("bench store: read %s: %w", s.first, err)
		}
		if r.Pruned == 0 {
			problems = append(problems, "nothing was pruned")
		}
		// A session id seen again after retention is never fulfilled twice.
		s.ranMu.Lock()
		s.ran = map[string]int{}
		s.ranMu.Unlock()
		f := &fulfill.Fulfiller{DB: store.As[fulfill.Tx](s.dbFor("fulfill")), Sessions: s.body, Action: actionFunc(s.fulfilled), MaxAttempts: 8, Now: s.clock.Now}
		rec, err := f.Fulfill(ctx, s.first, fulfill.TriggerManual, "")
		if err != nil {
			return fmt.Errorf("bench store: ask for %s again: %w", s.first, err)
		}
		r.RepeatRan = s.late.Load() > 0
		if r.RepeatRan || rec.State != fulfill.StateFulfilled {
			problems = append(problems, fmt.Sprintf("%s asked for again after retention: the action ran again (%t), state %s", s.first, r.RepeatRan, rec.State))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("bench store: the store broke its promises:\n  %s", strings.Join(problems, "\n  "))
	}
	return nil
}

// bucketSizes reads what each top-level bucket of the file holds.
func bucketSizes(path string) ([]BucketSize, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("bench store: reopen %s: %w", path, err)
	}
	defer db.Close()
	var out []BucketSize
	err = db.View(func(tx *bbolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bbolt.Bucket) error {
			st := b.Stats()
			out = append(out, BucketSize{Name: string(name), Keys: st.KeyN,
				Bytes: int64(st.BranchAlloc + st.LeafAlloc + st.InlineBucketInuse)})
			return nil
		})
	})
	slices.SortFunc(out, func(a, b BucketSize) int { return cmp.Compare(b.Bytes, a.Bytes) })
	return out, err
}

// ids makes Stripe-shaped ids: random base62 tails of Stripe's lengths, so
// keys land in the B+trees as real ones would — scattered, not appended.
type ids struct{ rng *rand.Rand }

func newIDs(seed uint64) *ids { return &ids{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))} }

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

func (g *ids) id(prefix string, n int) string {
	b := make([]byte, len(prefix), len(prefix)+n)
	copy(b, prefix)
	for range n {
		b = append(b, base62[g.rng.IntN(len(base62))])
	}
	return string(b)
}

// order makes one order's ids: cs_live_ + 58 (66 in all, as Stripe's
// Checkout Session ids are), pi_ + 24, evt_ + 24.
func (g *ids) order(created time.Time) order {
	return order{
		paid: g.id("cs_live_", 58), abandoned: g.id("cs_live_", 58), pi: g.id("pi_", 24),
		evPaid: g.id("evt_", 24), evExp: g.id("evt_", 24), evPI: g.id("evt_", 24),
		created: created,
	}
}

// bodies are the payloads the simulated Stripe and action hand over.
type bodies struct {
	session      []byte // a paid session, line items expanded
	outputBytes  int    // how much the fulfillment action prints
	notifyOutput string
}

func newBodies(outputBytes int) *bodies {
	return &bodies{
		session:      []byte(`{"id":"cs_live_x","object":"checkout.session","payment_status":"paid","status":"complete","line_items":{"data":[]}}`),
		outputBytes:  max(outputBytes, 0),
		notifyOutput: strings.Repeat("x", notifyOutputB),
	}
}

// Names, places and products the simulated shop's orders draw from.
var (
	firstNames = []string{"Johanna", "Pieter", "Sofie", "Lukas", "Emma", "Noah", "Marie", "Finn", "Anouk", "Daan", "Lena", "Jonas"}
	lastNames  = []string{"de Vries", "Jansen", "Müller", "Peeters", "Bakker", "Schmidt", "Visser", "Maes", "Smit", "Wagner"}
	streets    = []string{"Westersingel", "Kerkstraat", "Hauptstraße", "Rue Neuve", "Dorpsstraat", "Bahnhofstraße", "Meir", "Stationsweg"}
	cities     = []string{"Rotterdam|NL|3015 LD", "Utrecht|NL|3511 AB", "Köln|DE|50667", "Antwerpen|BE|2000", "Gent|BE|9000", "Berlin|DE|10115"}
	products   = []string{"SKU-TEE-BLK-M|Organic tee, black, M|2900", "SKU-MUG-350|Stoneware mug 350 ml|1800",
		"SKU-CAP-NVY|Cap, navy|2400", "SKU-BAG-TOTE|Canvas tote|1500", "SKU-SOCK-3P|Socks, 3 pairs|1200", "SKU-HOOD-GRY-L|Hoodie, grey, L|5900"}
)

// output is what the fulfillment action prints for one session: the log
// lines and the warehouse API's JSON answer a real shipping script
// prints, with this order's own ids, times, customer, items, tracking
// number and label token, cut to the configured size. It is text with
// the repetition real output has, not random bytes and not one line over
// and over: what compressing it gains is what a real action's output
// would gain. The same session always gets the same output.
func (b *bodies) output(sessionID string, at time.Time) string {
	if b.outputBytes == 0 {
		return ""
	}
	var seed uint64
	for _, c := range []byte(sessionID) {
		seed = seed*131 + uint64(c)
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	tok := func(n int) string {
		t := make([]byte, n)
		for i := range t {
			t[i] = base62[rng.IntN(len(base62))]
		}
		return string(t)
	}
	pick := func(xs []string) string { return xs[rng.IntN(len(xs))] }
	name := pick(firstNames) + " " + pick(lastNames)
	city := strings.Split(pick(cities), "|")
	street := fmt.Sprintf("%s %d", pick(streets), 1+rng.IntN(240))
	order := fmt.Sprintf("ORD-%07d", rng.IntN(10_000_000))
	tracking := fmt.Sprintf("1Z%s%010d", strings.ToUpper(tok(6)), rng.Int64N(10_000_000_000))
	reqID := fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", rng.Uint32(), rng.Uint32()&0xffff, rng.Uint32()&0xffff, rng.Uint32()&0xffff, rng.Uint64()&0xffffffffffff)
	t := at
	ts := func() string {
		t = t.Add(time.Duration(20+rng.IntN(900)) * time.Millisecond)
		return t.Format("2006-01-02T15:04:05.000Z07:00")
	}
	var w strings.Builder
	fmt.Fprintf(&w, "%s INFO fulfil start session=%s order=%s attempt=1\n", ts(), sessionID, order)
	fmt.Fprintf(&w, "%s INFO stripe: session %s paid, amount_total=%d eur, customer=%q <%s@example.com>\n",
		ts(), sessionID, 1500+rng.IntN(20000), name, strings.ToLower(strings.ReplaceAll(name, " ", "."))+tok(3))
	var items []string
	total := 0
	for range 1 + rng.IntN(4) {
		p := strings.Split(pick(products), "|")
		qty := 1 + rng.IntN(3)
		price, _ := strconv.Atoi(p[2])
		total += qty * price
		fmt.Fprintf(&w, "%s INFO line item %s %q qty=%d unit_amount=%s\n", ts(), p[0], p[1], qty, p[2])
		items = append(items, fmt.Sprintf(`{"sku":%q,"quantity":%d,"bin":"%c-%02d-%02d"}`, p[0], qty, 'A'+rune(rng.IntN(8)), rng.IntN(40), rng.IntN(12)))
	}
	fmt.Fprintf(&w, "%s INFO POST https://wms.example.com/v2/shipments Idempotency-Key: fulfilld-%s\n", ts(), sessionID)
	fmt.Fprintf(&w, `%s INFO 201 Created in %dms request_id=%s {"id":"shp_%s","order":%q,"status":"label_created",`+
		`"carrier":"ups","service":"standard","tracking_number":%q,"label_url":"https://wms.example.com/labels/%s.pdf",`+
		`"ship_to":{"name":%q,"line1":%q,"city":%q,"postal_code":%q,"country":%q},"items":[%s],"weight_grams":%d,"value":%d}`+"\n",
		ts(), 40+rng.IntN(400), reqID, tok(14), order, tracking, tok(22), name, street, city[0], city[2], city[1],
		strings.Join(items, ","), 150+rng.IntN(3000), total)
	fmt.Fprintf(&w, "%s INFO invoice INV-%06d mailed to customer\n", ts(), rng.IntN(1_000_000))
	fmt.Fprintf(&w, "%s INFO fulfil done session=%s tracking=%s\n", ts(), sessionID, tracking)
	for i := 0; w.Len() < b.outputBytes; i++ {
		fmt.Fprintf(&w, "%s DEBUG wms poll %d: shipment %s status=%s eta=%s\n", ts(), i+1, order,
			pick([]string{"label_created", "picked", "packed", "handed_over"}), t.Add(48*time.Hour).Format("2006-01-02"))
	}
	out := w.String()
	n := b.outputBytes
	for n > 0 && n < len(out) && !utf8.RuneStart(out[n]) {
		n-- // not inside a name's ü
	}
	out = out[:n] + strings.Repeat(" ", b.outputBytes-n)
	return out
}

// GetSession is the simulated Stripe's answer: every session is paid.
func (b *bodies) GetSession(_ context.Context, id string) (*stripeapi.Session, error) {
	return &stripeapi.Session{ID: id, Status: "complete", PaymentStatus: "paid", LineItems: 2, JSON: b.session}, nil
}

// expired is a checkout.session.expired event as Stripe lists it, with the
// customer's details a real one carries (about 2.5 KiB): what the
// notification keeps until it is sent.
func (b *bodies) expired(evID string, o *order) []byte {
	c := strconv.FormatInt(o.created.Unix(), 10)
	exp := strconv.FormatInt(o.created.Add(24*time.Hour).Unix(), 10)
	return []byte(`{"id":"` + evID + `","object":"event","api_version":"2023-10-16","created":` + exp +
		`,"data":{"object":{"id":"` + o.abandoned + `","object":"checkout.session","after_expiration":null,` +
		`"allow_promotion_codes":null,"amount_subtotal":4900,"amount_total":5880,"automatic_tax":{"enabled":true,"liability":null,"status":"complete"},` +
		`"billing_address_collection":"required","cancel_url":"https://shop.example.com/cart","client_reference_id":"cart_8c1f2e4a",` +
		`"consent":null,"consent_collection":null,"created":` + c + `,"currency":"eur","currency_conversion":null,"custom_fields":[],` +
		`"custom_text":{"after_submit":null,"shipping_address":null,"submit":null,"terms_of_service_acceptance":null},"customer":null,` +
		`"customer_creation":"if_required","customer_details":{"address":{"city":"Rotterdam","country":"NL","line1":"Westersingel 112",` +
		`"line2":"3rd floor","postal_code":"3015 LD","state":null},"email":"j.de.vries.` + o.pi[3:11] + `@example.com","name":"Johanna de Vries",` +
		`"phone":"+31612345678","tax_exempt":"none","tax_ids":[]},"customer_email":null,"expires_at":` + exp + `,"invoice":null,` +
		`"invoice_creation":{"enabled":false,"invoice_data":{"account_tax_ids":null,"custom_fields":null,"description":null,"footer":null,` +
		`"issuer":null,"metadata":{},"rendering_options":null}},"livemode":true,"locale":"nl","metadata":{"cart":"cart_8c1f2e4a","campaign":"spring"},` +
		`"mode":"payment","payment_intent":null,"payment_link":null,"payment_method_collection":"if_required",` +
		`"payment_method_configuration_details":{"id":"pmc_1OabcdEFghijKLmn","parent":null},"payment_method_options":{"card":{"request_three_d_secure":"automatic"}},` +
		`"payment_method_types":["card","ideal","bancontact"],"payment_status":"unpaid","phone_number_collection":{"enabled":true},` +
		`"recovered_from":null,"setup_intent":null,"shipping_address_collection":{"allowed_countries":["NL","BE","DE"]},` +
		`"shipping_cost":{"amount_subtotal":495,"amount_tax":0,"amount_total":495,"shipping_rate":"shr_1OabcdEFghijKLmnOPqr"},` +
		`"shipping_details":{"address":{"city":"Rotterdam","country":"NL","line1":"Westersingel 112","line2":"3rd floor","postal_code":"3015 LD","state":null},` +
		`"name":"Johanna de Vries"},"shipping_options":[{"shipping_amount":495,"shipping_rate":"shr_1OabcdEFghijKLmnOPqr"}],"status":"expired",` +
		`"submit_type":"pay","subscription":null,"success_url":"https://shop.example.com/thanks?session_id={CHECKOUT_SESSION_ID}",` +
		`"total_details":{"amount_discount":0,"amount_shipping":495,"amount_tax":980},"ui_mode":"hosted","url":null}},` +
		`"livemode":true,"pending_webhooks":1,"request":{"id":null,"idempotency_key":null},"type":"checkout.session.expired"}`)
}

// PrintStore writes the report for a person, the targets beside the figures.
func PrintStore(w io.Writer, r *StoreReport) {
	c := r.Config
	fmt.Fprintf(w, "fulfilld bench store: %d simulated days × %d orders = %d orders (%d events: completed, expired, payment_intent.succeeded);\n",
		c.Days, c.OrdersPerDay, r.Orders, r.Events)
	fmt.Fprintf(w, "retention %s, notify on, action output %d B; %d cores; wall %s", days(c.Retention), c.OutputBytes, runtimeCPUs(), r.Wall.Round(time.Second))
	if r.Load != "" {
		fmt.Fprintf(w, "; load average at the end %s", r.Load)
	}
	fmt.Fprintf(w, "\n\n")
	row := func(what, got, target, verdict string) {
		fmt.Fprintf(w, "  %-34s %-40s %-10s %s\n", what, got, target, verdict)
	}
	row("", "measured", "target", "")
	row("file size at the end", mib(r.SizeBefore), "< 1 GiB", met(r.SizeBefore < TargetFileSize))
	row("file size after compact", mib(r.SizeAfter), "< 1 GiB", met(r.SizeAfter < TargetFileSize))
	row("bytes per order (after compact)", fmt.Sprintf("%d B", r.SizeAfter/int64(max(r.Orders, 1))), "", "")
	row("/metrics scrape at the end", lat(r.ScrapeEnd), "≤ 50 ms", met(r.ScrapeEnd.Max <= TargetRead))
	if c.Status != nil {
		row("status read at the end", lat(r.StatusEnd), "≤ 50 ms", met(r.StatusEnd.Max <= TargetRead))
	}
	row("/metrics scrape during the year", lat(r.ScrapeRun), "≤ 50 ms", met(r.ScrapeRun.Max <= TargetRead))
	if r.ScrapeRunCPU.N > 0 {
		row("  the same on a CPU", lat(r.ScrapeRunCPU), "", "")
	}
	if c.Status != nil {
		row("status read during the year", lat(r.StatusRun), "≤ 50 ms", met(r.StatusRun.Max <= TargetRead))
		if r.StatusRunCPU.N > 0 {
			row("  the same on a CPU", lat(r.StatusRunCPU), "", "")
		}
	}
	wait := "none (no commit remapped the file)"
	if r.ReaderWait.Remaps > 0 {
		wait = fmt.Sprintf("≤ %s (%d remaps; the longest day %d)", ms(r.ReaderWait.Max), r.ReaderWait.Remaps, r.ReaderWait.Day+1)
	}
	row("longest wait of a write on a reader", wait, "≤ 100 ms", met(r.ReaderWait.Max <= TargetWriteStall))
	row("longest write, call to return", fmt.Sprintf("%s (%s, day %d)", ms(r.Stall.Took), r.Stall.Op, r.Stall.Day+1), "(≤ 100 ms)", met(r.Stall.Took <= TargetWriteStall))
	row("  of which", fmt.Sprintf("wait %s, write %s, commit %s", ms(r.Stall.Wait), ms(r.Stall.Body), ms(r.Stall.Commit)), "", "")
	row("longest commit of any write", ms(r.LongestCommit), "", "")
	if o := r.LongestOwnCommit; o.Took > 0 {
		cpu := "not measured"
		if o.CPU >= 0 {
			cpu = ms(o.CPU)
		}
		row("  of a write in its own transaction", fmt.Sprintf("%s (%s, day %d): spill %s, write %s; on a CPU %s",
			ms(o.Took), o.Op, o.Day+1, ms(o.Spill), ms(o.Write), cpu), "", "")
	}
	row("writes over 100 ms", fmt.Sprintf("%d of %d", r.SlowWrites, r.Writes), "", "")

	fmt.Fprintf(w, "\nchecked: %d fulfilled (status says %s), none twice; %d expired; %d notifications sent; %d PaymentIntents;\n",
		r.Fulfilled, statusSays(r.StatusFulfilled), r.Expired, r.Sent, r.PaymentIntents)
	fmt.Fprintf(w, "%d records pruned to tombstones", r.Pruned)
	if r.Pruned > 0 {
		fmt.Fprintf(w, "; the oldest session, asked for again after retention, did not run again")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "\nwhere the bytes are (pages allocated per bucket, after compact; at the end of the year before it):\n")
	before := map[string]int64{}
	for _, b := range r.BucketsBefore {
		before[b.Name] = b.Bytes
	}
	for _, b := range r.Buckets {
		if b.Bytes < 64<<10 {
			continue
		}
		fmt.Fprintf(w, "  %-20s %10d keys  %10s  %4d B/key   (%s before)\n", b.Name, b.Keys, mib(b.Bytes), b.Bytes/int64(max(b.Keys, 1)), mib(before[b.Name]))
	}
	fmt.Fprintf(w, "\nwhere the time went:\n")
	names := make([]string, 0, len(r.Phases))
	for k := range r.Phases {
		names = append(names, k)
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(r.Phases[b], r.Phases[a]) })
	for _, k := range names {
		fmt.Fprintf(w, "  %-30s %s\n", k, secs(r.Phases[k]))
	}
	fmt.Fprintf(w, "\nWrites run with bbolt's NoSync (no fsync per commit): the figures are size and reader contention, not the disk.\n")
	if !c.TxPerWrite {
		fmt.Fprintf(w, "The fulfiller's and notifier's writes share transactions through bbolt's Batch (--tx-per-write: one each, as the daemon).\n")
	}
	fmt.Fprintf(w, "A write waits on a reader only when its commit remaps the file: bbolt then waits for every open read transaction.\n")
	fmt.Fprintf(w, "That wait is bounded by the longest read transaction open during such a commit (the target's own words);\n")
	fmt.Fprintf(w, "a write's whole time — the writer lock (\"wait\": other writers, not readers), its work and its commit — is the\n")
	fmt.Fprintf(w, "stricter reading, shown in parentheses.\n")
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

func lat(l Latency) string {
	if l.N == 0 {
		return "not measured"
	}
	return fmt.Sprintf("median %s, max %s (%d reads)", ms(l.Median), ms(l.Max), l.N)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func days(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

func statusSays(n int) string {
	if n < 0 {
		return "not read"
	}
	return strconv.Itoa(n)
}
