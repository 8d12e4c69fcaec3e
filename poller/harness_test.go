package poller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/internal/stripesim"
	"github.com/fulfilld/fulfilld/poller"
)

// t0 is the simulated "now" every test starts at.
var t0 = time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)

const testKey = "sk_test_fulfilldPollerHarness0000"

// harness is one fulfilld (poller + fulfiller + store) wired through
// stripe-go to a simulated Stripe, with the clock in the test's hands.
type harness struct {
	t      *testing.T
	clock  *stripesim.Clock
	sim    *stripesim.Server
	db     *boltstore.Store
	client *stripeapi.Client
	poller *poller.Poller
	ful    *fulfill.Fulfiller
	action *recorder
	// stripesClock wires the poller to Stripe's clock as the client learns
	// it, instead of the host's (h.clock).
	stripesClock bool
	// intents turns fulfill.payment_intents on.
	intents bool
}

type harnessOpt func(*stripesim.Options, *harness)

// onStripesClock runs the simulated Stripe on its own clock, apart from the
// host's (h.clock), and has the poller decide what the stream covers on
// Stripe's clock as learned from its answers.
func onStripesClock(stripe *stripesim.Clock) harnessOpt {
	return func(o *stripesim.Options, h *harness) {
		o.Now = stripe.Now
		h.stripesClock = true
	}
}

func newHarness(t *testing.T, opts ...harnessOpt) *harness {
	t.Helper()
	h := &harness{t: t, clock: stripesim.NewClock(t0), action: newRecorder()}
	simOpts := stripesim.Options{APIKey: testKey, Now: h.clock.Now}
	for _, o := range opts {
		o(&simOpts, h)
	}
	h.sim = stripesim.New(simOpts)
	t.Cleanup(h.sim.Close)
	h.client = h.newClient()
	h.open(filepath.Join(t.TempDir(), "fulfilld.db"))
	return h
}

// newClient is a Stripe client for the simulator, knowing nothing of
// Stripe's clock yet, as in a process that just started.
func (h *harness) newClient() *stripeapi.Client {
	c := stripeapi.New(stripeapi.Config{
		APIKey: testKey, APIBase: h.sim.URL(), Limits: stripeapi.Limits{Global: 1000, Endpoint: 1000},
		Now: h.clock.Now,
	})
	c.Transport.MinBackoff = time.Millisecond
	c.Transport.MaxBackoff = 5 * time.Millisecond
	return c
}

// open (re)opens the store and builds the poller and fulfiller on it, as a
// process start does.
func (h *harness) open(path string) {
	h.t.Helper()
	db, err := boltstore.Open(path, false, time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { db.Close() })
	h.db = db
	h.poller = &poller.Poller{
		DB: store.As[poller.Tx](db), Events: h.client, Types: defaultTypes, Lookback: 10 * time.Minute, Now: h.clock.Now,
	}
	if h.stripesClock {
		h.poller.Clock = poller.ClientClock{Client: h.client}
	}
	h.ful = &fulfill.Fulfiller{
		DB: store.As[fulfill.Tx](db), Sessions: h.client, Action: h.action, MaxAttempts: 3, Concurrency: 4, Now: h.clock.Now,
		Backoff: func(int) time.Duration { return time.Minute },
	}
	if h.intents {
		h.poller.PaymentIntents, h.ful.Intents = true, h.client
	}
}

// newProcess is a restart with a new Stripe client too: Stripe's clock
// unknown until the first answer.
func (h *harness) newProcess() {
	h.t.Helper()
	h.client = h.newClient()
	h.restart()
}

// restart closes the store and opens it again, dropping all in-memory state.
func (h *harness) restart() {
	h.t.Helper()
	path := h.db.Path()
	if err := h.db.Close(); err != nil {
		h.t.Fatal(err)
	}
	h.open(path)
}

var defaultTypes = []string{
	"checkout.session.completed", "checkout.session.async_payment_succeeded",
	"checkout.session.async_payment_failed", "checkout.session.expired",
	"payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.processing",
	"payment_intent.amount_capturable_updated", "payment_intent.canceled",
}

// pass is what `run --once` does: poll and work the queue side by side
// until nothing is due.
func (h *harness) pass(since time.Time) (poller.Result, fulfill.PassResult) {
	h.t.Helper()
	if _, err := h.poller.Start(context.Background(), since); err != nil {
		h.t.Fatal(err)
	}
	return h.poll(true)
}

// poll is one poll (complete: as --once does it) with the queue worked
// beside it until nothing is due.
func (h *harness) poll(complete bool) (poller.Result, fulfill.PassResult) {
	h.t.Helper()
	if _, err := h.ful.Recover(); err != nil {
		h.t.Fatal(err)
	}
	ctx := context.Background()
	wake := make(chan struct{}, 1)
	h.poller.Wake = func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	type out struct {
		res fulfill.PassResult
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := h.ful.Run(ctx, fulfill.RunOptions{Wake: wake, UntilIdle: true})
		done <- out{res, err}
	}()
	pres, err := h.poller.Poll(ctx, complete)
	h.poller.Wake = nil
	close(wake)
	w := <-done
	if err != nil {
		h.t.Fatalf("poll: %v", err)
	}
	if w.err != nil {
		h.t.Fatalf("fulfill: %v", w.err)
	}
	return pres, w.res
}

func (h *harness) record(id string) fulfill.Record {
	h.t.Helper()
	var rec fulfill.Record
	err := h.db.View(func(tx store.Tx) (err error) {
		rec, _, err = fulfill.Get(tx, id)
		return err
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return rec
}

func (h *harness) position() cursor.Position {
	h.t.Helper()
	var pos cursor.Position
	if err := h.db.View(func(tx store.Tx) (err error) { pos, err = cursor.Load(tx); return err }); err != nil {
		h.t.Fatal(err)
	}
	return pos
}

// paid creates a session completed as paid at the given time.
func (h *harness) paid(at time.Time, items int, opts ...stripesim.EventOpt) string {
	id := h.sim.CreateSession(stripesim.SessionParams{Created: at.Add(-time.Minute), LineItems: items})
	h.sim.CompleteSession(id, "paid", at, opts...)
	return id
}

// run is one call of the operator's action.
type run struct {
	Attempt        string
	IdempotencyKey string
	Trigger        string
	EventID        string
	LineItems      int
	HasMore        bool
	// Env is the action's FULFILLD_* environment, Body its stdin.
	Env  map[string]string
	Body []byte
}

// recorder is the operator's action, in process: it records every call and
// notices two calls for one session running at once.
type recorder struct {
	mu       sync.Mutex
	runs     map[string][]run
	active   map[string]int
	overlaps int
	fail     func(session string) error
	block    chan struct{} // when set, every call waits on it
}

func newRecorder() *recorder {
	return &recorder{runs: map[string][]run{}, active: map[string]int{}}
}

func (r *recorder) Deliver(ctx context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	env := map[string]string{}
	for _, kv := range d.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	var body struct {
		LineItems struct {
			Data    []json.RawMessage `json:"data"`
			HasMore bool              `json:"has_more"`
		} `json:"line_items"`
	}
	if err := json.Unmarshal(d.Body, &body); err != nil {
		return fulfill.Outcome{}, fmt.Errorf("body is not JSON: %w", err)
	}
	id := env["FULFILLD_SESSION_ID"]
	if id == "" {
		id = env["FULFILLD_PAYMENT_INTENT_ID"]
	}
	r.mu.Lock()
	r.active[id]++
	if r.active[id] > 1 {
		r.overlaps++
	}
	r.runs[id] = append(r.runs[id], run{
		Attempt: env["FULFILLD_ATTEMPT"], IdempotencyKey: env["FULFILLD_IDEMPOTENCY_KEY"],
		Trigger: env["FULFILLD_TRIGGER"], EventID: env["FULFILLD_EVENT_ID"],
		LineItems: len(body.LineItems.Data), HasMore: body.LineItems.HasMore, Env: env, Body: d.Body,
	})
	fail, block := r.fail, r.block
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.active[id]--
		r.mu.Unlock()
	}()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return fulfill.Outcome{}, ctx.Err()
		}
	}
	if fail != nil {
		if err := fail(id); err != nil {
			return fulfill.Outcome{Output: "boom"}, err
		}
	}
	return fulfill.Outcome{Output: "ok"}, nil
}

func (r *recorder) calls(id string) []run {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]run(nil), r.runs[id]...)
}

func (r *recorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, runs := range r.runs {
		n += len(runs)
	}
	return n
}
