package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// TestRefusedAtStart: bad usage and bad configuration end with exit code 2
// and one line that names the flag or key, before anything is done.
func TestRefusedAtStart(t *testing.T) {
	t.Parallel()
	noAction := func(c *configFile) { c.Command = nil }
	tests := []struct {
		name   string
		key    string // STRIPE_API_KEY; "-" for the simulator's key
		config func(*configFile)
		args   []string
		env    []string // added to the harness's environment
		want   []string // each must appear in the error
		// multiline allows more than the one error line (cobra's
		// suggestions).
		multiline bool
	}{
		{name: "publishable key", key: "pk_test_51PublishableKeyAbCdEfGhIjKlMnOpQrStUv",
			args: []string{"run", "--once"}, want: []string{"stripe.api_key", "publishable"}},
		{name: "webhook secret as key", key: "whsec_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
			args: []string{"run", "--once"}, want: []string{"stripe.api_key", "signing secret"}},
		{name: "no key", key: "", args: []string{"run", "--once"}, want: []string{"stripe.api_key", "STRIPE_API_KEY"}},
		{name: "blank key", key: "   ", args: []string{"run", "--once"}, want: []string{"stripe.api_key"}},
		{name: "no key for fulfill", key: "", args: []string{"fulfill", "cs_test_abc"}, want: []string{"stripe.api_key"}},
		{name: "bad cron spec", key: "-", config: func(c *configFile) { c.Schedule = "every banana" },
			args: []string{"run", "--once"}, want: []string{"schedule", "every banana", "@every 30s"}},
		{name: "schedule under a second", key: "-", config: func(c *configFile) { c.Schedule = "@every 100ms" },
			args: []string{"run"}, want: []string{"schedule"}},
		{name: "unknown top-level key", key: "-", config: func(c *configFile) { c.Extra = "schedul: \"@hourly\"\n" },
			args: []string{"run", "--once"}, want: []string{"schedul", "unknown key", "did you mean schedule"}},
		{name: "unknown nested key", key: "-", config: func(c *configFile) { c.Extra = "http:\n  listn: \"9464\"\n" },
			args: []string{"run", "--once"}, want: []string{"http.listn", "unknown key", "listen"}},
		{name: "unknown key even for status", key: "-", config: func(c *configFile) { c.Extra = "notfy:\n  url: x\n" },
			args: []string{"status"}, want: []string{"notfy", "unknown key"}},
		{name: "since in the future", key: "-", args: []string{"run", "--once", "--since", "2999-01-01T00:00:00Z"},
			want: []string{"--since", "future"}},
		{name: "since negative", key: "-", args: []string{"run", "--once", "--since", "-5h"}, want: []string{"--since"}},
		{name: "since garbage", key: "-", args: []string{"run", "--once", "--since", "yesterday"},
			want: []string{"--since", "yesterday", "24h"}},
		{name: "since past retention", key: "-", args: []string{"run", "--once", "--since", "800h"},
			want: []string{"--since", "retention", "reconcile"}},
		{name: "since past retention, RFC 3339", key: "-",
			args: []string{"run", "--once", "--since", time.Now().Add(-40 * 24 * time.Hour).UTC().Format(time.RFC3339)},
			want: []string{"--since", "retention"}},
		{name: "no action for run", key: "-", config: noAction, args: []string{"run", "--once"},
			want: []string{"fulfill", "fulfill.command", "--dry-run"}},
		{name: "no action for the daemon", key: "-", config: noAction, args: []string{"run"}, want: []string{"fulfill"}},
		{name: "no action for fulfill", key: "-", config: noAction, args: []string{"fulfill", "cs_test_abc"}, want: []string{"fulfill"}},
		{name: "both command and url", key: "-", config: func(c *configFile) { c.URL = "http://127.0.0.1:1/hook" },
			args: []string{"run", "--once"}, want: []string{"fulfill", "not both"}},
		{name: "fulfill not a session id", key: "-", args: []string{"fulfill", "notanid"}, want: []string{"notanid", "cs_"}},
		{name: "fulfill without an id", key: "-", args: []string{"fulfill"}, want: []string{"arg"}},
		{name: "retry with neither ids nor --failed", key: "-", args: []string{"retry"}, want: []string{"retry", "--failed"}},
		{name: "retry with both ids and --failed", key: "-", args: []string{"retry", "--failed", "cs_test_abc"},
			want: []string{"retry", "--failed"}},
		{name: "retry not a session id", key: "-", args: []string{"retry", "in_123"}, want: []string{"in_123", "cs_"}},
		{name: "unknown flag", key: "-", args: []string{"run", "--onse"}, want: []string{"--onse"}},
		{name: "unknown command", key: "-", args: []string{"fulfil", "cs_test_abc"}, want: []string{"fulfil", "did you mean"}, multiline: true},
		{name: "bad log level", key: "-", args: []string{"--log-level", "loud", "run", "--once"}, want: []string{"--log-level", "loud"}},
		{name: "bad log format", key: "-", args: []string{"--log-format", "xml", "run", "--once"}, want: []string{"--log-format", "xml"}},
		{name: "misspelt variable", key: "-", env: []string{"FULFILLD_FULFILL_CONCURENCY=3"}, args: []string{"run", "--once"},
			want: []string{"FULFILLD_FULFILL_CONCURENCY", "did you mean FULFILLD_FULFILL_CONCURRENCY?"}},
		{name: "misspelt --set key", key: "-", args: []string{"--set", "fulfill.timout=1m", "run", "--once"},
			want: []string{"fulfill.timout", "did you mean fulfill.timeout?"}},
		{name: "action program missing", key: "-", config: func(c *configFile) { c.Command = []string{"/nonexistent/ship-order"} },
			args: []string{"run", "--once"}, want: []string{"fulfill.command", "/nonexistent/ship-order", "does not exist"}},
		{name: "action program not in PATH", key: "-", config: func(c *configFile) { c.Command = []string{"ship-order-not-installed"} },
			args: []string{"run"}, want: []string{"fulfill.command", "not found in PATH"}},
		{name: "events.types without what fulfilment needs", key: "-", env: []string{"FULFILLD_EVENTS_TYPES=checkout.session.completed"},
			args: []string{"run", "--once"}, want: []string{"events.types", "checkout.session.async_payment_succeeded"}},
		{name: "repair beside fulfill.command", key: "-",
			config: func(c *configFile) {
				c.Extra = "forward:\n  url: \"http://127.0.0.1:1/webhook\"\n  undelivered_only: true\n"
			},
			args: []string{"run", "--once"}, want: []string{"forward.undelivered_only", "fulfill.command", "fulfil the same orders a second time"}},
		{name: "repair beside fulfill.command, for reconcile", key: "-",
			config: func(c *configFile) {
				c.Extra = "forward:\n  url: \"http://127.0.0.1:1/webhook\"\n  undelivered_only: true\n"
			},
			args: []string{"reconcile"}, want: []string{"forward.undelivered_only", "fulfill.command", "second time"}},
		{name: "repair without forward.url", key: "-",
			config: func(c *configFile) { c.Command, c.Extra = nil, "forward:\n  undelivered_only: true\n" },
			args:   []string{"reconcile"}, want: []string{"forward.undelivered_only", "forward.url"}},
		{name: "config file missing", key: "-", args: []string{"--config", "/nonexistent/fulfilld.yaml", "run", "--once"},
			want: []string{"--config", "/nonexistent/fulfilld.yaml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{config: tt.config})
			switch tt.key {
			case "-":
			default:
				h.key = tt.key
			}
			r := h.fulfilldEnv(append(h.env(), tt.env...), tt.args...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2:\n%s", r.code, r)
			}
			line := strings.TrimSpace(r.stderr)
			if strings.Contains(line, "\n") && !tt.multiline || !strings.HasPrefix(line, "fulfilld: ") {
				t.Errorf("want one line \"fulfilld: …\" on stderr:\n%s", r)
			}
			for _, w := range tt.want {
				if !strings.Contains(strings.ToLower(line), strings.ToLower(w)) {
					t.Errorf("the error does not mention %q: %s", w, line)
				}
			}
			if tt.key != "-" && len(strings.TrimSpace(tt.key)) > 0 {
				mustNotContain(t, "the error", r.stdout+r.stderr, tt.key)
			}
			if h.actionCount() != 0 {
				t.Errorf("the action ran")
			}
			if got := h.sim.Stats().Total; got != 0 {
				t.Errorf("%d Stripe requests were made before refusing", got)
			}
		})
	}
}

// TestSinceAtRetentionEdge: the refusal for --since 800h says "use at most
// --since 720h here"; that advice must work.
func TestSinceAtRetentionEdge(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	refused := h.fulfilld("run", "--once", "--since", "800h")
	if refused.code != 2 || !strings.Contains(refused.stderr, "--since 720h") {
		t.Fatalf("want exit 2 advising --since 720h:\n%s", refused)
	}
	r := h.fulfilld("run", "--once", "--since", "720h")
	if r.code != 0 {
		t.Errorf("--since 720h, as the refusal advises:\n%s", r)
	}
}

// TestDryRunWithoutAction: --dry-run needs no action, runs none, and does not
// stop a later real run from fulfilling what it listed.
func TestDryRunWithoutAction(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{config: func(c *configFile) { c.Command = nil }})
	now := time.Now()
	ids := []string{
		h.paidSession(now.Add(-20*time.Minute), 3),
		h.paidSession(now.Add(-10*time.Minute), 12),
	}
	dry := h.fulfilld("run", "--once", "--dry-run", "--since", "1h")
	if dry.code != 0 {
		t.Fatalf("dry run without an action:\n%s", dry)
	}
	for _, id := range ids {
		if !strings.Contains(dry.stderr, id) {
			t.Errorf("the dry run does not report that it would fulfill %s:\n%s", id, dry)
		}
	}
	if h.actionCount() != 0 {
		t.Fatalf("the dry run ran the action")
	}
	t.Run("dry run leaves no cursor", func(t *testing.T) {
		st := h.fulfilld("status", "--json")
		if st.code == 2 && strings.Contains(st.stderr, "does not exist") {
			return // not even the store was created
		}
		var report statusReport
		if err := json.Unmarshal([]byte(st.stdout), &report); err != nil {
			t.Fatalf("status --json: %v\n%s", err, st)
		}
		if report.Cursor.Started {
			t.Fatalf("--dry-run (\"write nothing\") saved the cursor:\n%s", st.stdout)
		}
	})
	// The action can also come from the environment.
	action, _ := json.Marshal([]string{"/bin/sh", h.path("action.sh"), h.dir})
	real := h.fulfilldEnv(h.env("FULFILLD_FULFILL_COMMAND="+string(action)), "run", "--once", "--since", "1h")
	if real.code != 0 {
		t.Fatalf("real run after the dry run:\n%s", real)
	}
	got := runsBySession(h.actionRuns())
	for _, id := range ids {
		if len(got[id]) != 1 {
			t.Errorf("after a dry run, a real run ran the action for %s %d time(s); want 1", id, len(got[id]))
		}
	}
}

// TestStoreHeldByRunningDaemon: a second `run` against the store of a running
// daemon is refused quickly and clearly; SIGTERM stops the daemon cleanly.
func TestStoreHeldByRunningDaemon(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	id := h.paidSession(time.Now().Add(-5*time.Minute), 1)
	daemon := h.start("run", "--since", "1h")
	if !waitFor(20*time.Second, func() bool { return h.actionCount() >= 1 }, daemon.done) {
		t.Fatalf("the daemon did not fulfill %s:\n%s", id, daemon.result())
	}

	// A payment made while the daemon runs is fulfilled by a later poll.
	fresh := h.paidSession(time.Now(), 3)
	if !waitFor(20*time.Second, func() bool { return h.actionCount() >= 2 }, daemon.done) {
		t.Fatalf("the daemon did not fulfill %s, paid while it ran:\n%s", fresh, daemon.result())
	}
	h.checkBody(fresh, 3)

	second := h.fulfilld("run", "--once")
	if second.code != 2 {
		t.Errorf("second run against a held store: exit %d, want 2:\n%s", second.code, second)
	}
	if !strings.Contains(second.stderr, "held") || !strings.Contains(second.stderr, "store.path") {
		t.Errorf("the refusal does not say the store is held:\n%s", second)
	}
	if second.took > 5*time.Second {
		t.Errorf("the refusal took %s", second.took)
	}
	if line := strings.TrimSpace(second.stderr); strings.Contains(line, "\n") {
		t.Errorf("want one line, got:\n%s", line)
	}

	var running statusReport
	t.Run("status while run is up", func(t *testing.T) {
		st := h.fulfilld("status", "--json")
		if fi, err := os.Stat(h.path("f.db") + ".sock"); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("admin socket beside the store: %v, mode %v; want mode 0600", err, fi.Mode().Perm())
		}
		var report statusReport
		if err := json.Unmarshal([]byte(st.stdout), &report); err != nil || st.code != 0 {
			t.Fatalf("status --json while run is up: %v\n%s", err, st)
		}
		if report.Fulfillments["fulfilled"] != 2 {
			t.Errorf("status --json while run is up: %v; want 2 fulfilled", report.Fulfillments)
		}
		running = report
	})

	if err := daemon.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-daemon.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("the daemon did not stop within 15s of SIGTERM:\n%s", daemon.result())
	}
	if r := daemon.result(); r.code != 0 {
		t.Errorf("the daemon stopped by SIGTERM exited %d, want 0:\n%s", r.code, r)
	}
	// The same answer from the stopped store as from the running daemon.
	var stopped statusReport
	st := h.fulfilld("status", "--json")
	if err := json.Unmarshal([]byte(st.stdout), &stopped); err != nil || st.code != 0 {
		t.Fatalf("status --json after the daemon stopped: %v\n%s", err, st)
	}
	if !reflect.DeepEqual(stopped.Fulfillments, running.Fulfillments) {
		t.Errorf("status differs: %v while running, %v stopped", running.Fulfillments, stopped.Fulfillments)
	}
	if _, err := os.Stat(h.path("f.db") + ".sock"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the admin socket outlived the daemon: %v", err)
	}
	if n := len(h.actionRuns()); n != 2 {
		t.Errorf("the action ran %d times for two sessions", n)
	}
	if after := h.fulfilld("run", "--once"); after.code != 0 {
		t.Errorf("run after the daemon stopped:\n%s", after)
	}
}

// TestRejectedAPIKey: a key Stripe does not accept ends `run --once`, the
// daemon and `fulfill` with exit 1 and one line telling the operator, and the
// key never appears in any output, even at debug level.
func TestRejectedAPIKey(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	id := h.paidSession(time.Now().Add(-5*time.Minute), 2)
	const wrongKey = "sk_test_51WrongKeyQw7Er5Ty3Ui1Op9As8Df6Gh4Jk2Lz"
	h.key = wrongKey

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"run --once", []string{"--log-level", "debug", "--log-format", "json", "run", "--once", "--since", "1h"}},
		{"daemon", []string{"--log-level", "debug", "--log-format", "text", "run", "--since", "1h"}},
		{"fulfill", []string{"--log-level", "debug", "--log-format", "json", "fulfill", id}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.fulfilld(tc.args...)
			mustNotContain(t, "output of fulfilld "+strings.Join(tc.args, " "), r.stdout+r.stderr, wrongKey)
			if r.code != 1 {
				t.Errorf("exit %d with a rejected key, want 1:\n%s", r.code, r)
			}
			var last string
			for _, l := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
				if strings.HasPrefix(l, "fulfilld: ") {
					last = l
				}
			}
			if !regexp.MustCompile(`(?i)api key.*(not accepted|rejected|invalid)`).MatchString(last) {
				t.Errorf("no \"fulfilld: …\" line saying the API key was rejected:\n%s", r)
			}
		})
	}
	if h.actionCount() != 0 {
		t.Errorf("the action ran with a rejected key")
	}
	for _, args := range [][]string{{"status"}, {"status", "--json"}} {
		r := h.fulfilld(args...)
		if r.code != 0 {
			t.Errorf("status after a rejected key:\n%s", r)
		}
		mustNotContain(t, "status", r.stdout+r.stderr, wrongKey)
	}
	// The operator looking at status sees why nothing moves.
	if st, _ := h.status(); st.LastPoll == nil || st.LastPoll.Outcome != "error" || !strings.Contains(strings.ToLower(st.LastPoll.Error), "api key") {
		t.Errorf("status last_poll after a rejected key: %+v; want outcome error naming the API key", st.LastPoll)
	}
}

// TestSecretsNeverAppear: a successful run with a URL action signed with
// fulfill.secret, at debug level: neither the API key nor the secret appears
// in any output, and the deliveries verify with Stripe's own code.
func TestSecretsNeverAppear(t *testing.T) {
	t.Parallel()
	const secret = "whsec_E2eSigningSecretZx8Cv6Bn4Mq2Wr0Ty7Ui5Op3"
	var (
		mu         sync.Mutex
		deliveries = map[string]int{} // session → deliveries
		lineItems  = map[string]int{} // session → line items delivered
		problems   []string
	)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var sess struct {
			ID        string `json:"id"`
			LineItems struct {
				Data []json.RawMessage `json:"data"`
			} `json:"line_items"`
		}
		mu.Lock()
		defer mu.Unlock()
		if err := webhook.ValidatePayload(body, r.Header.Get("Stripe-Signature"), secret); err != nil {
			problems = append(problems, "signature: "+err.Error())
		}
		// Webhook handlers built on ConstructEventWithOptions verify it too;
		// the body is a Checkout Session, not an Event, so it carries no
		// api_version to match.
		if _, err := webhook.ConstructEventWithOptions(body, r.Header.Get("Stripe-Signature"), secret,
			webhook.ConstructEventOptions{IgnoreAPIVersionMismatch: true}); err != nil {
			problems = append(problems, "ConstructEventWithOptions: "+err.Error())
		}
		if err := json.Unmarshal(body, &sess); err != nil {
			problems = append(problems, "body: "+err.Error())
		}
		if r.Header.Get("Idempotency-Key") == "" {
			problems = append(problems, "no Idempotency-Key for "+sess.ID)
		}
		deliveries[sess.ID]++
		lineItems[sess.ID] = len(sess.LineItems.Data)
		// An endpoint that echoes its configuration.
		fmt.Fprintf(w, "ok, verified with %s\n", secret)
	}))
	t.Cleanup(receiver.Close)
	h := newHarness(t, harnessOptions{config: func(c *configFile) {
		c.Command, c.URL, c.Secret = nil, receiver.URL+"/fulfill", secret
	}})
	now := time.Now()
	var ids []string
	for i := range 5 {
		ids = append(ids, h.paidSession(now.Add(-time.Duration(10+i)*time.Minute), 1+i*3))
	}
	var outputs strings.Builder
	record := func(r result) {
		outputs.WriteString(r.stdout)
		outputs.WriteString(r.stderr)
	}
	for _, format := range []string{"json", "text"} {
		r := h.fulfilld("--log-level", "debug", "--log-format", format, "run", "--once", "--since", "1h")
		if r.code != 0 {
			t.Fatalf("run with a URL action:\n%s", r)
		}
		record(r)
	}
	for _, args := range [][]string{{"status"}, {"status", "--json"}, {"--log-level", "debug", "fulfill", "--json", ids[0]}} {
		r := h.fulfilld(args...)
		if r.code != 0 {
			t.Fatalf("fulfilld %v:\n%s", args, r)
		}
		record(r)
	}
	mustNotContain(t, "fulfilld's output", outputs.String(), testKey, secret)
	db, err := os.ReadFile(h.path("f.db"))
	if err != nil {
		t.Fatal(err)
	}
	mustNotContain(t, "the store", string(db), testKey, secret)

	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Error(p)
	}
	for i, id := range ids {
		if deliveries[id] != 1 {
			t.Errorf("%s was delivered %d times, want 1", id, deliveries[id])
		}
		if lineItems[id] != 1+i*3 {
			t.Errorf("%s was delivered with %d line items, want %d", id, lineItems[id], 1+i*3)
		}
	}
}

// TestManualFulfillAndRetry: `fulfill` is idempotent, `retry --failed`
// brings a dead-lettered session back, and `status --json` has the fields
// SPEC promises.
func TestManualFulfillAndRetry(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{config: func(c *configFile) { c.MaxAttempts = 1 }})
	now := time.Now()
	manual := h.paidSession(now.Add(-20*time.Minute), 14)
	broken := h.paidSession(now.Add(-15*time.Minute), 1)
	plain := h.paidSession(now.Add(-10*time.Minute), 1)
	unpaid := h.sim.CreateSession(stripesim.SessionParams{Created: now.Add(-8 * time.Minute)})
	h.sim.CompleteSession(unpaid, "unpaid", now.Add(-8*time.Minute))
	h.behave(broken, "fail")

	for range 2 {
		r := h.fulfilld("fulfill", manual)
		if r.code != 0 || !strings.Contains(r.stdout, manual+": fulfilled") {
			t.Fatalf("fulfill %s: want exit 0 and \"%s: fulfilled\":\n%s", manual, manual, r)
		}
	}
	runs := runsBySession(h.actionRuns())
	if n := len(runs[manual]); n != 1 {
		t.Fatalf("two `fulfill %s` ran the action %d times, want 1", manual, n)
	}
	if r := runs[manual][0]; r.trigger != "manual" || r.attempt != 1 {
		t.Errorf("manual fulfillment ran with trigger %q attempt %d, want manual 1", r.trigger, r.attempt)
	}
	h.checkBody(manual, 14)

	r := h.fulfilld("fulfill", unpaid)
	if r.code != 0 || !strings.Contains(r.stdout, "awaiting_payment") {
		t.Errorf("fulfill of an unpaid session: want exit 0 and awaiting_payment:\n%s", r)
	}

	pass := h.fulfilld("run", "--once", "--since", "1h")
	if pass.code != 1 {
		t.Errorf("a pass in which a fulfillment ended failed: exit %d, want 1:\n%s", pass.code, pass)
	}
	if !strings.Contains(pass.stderr, "retry --failed") {
		t.Errorf("the failed pass does not point to `fulfilld retry --failed`:\n%s", pass)
	}
	st, _ := h.status()
	if st.Fulfillments["failed"] != 1 || st.Fulfillments["fulfilled"] != 2 {
		t.Errorf("status after the pass: %v; want 2 fulfilled, 1 failed", st.Fulfillments)
	}
	if msg, ok := st.failure(broken); !ok || !strings.Contains(msg, "status 1") {
		t.Errorf("status failures: %+v; want %s with its exit status", st.Failures, broken)
	}
	runs = runsBySession(h.actionRuns())
	if len(runs[manual]) != 1 || len(runs[plain]) != 1 || len(runs[broken]) != 0 {
		t.Errorf("after the pass: runs manual %d, plain %d, broken %d; want 1, 1, 0",
			len(runs[manual]), len(runs[plain]), len(runs[broken]))
	}

	retry := h.fulfilld("retry", "--failed")
	if retry.code != 0 || !strings.Contains(retry.stdout, broken) {
		t.Fatalf("retry --failed: want exit 0 naming %s:\n%s", broken, retry)
	}
	if st, _ := h.status(); st.Fulfillments["failed"] != 0 || st.Fulfillments["pending"] != 1 {
		t.Errorf("status after retry --failed: %v; want 0 failed, 1 pending", st.Fulfillments)
	}
	h.behaveNormally(broken)
	if again := h.fulfilld("run", "--once"); again.code != 0 {
		t.Fatalf("pass after the retry:\n%s", again)
	}
	runs = runsBySession(h.actionRuns())
	if rs := runs[broken]; len(rs) != 1 || rs[0].attempt != 1 {
		t.Errorf("after retry and a pass, %s ran %+v; want once, as attempt 1 of a fresh set", broken, rs)
	}
	if again := h.fulfilld("retry", broken); again.code == 0 {
		t.Errorf("retry of a fulfilled session succeeded; want it refused:\n%s", again)
	}

	st, raw := h.status()
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"cursor", "last_poll", "fulfillments", "recovered", "api"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("status --json has no %q", k)
		}
	}
	if _, err := time.Parse(time.RFC3339, st.Cursor.CompleteUntil); err != nil {
		t.Errorf("cursor.complete_until %q is not RFC 3339: %v", st.Cursor.CompleteUntil, err)
	} else if cu, _ := time.Parse(time.RFC3339, st.Cursor.CompleteUntil); time.Since(cu) > 5*time.Minute {
		t.Errorf("cursor.complete_until %s is more than lookback behind after a complete pass", cu)
	}
	if st.LastPoll == nil {
		t.Fatalf("status --json has no last_poll:\n%s", raw)
	}
	if _, err := time.Parse(time.RFC3339, st.LastPoll.Time); err != nil || st.LastPoll.Outcome != "ok" {
		t.Errorf("last_poll: time %q (%v), outcome %q; want RFC 3339 and ok", st.LastPoll.Time, err, st.LastPoll.Outcome)
	}
	want := map[string]int{"pending": 0, "awaiting_payment": 1, "fulfilled": 3, "failed": 0, "payment_failed": 0, "expired": 0}
	for state, n := range want {
		if got, ok := st.Fulfillments[state]; !ok || got != n {
			t.Errorf("fulfillments.%s = %d (present %v), want %d", state, got, ok, n)
		}
	}
	if st.API.Total.Requests["GET /v1/events"] == 0 || st.API.Total.Requests["GET /v1/checkout/sessions/:id"] == 0 {
		t.Errorf("api counts: %v; want the event list and session retrieves counted", st.API.Total.Requests)
	}
	text := h.fulfilld("status")
	for _, w := range []string{"complete until", "last poll", "fulfilled", "awaiting_payment", "api requests"} {
		if !strings.Contains(text.stdout, w) {
			t.Errorf("status does not show %q:\n%s", w, text)
		}
	}
}

// TestBadInputDoesNotStopThePass is SPEC guarantee 7: a malformed event, a
// session deleted in Stripe, an action that hangs and one that prints 20 MB
// are each recorded and reported, and the rest is fulfilled.
func TestBadInputDoesNotStopThePass(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{config: func(c *configFile) { c.Timeout, c.MaxAttempts = "4s", 1 }})
	now := time.Now()
	var good []string
	for i := range 6 {
		good = append(good, h.paidSession(now.Add(-time.Duration(30-i)*time.Minute), 2))
	}
	malformed := h.sim.AddEvent("", "checkout.session.completed", now.Add(-25*time.Minute), json.RawMessage(`"oops"`))
	deleted := h.paidSession(now.Add(-20*time.Minute), 1)
	h.sim.DeleteSession(deleted)
	hang := h.paidSession(now.Add(-18*time.Minute), 1)
	h.behave(hang, "hang")
	spew := h.paidSession(now.Add(-16*time.Minute), 1)
	h.behave(spew, "spew")
	piFailed := h.sim.PaymentIntentEvent("payment_intent.payment_failed", "pi_e2eFailed", now.Add(-12*time.Minute), "Your card was declined.")

	r := h.fulfilld("run", "--once", "--since", "1h")
	// SPEC: --once exits 1 when a fulfillment ended failed in the pass.
	if r.code != 1 {
		t.Errorf("exit %d, want 1 (two fulfillments ended failed):\n%s", r.code, r)
	}
	if len(r.stdout)+len(r.stderr) > 1<<20 {
		t.Errorf("the run printed %d bytes; the action's 20 MB must not reach fulfilld's output", len(r.stdout)+len(r.stderr))
	}
	runs := runsBySession(h.actionRuns())
	for _, id := range append(good, spew) {
		if len(runs[id]) != 1 {
			t.Errorf("%s: action ran %d times, want 1", id, len(runs[id]))
		}
	}

	st, raw := h.status()
	if st.BadEvents.Count != 1 || len(st.BadEvents.Recent) != 1 || st.BadEvents.Recent[0].ID != malformed {
		t.Errorf("bad_events: %+v; want the malformed event %s", st.BadEvents, malformed)
	}
	malformedCounted := false
	for _, e := range st.Events {
		if e.Type == "checkout.session.completed" && e.Outcome == "malformed" && e.Count == 1 {
			malformedCounted = true
		}
	}
	if !malformedCounted {
		t.Errorf("events: %+v; want one checkout.session.completed counted malformed", st.Events)
	}
	if msg, ok := st.failure(deleted); !ok || !strings.Contains(msg, "404") {
		t.Errorf("the deleted session %s is not among the failures with its 404: %q (%v)", deleted, msg, ok)
	}
	if msg, ok := st.failure(hang); !ok || !strings.Contains(msg, "timed out") {
		t.Errorf("the hanging session %s is not among the failures as timed out: %q (%v)", hang, msg, ok)
	}
	if st.Fulfillments["fulfilled"] != len(good)+1 || st.Fulfillments["failed"] != 2 || st.Fulfillments["pending"] != 0 {
		t.Errorf("fulfillments: %v; want %d fulfilled, 2 failed, 0 pending", st.Fulfillments, len(good)+1)
	}
	if !strings.Contains(raw, `"requires_payment_method"`) {
		t.Errorf("status does not count the PaymentIntent of %s:\n%s", piFailed, raw)
	}

	rec := h.fulfilld("fulfill", "--json", spew)
	var record struct {
		State  string `json:"state"`
		Output string `json:"output"`
	}
	if err := json.Unmarshal([]byte(rec.stdout), &record); err != nil || rec.code != 0 {
		t.Fatalf("fulfill --json %s (already fulfilled): %v\n%s", spew, err, rec)
	}
	if record.State != "fulfilled" || len(record.Output) > 128<<10 || !strings.Contains(record.Output, "omitted") {
		t.Errorf("record of the 20 MB action: state %q, %d bytes of output; want fulfilled, bounded, saying what was omitted",
			record.State, len(record.Output))
	}
	if len(runsBySession(h.actionRuns())[spew]) != 1 {
		t.Errorf("fulfill of a fulfilled session ran the action again")
	}
	if fi, err := os.Stat(filepath.Join(h.dir, "f.db")); err == nil && fi.Size() > 8<<20 {
		t.Errorf("the store grew to %d bytes", fi.Size())
	}

	// `status cs_…` shows a dead letter's record and kept output without
	// attempting it again (`fulfill` would).
	before := len(h.actionRuns())
	one := h.fulfilld("status", hang)
	if one.code != 0 || !strings.Contains(one.stdout, "failed") || !strings.Contains(one.stdout, "timed out") {
		t.Errorf("status %s: want its failed state and the timeout:\n%s", hang, one)
	}
	if after := len(h.actionRuns()); after != before {
		t.Errorf("status %s ran the action %d times", hang, after-before)
	}
	if unknown := h.fulfilld("status", "cs_test_nosuchsession"); unknown.code != 2 {
		t.Errorf("status of an unknown session: exit %d, want 2:\n%s", unknown.code, unknown)
	}
	// A mistyped id given to fulfill is a usage error, not a dead letter.
	failedBefore := h.fulfilld("status", "--json").stdout
	if wrong := h.fulfilld("fulfill", "cs_test_nosuchsession"); wrong.code != 2 || !strings.Contains(wrong.stderr, "no checkout session") {
		t.Errorf("fulfill of an id Stripe does not know: want exit 2 saying so:\n%s", wrong)
	}
	if st := h.fulfilld("status", "cs_test_nosuchsession"); st.code != 2 {
		t.Errorf("fulfill of an unknown id left a record:\n%s\n(before: %s)", st, failedBefore)
	}
}

// TestVersion: `version` names what an operator needs for a bug report.
func TestVersion(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	h.key = ""
	r := h.fulfilld("version")
	if r.code != 0 {
		t.Fatalf("version:\n%s", r)
	}
	for _, w := range []string{"fulfilld ", "commit ", "go go1.", "stripe-go v76.", "stripe api version " + stripesim.APIVersion} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("version does not print %q:\n%s", w, r.stdout)
		}
	}
}

// TestSetFlagWins: SPEC's precedence is file, then environment, then
// flags; --set is the flag for any key, and is validated like the rest.
func TestSetFlagWins(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	elsewhere := filepath.Join(t.TempDir(), "elsewhere.db")
	env := append(h.env(), "FULFILLD_STORE_PATH="+filepath.Join(t.TempDir(), "from-env.db"))
	r := h.fulfilldEnv(env, "status", "--set", "store.path="+elsewhere)
	if r.code != 2 || !strings.Contains(r.stderr, elsewhere) {
		t.Errorf("--set store.path did not win over the file and FULFILLD_STORE_PATH:\n%s", r)
	}
	for _, tc := range []struct{ set, want string }{
		{"schedule=bogus", "schedule"},
		{"fulfill.comand=/bin/true", "fulfill.comand"},
		{"no-equals-sign", "--set"},
	} {
		r := h.fulfilld("run", "--once", "--set", tc.set)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("--set %s: want exit 2 naming %s:\n%s", tc.set, tc.want, r)
		}
	}
}

// TestCompact: refused with exit 2 while a daemon holds the store; once it
// stopped, it shrinks the file, prints both sizes, and the store works.
func TestCompact(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	for range 3 {
		h.paidSession(time.Now().Add(-5*time.Minute), 1)
	}
	if r := h.fulfilld("run", "--once", "--since", "1h"); r.code != 0 {
		t.Fatalf("run --once:\n%s", r)
	}
	daemon := h.start("run")
	if !waitFor(20*time.Second, func() bool { _, err := os.Stat(h.path("f.db.sock")); return err == nil }, daemon.done) {
		t.Fatalf("the daemon did not open its admin socket:\n%s", daemon.ended())
	}
	r := h.fulfilld("compact")
	if r.code != 2 || !strings.Contains(r.stderr, "stop `fulfilld run`") {
		t.Errorf("compact while the daemon runs: exit %d, want 2 with a hint:\n%s", r.code, r)
	}
	if err := daemon.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if r := daemon.result(); r.code != 0 {
		t.Fatalf("daemon:\n%s", r)
	}
	r = h.fulfilld("compact")
	if r.code != 0 || !strings.Contains(r.stdout, "before") || !strings.Contains(r.stdout, "after") {
		t.Fatalf("compact of a stopped store:\n%s", r)
	}
	if st, _ := h.status(); st.Fulfillments["fulfilled"] != 3 {
		t.Errorf("status after compact: %v; want the 3 fulfilled sessions", st.Fulfillments)
	}
}

// TestHostClockAheadOfStripes: the host's clock 40 minutes ahead of
// Stripe's (in production, 5 minutes ahead fulfilled 0 of 19 sessions). A
// first start begins at Stripe's now, so a session paid right after it is
// fulfilled; --since 1h is Stripe's last hour, not the host's; status shows
// the skew and measures the lag on Stripe's clock; the log says the host's
// clock is wrong.
func TestHostClockAheadOfStripes(t *testing.T) {
	t.Parallel()
	const skew = -40 * time.Minute
	h := newHarness(t, harnessOptions{simSkew: skew})
	stripeNow := func() time.Time { return time.Now().Add(skew) }

	first := h.fulfilld("run", "--once")
	if first.code != 0 {
		t.Fatalf("first start:\n%s", first)
	}
	if !strings.Contains(first.stderr, "clock is wrong") {
		t.Errorf("no warning that the host's clock is wrong:\n%s", first.stderr)
	}
	paid := h.paidSession(stripeNow().Add(-time.Second), 1)
	if r := h.fulfilld("run", "--once"); r.code != 0 || h.actionCount() != 1 {
		t.Fatalf("a session paid after the first start: %d actions, want 1:\n%s", h.actionCount(), r)
	}
	h.checkBody(paid, 1)

	// Inside Stripe's last hour, outside the host's.
	early := h.paidSession(stripeNow().Add(-50*time.Minute), 2)
	if r := h.fulfilld("run", "--once", "--since", "1h"); r.code != 0 || h.actionCount() != 2 {
		t.Fatalf("--since 1h: %d actions, want 2:\n%s", h.actionCount(), r)
	}
	h.checkBody(early, 2)

	st, raw := h.status()
	if st.ClockSkew == nil || math.Abs(*st.ClockSkew-skew.Seconds()) > 3 {
		t.Errorf("status clock_skew_seconds %v, want about %.0f:\n%s", st.ClockSkew, skew.Seconds(), raw)
	}
	var lag struct {
		Cursor struct {
			Lag float64 `json:"lag_seconds"`
		} `json:"cursor"`
	}
	if err := json.Unmarshal([]byte(raw), &lag); err != nil || lag.Cursor.Lag < 0 || lag.Cursor.Lag > 120 {
		t.Errorf("status lag_seconds %.0f, want about the 1m lookback on Stripe's clock (err %v)", lag.Cursor.Lag, err)
	}
	text := h.fulfilld("status")
	if !strings.Contains(text.stdout, "clock skew") || !strings.Contains(text.stdout, "Stripe is 40m") || !strings.Contains(text.stdout, "behind") {
		t.Errorf("status does not show the skew:\n%s", text.stdout)
	}
}

// TestPaymentIntentCommands: with fulfill.payment_intents, `fulfill pi_…`,
// `status pi_…` and `retry pi_…` work like their cs_… forms; a Checkout
// payment's PaymentIntent is reported as owned by its session and never
// runs the action; with the setting off, `fulfill pi_…` is refused.
func TestPaymentIntentCommands(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{config: func(c *configFile) { c.MaxAttempts, c.PaymentIntents = 1, true }})
	now := time.Now()
	const manual, broken = "pi_3ManualElement0001", "pi_3BrokenElement0002"
	h.sim.PaymentIntentEvent("payment_intent.succeeded", manual, now.Add(-20*time.Minute), "")
	h.sim.PaymentIntentEvent("payment_intent.succeeded", broken, now.Add(-15*time.Minute), "")
	cs := h.paidSession(now.Add(-10*time.Minute), 2)
	owned := h.sim.PaymentIntentID(cs)
	h.sim.PaymentIntentEvent("payment_intent.succeeded", owned, now.Add(-10*time.Minute), "")
	h.behave(broken, "fail")

	for range 2 {
		if r := h.fulfilld("fulfill", manual); r.code != 0 || !strings.Contains(r.stdout, manual+": fulfilled") {
			t.Fatalf("fulfill %s: want exit 0 and \"%s: fulfilled\":\n%s", manual, manual, r)
		}
	}
	runs := runsBySession(h.actionRuns())
	if rs := runs[manual]; len(rs) != 1 || rs[0].trigger != "manual" || rs[0].key != "fulfilld-"+manual || rs[0].attempt != 1 {
		t.Fatalf("two `fulfill %s` ran %+v; want one manual run keyed fulfilld-%s", manual, rs, manual)
	}
	body, err := os.ReadFile(h.path(filepath.Join("bodies", manual+".json")))
	if err != nil || !strings.Contains(string(body), `"object":"payment_intent"`) || !strings.Contains(string(body), manual) {
		t.Errorf("the action's stdin is not the PaymentIntent: %.200s (%v)", body, err)
	}
	if r := h.fulfilld("fulfill", owned); r.code != 0 || !strings.Contains(r.stdout, "owned by "+cs) {
		t.Errorf("fulfill of a Checkout payment's PaymentIntent: want exit 0 and \"owned by %s\":\n%s", cs, r)
	}

	pass := h.fulfilld("run", "--once", "--since", "1h")
	if pass.code != 1 {
		t.Errorf("a pass in which a PaymentIntent's fulfilment ended failed: exit %d, want 1:\n%s", pass.code, pass)
	}
	runs = runsBySession(h.actionRuns())
	if len(runs[manual]) != 1 || len(runs[cs]) != 1 || len(runs[owned]) != 0 || len(runs[broken]) != 0 {
		t.Errorf("after the pass: runs %s %d, %s %d, %s %d, %s %d; want 1, 1, 0, 0",
			manual, len(runs[manual]), cs, len(runs[cs]), owned, len(runs[owned]), broken, len(runs[broken]))
	}
	if r := h.fulfilld("status", owned); r.code != 0 || !strings.Contains(r.stdout, "owned by "+cs) {
		t.Errorf("status %s:\n%s", owned, r)
	}
	if r := h.fulfilld("status", broken); r.code != 0 || !strings.Contains(r.stdout, broken+": failed") {
		t.Errorf("status %s:\n%s", broken, r)
	}
	var st struct {
		Intents map[string]int `json:"payment_intent_fulfillments"`
	}
	if _, raw := h.status(); json.Unmarshal([]byte(raw), &st) != nil ||
		st.Intents["fulfilled"] != 1 || st.Intents["failed"] != 1 || st.Intents["owned"] != 1 {
		t.Errorf("status --json payment_intent_fulfillments = %v; want 1 fulfilled, 1 failed, 1 owned", st.Intents)
	}

	if r := h.fulfilld("retry", broken); r.code != 0 || !strings.Contains(r.stdout, broken) {
		t.Fatalf("retry %s:\n%s", broken, r)
	}
	h.behaveNormally(broken)
	if again := h.fulfilld("run", "--once"); again.code != 0 {
		t.Fatalf("pass after the retry:\n%s", again)
	}
	if rs := runsBySession(h.actionRuns())[broken]; len(rs) != 1 || rs[0].attempt != 1 || rs[0].trigger != "event" {
		t.Errorf("after retry and a pass, %s ran %+v; want once, attempt 1, trigger event", broken, rs)
	}
	if r := h.fulfilld("retry", owned); r.code != 2 {
		t.Errorf("retry of an owned PaymentIntent: exit %d, want 2:\n%s", r.code, r)
	}

	off := h.fulfilld("--set", "fulfill.payment_intents=false", "fulfill", "pi_3AnotherElement0003")
	if off.code != 2 || !strings.Contains(off.stderr, "fulfill.payment_intents") {
		t.Errorf("fulfill pi_… with the setting off: want exit 2 naming fulfill.payment_intents:\n%s", off)
	}
}
