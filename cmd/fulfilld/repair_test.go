package main

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/metrics/metricstest"
	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// repairConfig is repair mode alone: forward.undelivered_only to the
// receiver at url, no action of fulfilld's own.
func repairConfig(url, extra string) func(*configFile) {
	return func(c *configFile) {
		c.Command = nil
		c.MaxAttempts = 1 // a failed attempt is dead-lettered at once
		c.Extra = fmt.Sprintf("forward:\n  url: %q\n  secret: %q\n  undelivered_only: true\n", url, forwardSecret) + extra
	}
}

// repairReceiver is the shop's handler, verifying with stripe-go, at the
// URL it returns.
func repairReceiver(t *testing.T) (*holdingReceiver, string) {
	recv := &holdingReceiver{t: t, received: map[string]int{}, answered: map[string]int{}, held: map[string]bool{}}
	srv := httptest.NewServer(recv)
	t.Cleanup(srv.Close)
	return recv, srv.URL + "/webhook"
}

// completedEvent emits checkout.session.completed for a new paid session
// and returns the event's id.
func completedEvent(sim *stripesim.Server, at time.Time, opts ...stripesim.EventOpt) string {
	id := sim.CreateSession(stripesim.SessionParams{Created: at.Add(-time.Minute), LineItems: 1})
	return sim.CompleteSession(id, "paid", at, opts...)
}

// TestRepairModeEndToEnd: with forward.undelivered_only, `run --once`
// forwards nothing the stream lists; `reconcile` re-delivers only the event
// Stripe could not deliver and that is older than forward.grace; a handler
// that fails leaves it dead-lettered, a second reconcile does not requeue
// it, `retry evt_…` does; status counts it; no secret is printed.
func TestRepairModeEndToEnd(t *testing.T) {
	t.Parallel()
	recv, url := repairReceiver(t)
	h := newHarness(t, harnessOptions{config: repairConfig(url, "")})
	now := time.Now()
	missed := completedEvent(h.sim, now.Add(-2*time.Hour), stripesim.DeliveryFailed())
	completedEvent(h.sim, now.Add(-2*time.Hour))                               // Stripe delivered it
	completedEvent(h.sim, now.Add(-2*time.Minute), stripesim.DeliveryFailed()) // inside forward.grace: Stripe still retries

	var out strings.Builder
	run := func(want int, args ...string) result {
		t.Helper()
		r := h.fulfilld(args...)
		out.WriteString(r.stdout + r.stderr)
		if r.code != want {
			t.Fatalf("exit %d, want %d:\n%s", r.code, want, r)
		}
		return r
	}
	run(0, "run", "--once", "--since", "3h")
	if received, _, _ := recv.counts(); received != 0 {
		t.Fatalf("the stream forwarded %d events in repair mode, want none", received)
	}

	recv.mu.Lock()
	recv.fail = true
	recv.mu.Unlock()
	r := run(1, "reconcile")
	for _, want := range []string{"repair: 1 events Stripe could not deliver", "1 queued for forward.url now", "0 delivered, 0 waiting, 1 dead-lettered"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("reconcile does not say %q:\n%s", want, r)
		}
	}
	recv.mu.Lock()
	recv.fail = false
	recv.mu.Unlock()
	if r := run(0, "reconcile"); !strings.Contains(r.stdout, "0 queued for forward.url now, 1 queued before") {
		t.Errorf("the second reconcile does not say it queued nothing:\n%s", r)
	}
	if _, answered, _ := recv.counts(); answered != 0 {
		t.Fatalf("a dead-lettered repair was delivered without a retry")
	}
	run(0, "retry", missed)
	if r := run(0, "reconcile"); !strings.Contains(r.stdout, "1 delivered, 0 waiting, 0 dead-lettered") {
		t.Errorf("reconcile after the retry:\n%s", r)
	}
	recv.mu.Lock()
	if len(recv.answered) != 1 || recv.answered[missed] != 1 {
		t.Errorf("the handler answered %v, want %s once", recv.answered, missed)
	}
	recv.mu.Unlock()

	_, raw := h.status()
	var st struct {
		Deliveries map[string]map[string]int `json:"deliveries"`
		LastSweep  struct {
			Repair *struct {
				Listed, Queued, Repaired int
			} `json:"repair"`
		} `json:"last_reconcile"`
	}
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		t.Fatal(err)
	}
	if n := st.Deliveries["repair"]; n["sent"] != 1 || n["pending"] != 0 || n["failed"] != 0 || st.Deliveries["forward"]["sent"] != 0 {
		t.Errorf("status deliveries %v, want repair: 1 sent, and nothing forwarded", st.Deliveries)
	}
	if st.LastSweep.Repair == nil || st.LastSweep.Repair.Listed != 1 {
		t.Errorf("status last_reconcile.repair: %+v", st.LastSweep.Repair)
	}
	text := run(0, "status")
	if !strings.Contains(text.stdout, "repaired webhooks") || !strings.Contains(text.stdout, "1 delivered, 0 waiting, 0 dead-lettered") ||
		!strings.Contains(text.stdout, missed+"  checkout.session.completed") || !strings.Contains(text.stdout, "repair sent") {
		t.Errorf("status does not count the repair:\n%s", text.stdout)
	}
	mustNotContain(t, "fulfilld's output", out.String(), forwardSecret)
}

// TestRepairModeDaemon: the daemon's scheduled sweep repairs, and /metrics
// counts it.
func TestRepairModeDaemon(t *testing.T) {
	t.Parallel()
	recv, url := repairReceiver(t)
	hh := newHTTPHarness(t, harnessOptions{config: repairConfig(url, "reconcile:\n  schedule: \"@every 1s\"\n")})
	missed := completedEvent(hh.sim, time.Now().Add(-time.Hour), stripesim.DeliveryFailed())
	p, base := hh.startHTTP("run")
	defer p.ended()
	repaired := func() bool {
		v, _ := metricstest.Sample(scrape(t, base), "fulfilld_deliveries", map[string]string{"destination": "repair", "state": "sent"})
		return v == 1
	}
	if !waitFor(30*time.Second, repaired, p.done) {
		t.Fatalf("/metrics never counted the repair:\n%s", p.ended())
	}
	recv.mu.Lock()
	if len(recv.answered) != 1 || recv.answered[missed] != 1 {
		t.Errorf("the handler answered %v, want %s once", recv.answered, missed)
	}
	recv.mu.Unlock()
	if v, ok := metricstest.Sample(scrape(t, base), "fulfilld_dead_letters", map[string]string{"kind": "repair"}); !ok || v != 0 {
		t.Errorf("fulfilld_dead_letters{kind=repair} = %v (present %v), want 0", v, ok)
	}
}

// TestRepairThenForward: a repair delivery that has not reached the handler
// when the shop switches from repair mode to plain forward still reaches it
// (after `retry evt_…`): forward and repair share forward.url, and the
// stream never forwards an event that has a repair delivery, so nothing
// else would ever deliver it.
func TestRepairThenForward(t *testing.T) {
	t.Parallel()
	recv, url := repairReceiver(t)
	h := newHarness(t, harnessOptions{config: repairConfig(url, "")})
	missed := completedEvent(h.sim, time.Now().Add(-2*time.Hour), stripesim.DeliveryFailed())
	recv.mu.Lock()
	recv.fail = true
	recv.mu.Unlock()
	if r := h.fulfilld("reconcile"); r.code != 1 || !strings.Contains(r.stdout, "1 dead-lettered") {
		t.Fatalf("reconcile with the handler down: exit %d, want 1 and the repair dead-lettered:\n%s", r.code, r)
	}
	recv.mu.Lock()
	recv.fail = false
	recv.mu.Unlock()

	cfg, err := os.ReadFile(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.writeFile("fulfilld.yaml", strings.Replace(string(cfg), "  undelivered_only: true\n", "", 1))
	for _, args := range [][]string{{"retry", missed}, {"run", "--once", "--since", "3h"}} {
		if r := h.fulfilld(args...); r.code != 0 {
			t.Fatalf("%v in forward mode: exit %d:\n%s", args, r.code, r)
		}
	}
	recv.mu.Lock()
	defer recv.mu.Unlock()
	if recv.answered[missed] != 1 {
		t.Errorf("after the switch to forward the handler answered %v, want %s once", recv.answered, missed)
	}
}
