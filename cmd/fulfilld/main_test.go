package main

// End-to-end tests drive the real binary, built once by TestMain, against the
// simulated Stripe API (internal/stripesim) served from the test process. The
// operator's action is a small shell script (testdata/action.sh) that records
// every run in a log, so the tests check what an operator would check: which
// sessions were fulfilled, how often, and with which idempotency key.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/logtest"
	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// binPath is the fulfilld binary under test.
var binPath string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "fulfilld-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "fulfilld")
	args := []string{"build", "-o", binPath}
	// FULFILLD_E2E_RACE=1 builds the daemon with the race detector too; it
	// makes the crash test several times slower, so it is opt-in.
	if os.Getenv("FULFILLD_E2E_RACE") == "1" {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: go build:", err)
		return 1
	}
	return m.Run()
}

// testKey is the key the simulator accepts unless a test says otherwise. It
// is long and random-looking so a leak of it cannot be a coincidence.
const testKey = "sk_test_51E2eT3stK3yAcc3pt3dBy5imXq9Lm2Np4Rs6Tu8Vw"

// harness is one fulfilld installation: a simulated Stripe account, a config
// file, a store and an action, all under one temp dir.
type harness struct {
	t   *testing.T
	dir string
	sim *stripesim.Server
	key string // given to the binary as STRIPE_API_KEY ("" = none)
	cfg string // path of the config file
}

type harnessOptions struct {
	simKey string // key the simulator accepts (default testKey)
	// simSkew sets the simulator's clock off the host's: Stripe's time is
	// the host's plus simSkew.
	simSkew time.Duration
	// config adjusts the YAML written to the config file.
	config func(c *configFile)
}

// configFile is the subset of settings the tests vary. Extra is appended
// verbatim.
type configFile struct {
	APIBase     string
	RateLimit   float64
	StorePath   string
	Postgres    string // store.postgres
	Command     []string
	URL, Secret string
	Timeout     string
	MaxAttempts int
	Concurrency int
	Schedule    string
	Lookback    string
	// PaymentIntents sets fulfill.payment_intents.
	PaymentIntents bool
	Extra          string
}

func (c configFile) yaml() string {
	var b strings.Builder
	fmt.Fprintf(&b, "stripe:\n  api_base: %q\n", c.APIBase)
	if c.RateLimit > 0 {
		fmt.Fprintf(&b, "  rate_limit: %v\n", c.RateLimit)
	}
	fmt.Fprintf(&b, "store:\n  path: %q\n", c.StorePath)
	if c.Postgres != "" {
		fmt.Fprintf(&b, "  postgres: %q\n", c.Postgres)
	}
	b.WriteString("fulfill:\n")
	if c.PaymentIntents {
		b.WriteString("  payment_intents: true\n")
	}
	if len(c.Command) > 0 {
		q := make([]string, len(c.Command))
		for i, a := range c.Command {
			q[i] = strconv.Quote(a)
		}
		fmt.Fprintf(&b, "  command: [%s]\n", strings.Join(q, ", "))
	}
	if c.URL != "" {
		fmt.Fprintf(&b, "  url: %q\n", c.URL)
	}
	if c.Secret != "" {
		fmt.Fprintf(&b, "  secret: %q\n", c.Secret)
	}
	fmt.Fprintf(&b, "  timeout: %s\n  max_attempts: %d\n", c.Timeout, c.MaxAttempts)
	if c.Concurrency > 0 {
		fmt.Fprintf(&b, "  concurrency: %d\n", c.Concurrency)
	}
	fmt.Fprintf(&b, "schedule: %q\nevents:\n  lookback: %s\n", c.Schedule, c.Lookback)
	b.WriteString(c.Extra)
	return b.String()
}

func newHarness(t *testing.T, opts harnessOptions) *harness {
	t.Helper()
	dir := t.TempDir()
	simKey := opts.simKey
	if simKey == "" {
		simKey = testKey
	}
	simOpts := stripesim.Options{APIKey: simKey}
	if skew := opts.simSkew; skew != 0 {
		simOpts.Now = func() time.Time { return time.Now().Add(skew) }
	}
	sim := stripesim.New(simOpts)
	t.Cleanup(sim.Close)
	h := &harness{t: t, dir: dir, sim: sim, key: simKey, cfg: filepath.Join(dir, "fulfilld.yaml")}
	for _, sub := range []string{"bodies", "behave", "inflight"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script, err := os.ReadFile(filepath.Join("testdata", "action.sh"))
	if err != nil {
		t.Fatal(err)
	}
	h.writeFile("action.sh", string(script))
	c := configFile{
		APIBase: sim.URL(),
		// The simulator does not rate-limit; a high budget keeps the
		// client's pacing from dominating the test's run time.
		RateLimit:   1000,
		StorePath:   filepath.Join(dir, "f.db"),
		Command:     []string{"/bin/sh", filepath.Join(dir, "action.sh"), dir},
		Timeout:     "10s",
		MaxAttempts: 3,
		Schedule:    "@every 1s",
		Lookback:    "1m",
	}
	if opts.config != nil {
		opts.config(&c)
	}
	h.writeFile("fulfilld.yaml", c.yaml())
	t.Cleanup(h.releaseActions)
	return h
}

// notPaidSessions creates n of each session that must never be fulfilled —
// left unpaid (awaiting_payment), whose async payment failed, and expired —
// a minute apart from 45 minutes before now, and returns each with the
// state it must end in.
func (h *harness) notPaidSessions(now time.Time, n int) map[string]string {
	notPaid := map[string]string{}
	for i := range n {
		at := now.Add(-45*time.Minute + time.Duration(i)*time.Minute)
		waiting := h.sim.CreateSession(stripesim.SessionParams{Created: at})
		h.sim.CompleteSession(waiting, "unpaid", at.Add(time.Second))
		notPaid[waiting] = "awaiting_payment"

		failed := h.sim.CreateSession(stripesim.SessionParams{Created: at})
		h.sim.CompleteSession(failed, "unpaid", at.Add(time.Second))
		h.sim.AsyncPaymentFailed(failed, at.Add(2*time.Minute))
		notPaid[failed] = "payment_failed"

		expired := h.sim.CreateSession(stripesim.SessionParams{Created: at})
		h.sim.ExpireSession(expired, at.Add(30*time.Second))
		notPaid[expired] = "expired"
	}
	return notPaid
}

func (h *harness) path(name string) string { return filepath.Join(h.dir, name) }

func (h *harness) writeFile(name, content string) {
	h.t.Helper()
	if err := os.WriteFile(h.path(name), []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// behave makes the action do something other than succeed for a session:
// "fail" (exit 1), "hang" (past any timeout) or "spew" (print 20 MB).
func (h *harness) behave(sessionID, how string) {
	h.t.Helper()
	h.writeFile(filepath.Join("behave", sessionID), how+"\n")
}

func (h *harness) behaveNormally(sessionID string) {
	h.t.Helper()
	if err := os.Remove(h.path(filepath.Join("behave", sessionID))); err != nil {
		h.t.Fatal(err)
	}
}

// releaseActions ends whatever slow actions a killed fulfilld left behind.
func (h *harness) releaseActions() {
	os.Remove(h.path("slow"))
	for _, pid := range h.inflightPIDs() {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

func (h *harness) inflightPIDs() []int {
	entries, _ := os.ReadDir(h.path("inflight"))
	var pids []int
	for _, e := range entries {
		raw, err := os.ReadFile(h.path(filepath.Join("inflight", e.Name())))
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil && pid > 1 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// env is the binary's whole environment: nothing leaks in from the test's.
func (h *harness) env(extra ...string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + h.dir, "LANG=C"}
	if h.key != "" {
		env = append(env, "STRIPE_API_KEY="+h.key)
	}
	return append(env, extra...)
}

// result is one finished run of the binary.
type result struct {
	args           []string
	code           int
	stdout, stderr string
	took           time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("fulfilld %s → exit %d after %s\n--- stdout:\n%s--- stderr:\n%s",
		strings.Join(r.args, " "), r.code, r.took.Round(time.Millisecond), tail(r.stdout, 4000), tail(r.stderr, 8000))
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// fulfilld runs the binary with the harness's config to completion.
func (h *harness) fulfilld(args ...string) result {
	h.t.Helper()
	return h.fulfilldEnv(h.env(), args...)
}

func (h *harness) fulfilldEnv(env []string, args ...string) result {
	h.t.Helper()
	p := h.startEnv(env, args...)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		p.kill()
		h.t.Fatalf("fulfilld %s did not finish within 60s:\n%s", strings.Join(args, " "), p.result())
	}
	return p.result()
}

// proc is a running fulfilld.
type proc struct {
	cmd            *exec.Cmd
	args           []string
	start          time.Time
	stdout, stderr logtest.Buffer
	done           chan struct{}
	took           time.Duration
	err            error
}

func (h *harness) start(args ...string) *proc {
	h.t.Helper()
	return h.startEnv(h.env(), args...)
}

func (h *harness) startEnv(env []string, args ...string) *proc {
	h.t.Helper()
	full := append([]string{"--config", h.cfg}, args...)
	p := &proc{cmd: exec.Command(binPath, full...), args: args, done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Dir = h.dir
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		h.t.Fatalf("start fulfilld: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		p.took = time.Since(p.start)
		close(p.done)
	}()
	h.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.kill()
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill SIGKILLs the process and waits for it: a crash, as far as the store
// and the queue can tell.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// result waits for the process and describes how it ended.
func (p *proc) result() result {
	<-p.done
	code := 0
	var ee *exec.ExitError
	switch {
	case p.err == nil:
	case errors.As(p.err, &ee):
		code = ee.ExitCode() // -1 when killed by a signal
	default:
		code = -2
	}
	return result{args: p.args, code: code, stdout: p.stdout.String(), stderr: p.stderr.String(), took: p.took}
}

func (p *proc) killedBySignal() bool {
	<-p.done
	var ee *exec.ExitError
	if !errors.As(p.err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled()
}

func waitFor(timeout time.Duration, cond func() bool, stop <-chan struct{}) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		select {
		case <-deadline.C:
			return cond()
		case <-stop:
			return cond()
		case <-tick.C:
		}
	}
}

// actionRun is one line of the action's log.
type actionRun struct {
	session, key, trigger string
	attempt               int
}

// actionRuns reads the action log.
func (h *harness) actionRuns() []actionRun {
	h.t.Helper()
	f, err := os.Open(h.path("actions.log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		h.t.Fatal(err)
	}
	defer f.Close()
	var runs []actionRun
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 4 {
			h.t.Fatalf("malformed action log line %q", sc.Text())
		}
		n, err := strconv.Atoi(fields[2])
		if err != nil {
			h.t.Fatalf("action log line %q: attempt: %v", sc.Text(), err)
		}
		runs = append(runs, actionRun{session: fields[0], key: fields[1], attempt: n, trigger: fields[3]})
	}
	if err := sc.Err(); err != nil {
		h.t.Fatal(err)
	}
	return runs
}

// actionCount counts the lines of the action log cheaply, for polling.
func (h *harness) actionCount() int {
	raw, err := os.ReadFile(h.path("actions.log"))
	if err != nil {
		return 0
	}
	return bytes.Count(raw, []byte("\n"))
}

func runsBySession(runs []actionRun) map[string][]actionRun {
	m := map[string][]actionRun{}
	for _, r := range runs {
		m[r.session] = append(m[r.session], r)
	}
	return m
}

// statusReport is `status --json`, as far as the tests read it.
type statusReport struct {
	Cursor struct {
		Started       bool   `json:"started"`
		CompleteUntil string `json:"complete_until"`
	} `json:"cursor"`
	LastPoll *struct {
		Time    string `json:"time"`
		Outcome string `json:"outcome"`
		Error   string `json:"error"`
	} `json:"last_poll"`
	ClockSkew    *float64       `json:"clock_skew_seconds"`
	Fulfillments map[string]int `json:"fulfillments"`
	Recovered    int            `json:"recovered"`
	Queued       int            `json:"queued"`
	InFlight     int            `json:"in_flight"`
	Events       []struct {
		Type    string `json:"type"`
		Outcome string `json:"outcome"`
		Count   int    `json:"count"`
	} `json:"events"`
	BadEvents struct {
		Count  int `json:"count"`
		Recent []struct {
			ID    string `json:"id"`
			Type  string `json:"type"`
			Error string `json:"error"`
		} `json:"recent"`
	} `json:"bad_events"`
	Failures []struct {
		SessionID string `json:"session_id"`
		Attempts  int    `json:"attempts"`
		LastError string `json:"last_error"`
	} `json:"failures"`
	API struct {
		Total struct {
			Requests map[string]int64 `json:"requests"`
		} `json:"total"`
	} `json:"api"`
}

// status runs `status --json` and decodes it; raw is the output as printed.
func (h *harness) status() (st statusReport, raw string) {
	h.t.Helper()
	r := h.fulfilld("status", "--json")
	if r.code != 0 {
		h.t.Fatalf("status --json failed:\n%s", r)
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		h.t.Fatalf("status --json is not one JSON object: %v\n%s", err, r.stdout)
	}
	return st, r.stdout
}

func (st statusReport) failure(sessionID string) (lastError string, ok bool) {
	for _, f := range st.Failures {
		if f.SessionID == sessionID {
			return f.LastError, true
		}
	}
	return "", false
}

// paidSession creates a session with the given number of line items and
// completes it paid, both at the given time.
func (h *harness) paidSession(at time.Time, items int) string {
	id := h.sim.CreateSession(stripesim.SessionParams{Created: at, LineItems: items})
	h.sim.CompleteSession(id, "paid", at.Add(time.Second))
	return id
}

// checkBody checks that the action received the session with every one of
// its line items.
func (h *harness) checkBody(sessionID string, items int) {
	h.t.Helper()
	raw, err := os.ReadFile(h.path(filepath.Join("bodies", sessionID+".json")))
	if err != nil {
		h.t.Errorf("no body recorded for %s: %v", sessionID, err)
		return
	}
	var body struct {
		ID            string `json:"id"`
		PaymentStatus string `json:"payment_status"`
		LineItems     struct {
			Data []struct {
				ID string `json:"id"`
			} `json:"data"`
			HasMore bool `json:"has_more"`
		} `json:"line_items"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		h.t.Errorf("body of %s is not JSON: %v", sessionID, err)
		return
	}
	seen := map[string]bool{}
	for _, li := range body.LineItems.Data {
		seen[li.ID] = true
	}
	if body.ID != sessionID || len(body.LineItems.Data) != items || len(seen) != items || body.LineItems.HasMore {
		h.t.Errorf("body of %s: id %q, %d line items (%d distinct), has_more %v; want %d distinct line items and has_more false",
			sessionID, body.ID, len(body.LineItems.Data), len(seen), body.LineItems.HasMore, items)
	}
}

// mustNotContain fails when a secret, or a long piece of it, appears in out.
func mustNotContain(t *testing.T, what, out string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("%s contains the secret %.8s…:\n%s", what, s, tail(out, 3000))
			continue
		}
		// The random part, less Stripe's customary last four characters.
		if _, body, ok := strings.Cut(s, "_"); ok {
			if _, rest, ok := strings.Cut(body, "_"); ok {
				body = rest
			}
			if len(body) > 12 && strings.Contains(out, body[:len(body)-4]) {
				t.Errorf("%s contains most of the secret %.8s…:\n%s", what, s, tail(out, 3000))
			}
		}
	}
}
