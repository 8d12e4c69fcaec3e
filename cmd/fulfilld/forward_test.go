package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/fulfilld/fulfilld/internal/stripesim"
)

const forwardSecret = "whsec_crash_forward_receiver_0123"

// holdingReceiver is the shop's webhook handler. It verifies every request
// with stripe-go and answers 200 — until hold is set, when it keeps each
// request open (without answering) until the client goes away.
type holdingReceiver struct {
	t        *testing.T
	mu       sync.Mutex
	hold     bool
	fail     bool           // answer 500, as a handler that is broken
	received map[string]int // requests per event id
	answered map[string]int // 200s per event id
	held     map[string]bool
}

func (r *holdingReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	ev, err := webhook.ConstructEventWithOptions(body, req.Header.Get("Stripe-Signature"), forwardSecret,
		webhook.ConstructEventOptions{IgnoreAPIVersionMismatch: true})
	if err != nil {
		r.t.Errorf("stripe-go rejected a forwarded event: %v", err)
		http.Error(w, "bad signature", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.received[ev.ID]++
	if r.fail {
		r.mu.Unlock()
		http.Error(w, "handler crashed", http.StatusInternalServerError)
		return
	}
	hold := r.hold
	if hold {
		r.held[ev.ID] = true
	} else {
		r.answered[ev.ID]++
	}
	r.mu.Unlock()
	if hold {
		<-req.Context().Done()
	}
}

func (r *holdingReceiver) counts() (received, answered, held int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.received {
		received += n
	}
	for _, n := range r.answered {
		answered += n
	}
	return received, answered, len(r.held)
}

// TestForwardSurvivesSIGKILLMidDelivery: fulfilld in forward mode alone is
// SIGKILLed while every delivery slot waits on the receiver. After a
// restart every event has been answered 2xx exactly once; the only repeats
// are the attempts the kill cut off; no action of fulfilld's own ran; and a
// backfill over the same hour delivers nothing again.
func TestForwardSurvivesSIGKILLMidDelivery(t *testing.T) {
	t.Parallel()
	recv := &holdingReceiver{t: t, received: map[string]int{}, answered: map[string]int{}, held: map[string]bool{}}
	srv := httptest.NewServer(recv)
	defer srv.Close()
	const concurrency = 4
	h := newHarness(t, harnessOptions{config: func(c *configFile) {
		c.Command = nil // forward alone: fulfilld relays and runs no action
		c.Concurrency = concurrency
		c.Extra = fmt.Sprintf("forward:\n  url: %q\n  secret: %q\n", srv.URL+"/webhook", forwardSecret)
	}})
	now := time.Now()
	var events []string
	for i := range 40 {
		at := now.Add(-30*time.Minute + time.Duration(i)*20*time.Second)
		id := h.sim.CreateSession(stripesim.SessionParams{Created: at, LineItems: 1})
		events = append(events, h.sim.CompleteSession(id, "paid", at.Add(time.Second)))
	}

	// Ten answered, then every slot held open: kill it there.
	p := h.start("run", "--once", "--since", "1h")
	if !waitFor(30*time.Second, func() bool {
		_, answered, _ := recv.counts()
		if answered >= 10 {
			recv.mu.Lock()
			recv.hold = true
			recv.mu.Unlock()
		}
		_, _, held := recv.counts()
		return held == concurrency
	}, p.done) {
		t.Fatalf("the delivery slots were not all held open:\n%s", p.result())
	}
	p.kill()
	if !p.killedBySignal() {
		t.Fatalf("fulfilld ended on its own while deliveries were in flight:\n%s", p.result())
	}
	recv.mu.Lock()
	recv.hold = false
	cutOff := make(map[string]bool, len(recv.held))
	for id := range recv.held {
		cutOff[id] = true
	}
	recv.mu.Unlock()

	if r := h.fulfilld("run", "--once", "--since", "1h"); r.code != 0 {
		t.Fatalf("the restart did not complete: %s", r)
	} else if !strings.Contains(r.stderr, "cut off") {
		t.Errorf("the restart does not say attempts were cut off:\n%s", tail(r.stderr, 2000))
	}
	check := func(when string) {
		t.Helper()
		recv.mu.Lock()
		defer recv.mu.Unlock()
		for _, id := range events {
			want := 1
			if cutOff[id] {
				want = 2 // the attempt the kill cut off, and its repeat
			}
			if recv.answered[id] != 1 || recv.received[id] != want {
				t.Errorf("%s: %s answered %d times, received %d; want answered once, received %d (cut off: %v)",
					when, id, recv.answered[id], recv.received[id], want, cutOff[id])
			}
		}
		if len(recv.received) != len(events) {
			t.Errorf("%s: the receiver saw %d events, want %d", when, len(recv.received), len(events))
		}
	}
	check("after the restart")
	if n := h.actionCount(); n != 0 {
		t.Errorf("forward alone ran fulfilld's own action %d times", n)
	}

	if r := h.fulfilld("run", "--once", "--since", "1h"); r.code != 0 {
		t.Fatalf("the backfill failed: %s", r)
	}
	check("after a backfill over the same hour")
	_, raw := h.status()
	var st struct {
		Deliveries map[string]map[string]int `json:"deliveries"`
	}
	if err := json.Unmarshal([]byte(raw), &st); err != nil || st.Deliveries["forward"]["sent"] != len(events) ||
		st.Deliveries["forward"]["pending"] != 0 {
		t.Errorf("status counts forwarded deliveries as %v (%v), want %d sent:\n%s", st.Deliveries, err, len(events), raw)
	}
}
