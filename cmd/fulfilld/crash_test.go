package main

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// TestCrashDuringBackfill is SPEC guarantees 1 and 2 from the outside: a
// backfill is SIGKILLed again and again — between actions and while actions
// run — and restarted, until a pass completes. Every paid session must then
// be fulfilled, a repeat must carry the same idempotency key, and no unpaid
// or expired session may ever reach the action. A second pass over the same
// window must run nothing.
func TestCrashDuringBackfill(t *testing.T) {
	t.Parallel()
	const concurrency = 4
	h := newHarness(t, harnessOptions{config: func(c *configFile) { c.Concurrency = concurrency }})
	now := time.Now()

	paid := map[string]int{} // session → line items
	for i := range 300 {
		at := now.Add(-50*time.Minute + time.Duration(i)*8*time.Second)
		items := 1 + i%23 // over 10 items needs a second page of line items
		id := h.sim.CreateSession(stripesim.SessionParams{Created: at, LineItems: items})
		if i%10 == 0 {
			// A delayed payment method: complete unpaid, paid later.
			h.sim.CompleteSession(id, "unpaid", at.Add(time.Second))
			h.sim.AsyncPaymentSucceeded(id, at.Add(3*time.Minute))
		} else {
			h.sim.CompleteSession(id, "paid", at.Add(time.Second))
		}
		paid[id] = items
	}
	// A few in the last lookback, so the tip listing has work too.
	for i := range 5 {
		paid[h.paidSession(now.Add(-20*time.Second+time.Duration(i)*time.Second), 2)] = 2
	}
	notPaid := h.notPaidSessions(now, 20) // session → the state it must end in

	kills := 0
	start := time.Now()
	// crashAt starts fulfilld and SIGKILLs it once the action log has at
	// least n lines. A run that finishes first is fine: the next one starts
	// from wherever it left the store.
	crashAt := func(n int, args ...string) {
		t.Helper()
		p := h.start(args...)
		if !waitFor(30*time.Second, func() bool { return h.actionCount() >= n }, p.done) {
			if p.exited() {
				t.Logf("fulfilld %v finished before the action log reached %d lines", args, n)
				return
			}
			t.Fatalf("the action log did not reach %d lines within 30s:\n%s", n, p.result())
		}
		p.kill()
		if p.killedBySignal() {
			kills++
			t.Logf("killed fulfilld %v at %d action runs (%s)", args, h.actionCount(), time.Since(start))
		}
	}

	crashAt(20, "run", "--once", "--since", "1h")
	crashAt(120, "run") // the daemon, resuming from the cursor

	// Kill while actions are running: each slow run logs, then waits.
	h.writeFile("slow", "")
	p := h.start("run", "--once")
	if !waitFor(30*time.Second, func() bool { return len(h.inflightPIDs()) > 0 }, p.done) {
		t.Fatalf("no action started while slow:\n%s", p.result())
	}
	p.kill()
	if !p.killedBySignal() {
		t.Fatalf("fulfilld ended on its own while actions were running:\n%s", p.result())
	}
	kills++
	cutOff := map[string]bool{}
	entries, _ := os.ReadDir(h.path("inflight"))
	for _, e := range entries {
		cutOff[e.Name()] = true
	}
	// The machine went down with it: end the orphaned actions too.
	for _, pid := range h.inflightPIDs() {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	if err := os.Remove(h.path("slow")); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed fulfilld with %d action(s) running, at %d action runs", len(cutOff), h.actionCount())

	resumed := h.start("run", "--once", "--since", "1h")
	if !waitFor(30*time.Second, func() bool { return h.actionCount() >= 250 }, resumed.done) && !resumed.exited() {
		t.Fatalf("the action log did not reach 250 lines within 30s:\n%s", resumed.result())
	}
	if !strings.Contains(resumed.stderr.String(), "cut off") {
		t.Errorf("the restart after a kill mid-action does not say that attempts were cut off and are repeated:\n%s",
			tail(resumed.stderr.String(), 3000))
	}
	if !resumed.exited() {
		resumed.kill()
		if resumed.killedBySignal() {
			kills++
			t.Logf("killed fulfilld at %d action runs", h.actionCount())
		}
	}

	final := h.fulfilld("run", "--once")
	if final.code != 0 {
		t.Fatalf("the final pass did not succeed:\n%s", final)
	}
	t.Logf("%d kills; %d action runs for %d paid sessions; all passes took %s",
		kills, h.actionCount(), len(paid), time.Since(start).Round(time.Millisecond))

	runs := h.actionRuns()
	bySession := runsBySession(runs)
	duplicates := 0
	for id, items := range paid {
		rs := bySession[id]
		if len(rs) == 0 {
			t.Errorf("paid session %s was never fulfilled", id)
			continue
		}
		h.checkBody(id, items)
		if len(rs) > 1 {
			duplicates++
		}
		for i, r := range rs {
			if r.key != rs[0].key || r.key == "" {
				t.Errorf("session %s ran with idempotency keys %q and %q", id, rs[0].key, r.key)
			}
			if r.trigger != "event" {
				t.Errorf("session %s ran with FULFILLD_TRIGGER %q, want event", id, r.trigger)
			}
			if i > 0 && r.attempt <= rs[i-1].attempt {
				t.Errorf("session %s: repeated run has FULFILLD_ATTEMPT %d after %d", id, r.attempt, rs[i-1].attempt)
			}
		}
	}
	for id := range cutOff {
		if rs := bySession[id]; len(rs) < 2 {
			t.Errorf("session %s was cut off mid-action by the kill but its action ran %d time(s); want it repeated", id, len(rs))
		}
	}
	for id, state := range notPaid {
		if rs := bySession[id]; len(rs) > 0 {
			t.Errorf("the action ran for %s session %s: %+v", state, id, rs)
		}
	}
	for id := range bySession {
		if _, ok := paid[id]; !ok {
			if _, ok := notPaid[id]; !ok {
				t.Errorf("the action ran for a session that does not exist: %s", id)
			}
		}
	}
	// A repeat needs an attempt cut off by a kill; at most `concurrency`
	// attempts run at any moment.
	t.Logf("%d of %d paid sessions ran more than once (%d kills, at most %d attempts in flight at each)",
		duplicates, len(paid), kills, concurrency)
	if duplicates > kills*concurrency {
		t.Errorf("%d sessions ran more than once after %d kills; at most %d could have been cut off", duplicates, kills, kills*concurrency)
	}
	if _, err := os.Stat(h.path("key-leaked")); err == nil {
		t.Errorf("the action's environment holds the Stripe API key")
	}

	st, _ := h.status()
	wantStates := map[string]int{"fulfilled": len(paid), "pending": 0, "failed": 0}
	for _, state := range notPaid {
		wantStates[state]++
	}
	for state, want := range wantStates {
		if got := st.Fulfillments[state]; got != want {
			t.Errorf("status: %d %s; want %d (all: %v)", got, state, want, st.Fulfillments)
		}
	}
	if st.Queued != 0 || st.InFlight != 0 {
		t.Errorf("status: queued %d, in flight %d after a complete pass; want 0 and 0", st.Queued, st.InFlight)
	}
	// Every event was handled, and counted, exactly once.
	counted := 0
	for _, e := range st.Events {
		counted += e.Count
	}
	if want := h.sim.EventCount(); counted != want {
		t.Errorf("status counts %d handled events; Stripe listed %d: %+v", counted, want, st.Events)
	}

	// SPEC: a rerun over the same window after completion runs nothing.
	before := len(runs)
	again := h.fulfilld("run", "--once", "--since", "1h")
	if again.code != 0 {
		t.Fatalf("rerun over the same window:\n%s", again)
	}
	if n := h.actionCount(); n != before {
		t.Errorf("rerun over the same window ran the action %d more time(s)", n-before)
	}
}

// TestRerunAfterCompletion is the plain case of a rerun: one uninterrupted
// backfill, then the same window again, with and without --since.
func TestRerunAfterCompletion(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	now := time.Now()
	paid := map[string]int{}
	for i := range 25 {
		paid[h.paidSession(now.Add(-30*time.Minute+time.Duration(i)*time.Minute), 1+i%12)] = 1 + i%12
	}
	free := h.sim.CreateSession(stripesim.SessionParams{Created: now.Add(-3 * time.Minute), LineItems: 2})
	h.sim.CompleteSession(free, "no_payment_required", now.Add(-3*time.Minute))
	paid[free] = 2
	first := h.fulfilld("run", "--once", "--since", "1h")
	if first.code != 0 {
		t.Fatalf("first pass:\n%s", first)
	}
	bySession := runsBySession(h.actionRuns())
	for id, items := range paid {
		if n := len(bySession[id]); n != 1 {
			t.Errorf("session %s: action ran %d times in an uninterrupted pass; want 1", id, n)
		}
		h.checkBody(id, items)
	}
	before := h.actionCount()
	for _, args := range [][]string{{"run", "--once", "--since", "1h"}, {"run", "--once"}, {"run", "--once", "--since", "2h"}} {
		stats := h.sim.Stats()
		r := h.fulfilld(args...)
		if r.code != 0 {
			t.Fatalf("rerun:\n%s", r)
		}
		if n := h.actionCount(); n != before {
			t.Errorf("fulfilld %v after a complete pass ran the action %d more time(s)", args, n-before)
		}
		after := h.sim.Stats()
		const retrieve = "GET /v1/checkout/sessions/:id"
		if n := after.ByEndpoint[retrieve] - stats.ByEndpoint[retrieve]; n != 0 {
			t.Errorf("fulfilld %v retrieved %d sessions that are already fulfilled", args, n)
		}
		// Resuming from the cursor lists the tip and one re-scan slice.
		if n := after.ByEndpoint["GET /v1/events"] - stats.ByEndpoint["GET /v1/events"]; len(args) == 2 && n > 3 {
			t.Errorf("fulfilld %v listed %d pages of events to resume a complete cursor; want at most 3", args, n)
		}
	}
}
