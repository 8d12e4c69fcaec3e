package main

// The daemon as a service: what systemd, Prometheus, a landing page and an
// operator at the admin socket see while `run` is up, and how it stops.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/fulfilld/fulfilld/internal/metrics/metricstest"
	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// httpClient talks to the daemon's http.listen.
var httpClient = &http.Client{Timeout: 20 * time.Second}

// httpHarness is a harness whose daemon serves http.listen on a free port.
type httpHarness struct {
	*harness
	cfg configFile // as the harness wrote it, before http.listen
}

func newHTTPHarness(t *testing.T, opts harnessOptions) *httpHarness {
	t.Helper()
	var cfg configFile
	adjust := opts.config
	opts.config = func(c *configFile) {
		if adjust != nil {
			adjust(c)
		}
		cfg = *c
	}
	return &httpHarness{harness: newHarness(t, opts), cfg: cfg}
}

// startHTTP starts fulfilld with http.listen on a free local port and waits
// until the daemon answers there; it returns the process and the base URL.
// A port taken between choosing and binding it is chosen again.
func (hh *httpHarness) startHTTP(args ...string) (*proc, string) {
	t := hh.t
	t.Helper()
	for try := 1; ; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		c := hh.cfg
		c.Extra += fmt.Sprintf("http:\n  listen: %q\n", addr)
		hh.writeFile("fulfilld.yaml", c.yaml())
		p := hh.start(args...)
		base := "http://" + addr
		ours := func() bool {
			// /readyz answers {"status": …}; anything else on the port is
			// not this daemon.
			resp, err := httpClient.Get(base + "/readyz")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			var h struct{ Status string }
			return json.NewDecoder(resp.Body).Decode(&h) == nil && h.Status != "" && !p.exited()
		}
		if waitFor(20*time.Second, ours, p.done) {
			return p, base
		}
		if !p.exited() {
			p.kill()
			t.Fatalf("the daemon did not answer on http.listen %s within 20s:\n%s", addr, p.result())
		}
		r := p.result()
		if try < 3 && r.code == 2 && strings.Contains(r.stderr, "http.listen") {
			t.Logf("port %s was taken; choosing another", addr)
			continue
		}
		t.Fatalf("the daemon with http.listen %s ended:\n%s", addr, r)
	}
}

// ended describes how p ended, killing it first if it still runs: a test
// that gives up on a daemon must not wait for it forever.
func (p *proc) ended() result {
	if !p.exited() {
		p.kill()
	}
	return p.result()
}

// getJSON GETs url and decodes a JSON answer.
func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := httpClient.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %s, body is not JSON: %v", url, resp.Status, err)
	}
	return resp.StatusCode
}

// scrape reads /metrics as Prometheus would, with classic (legacy) name
// validation: a name Prometheus 2 cannot ingest fails the parse.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := httpClient.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse as the Prometheus text format: %v", err)
	}
	return mfs
}

// TestSystemdNotify: under systemd (Type=notify, WatchdogSec) the daemon
// says READY=1 once it serves, feeds the watchdog while it runs, says
// STOPPING=1 on SIGTERM and exits 0.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	sockPath := filepath.Join(h.dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	states := make(chan string, 1024)
	go func() {
		defer close(states)
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			for _, line := range strings.Split(strings.TrimSpace(string(buf[:n])), "\n") {
				select {
				case states <- line:
				default: // a flood of datagrams is a failure seen elsewhere
				}
			}
		}
	}()
	var seen []string
	// await reads states until want has come count times.
	await := func(want string, count int, within time.Duration, p *proc) {
		t.Helper()
		deadline := time.After(within)
		for got := 0; got < count; {
			select {
			case s, ok := <-states:
				if !ok {
					t.Fatalf("notify socket closed; states so far %q", seen)
				}
				seen = append(seen, s)
				if s == want {
					got++
				}
			case <-deadline:
				t.Fatalf("%d× %s not sent within %s; states so far %q\n%s", count, want, within, seen, p.stderr.String())
			}
		}
	}

	// WATCHDOG_PID is left unset: set, it would name this test process.
	daemon := h.startEnv(h.env("NOTIFY_SOCKET="+sockPath, "WATCHDOG_USEC=500000"), "run")
	await("READY=1", 1, 20*time.Second, daemon)
	// Ready means ready: the admin socket answers.
	if c, err := net.Dial("unix", h.path("f.db")+".sock"); err != nil {
		t.Errorf("READY=1 sent, but the admin socket does not answer: %v", err)
	} else {
		c.Close()
	}
	// WatchdogSec=0.5s: systemd wants a ping at least every 500ms.
	start := time.Now()
	await("WATCHDOG=1", 2, 5*time.Second, daemon)
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("two watchdog pings took %s with WATCHDOG_USEC=500000", took)
	}
	if err := daemon.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	await("STOPPING=1", 1, 10*time.Second, daemon)
	select {
	case <-daemon.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("the daemon did not exit within 15s of SIGTERM:\n%s", daemon.ended())
	}
	if r := daemon.result(); r.code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0:\n%s", r.code, r)
	}
	if idx := strings.Join(seen, ","); strings.Index(idx, "READY=1") > strings.Index(idx, "STOPPING=1") {
		t.Errorf("states out of order: %q", seen)
	}
}

// statusSection is the fulfillments block of `status` text output and the
// recovered line, with the column padding (which follows the widest line of
// the whole output) squeezed: what must not depend on where status was read
// from. API usage is left out: the daemon records it after each poll.
func statusSection(out string) string {
	var b strings.Builder
	in := false
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "fulfillments"):
			in = true
		case strings.HasPrefix(line, "recovered by reconciliation"):
			in = true
		case !strings.HasPrefix(line, "  "):
			in = false
		}
		if in {
			b.WriteString(strings.Join(strings.Fields(line), " ") + "\n")
		}
	}
	return b.String()
}

// TestAdminCommandsWhileRunning: with `run` up, fulfill, retry --failed,
// reconcile and status reach the daemon through its socket and do what they
// do against a stopped store; status says the same either way.
func TestAdminCommandsWhileRunning(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{config: func(c *configFile) { c.MaxAttempts = 1 }})
	now := time.Now()
	// Created before the daemon's cursor starts (no --since: "now"), so the
	// event stream does not bring them; only the commands do.
	manual := h.paidSession(now.Add(-20*time.Minute), 3)
	broken := h.paidSession(now.Add(-15*time.Minute), 1)
	h.behave(broken, "fail")
	// Paid, but its event never shows up in the list: only reconciliation
	// can find it. It is old enough to have expired (24h after creation)
	// before the cursor: the stream surely missed it.
	hidden := h.sim.CreateSession(stripesim.SessionParams{Created: now.Add(-26 * time.Hour), LineItems: 2})
	h.sim.CompleteSession(hidden, "paid", now.Add(-26*time.Hour+time.Second), stripesim.VisibleAt(now.Add(24*time.Hour)))

	daemon := h.start("run")
	sock := h.path("f.db") + ".sock"
	if !waitFor(20*time.Second, func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, daemon.done) {
		t.Fatalf("the admin socket did not come up:\n%s", daemon.ended())
	}
	// fail ends the test with the daemon's log.
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf(format+"\n--- daemon stderr:\n%s", append(args, tail(daemon.stderr.String(), 6000))...)
	}

	// fulfill: runs the action once, as a manual trigger; again: nothing.
	for i := range 2 {
		r := h.fulfilld("fulfill", manual)
		if r.code != 0 || !strings.Contains(r.stdout, manual+": fulfilled") {
			fail("fulfill %s (#%d) while run is up: want exit 0 and \"fulfilled\":\n%s", manual, i+1, r)
		}
	}
	if rs := runsBySession(h.actionRuns())[manual]; len(rs) != 1 || rs[0].trigger != "manual" || rs[0].attempt != 1 {
		t.Errorf("two `fulfill %s` through the socket ran %+v; want one run, trigger manual, attempt 1", manual, rs)
	}
	h.checkBody(manual, 3)

	// A failing action with max_attempts 1: dead-lettered at once.
	if r := h.fulfilld("fulfill", broken); r.code != 1 || !strings.Contains(r.stdout, "failed") {
		fail("fulfill %s with a failing action: want exit 1 and the record failed:\n%s", broken, r)
	}
	if st, _ := h.status(); st.Fulfillments["failed"] != 1 {
		fail("status after a dead letter: %v; want 1 failed", st.Fulfillments)
	}
	// retry --failed requeues it; the running daemon fulfills it.
	h.behaveNormally(broken)
	if r := h.fulfilld("retry", "--failed"); r.code != 0 || !strings.Contains(r.stdout, broken) {
		fail("retry --failed while run is up: want exit 0 naming %s:\n%s", broken, r)
	}
	if !waitFor(20*time.Second, func() bool { return len(runsBySession(h.actionRuns())[broken]) > 0 }, daemon.done) {
		fail("the daemon did not fulfill %s after retry --failed", broken)
	}
	if rs := runsBySession(h.actionRuns())[broken]; len(rs) != 1 || rs[0].attempt != 1 || rs[0].key != "fulfilld-"+broken {
		t.Errorf("after retry --failed, %s ran %+v; want once, attempt 1 of a fresh set, its usual key", broken, rs)
	}

	// reconcile: the sweep through the socket finds the session whose
	// event never appeared, and the daemon fulfills it.
	r := h.fulfilld("reconcile", "--since", "30h")
	if r.code != 0 || !strings.Contains(r.stdout, "recovered 1 never seen") {
		fail("reconcile --since 30h while run is up: want exit 0, recovered 1 never seen:\n%s", r)
	}
	if !waitFor(20*time.Second, func() bool { return len(runsBySession(h.actionRuns())[hidden]) > 0 }, daemon.done) {
		fail("the daemon did not fulfill %s, recovered by reconcile", hidden)
	}
	if rs := runsBySession(h.actionRuns())[hidden]; len(rs) != 1 || rs[0].trigger != "reconcile" {
		t.Errorf("%s, recovered by reconcile, ran %+v; want once with trigger reconcile", hidden, rs)
	}
	h.checkBody(hidden, 2)

	// The action log line is written before the action exits: wait for the
	// results to be recorded before comparing.
	var running statusReport
	if !waitFor(20*time.Second, func() bool {
		running, _ = h.status()
		return running.Fulfillments["fulfilled"] == 3 && running.Queued == 0 && running.InFlight == 0
	}, daemon.done) {
		fail("status while run is up: %+v; want 3 fulfilled, nothing queued or in flight", running)
	}
	if running.Recovered != 1 {
		t.Errorf("status while run is up: recovered %d, want 1", running.Recovered)
	}
	textRunning := h.fulfilld("status")
	if textRunning.code != 0 {
		fail("status while run is up:\n%s", textRunning)
	}

	if err := daemon.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-daemon.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("the daemon did not stop within 15s of SIGTERM:\n%s", daemon.ended())
	}
	if r := daemon.result(); r.code != 0 {
		t.Errorf("the daemon exited %d after SIGTERM:\n%s", r.code, r)
	}
	textStopped := h.fulfilld("status")
	if textStopped.code != 0 {
		t.Fatalf("status after the daemon stopped:\n%s", textStopped)
	}
	a, b := statusSection(textRunning.stdout), statusSection(textStopped.stdout)
	if !strings.Contains(a, "fulfilled 3") || !strings.Contains(a, "recovered by reconciliation 1") || a != b {
		t.Errorf("status differs between the running daemon and the stopped store:\n--- running:\n%s--- stopped:\n%s", textRunning.stdout, textStopped.stdout)
	}
	stopped, _ := h.status()
	if !reflect.DeepEqual(stopped.Fulfillments, running.Fulfillments) {
		t.Errorf("status --json: %v while running, %v stopped", running.Fulfillments, stopped.Fulfillments)
	}
	if n := h.actionCount(); n != 3 {
		t.Errorf("the action ran %d times for three sessions", n)
	}
}

// TestMetricsAfterBackfill: after a backfill, /metrics tells Prometheus
// what status tells the operator, and /healthz and /readyz pass.
func TestMetricsAfterBackfill(t *testing.T) {
	t.Parallel()
	hh := newHTTPHarness(t, harnessOptions{})
	now := time.Now()
	const paid = 4
	for i := range paid {
		hh.paidSession(now.Add(-time.Duration(40-5*i)*time.Minute), 1+i)
	}
	unpaid := hh.sim.CreateSession(stripesim.SessionParams{Created: now.Add(-12 * time.Minute)})
	hh.sim.CompleteSession(unpaid, "unpaid", now.Add(-12*time.Minute))

	daemon, base := hh.startHTTP("run", "--since", "1h")
	var mfs map[string]*dto.MetricFamily
	// API usage is recorded after each poll, fulfillments as they end:
	// wait for a scrape that has both.
	settled := func() bool {
		mfs = scrape(t, base)
		fulfilled, _ := metricstest.Sample(mfs, "fulfilld_fulfillments", map[string]string{"state": "fulfilled"})
		listed, _ := metricstest.Sample(mfs, "fulfilld_stripe_requests_total", map[string]string{"endpoint": "GET /v1/events"})
		// Sessions are read in batches (a list) or one by one (a retrieve).
		retrieved, _ := metricstest.Sample(mfs, "fulfilld_stripe_requests_total", map[string]string{"endpoint": "GET /v1/checkout/sessions/:id"})
		batched, _ := metricstest.Sample(mfs, "fulfilld_stripe_requests_total", map[string]string{"endpoint": "GET /v1/checkout/sessions"})
		// The unpaid session settles on its own read (a list keeps only
		// paid ones): wait for it too, and for the queue to empty.
		awaiting, _ := metricstest.Sample(mfs, "fulfilld_fulfillments", map[string]string{"state": "awaiting_payment"})
		queued, _ := metricstest.Sample(mfs, "fulfilld_queue_depth", nil)
		return fulfilled == paid && awaiting == 1 && queued == 0 && listed > 0 && retrieved+batched >= 1
	}
	if !waitFor(30*time.Second, settled, daemon.done) {
		var names []string
		for n := range mfs {
			names = append(names, n)
		}
		t.Fatalf("/metrics never showed %d fulfilled with the API usage recorded; families: %v\n%s", paid, names, daemon.stderr.String())
	}
	checks := []struct {
		name   string
		labels map[string]string
		ok     func(float64) bool
		want   string
	}{
		{"fulfilld_fulfillments", map[string]string{"state": "awaiting_payment"}, func(v float64) bool { return v == 1 }, "1"},
		{"fulfilld_fulfillments", map[string]string{"state": "failed"}, func(v float64) bool { return v == 0 }, "0"},
		{"fulfilld_fulfillments", map[string]string{"state": "pending"}, func(v float64) bool { return v == 0 }, "0"},
		{"fulfilld_polls_total", map[string]string{"outcome": "ok"}, func(v float64) bool { return v >= 1 }, "≥ 1"},
		{"fulfilld_events_total", map[string]string{"type": "checkout.session.completed"}, func(v float64) bool { return v >= 1 }, "≥ 1"},
		{"fulfilld_action_duration_seconds", map[string]string{"action": "fulfill", "outcome": "ok"}, func(v float64) bool { return v >= paid }, fmt.Sprintf("≥ %d observations", paid)},
		{"fulfilld_cursor_lag_seconds", nil, func(v float64) bool { return v >= 0 && v < 600 }, "present, under 10 minutes"},
		{"fulfilld_cursor_horizon_seconds", nil, func(v float64) bool { return v > 29*24*3600 }, "present, over 29 days"},
		{"fulfilld_last_successful_poll_timestamp_seconds", nil, func(v float64) bool { return v > float64(now.Add(-time.Minute).Unix()) }, "a recent time"},
		{"fulfilld_queue_depth", nil, func(v float64) bool { return v == 0 }, "0"},
		{"fulfilld_store_scrape_error", nil, func(v float64) bool { return v == 0 }, "0"},
	}
	for _, c := range checks {
		if v, ok := metricstest.Sample(mfs, c.name, c.labels); !ok || !c.ok(v) {
			t.Errorf("%s%v = %v (present %v), want %s", c.name, c.labels, v, ok, c.want)
		}
	}
	for name, mf := range mfs {
		if strings.HasPrefix(name, "fulfilld_") && mf.GetHelp() == "" {
			t.Errorf("%s has no help text", name)
		}
		if mf.GetType() == dto.MetricType_COUNTER && !strings.HasSuffix(name, "_total") {
			t.Errorf("counter %s does not end in _total", name)
		}
	}

	// The same numbers as status, read through the socket.
	st, _ := hh.status()
	for _, state := range []string{"pending", "awaiting_payment", "fulfilled", "failed", "payment_failed", "expired"} {
		if v, _ := metricstest.Sample(mfs, "fulfilld_fulfillments", map[string]string{"state": state}); int(v) != st.Fulfillments[state] {
			t.Errorf("fulfilld_fulfillments{state=%q} = %v; status says %d", state, v, st.Fulfillments[state])
		}
	}

	var health struct {
		Status   string   `json:"status"`
		Problems []string `json:"problems"`
	}
	if code := getJSON(t, base+"/healthz", &health); code != http.StatusOK || health.Status != "ok" {
		t.Errorf("GET /healthz of a daemon keeping up = %d %+v, want 200 ok", code, health)
	}
	if code := getJSON(t, base+"/readyz", &health); code != http.StatusOK {
		t.Errorf("GET /readyz after the first poll = %d %+v, want 200", code, health)
	}
}

// TestLandingPageConcurrentWithPoller is SPEC guarantee 3 over HTTP: the
// landing page asking again and again while the poller queues the same
// session runs the action once, and every request gets the record.
func TestLandingPageConcurrentWithPoller(t *testing.T) {
	t.Parallel()
	hh := newHTTPHarness(t, harnessOptions{})
	id := hh.paidSession(time.Now().Add(-5*time.Minute), 2)
	// Every run of the action waits, after logging, until "slow" goes: the
	// requests pile up behind the first run, whichever trigger it is.
	hh.writeFile("slow", "")
	daemon, base := hh.startHTTP("run", "--since", "1h")

	type answer struct {
		code int
		body string
		err  error
	}
	const n = 10
	answers := make(chan answer, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := httpClient.Post(base+"/fulfill/"+id, "application/json", nil)
			if err != nil {
				answers <- answer{err: err}
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			answers <- answer{code: resp.StatusCode, body: string(body), err: err}
		}()
	}
	if !waitFor(20*time.Second, func() bool { return len(hh.inflightPIDs()) > 0 }, daemon.done) {
		t.Fatalf("the action for %s did not start:\n%s", id, daemon.ended())
	}
	if err := os.Remove(hh.path("slow")); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(answers)
	accepted := 0
	for a := range answers {
		if a.err != nil {
			t.Errorf("POST /fulfill/%s: %v", id, a.err)
			continue
		}
		var rec struct {
			SessionID string `json:"session_id"`
			State     string `json:"state"`
		}
		if err := json.Unmarshal([]byte(a.body), &rec); err != nil || rec.SessionID != id {
			t.Errorf("POST /fulfill/%s = %d %s; want the session's record", id, a.code, a.body)
		}
		switch {
		case a.code == http.StatusOK && rec.State == "fulfilled":
		case a.code == http.StatusAccepted:
			accepted++
		default:
			t.Errorf("POST /fulfill/%s = %d %s; want 200 with the record fulfilled, or 202", id, a.code, a.body)
		}
	}
	if accepted > 0 {
		t.Logf("%d of %d requests answered 202 before the fulfillment ended", accepted, n)
	}
	var st statusReport
	if !waitFor(20*time.Second, func() bool {
		st, _ = hh.status()
		return st.Fulfillments["fulfilled"] == 1 && st.InFlight == 0
	}, daemon.done) {
		t.Fatalf("status: %v; want %s fulfilled", st.Fulfillments, id)
	}
	rs := runsBySession(hh.actionRuns())[id]
	if len(rs) != 1 {
		t.Errorf("the action ran %d times for %s with %d landing-page requests and the poller racing: %+v", len(rs), id, n, rs)
	} else {
		t.Logf("the one run was triggered by %q", rs[0].trigger)
	}

	t.Run("not a session id", func(t *testing.T) {
		var body map[string]any
		resp, err := httpClient.Post(base+"/fulfill/in_3Nabc", "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_ = json.NewDecoder(resp.Body).Decode(&body)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["error"]), "cs_") {
			t.Errorf("POST /fulfill/in_3Nabc = %s %v, want 400 saying ids start with cs_", resp.Status, body)
		}
	})
	t.Run("unknown session", func(t *testing.T) {
		const unknown = "cs_test_doesNotExist0123456789"
		resp, err := httpClient.Post(base+"/fulfill/"+unknown, "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		// An unauthenticated endpoint must not let made-up ids into the
		// ledger as dead letters.
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("POST /fulfill/%s = %s %s; want 404", unknown, resp.Status, raw)
		}
		if st, _ := hh.status(); st.Fulfillments["failed"] != 0 {
			t.Errorf("a made-up id became a dead letter: %+v", st.Failures)
		}
		if n := len(runsBySession(hh.actionRuns())[unknown]); n != 0 {
			t.Errorf("the action ran %d times for a session Stripe does not know", n)
		}
	})
}

// TestSIGTERMDuringSlowAction: stopping the daemon while an action runs
// loses nothing. The first SIGTERM lets the action finish (up to
// fulfill.timeout) and exits 0; a second one forces the process down, and
// the next start repeats the cut-off attempt with the same idempotency key.
func TestSIGTERMDuringSlowAction(t *testing.T) {
	t.Parallel()
	// startSlow starts the daemon with every action held after it logged,
	// and waits until the one for the session runs.
	startSlow := func(t *testing.T, timeout string) (*harness, *proc, string) {
		h := newHarness(t, harnessOptions{config: func(c *configFile) { c.Timeout = timeout }})
		id := h.paidSession(time.Now().Add(-5*time.Minute), 1)
		h.writeFile("slow", "")
		p := h.start("run", "--since", "1h")
		if !waitFor(20*time.Second, func() bool { return len(h.inflightPIDs()) > 0 }, p.done) {
			t.Fatalf("the action for %s did not start:\n%s", id, p.ended())
		}
		return h, p, id
	}
	sigterm := func(t *testing.T, p *proc) {
		t.Helper()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	// stopping waits until the daemon has taken the signal.
	stopping := func(t *testing.T, p *proc) {
		t.Helper()
		if !waitFor(10*time.Second, func() bool { return strings.Contains(p.stderr.String(), "stopping") }, p.done) {
			t.Fatalf("the daemon did not log that it is stopping:\n%s", p.ended())
		}
	}
	exitWithin := func(t *testing.T, p *proc, d time.Duration) result {
		t.Helper()
		select {
		case <-p.done:
		case <-time.After(d):
			t.Fatalf("the daemon did not exit within %s:\n%s", d, p.ended())
		}
		return p.result()
	}
	// sameKey checks the runs of one session.
	sameKey := func(t *testing.T, h *harness, id string, wantRuns int) {
		t.Helper()
		rs := runsBySession(h.actionRuns())[id]
		if wantRuns > 0 && len(rs) != wantRuns || len(rs) == 0 {
			t.Errorf("%s ran %+v; want %d run(s)", id, rs, wantRuns)
		}
		for i, r := range rs {
			if r.key != "fulfilld-"+id || i > 0 && r.attempt <= rs[i-1].attempt {
				t.Errorf("%s ran %+v; want the key fulfilld-%s every time and rising attempts", id, rs, id)
				break
			}
		}
	}

	t.Run("action finishes within the grace", func(t *testing.T) {
		t.Parallel()
		const timeout = 5 * time.Second
		h, p, id := startSlow(t, timeout.String())
		sigterm(t, p)
		stopping(t, p)
		if p.exited() {
			t.Fatalf("the daemon exited without waiting for the running action:\n%s", p.result())
		}
		if err := os.Remove(h.path("slow")); err != nil {
			t.Fatal(err)
		}
		if r := exitWithin(t, p, timeout+5*time.Second); r.code != 0 {
			t.Errorf("exit %d after SIGTERM, want 0:\n%s", r.code, r)
		}
		st, _ := h.status()
		if st.Fulfillments["fulfilled"] != 1 || st.InFlight != 0 || st.Queued != 0 {
			t.Errorf("status after the stop: %+v; want the session that finished during the grace fulfilled", st)
		}
		if r := h.fulfilld("run", "--once"); r.code != 0 {
			t.Errorf("run --once after the stop:\n%s", r)
		}
		sameKey(t, h, id, 1)
	})

	t.Run("action outlives the grace", func(t *testing.T) {
		t.Parallel()
		const timeout = 2 * time.Second
		h, p, id := startSlow(t, timeout.String())
		pids := h.inflightPIDs()
		sigterm(t, p)
		r := exitWithin(t, p, timeout+5*time.Second)
		if r.code != 0 {
			t.Errorf("exit %d after SIGTERM, want 0:\n%s", r.code, r)
		}
		for _, pid := range pids {
			if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("the action (pid %d) outlived the daemon: %v", pid, err)
			}
		}
		// Not lost: still pending (an attempt that ran past the timeout is
		// a failed attempt, retried after a backoff), not fulfilled and not
		// dead-lettered.
		st, _ := h.status()
		if st.Fulfillments["pending"] != 1 || st.Fulfillments["fulfilled"] != 0 || st.Fulfillments["failed"] != 0 || st.InFlight != 0 {
			t.Errorf("status after the stop: %v, in flight %d; want the session pending", st.Fulfillments, st.InFlight)
		}
		if err := os.Remove(h.path("slow")); err != nil {
			t.Fatal(err)
		}
		if r := h.fulfilld("run", "--once"); r.code != 0 {
			t.Errorf("run --once after the stop:\n%s", r)
		}
		// The retry is due after a backoff of several seconds; the operator
		// need not wait for it.
		if r := h.fulfilld("fulfill", id); r.code != 0 || !strings.Contains(r.stdout, id+": fulfilled") {
			t.Errorf("fulfill %s after the stop:\n%s", id, r)
		}
		sameKey(t, h, id, 2)
	})

	t.Run("second SIGTERM forces the exit", func(t *testing.T) {
		t.Parallel()
		const timeout = 10 * time.Second
		h, p, id := startSlow(t, timeout.String())
		sigterm(t, p)
		stopping(t, p)
		sigterm(t, p)
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
			// main.go restores SIGTERM's default action from a
			// context.AfterFunc goroutine once the first signal cancelled
			// the context; a second signal that comes before that
			// goroutine ran lands in signal.NotifyContext's channel and is
			// lost, and the daemon waits out the whole grace.
			t.Fatalf("the second SIGTERM, sent after the daemon logged that it is stopping, did not end it within 3s "+
				"(it was swallowed: see main.go, signal.NotifyContext + context.AfterFunc(ctx, stop)):\n%s", p.ended())
		}
		r := p.result()
		if r.code == 0 {
			t.Errorf("a forced stop exited 0:\n%s", r)
		}
		// Whatever the action left: the machine is going down with it.
		h.releaseActions()
		final := h.fulfilld("run", "--once")
		if final.code != 0 {
			t.Fatalf("run --once after a forced stop:\n%s", final)
		}
		if !strings.Contains(final.stderr, "cut off") {
			t.Errorf("the restart does not say the attempt was cut off and is repeated:\n%s", final)
		}
		if st, _ := h.status(); st.Fulfillments["fulfilled"] != 1 {
			t.Errorf("status after the restart: %v; want the session fulfilled", st.Fulfillments)
		}
		sameKey(t, h, id, 2)
	})
}

// TestStatusDuringOncePass: a `run --once` backfill holds the store for as
// long as it runs; status still answers through its socket, and commands
// that would change things say to try when the pass ends (exit 1, not the
// exit 2 of a held store).
func TestStatusDuringOncePass(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	id := h.paidSession(time.Now().Add(-5*time.Minute), 1)
	h.writeFile("slow", "")
	p := h.start("run", "--once", "--since", "1h")
	if !waitFor(20*time.Second, func() bool { return len(h.inflightPIDs()) > 0 }, p.done) {
		t.Fatalf("the action for %s did not start:\n%s", id, p.ended())
	}
	st := h.fulfilld("status", "--json")
	if st.code != 0 || !strings.Contains(st.stdout, `"fulfillments"`) {
		t.Errorf("status during a --once pass:\n%s", st)
	}
	r := h.fulfilld("retry", "--failed")
	if r.code != 1 || !strings.Contains(r.stderr, "--once") {
		t.Errorf("retry during a --once pass: want exit 1 saying a --once pass holds the store:\n%s", r)
	}
	h.releaseActions()
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the pass did not end:\n%s", p.ended())
	}
	if res := p.result(); res.code != 0 {
		t.Fatalf("the pass: exit %d:\n%s", res.code, res)
	}
}

// TestLandingPageActionGetsTheShutdownGrace: a deploy while a customer's
// landing page waits. The action the POST started outlasts the endpoint's
// 10 s wait (the page got 202) and is still running when SIGTERM comes: it
// gets the shutdown grace like queued work, its result is recorded, and the
// next start does not run it again.
func TestLandingPageActionGetsTheShutdownGrace(t *testing.T) {
	t.Parallel()
	hh := newHTTPHarness(t, harnessOptions{config: func(c *configFile) { c.Timeout = "30s" }})
	// Created before the daemon starts and with no --since: only the
	// landing page asks for it.
	id := hh.paidSession(time.Now().Add(-5*time.Minute), 1)
	hh.writeFile("slow", "")
	daemon, base := hh.startHTTP("run")

	answered := make(chan int, 1)
	go func() {
		resp, err := httpClient.Post(base+"/fulfill/"+id, "application/json", nil)
		if err != nil {
			answered <- -1
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	select {
	case code := <-answered:
		if code != http.StatusAccepted {
			t.Fatalf("POST /fulfill/%s answered %d while the action runs, want 202", id, code)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("POST /fulfill/%s did not answer within 20s:\n%s", id, daemon.ended())
	}
	if len(hh.inflightPIDs()) == 0 {
		t.Fatalf("the landing page's action is not running:\n%s", daemon.ended())
	}
	if err := daemon.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool { return strings.Contains(daemon.stderr.String(), "stopping") }, daemon.done) {
		t.Fatalf("the daemon did not log that it is stopping:\n%s", daemon.ended())
	}
	if daemon.exited() {
		t.Fatalf("the daemon exited without waiting for the landing page's action:\n%s", daemon.result())
	}
	if err := os.Remove(hh.path("slow")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-daemon.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the daemon did not exit after the action ended:\n%s", daemon.ended())
	}
	if r := daemon.result(); r.code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0:\n%s", r.code, r)
	}
	if r := hh.fulfilld("run", "--once", "--since", "1h"); r.code != 0 {
		t.Errorf("run --once after the stop:\n%s", r)
	}
	runs := runsBySession(hh.actionRuns())[id]
	if len(runs) != 1 || runs[0].trigger != "http" || runs[0].attempt != 1 {
		t.Errorf("the action ran %+v; want once, attempt 1, by the landing page", runs)
	}
}
