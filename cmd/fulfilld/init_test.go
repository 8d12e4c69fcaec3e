package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// `fulfilld init` writes a config that runs as written: the commands it
// prints fulfil a paid session through the sample action, which keeps the
// session it received. A second init refuses to overwrite.
func TestInitStarterConfigRuns(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	dir := filepath.Join(h.dir, "starter")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r := h.fulfilld("init", "--dir", dir)
	if r.code != 0 {
		t.Fatalf("init:\n%s", r)
	}
	cfg := filepath.Join(dir, "fulfilld.yaml")
	if !strings.Contains(r.stdout, "run --once --since 1h --config") {
		t.Errorf("init does not say what to run next:\n%s", r.stdout)
	}
	now := time.Now()
	paid := h.paidSession(now.Add(-20*time.Minute), 3)
	unpaid := h.sim.CreateSession(stripesim.SessionParams{Created: now.Add(-15 * time.Minute)})
	h.sim.CompleteSession(unpaid, "unpaid", now.Add(-14*time.Minute))

	// The starter config has no api_base; the test's simulated Stripe stands
	// in for the sandbox through the environment.
	run := h.fulfilldEnv(h.env("FULFILLD_STRIPE_API_BASE="+h.sim.URL()), "--config", cfg, "run", "--once", "--since", "1h")
	if run.code != 0 {
		t.Fatalf("the starter config does not run:\n%s", run)
	}
	body, err := os.ReadFile(filepath.Join(dir, "received", paid+".json"))
	if err != nil {
		t.Fatalf("the sample action did not keep the paid session: %v", err)
	}
	var sess struct {
		ID        string `json:"id"`
		LineItems struct {
			Data []json.RawMessage `json:"data"`
		} `json:"line_items"`
	}
	if err := json.Unmarshal(body, &sess); err != nil || sess.ID != paid || len(sess.LineItems.Data) != 3 {
		t.Errorf("received %s with %d line items (%v), want %s with 3", sess.ID, len(sess.LineItems.Data), err, paid)
	}
	if _, err := os.Stat(filepath.Join(dir, "received", unpaid+".json")); err == nil {
		t.Errorf("the unpaid session was fulfilled")
	}

	again := h.fulfilld("init", "--dir", dir)
	if again.code != 2 || !strings.Contains(again.stderr, "--force") {
		t.Errorf("a second init should refuse to overwrite, naming --force:\n%s", again)
	}
}
