package poller_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripesim"
)

const forwardSecret = "whsec_forward_receiver_secret_0123"

// webhookReceiver is a shop's existing webhook handler: it accepts only
// what stripe-go's own verification accepts, and can be made to fail the
// way a real endpoint does (500s, hanging).
type webhookReceiver struct {
	t  *testing.T
	mu sync.Mutex
	// mode: "up" answers 200, "500" answers 500, "hang" never answers
	// before the client gives up.
	mode      string
	delivered map[string]int // 2xx answers per event id
	attempts  int
	types     map[string]string
	bodies    map[string][]byte // the last body delivered per event id, when not nil
}

func (r *webhookReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	// An existing handler: the signature as Stripe computes it, and any
	// API version, as it must for Stripe's own deliveries of older events.
	ev, err := webhook.ConstructEventWithOptions(body, req.Header.Get("Stripe-Signature"), forwardSecret,
		webhook.ConstructEventOptions{IgnoreAPIVersionMismatch: true})
	if err != nil {
		r.t.Errorf("stripe-go rejected a forwarded event: %v", err)
		http.Error(w, "bad signature", http.StatusBadRequest)
		return
	}
	if ct := req.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		r.t.Errorf("Content-Type %q, want Stripe's application/json; charset=utf-8", ct)
	}
	r.mu.Lock()
	r.attempts++
	mode := r.mode
	r.mu.Unlock()
	switch mode {
	case "500":
		http.Error(w, "handler crashed", http.StatusInternalServerError)
		return
	case "hang":
		<-req.Context().Done() // the client's timeout ends it
		return
	}
	r.mu.Lock()
	r.delivered[ev.ID]++
	r.types[ev.ID] = string(ev.Type)
	if r.bodies != nil {
		r.bodies[ev.ID] = body
	}
	r.mu.Unlock()
}

func (r *webhookReceiver) set(mode string) {
	r.mu.Lock()
	r.mode = mode
	r.mu.Unlock()
}

func (r *webhookReceiver) snapshot() (map[string]int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.delivered))
	for k, v := range r.delivered {
		out[k] = v
	}
	return out, r.attempts
}

// forwarder is forward mode's delivery runner over the harness's store.
func (h *harness) forwarder(url string) *fulfill.Deliverer {
	routes := fulfill.Routes{}
	routes.Add(fulfill.DestForward, defaultTypes...)
	h.poller.Routes = routes
	return &fulfill.Deliverer{
		DB: store.As[fulfill.Tx](h.db),
		Destinations: map[string]fulfill.Action{fulfill.DestForward: &fulfill.URL{URL: url, Secret: forwardSecret,
			Timeout: 300 * time.Millisecond, ContentType: "application/json; charset=utf-8"}},
		Routes: routes, MaxAttempts: 8, Concurrency: 4, Now: h.clock.Now,
		Backoff: func(int) time.Duration { return time.Minute },
	}
}

func runDeliveries(t *testing.T, d *fulfill.Deliverer) fulfill.PassResult {
	t.Helper()
	wake := make(chan struct{})
	close(wake)
	res, err := d.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true})
	if err != nil {
		t.Fatalf("delivery pass: %v", err)
	}
	return res
}

// TestForwardSurvivesAReceiverDownForAWhile: the shop's handler refuses
// connections, then answers 500, then hangs past the timeout; once it is
// up, every listed event of a forwarded type has reached it, verified by
// stripe-go, exactly once; the malformed event never; and a backfill over
// the same window, which lists and routes every event again, delivers
// nothing more.
func TestForwardSurvivesAReceiverDownForAWhile(t *testing.T) {
	h := newHarness(t)
	// A port with nothing listening yet: connection refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	d := h.forwarder("http://" + addr + "/webhook")

	want := map[string]string{}
	for i := range 3 {
		at := t0.Add(-3*time.Hour + time.Duration(i)*time.Minute)
		id := h.sim.CreateSession(stripesim.SessionParams{Created: at.Add(-time.Minute), LineItems: 1})
		want[h.sim.CompleteSession(id, "paid", at)] = "checkout.session.completed"
	}
	b := h.sim.CreateSession(stripesim.SessionParams{Created: t0.Add(-3 * time.Hour), LineItems: 1})
	want[h.sim.ExpireSession(b, t0.Add(-150*time.Minute))] = "checkout.session.expired"
	want[h.sim.PaymentIntentEvent("payment_intent.payment_failed", "pi_fwd", t0.Add(-150*time.Minute), "Your card was declined.")] = "payment_intent.payment_failed"
	bad := h.sim.AddEvent("", "checkout.session.completed", t0.Add(-150*time.Minute), []byte(`{"object":"charge","id":"ch_1"}`))

	h.pass(t0.Add(-4 * time.Hour))
	if res := runDeliveries(t, d); res.Fulfilled != 0 {
		t.Fatalf("delivered %d with nothing listening", res.Fulfilled)
	}
	recv := &webhookReceiver{t: t, mode: "500", delivered: map[string]int{}, types: map[string]string{}}
	l, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("the port was taken in between: %v", err)
	}
	srv := &httptest.Server{Listener: l, Config: &http.Server{Handler: recv}}
	srv.Start()
	defer srv.Close()
	for _, mode := range []string{"500", "hang"} {
		recv.set(mode)
		h.clock.Advance(2 * time.Minute)
		if res := runDeliveries(t, d); res.Fulfilled != 0 {
			t.Fatalf("delivered %d while the receiver answered %s", res.Fulfilled, mode)
		}
	}
	if _, attempts := recv.snapshot(); attempts != 2*len(want) {
		t.Errorf("the receiver saw %d attempts while failing, want %d (each event once per pass)", attempts, 2*len(want))
	}
	recv.set("up")
	h.clock.Advance(2 * time.Minute)
	if res := runDeliveries(t, d); res.Fulfilled != len(want) {
		t.Errorf("delivered %d once the receiver was up, want %d", res.Fulfilled, len(want))
	}
	got, _ := recv.snapshot()
	for id, typ := range want {
		if got[id] != 1 || recv.types[id] != typ {
			t.Errorf("%s (%s) delivered %d times as %q, want once", id, typ, got[id], recv.types[id])
		}
	}
	if got[bad] != 0 || len(got) != len(want) {
		t.Errorf("received %v; want exactly %d events and not the malformed %s", got, len(want), bad)
	}
	_ = h.db.View(func(tx store.Tx) error {
		for id := range want {
			rec, ok, err := fulfill.GetDelivery(tx, fulfill.DestForward, id)
			if err != nil || !ok || rec.State != fulfill.DeliverySent || rec.Attempts != 4 || len(rec.Event) != 0 {
				t.Errorf("record of %s: %+v %v %v; want sent at attempt 4, body dropped", id, rec, ok, err)
			}
		}
		c, _ := tx.Counts()
		if n := c.Deliveries[fulfill.DestForward]; n[fulfill.DeliverySent] != len(want) || n[fulfill.DeliveryPending] != 0 {
			t.Errorf("forward counts %v, want %d sent", n, len(want))
		}
		return nil
	})

	// A backfill over the same window after a restart: the seen-set has
	// forgotten these ids, so every event is routed again — and none is
	// delivered again.
	h.restart()
	d = h.forwarder(srv.URL + "/webhook")
	h.clock.Advance(time.Minute)
	res, _ := h.pass(t0.Add(-4 * time.Hour))
	if res.New == 0 {
		t.Fatalf("the backfill routed no event again (%+v); the test would prove nothing", res)
	}
	runDeliveries(t, d)
	again, _ := recv.snapshot()
	for id, n := range again {
		if n != 1 {
			t.Errorf("%s delivered %d times after a backfill, want once", id, n)
		}
	}
}

// TestMeasureForwardThroughput measures deliveries per second to a local
// receiver while the event list answers at Stripe-like latency (250 ms a
// page). It is a measurement, not a check: FULFILLD_MEASURE=1 runs it.
func TestMeasureForwardThroughput(t *testing.T) {
	if os.Getenv("FULFILLD_MEASURE") == "" {
		t.Skip("a measurement; set FULFILLD_MEASURE=1 to run it")
	}
	for _, concurrency := range []int{4, 16} {
		h := newHarness(t, func(o *stripesim.Options, _ *harness) {
			o.Latency = func() time.Duration { return 250 * time.Millisecond }
		})
		var mu sync.Mutex
		got := 0
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			mu.Lock()
			got++
			mu.Unlock()
		}))
		const n = 2000
		for i := range n {
			at := t0.Add(-3*time.Hour + time.Duration(i)*time.Second)
			h.sim.PaymentIntentEvent("payment_intent.processing", fmt.Sprintf("pi_%d", i), at, "")
		}
		d := h.forwarder(srv.URL)
		d.Concurrency = concurrency
		wake := make(chan struct{}, 1)
		h.poller.Wake = func() {
			select {
			case wake <- struct{}{}:
			default:
			}
		}
		start := time.Now()
		done := make(chan fulfill.PassResult)
		go func() {
			res, err := d.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true})
			if err != nil {
				t.Error(err)
			}
			done <- res
		}()
		if _, err := h.poller.Start(context.Background(), t0.Add(-4*time.Hour)); err != nil {
			t.Fatal(err)
		}
		res, err := h.poller.Poll(context.Background(), true)
		if err != nil {
			t.Fatal(err)
		}
		listed := time.Since(start)
		close(wake)
		pass := <-done
		took := time.Since(start)
		srv.Close()
		t.Logf("concurrency %d: %d events listed in %d pages (%.1fs); %d delivered (%d received) in %.1fs: %.0f deliveries/s",
			concurrency, res.Listed, res.Pages, listed.Seconds(), pass.Fulfilled, got, took.Seconds(), float64(pass.Fulfilled)/took.Seconds())
	}
}

// TestForwardCatchesUpOnEventsAlreadySeen: fulfilld ran without forward;
// the operator turns it on and runs --since to catch up, as the README
// says. Events the stream had already handled are forwarded all the same —
// once: a second catch-up queues nothing.
func TestForwardCatchesUpOnEventsAlreadySeen(t *testing.T) {
	h := newHarness(t)
	for i := range 3 {
		h.paid(t0.Add(-time.Duration(20+i)*time.Minute), 1)
	}
	h.pass(t0.Add(-time.Hour)) // handled: every event is in the seen-set
	d := h.forwarder("http://127.0.0.1:1")
	queued := func() int {
		var n int
		if err := h.db.View(func(tx store.Tx) (err error) { n, err = tx.QueueLen(fulfill.DeliveryQueue); return err }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	events := h.sim.EventCount()
	h.pass(t0.Add(-time.Hour))
	if n := queued(); n != events {
		t.Fatalf("%d deliveries queued by the catch-up, want the %d events already seen", n, events)
	}
	_ = d
	h.pass(t0.Add(-time.Hour))
	if n := queued(); n != events {
		t.Errorf("a second catch-up left %d deliveries queued, want still %d (none twice)", n, events)
	}
}
