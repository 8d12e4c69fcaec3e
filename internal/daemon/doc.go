// Package daemon is fulfilld's service: the loops of `run` (polls, sweeps
// and retention on their schedules, the queues always working), the
// `--once` pass, recovery after a stop, read-budget pacing, the admin socket
// — its server and its client — and the status model that the socket,
// `status`, /metrics and /healthz show. cmd/fulfilld only parses flags,
// builds a Daemon from the configuration and maps errors to exit codes, so
// tests can drive everything here without a binary.
package daemon

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/cluster"
	"github.com/fulfilld/fulfilld/internal/metrics"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/storehealth"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

// Daemon is one process's store, Stripe client and loops. The caller
// builds the parts; New wires them together.
type Daemon struct {
	Config *config.Config
	DB     store.Store
	// Health keeps score of whether the store takes writes: the queues'
	// and the poller's stores (storehealth guards) report to it, so a
	// failing disk pauses the queues and shows in /healthz.
	Health     *storehealth.Health
	Client     *stripeapi.Client
	Poller     *poller.Poller
	Fulfiller  *fulfill.Fulfiller
	Deliverer  *fulfill.Deliverer // nil without notify or forward
	Reconciler *poller.Reconciler
	Metrics    *metrics.Metrics
	Logger     *slog.Logger
	// Now is the host's clock (what the queues and usage days use);
	// Stripe's clock is Client.Clock.
	Now func() time.Time
	// Node is set when instances share the store (store.postgres): only
	// the lister polls, sweeps and prunes; every instance works the queues.
	Node *cluster.Node
	// Socket is the admin socket's path (store.path + ".sock").
	Socket string
	// ExitCode classifies an error for the admin protocol, which carries
	// the exit code the command on the other end should use.
	ExitCode func(error) int

	// wake tells the running queues that work was queued.
	wake func()
	// heartbeat is when the poll last showed progress (nanoseconds since
	// started, on the monotonic clock: a host clock that jumps must not
	// starve the watchdog), and
	// polling whether one is running: the systemd watchdog reads them.
	heartbeat atomic.Int64
	started   time.Time
	polling   atomic.Bool
	// stopping is set when a signal arrived: new work is refused.
	stopping atomic.Bool
	// pace stretches quiet polls under stripe.monthly_read_budget; see
	// ScheduledPoll.
	pace *pace
	// leadNow is signalled when this instance starts listing;
	// leadCancels end the lister's work when it stops (see shared.go);
	// startedTerm is the term the poller was last started in.
	leadNow     chan struct{}
	leadMu      sync.Mutex
	leadCancels []context.CancelFunc
	startedTerm int64
	// jobFailures counts each scheduled job's failures in a row (jobDone).
	jobMu       sync.Mutex
	jobFailures map[string]int
}

// New wires the parts: the queues' writes go through Store, the actions
// are instrumented, the poller queues event deliveries when notify or forward is set,
// and progress (when set) is told about each committed page.
func New(d *Daemon, progress func(poller.Progress)) *Daemon {
	d.wake = func() {}
	d.started = time.Now()
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	d.pace = newPace(d.Config.Schedule, d.now())
	d.leadNow = make(chan struct{}, 1)
	if d.Node != nil {
		d.Node.OnLeading = d.leadingChanged
	}
	d.Fulfiller.Action = d.Metrics.Instrument("fulfill", d.Fulfiller.Action)
	if d.Deliverer != nil {
		for dest, action := range d.Deliverer.Destinations {
			d.Deliverer.Destinations[dest] = d.Metrics.Instrument(dest, action)
		}
		d.Poller.Routes = d.Deliverer.Routes
	}
	// A poll that has listed all it will lets the queue list the sessions
	// it holds back for a fuller page at once.
	d.Poller.Settled = d.Fulfiller.Settle
	// A slice near its end lets it list there at once, beside its last page.
	d.Poller.Ending = d.Fulfiller.Ending
	// A poll still listing keeps it from taking a pause for the end.
	d.Poller.Listing = d.Fulfiller.Listing
	d.Poller.Progress = func(p poller.Progress) {
		d.beat()
		if progress != nil {
			progress(p)
		}
	}
	return d
}

func (d *Daemon) now() time.Time { return d.Now() }

// SaveUsage moves the client's request counts into the store.
func (d *Daemon) SaveUsage() { SaveUsage(d.DB, d.Client, d.now(), d.Logger) }

// SaveUsage moves a client's request counts into the store, for the
// commands that use a client without a Daemon.
func SaveUsage(db store.Store, client *stripeapi.Client, now time.Time, logger *slog.Logger) {
	u := client.Transport.TakeUsage()
	err := db.Update(func(tx store.Tx) error { return stripeapi.SaveUsage(tx, now, u) })
	if err != nil && logger != nil {
		logger.Warn("could not record API usage", "err", err)
	}
}

// UsageError is a request that cannot be served as asked (a wrong id, one
// that is not dead-lettered): the command's usage, exit code 2.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// isCanceled reports a shutdown, which is not an error.
func isCanceled(ctx context.Context, err error) bool {
	return ctx.Err() != nil && errors.Is(err, context.Canceled)
}

// beat notes that the poll showed progress.
func (d *Daemon) beat() { d.heartbeat.Store(int64(time.Since(d.started))) }

// sinceBeat is how long ago the poll last showed progress.
func (d *Daemon) sinceBeat() time.Duration {
	return time.Since(d.started) - time.Duration(d.heartbeat.Load())
}
