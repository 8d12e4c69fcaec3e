package daemon

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/robfig/cron/v3"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/internal/httpapi"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// stuckAfter is how long a running poll may show no progress (no page
// committed) before the systemd watchdog stops being fed.
const stuckAfter = 10 * time.Minute

// Serve is the daemon: polls and sweeps on their schedules, the queues
// always running, the admin socket and http.listen open. The first signal
// stops scheduling and lets running actions finish (up to fulfill.timeout);
// a second one kills the process.
func (d *Daemon) Serve(parent context.Context) error {
	pollSched, err := cron.ParseStandard(d.Config.Schedule)
	if err != nil {
		return &config.Error{Key: "schedule", Msg: err.Error()}
	}
	sweepSched, err := cron.ParseStandard(d.Config.Reconcile.Schedule)
	if err != nil {
		return &config.Error{Key: "reconcile.schedule", Msg: err.Error()}
	}
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	// work outlives ctx by the grace period: what a socket or landing-page
	// request started may finish and record its result.
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()

	// The socket first: listenAdmin sets the process umask for a moment,
	// which no action may start under.
	adminL, err := listenAdmin(d.Socket)
	if err != nil {
		return err
	}
	defer os.Remove(d.Socket)
	w, wait := d.workers(ctx, false)
	d.Poller.Wake, d.Reconciler.Wake, d.wake = w.wake, w.wake, w.wake
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := wait(); err != nil {
			cancel(err)
		}
	}()

	var servers []*http.Server
	servers = append(servers, d.startServer(adminL, d.adminHandler(work, false), "admin socket"))
	var api *httpapi.Server
	if addr := d.Config.HTTP.Listen; addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return &config.Error{Key: "http.listen", Msg: err.Error()}
		}
		api = &httpapi.Server{
			DB: d.DB, Registry: d.Metrics.Registry, Fulfill: d.Fulfiller, Work: work,
			MaxPollAge: 3*interval(pollSched, d.now()) + time.Minute, MinHorizon: 48 * time.Hour,
			Wait: 10 * time.Second, Now: d.Now, Logger: d.Logger.With("component", "http"),
			Store: d.Health, Poke: func() { d.PollNow("landing page") },
		}
		servers = append(servers, d.startServer(l, api.Handler(), "http"))
		d.Logger.Info("serving /metrics, /healthz, /readyz and POST /fulfill/{session_id}", "listen", l.Addr().String())
	}

	clog := cronLogger{d.Logger.With("component", "schedule")}
	chain := cron.NewChain(cron.Recover(clog), cron.SkipIfStillRunning(clog))
	poll := chain.Then(cron.FuncJob(func() {
		ran, res, err := d.ScheduledPoll(ctx)
		if !ran {
			return
		}
		if err == nil && api != nil {
			api.Ready.Store(true)
		}
		d.jobDone(ctx, cancel, "poll", err, "events_listed", res.Listed, "events_new", res.New, "sessions_queued", res.Queued)
	}))
	sweep := chain.Then(cron.FuncJob(func() {
		if !d.lists() {
			return
		}
		since := d.Reconciler.ScheduledSince(d.Client.Clock.Now().Add(-d.Config.Reconcile.Window))
		_, err := d.Reconciler.Sweep(ctx, since)
		d.SaveUsage()
		d.jobDone(ctx, cancel, "reconciliation sweep", err)
	}))
	c := cron.New(cron.WithLogger(clog))
	c.Schedule(pollSched, poll)
	c.Schedule(sweepSched, sweep)
	// Retention runs hourly and once at start: a batch at a time, so the
	// queues and the poller wait at most for one small transaction.
	prune := chain.Then(cron.FuncJob(func() {
		if d.lists() {
			d.jobDone(ctx, cancel, "retention", d.Prune(ctx))
		}
	}))
	c.Schedule(cron.Every(time.Hour), prune)
	c.Start()
	wg.Add(1)
	go func() { // the first poll now, not at the first tick; then retention
		defer wg.Done()
		poll.Run()
		prune.Run()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.watchdog(ctx)
	}()
	// With a shared store: the heartbeat, and a poll as soon as this
	// instance takes the lister role over, not at the next tick.
	stopNode := d.runNode(ctx)
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.lookForWork(ctx, w.wake)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-d.leadNow:
				d.PollNow("took the lister role over")
				poll.Run()
			}
		}
	}()
	if _, err := sddaemon.SdNotify(false, sddaemon.SdNotifyReady); err != nil {
		d.Logger.Warn("could not tell systemd the service is ready", "err", err)
	}
	d.Logger.Info("fulfilld running", "schedule", d.Config.Schedule, "reconcile_schedule", d.Config.Reconcile.Schedule,
		"store", d.Config.Store.Path, "admin_socket", d.Socket, "api_version", stripeapi.APIVersion)

	<-ctx.Done()
	// From here on, what would start an action is refused (it would be cut
	// off at the end of the grace and repeated on the next start).
	d.stopping.Store(true)
	if api != nil {
		api.Stopping.Store(true)
	}
	// One grace for everything that runs an action: the queues', and what
	// the landing page and the admin socket started.
	graceEnds := time.Now().Add(d.Config.Fulfill.Timeout)
	_, _ = sddaemon.SdNotify(false, sddaemon.SdNotifyStopping)
	if !errors.Is(context.Cause(ctx), stripeapi.ErrAuth) {
		d.Logger.Info("stopping: no new polls; running actions get fulfill.timeout to finish", "grace", d.Config.Fulfill.Timeout)
	}
	// The lister role goes first, so a standby lists while this one drains.
	stopNode()
	<-c.Stop().Done()
	wg.Wait()
	shutdownCtx, done := context.WithDeadline(context.Background(), graceEnds)
	defer done()
	for _, srv := range servers {
		_ = srv.Shutdown(shutdownCtx)
	}
	if api != nil {
		// A landing-page action answered 202 may still run: it finishes
		// and is recorded, or is cut off when the grace ends.
		_ = api.Drain(shutdownCtx)
	}
	stopWork()
	if err := d.unsavedResults(); err != nil {
		d.Logger.Error("stopping with work the store could not record", "err", err)
	}
	// The parent ending is a shutdown (a signal, the demo's time); any
	// other cause is why the daemon stopped itself.
	if err := context.Cause(ctx); parent.Err() == nil && err != nil {
		return err
	}
	d.Logger.Info("stopped")
	return nil
}

func (d *Daemon) startServer(l net.Listener, h http.Handler, name string) *http.Server {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.Logger.Error(name+" stopped serving", "err", err)
		}
	}()
	return srv
}

// interval estimates a cron schedule's period.
func interval(s cron.Schedule, now time.Time) time.Duration {
	next := s.Next(now)
	return s.Next(next).Sub(next)
}

// watchdog feeds systemd's watchdog (WatchdogSec) while the daemon's loops
// are alive: a poll that shows no progress for stuckAfter, or a store that
// cannot be read, stops the pings, and systemd restarts the service.
func (d *Daemon) watchdog(ctx context.Context) {
	every, err := sddaemon.SdWatchdogEnabled(false)
	if err != nil || every <= 0 {
		return
	}
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := d.alive(); err != nil {
			d.Logger.Error("not feeding the systemd watchdog", "err", err)
			continue
		}
		_, _ = sddaemon.SdNotify(false, sddaemon.SdNotifyWatchdog)
	}
}

// alive reports why the daemon's loops look stuck, if they do.
func (d *Daemon) alive() error {
	if d.polling.Load() {
		if since := d.sinceBeat(); since > stuckAfter {
			return errors.New("the running poll has shown no progress for " + since.Round(time.Second).String())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.DB.View(func(store.Tx) error { return nil }) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return errors.New("the store did not answer within 5s")
	}
}

// jobDone logs a scheduled job's outcome; a rejected key stops the daemon,
// anything else waits for the next tick.
//
// A job that keeps failing (Stripe away, a disk full) logs an ERROR the
// first time, DEBUG while it goes on failing, and an INFO when it works
// again: one line when trouble starts, one when it ends.
func (d *Daemon) jobDone(ctx context.Context, cancel context.CancelCauseFunc, job string, err error, kv ...any) {
	d.jobMu.Lock()
	if d.jobFailures == nil {
		d.jobFailures = map[string]int{}
	}
	failures := d.jobFailures[job]
	switch {
	case err == nil:
		delete(d.jobFailures, job)
	case !isCanceled(ctx, err):
		d.jobFailures[job]++
	}
	d.jobMu.Unlock()
	switch {
	case err == nil && failures > 0:
		d.Logger.Info(job+" succeeded again", append([]any{"failed_before", failures}, kv...)...)
	case err == nil:
		d.Logger.Debug(job+" complete", kv...)
	case isCanceled(ctx, err):
	case errors.Is(err, stripeapi.ErrAuth):
		cancel(err)
	case failures == 0:
		d.Logger.Error(job+" failed; the next one retries from the same position "+
			"(while it keeps failing, further failures are logged at debug)", "err", err)
	default:
		d.Logger.Debug(job+" failed again; the next one retries from the same position", "err", err, "failures", failures+1)
	}
}
