// Package bench measures fulfilld's backfill against a simulated Stripe with
// real latency and real limits, and compares it with the floor Stripe's
// limits set and with the loop Stripe's docs show.
//
// The floor: a backfill of E events holding S paid sessions needs at least
// E/100 event pages and, with sessions read a hundred to a list page, S/100
// session pages; with per-endpoint limit L and global limit G it cannot
// take less than max(event pages/L, session pages/L, all of them/G). The
// old design's floor, a retrieve per session, is printed beside it. Pace
// runs the daemon's poll job on a simulated clock to show what the read
// budget makes of the poll interval.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/cluster"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/internal/stripesim"
	"github.com/fulfilld/fulfilld/poller"
)

// Config is one benchmark run.
type Config struct {
	Events, Sessions int
	Latency, Jitter  time.Duration
	// GlobalLimit and EndpointLimit are the simulated Stripe's limits.
	GlobalLimit, EndpointLimit float64
	// RateLimit is fulfilld's stripe.rate_limit; 0 means the simulator's
	// global limit.
	RateLimit float64
	// Concurrency is fulfill.concurrency.
	Concurrency int
	// Store is the directory for the bbolt files; "" = a temporary one.
	Store string
	// Postgres, when set, is a PostgreSQL server's DSN (a role allowed to
	// CREATE DATABASE): the daemon path and the ceiling also run there,
	// with one instance and with two on one database, each phase on a
	// database of its own, dropped after.
	Postgres string
	// Docs also times the docs-literal loop, on a second simulator with the
	// same data and limits, while the daemon runs.
	Docs bool
	// Ceiling also measures the local ceiling: a poll with no latency and
	// no limits.
	Ceiling bool
	// SimCommand starts a `bench sim` child with the given flags.
	SimCommand func(ctx context.Context, args []string) *exec.Cmd
	// Progress, when set, gets a line every few seconds.
	Progress io.Writer
	// Logger gets the daemon's warnings.
	Logger *slog.Logger
	// CPUProfile and HeapProfile, when set, name files the daemon path's
	// phase writes a CPU profile and a heap profile to; the heap profile
	// is the one taken when anonymous memory last reached a new peak.
	// The local ceiling's go to the same names with ".ceiling" added.
	CPUProfile, HeapProfile string
}

// Report is what a run measured.
type Report struct {
	Config    Config
	Lists     int // list calls the backfill needs at least
	Retrieves int
	Floor     time.Duration // the old design's: a retrieve per session
	// SessionPages is the session list pages batch hydration needs at
	// least (a hundred sessions each), BatchFloor this design's floor:
	// max(event pages/L, session pages/L, all requests/G).
	SessionPages int
	BatchFloor   time.Duration
	// Pace is the simulated month of polling (RunPace), when asked for.
	Pace       []PaceReport
	Daemon     Phase
	Fulfilled  int // sessions fulfilled
	Doubled    int // sessions whose action ran more than once
	Docs       *Phase
	Ceiling    *Phase
	CeilingEPS float64 // events/s through dedupe + durable enqueue
	// Backends are the daemon path and the ceiling on each store: bbolt
	// first, then PostgreSQL with one and two instances when asked.
	Backends []BackendRun
}

// BackendRun is the daemon path and the local ceiling on one backend.
type BackendRun struct {
	Name      string
	Instances int
	Backfill  daemonResult
	Ceiling   *daemonResult
	// Errors are the phases that failed, each with why.
	Errors []string
}

// Phase is one timed run.
type Phase struct {
	Wall     time.Duration
	Requests map[string]int64 // by endpoint, as the client counted
	Total    int64
	Status   map[string]int64
	Limited  int64 // 429s received
	Server   stripesim.Stats
	Memory   Memory
	Listed   int
	// CPU is the processor time this process spent in the phase (user and
	// system): unlike the wall time, it hardly moves when other work
	// shares the machine. The simulator, a child process, is not in it.
	CPU time.Duration
}

const benchSpan = 6 * time.Hour

// Run runs the benchmark.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Events < 1 || cfg.Sessions < 0 || cfg.Sessions > cfg.Events {
		return nil, errors.New("--events must be at least 1 and --sessions between 0 and --events")
	}
	if cfg.RateLimit == 0 {
		cfg.RateLimit = cfg.GlobalLimit
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	dir := cfg.Store
	if dir == "" {
		tmp, err := os.MkdirTemp("", "fulfilld-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	rep := &Report{Config: cfg, Lists: (cfg.Events + 99) / 100, Retrieves: cfg.Sessions}
	rep.Floor = floor(rep.Lists, rep.Retrieves, cfg.EndpointLimit, cfg.GlobalLimit)
	rep.SessionPages = (cfg.Sessions + 99) / 100
	rep.BatchFloor = floor(rep.Lists, rep.SessionPages, cfg.EndpointLimit, cfg.GlobalLimit)

	anchor := time.Now()
	sc := SimConfig{Events: cfg.Events, Sessions: cfg.Sessions, Anchor: anchor, Span: benchSpan,
		Latency: cfg.Latency, Jitter: cfg.Jitter, GlobalLimit: cfg.GlobalLimit, EndpointLimit: cfg.EndpointLimit}
	since := anchor.Add(-benchSpan - time.Minute)
	// Every backend's phases list the same data: with the limits, and
	// without latency or limits for the ceiling.
	simWithLimits, freeSim := sc, sc
	freeSim.Latency, freeSim.Jitter, freeSim.GlobalLimit, freeSim.EndpointLimit = 0, 0, 0, 0
	cfg.progress("generating %d events with %d paid sessions in the simulator", cfg.Events, cfg.Sessions)
	main, err := startSim(ctx, cfg.SimCommand, sc)
	if err != nil {
		return nil, err
	}
	defer main.stop()
	var docs *simProcess
	if cfg.Docs {
		if docs, err = startSim(ctx, cfg.SimCommand, sc); err != nil {
			return nil, err
		}
		defer docs.stop()
	}

	var wg sync.WaitGroup
	var docsErr error
	if docs != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := docsLoop(ctx, docs.URL, since)
			if err == nil {
				p.Server, err = docs.stats(ctx)
			}
			rep.Docs, docsErr = &p, err
		}()
	}
	// As stripeapi.AutoLimits does with Stripe's documented 25/s: the
	// endpoint budget is the rate limit, capped at the per-endpoint limit.
	limits := stripeapi.Limits{Global: cfg.RateLimit, Endpoint: cfg.RateLimit}
	if cfg.EndpointLimit > 0 && (limits.Endpoint <= 0 || cfg.EndpointLimit < limits.Endpoint) {
		limits.Endpoint = cfg.EndpointLimit
	}
	bolt := backend{Name: "bbolt", Instances: 1, path: filepath.Join(dir, "fulfilld.db")}
	d, err := runDaemon(ctx, cfg, main.URL, bolt, since, limits, true)
	if err != nil {
		wg.Wait()
		return nil, err
	}
	rep.Daemon, rep.Fulfilled, rep.Doubled = d.phase, d.fulfilled, d.doubled
	rep.Backends = append(rep.Backends, BackendRun{Name: bolt.Name, Instances: 1, Backfill: d})
	if rep.Daemon.Server, err = main.stats(ctx); err != nil {
		return nil, err
	}
	main.stop()
	if docs != nil {
		cfg.progress("daemon path done in %s; waiting for the docs-literal loop", rep.Daemon.Wall.Round(time.Millisecond))
	}
	wg.Wait()
	if docsErr != nil {
		return nil, fmt.Errorf("docs-literal loop: %w", docsErr)
	}
	if cfg.Ceiling {
		sc.Latency, sc.Jitter, sc.GlobalLimit, sc.EndpointLimit = 0, 0, 0, 0
		cfg.progress("local ceiling: generating the same data without latency or limits")
		free, err := startSim(ctx, cfg.SimCommand, sc)
		if err != nil {
			return nil, err
		}
		defer free.stop()
		c, err := runDaemon(ctx, cfg, free.URL, bolt, since, stripeapi.Limits{}, false)
		if err != nil {
			return nil, err
		}
		rep.Ceiling = &c.phase
		rep.CeilingEPS = float64(c.phase.Listed) / c.phase.Wall.Seconds()
		rep.Backends[0].Ceiling = &c
	}
	if cfg.Postgres != "" {
		for _, n := range []int{1, 2} {
			be := backend{Name: fmt.Sprintf("pg×%d", n), Instances: n, server: cfg.Postgres}
			run := BackendRun{Name: be.Name, Instances: n}
			cfg.progress("%s: the daemon path on PostgreSQL, %d instance(s) on one database", be.Name, n)
			sim, err := startSim(ctx, cfg.SimCommand, simWithLimits)
			if err != nil {
				return nil, err
			}
			run.Backfill, err = runDaemon(ctx, cfg, sim.URL, be, since, limits, true)
			sim.stop()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if err != nil {
				// A phase that failed on PostgreSQL is a finding, not the
				// end of the run: it is printed in the table.
				run.Errors = append(run.Errors, "backfill: "+err.Error())
			}
			if cfg.Ceiling {
				cfg.progress("%s: local ceiling", be.Name)
				free, err := startSim(ctx, cfg.SimCommand, freeSim)
				if err != nil {
					return nil, err
				}
				c, err := runDaemon(ctx, cfg, free.URL, be, since, stripeapi.Limits{}, false)
				free.stop()
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				if err != nil {
					run.Errors = append(run.Errors, "ceiling: "+err.Error())
				} else {
					run.Ceiling = &c
				}
			}
			rep.Backends = append(rep.Backends, run)
		}
	}
	return rep, ctx.Err()
}

func floor(lists, retrieves int, endpoint, global float64) time.Duration {
	secs := 0.0
	if endpoint > 0 {
		secs = max(float64(lists)/endpoint, float64(retrieves)/endpoint)
	}
	if global > 0 {
		secs = max(secs, float64(lists+retrieves)/global)
	}
	return time.Duration(secs * float64(time.Second))
}

func (c Config) progress(format string, args ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, "bench: "+format+"\n", args...)
	}
}

// noop is the operator's action, in process: it counts runs per session.
type noop struct {
	mu   sync.Mutex
	runs map[string]int
	n    atomic.Int64
}

func (a *noop) Deliver(_ context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	a.mu.Lock()
	a.runs[d.IdempotencyKey]++
	a.mu.Unlock()
	a.n.Add(1)
	return fulfill.Outcome{}, nil
}

type daemonResult struct {
	phase              Phase
	fulfilled, doubled int
	// StoreTime is the wall time spent inside store transactions, summed
	// over the instances (so it may exceed the phase's wall time), Txs how
	// many ran, Conflicts how many PostgreSQL tries failed to serialize.
	storeTime time.Duration
	txs       int64
	conflicts int64
}

// instance is one daemon of a phase: its store, its Stripe client and,
// when the store is shared, its part in the coordination.
type instance struct {
	db     store.Store
	client *stripeapi.Client
	node   *cluster.Node
	f      *fulfill.Fulfiller
	wake   chan struct{}
}

// runDaemon is `run --once` over a fresh store: the poll and the queue side
// by side until the queue is idle. With fulfillment off it only polls: the
// local ceiling of dedupe + durable enqueue. On a shared backend with more
// than one instance, the first lists (its writes fenced by the lister's
// lease, as the daemon's are) and every one works the queue, each with its
// own pool and its own share of the Stripe budget; in the ceiling, the
// others work the queue while the lister polls, as they would.
func runDaemon(ctx context.Context, cfg Config, url string, be backend, since time.Time, limits stripeapi.Limits, fulfillment bool) (daemonResult, error) {
	var out daemonResult
	phase := "daemon"
	if !fulfillment {
		phase = "ceiling"
	}
	o, err := be.open(ctx, phase)
	if err != nil {
		return out, err
	}
	defer o.close()
	log := cfg.Logger
	act := &noop{runs: map[string]int{}}
	var insts []*instance
	for i, db := range o.stores {
		in := &instance{db: db, wake: make(chan struct{}, 1)}
		in.client = stripeapi.New(stripeapi.Config{APIKey: stripesim.DefaultAPIKey, APIBase: url, Limits: limits,
			Logger: log.With("component", "stripe")})
		var fdb fulfill.DB = store.As[fulfill.Tx](db)
		if db.grouped() {
			fdb = store.AsGrouped[fulfill.Tx](db) // as `fulfilld run` does
		}
		in.f = &fulfill.Fulfiller{DB: fdb, Sessions: in.client, Action: act, MaxAttempts: 8,
			Concurrency: cfg.Concurrency, Logger: log.With("component", "fulfill")}
		if be.shared() {
			self := cluster.Instance{ID: fmt.Sprintf("bench-%d", i), Host: "bench", PID: os.Getpid(), Started: time.Now()}
			t := in.client.Transport
			in.node = &cluster.Node{DB: store.As[cluster.Tx](db.Store), Self: self, Logger: log.With("component", "cluster"),
				Share: t.SetShare, Throttled: t.Throttled, ThrottledElsewhere: t.ThrottledElsewhere}
			in.f.Sharing = fulfill.Sharing{Instance: self.ID, Lease: 30*time.Second + fulfill.LeaseMargin}
		}
		insts = append(insts, in)
	}
	lister := insts[0]
	var pollDB store.Store = lister.db
	if be.shared() {
		// The first beat makes the first instance the lister; a second
		// round lets every one count the others and take its share.
		for range 2 {
			for _, in := range insts {
				if err := in.node.Beat(); err != nil {
					return out, fmt.Errorf("heartbeat: %w", err)
				}
			}
		}
		if _, ok := lister.node.Leading(); !ok {
			return out, errors.New("the first instance did not take the lister role")
		}
		pollDB = lister.node.Fence(lister.db)
		nctx, stop := context.WithCancel(ctx)
		var beating sync.WaitGroup
		for _, in := range insts {
			beating.Add(1)
			go func() {
				defer beating.Done()
				in.node.Run(nctx)
			}()
		}
		defer func() {
			stop()
			beating.Wait()
		}()
	}
	var listed atomic.Int64
	p := &poller.Poller{DB: store.As[poller.Tx](pollDB), Events: lister.client, Types: config.DefaultEventTypes, Lookback: 10 * time.Minute,
		Clock:    poller.ClientClock{Client: lister.client}, // as the daemon: Stripe's clock, learned from its answers
		Logger:   log.With("component", "poller"),
		Progress: func(pr poller.Progress) { listed.Store(int64(pr.Listed)) }}

	cpuProfile, heapProfile := cfg.CPUProfile, cfg.HeapProfile
	if cpuProfile != "" || heapProfile != "" {
		suffix := ""
		if be.Name != "bbolt" {
			suffix = "." + strings.ReplaceAll(be.Name, "×", "x")
		}
		if !fulfillment {
			suffix += ".ceiling"
		}
		cpuProfile, heapProfile = suffixed(cpuProfile, suffix), suffixed(heapProfile, suffix)
	}
	if cpuProfile != "" {
		stop, err := startCPUProfile(cpuProfile)
		if err != nil {
			return out, err
		}
		defer stop()
	}
	mem := watchMemory(heapProfile != "")
	cpu0 := cpuTime()
	start := time.Now()
	stopProgress := make(chan struct{})
	var progressDone sync.WaitGroup
	progressDone.Add(1)
	go func() {
		defer progressDone.Done()
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-t.C:
				cfg.progress("%6s  %s  events listed %d/%d  sessions fulfilled %d/%d  requests %d", time.Since(start).Round(time.Second),
					be.Name, listed.Load(), cfg.Events, act.n.Load(), cfg.Sessions, lister.client.Transport.Sent())
			}
		}
	}()
	defer func() {
		close(stopProgress)
		progressDone.Wait()
	}()

	// As `run --since 24h` does: the start is counted back on the host's
	// clock, and the first answers tell Stripe's (Poller.StartOnHostClock).
	if _, err := p.StartOnHostClock(ctx, since); err != nil {
		return out, err
	}
	// The queue workers: every instance in the daemon path; in the
	// ceiling only the ones that do not list.
	workers := insts
	if !fulfillment {
		workers = insts[1:]
	}
	var res fulfill.PassResult
	var werr error
	var mu sync.Mutex
	var working sync.WaitGroup
	// What the lister queues wakes every worker: in process, the bench
	// tells the others at once, which a standby learns at its next look.
	p.Settled = lister.f.Settle
	p.Ending = lister.f.Ending
	p.Listing = lister.f.Listing
	p.Wake = func() {
		for _, in := range workers {
			select {
			case in.wake <- struct{}{}:
			default:
			}
		}
	}
	for _, in := range workers {
		working.Add(1)
		go func() {
			defer working.Done()
			r, err := in.f.Run(ctx, fulfill.RunOptions{Wake: in.wake, UntilIdle: true})
			mu.Lock()
			res.Add(r)
			werr = errors.Join(werr, err)
			mu.Unlock()
		}()
	}
	pres, perr := p.Poll(ctx, true)
	if !fulfillment {
		// The ceiling is the poll: its time is taken before waiting for
		// the other instances to drain what it queued.
		out.phase.Wall = time.Since(start)
	}
	for _, in := range workers {
		close(in.wake)
	}
	working.Wait()
	out.phase.Listed = pres.Listed
	if err := errors.Join(perr, werr); err != nil {
		return out, err
	}
	if fulfillment {
		out.phase.Wall = time.Since(start)
	}
	out.phase.CPU = cpuTime() - cpu0
	out.phase.Memory = mem.finish()
	out.storeTime, out.txs = o.storeTime()
	out.conflicts = o.conflicts()
	if heapProfile != "" {
		if err := os.WriteFile(heapProfile, mem.heap, 0o644); err != nil {
			return out, fmt.Errorf("write heap profile: %w", err)
		}
	}
	u := stripeapi.Usage{}
	for _, in := range insts {
		u.Add(in.client.Transport.TakeUsage())
	}
	out.phase.Requests, out.phase.Total, out.phase.Status, out.phase.Limited = u.Requests, u.Total(), u.ByStatus, u.RateLimited
	act.mu.Lock()
	defer act.mu.Unlock()
	for _, n := range act.runs {
		out.fulfilled++
		if n > 1 {
			out.doubled++
		}
	}
	if fulfillment && res.Failed > 0 {
		return out, fmt.Errorf("%d sessions failed", res.Failed)
	}
	return out, nil
}

func suffixed(path, suffix string) string {
	if path == "" {
		return ""
	}
	return path + suffix
}

// startCPUProfile profiles the process into path until stop is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// docsLoop is the loop Stripe's "after the payment" polling example shows,
// with stripe-go as it comes: list the events with auto-paging (100 a page,
// the same types as the daemon), then retrieve each paid session with its
// line items expanded, one after another.
func docsLoop(ctx context.Context, url string, since time.Time) (Phase, error) {
	var ph Phase
	counter := &countingTransport{base: http.DefaultTransport, requests: map[string]int64{}, status: map[string]int64{}}
	backend := stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL:           stripe.String(url),
		HTTPClient:    &http.Client{Transport: counter, Timeout: 80 * time.Second},
		LeveledLogger: &stripe.LeveledLogger{Level: stripe.LevelNull},
	})
	sc := client.New(stripesim.DefaultAPIKey, &stripe.Backends{API: backend, Connect: backend, Uploads: backend})
	start := time.Now()
	params := &stripe.EventListParams{Types: stripe.StringSlice(config.DefaultEventTypes)}
	params.Context = ctx
	params.Limit = stripe.Int64(100)
	params.CreatedRange = &stripe.RangeQueryParams{GreaterThanOrEqual: since.Unix()}
	var ids []string
	it := sc.Events.List(params)
	for it.Next() {
		ev := it.Event()
		ph.Listed++
		if ev.Type == "checkout.session.completed" {
			if id, ok := ev.Data.Object["id"].(string); ok {
				ids = append(ids, id)
			}
		}
	}
	if err := it.Err(); err != nil {
		return ph, err
	}
	for _, id := range ids {
		p := &stripe.CheckoutSessionParams{}
		p.Context = ctx
		p.AddExpand("line_items")
		if _, err := sc.CheckoutSessions.Get(id, p); err != nil {
			return ph, err
		}
	}
	ph.Wall = time.Since(start)
	counter.mu.Lock()
	defer counter.mu.Unlock()
	ph.Requests, ph.Status, ph.Limited = counter.requests, counter.status, counter.status["429"]
	for _, n := range counter.requests {
		ph.Total += n
	}
	return ph, nil
}

// Print writes the report for a person.
func Print(w io.Writer, r *Report) {
	c := r.Config
	lat := "none"
	if c.Latency > 0 {
		lat = fmt.Sprintf("%s–%s", c.Latency-c.Jitter, c.Latency+c.Jitter)
	}
	fmt.Fprintf(w, "fulfilld bench: %d events holding %d paid sessions; latency %s; simulated Stripe limits %s global, %s per endpoint; fulfilld rate_limit %s (%d cores)\n",
		c.Events, c.Sessions, lat, perSec(c.GlobalLimit), perSec(c.EndpointLimit), perSec(c.RateLimit), runtimeCPUs())
	d := r.Daemon
	fmt.Fprintf(w, "\ndaemon path (poller + fulfiller, stripe-go, pacing Transport, bbolt):\n")
	fmt.Fprintf(w, "  wall time           %s\n", secs(d.Wall))
	if r.BatchFloor > 0 {
		fmt.Fprintf(w, "  floor               %s  (%d event pages + %d session pages of 100 at the limits above)\n", secs(r.BatchFloor), r.Lists, r.SessionPages)
		fmt.Fprintf(w, "  wall / floor        %.3f\n", d.Wall.Seconds()/r.BatchFloor.Seconds())
	}
	if r.Floor > 0 {
		fmt.Fprintf(w, "  per-session floor   %s  (%d event pages + a retrieve per session, %d: the old design's; wall / it %.3f)\n",
			secs(r.Floor), r.Lists, r.Retrieves, d.Wall.Seconds()/r.Floor.Seconds())
	}
	if c.Sessions > 0 {
		reads := d.Requests["GET /v1/checkout/sessions"] + d.Requests["GET /v1/checkout/sessions/:id"]
		fmt.Fprintf(w, "  requests / session  %.3f  (event pages included: at least %.3f here)\n",
			float64(d.Total)/float64(c.Sessions), float64(r.Lists+r.SessionPages)/float64(c.Sessions))
		fmt.Fprintf(w, "  session reads       %d  (%.3f a paid session: list pages and retrieves; at least %d)\n",
			reads, float64(reads)/float64(c.Sessions), r.SessionPages)
	}
	if lists := d.Requests["GET /v1/events"]; c.Latency > 0 && lists > 0 {
		chain := time.Duration(lists) * c.Latency
		fmt.Fprintf(w, "  listing bound       %s  (%d list calls one after another × %s mean latency: what listing one page at a time would take; the re-scan lists several slices at once)\n",
			secs(chain), lists, c.Latency)
	}
	fmt.Fprintf(w, "  requests            %s  (total %d)\n", byEndpoint(d.Requests), d.Total)
	fmt.Fprintf(w, "  429s received       %d  (%.2f %% of requests; target ≤ 0.5 %%)\n", d.Limited, pct(d.Limited, d.Total))
	fmt.Fprintf(w, "  server saw          %d requests, %d answered 429\n", d.Server.Total, d.Server.RateLimited)
	fmt.Fprintf(w, "  fulfilled           %d of %d sessions, %d more than once\n", r.Fulfilled, c.Sessions, r.Doubled)
	fmt.Fprintf(w, "  CPU                 %s  (this process; %.0f %% of one core)\n", secs(d.CPU), 100*d.CPU.Seconds()/d.Wall.Seconds())
	fmt.Fprintf(w, "  peak RSS            %s  (VmHWM%s)\n", mib(d.Memory.Peak), resetNote(d.Memory))
	fmt.Fprintf(w, "    anonymous         %s  (heap, stacks: what the daemon holds)\n", mib(d.Memory.PeakAnon))
	fmt.Fprintf(w, "    file-backed       %s  (the bbolt map and the binary: the kernel drops and rereads these pages at will)\n", mib(d.Memory.PeakFile))
	if r.Docs != nil {
		p := r.Docs
		fmt.Fprintf(w, "\ndocs-literal loop (stripe-go list with auto-paging, then each session retrieved serially, line_items expanded):\n")
		fmt.Fprintf(w, "  wall time           %s  (%d requests, %d answered 429)\n", secs(p.Wall), p.Total, p.Limited)
		got := p.Wall.Seconds() / d.Wall.Seconds()
		if r.Floor > 0 {
			allowed := p.Wall.Seconds() / r.Floor.Seconds()
			fmt.Fprintf(w, "  speed-up            %.2f×  (the floor allows %.2f×: %.1f %% of it; target ≥ 95 %%)\n", got, allowed, 100*got/allowed)
		} else {
			fmt.Fprintf(w, "  speed-up            %.2f×\n", got)
		}
	}
	if len(r.Pace) > 0 {
		PrintPace(w, r.Pace)
	}
	if r.Ceiling != nil {
		p := r.Ceiling
		fmt.Fprintf(w, "\nlocal ceiling (no latency, no limits; poll only: dedupe + durable enqueue):\n")
		fmt.Fprintf(w, "  %d events in %s = %.0f events/s  (peak RSS %s: anonymous %s, file-backed %s)\n",
			p.Listed, secs(p.Wall), r.CeilingEPS, mib(p.Memory.Peak), mib(p.Memory.PeakAnon), mib(p.Memory.PeakFile))
		if p.Listed > 0 && p.CPU > 0 {
			perEvent := p.CPU / time.Duration(p.Listed)
			fmt.Fprintf(w, "  CPU %s: %.1f µs an event, %.0f events per CPU-second (the simulator's own work not counted; the wall figure shares the cores with it)\n",
				secs(p.CPU), float64(perEvent.Nanoseconds())/1000, float64(p.Listed)/p.CPU.Seconds())
		}
	}
	printBackends(w, r.Backends)
}

// printBackends is the table of the daemon path and the ceiling on each
// store, with what the store cost: transactions, the time spent in them
// (summed over instances and workers, so it may exceed the wall time) and
// PostgreSQL's serialization conflicts (each a transaction run again).
func printBackends(w io.Writer, runs []BackendRun) {
	if len(runs) < 2 {
		return
	}
	fmt.Fprintf(w, "\nstores (backfill: the daemon path above on each store, wall time; ceiling: the lister's poll, no latency or limits;\n")
	fmt.Fprintf(w, "  txs / in store / conflicts: transactions (on bbolt, each grouped write counts as one), time inside them summed over instances, PostgreSQL serialization retries):\n")
	fmt.Fprintf(w, "  %-6s %9s %9s %6s %7s %9s %9s %13s %7s %9s %9s\n", "store", "backfill", "fulfilled", "twice", "txs", "in store", "conflicts",
		"ceiling ev/s", "txs", "in store", "conflicts")
	for _, r := range runs {
		b := r.Backfill
		ceps, ctxs, cin, ccon := "-", "-", "-", "-"
		if c := r.Ceiling; c != nil && c.phase.Wall > 0 {
			ceps = fmt.Sprintf("%.0f", float64(c.phase.Listed)/c.phase.Wall.Seconds())
			ctxs, cin, ccon = fmt.Sprint(c.txs), secs(c.storeTime), fmt.Sprint(c.conflicts)
		}
		fmt.Fprintf(w, "  %-6s %9s %9d %6d %7d %9s %9d %13s %7s %9s %9s\n", r.Name, secs(b.phase.Wall), b.fulfilled, b.doubled, b.txs,
			secs(b.storeTime), b.conflicts, ceps, ctxs, cin, ccon)
	}
	for _, r := range runs {
		for _, e := range r.Errors {
			fmt.Fprintf(w, "  %s FAILED: %s\n", r.Name, e)
		}
	}
}

func perSec(v float64) string {
	if v <= 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%g/s", v)
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func pct(n, total int64) float64 {
	if total == 0 {
		return 0
	}
	return 100 * float64(n) / float64(total)
}

func resetNote(m Memory) string {
	if m.Reset {
		return " of this phase"
	}
	return " of the whole process"
}

func byEndpoint(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func runtimeCPUs() int { return runtime.NumCPU() }

// countingTransport counts the docs loop's requests by endpoint and status,
// the way the daemon's Transport does, without pacing or retrying them.
type countingTransport struct {
	base     http.RoundTripper
	mu       sync.Mutex
	requests map[string]int64
	status   map[string]int64
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	key := "error"
	if resp != nil {
		key = strconv.Itoa(resp.StatusCode)
	}
	t.mu.Lock()
	t.requests[stripeapi.Endpoint(req.Method, req.URL.Path)]++
	t.status[key]++
	t.mu.Unlock()
	return resp, err
}
