package main

// Two-daemon tests: SPEC "More than one host", from the outside. Two (or
// three) `fulfilld run` processes of the built binary share one PostgreSQL
// database (a fresh one per test, see pgtest) and one simulated Stripe; the
// test kills, pauses and restarts them and checks what an operator would:
// every paid session fulfilled, repeats only of attempts a kill cut off and
// with the same key, never one session's action on two instances at once,
// the standby listing within a minute, the cursor never going backwards.
//
// Production leases would make each takeover take 20-25 s and each repeat
// after a kill mid-action fulfill.timeout + 1 min, so the tests that kill
// several times shorten them with the test suite's own variables (see
// envTestListerLease in shared.go); TestListerTakeoverWithDefaultLease
// measures a takeover with the production constants.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/store/pgstore/pgtest"
	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// haHarness is a harness whose store is a PostgreSQL database, and whose
// instances each have their own store.path (so their own admin socket).
type haHarness struct {
	*harness
	env []string
}

func newHAHarness(t *testing.T, env []string, config func(c *configFile)) *haHarness {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	h := newHarness(t, harnessOptions{config: func(c *configFile) {
		c.Postgres = dsn
		c.Command = []string{"/bin/sh", filepath.Join(filepath.Dir(c.StorePath), "ha_action.sh"), filepath.Dir(c.StorePath)}
		if config != nil {
			config(c)
		}
	}})
	script, err := os.ReadFile(filepath.Join("testdata", "ha_action.sh"))
	if err != nil {
		t.Fatal(err)
	}
	h.writeFile("ha_action.sh", string(script))
	return &haHarness{harness: h, env: h.env(env...)}
}

// instance starts `fulfilld run` as the instance called name: its admin
// socket is name.db.sock in the test's directory.
func (h *haHarness) instance(name string, args ...string) *proc {
	h.t.Helper()
	return h.startEnv(h.env, append([]string{"--set", "store.path=" + h.path(name+".db"), "run"}, args...)...)
}

// elsewhere runs a command as from another host: same config, no admin
// socket, so it works against the database directly.
func (h *haHarness) elsewhere(args ...string) result {
	h.t.Helper()
	return h.fulfilldEnv(h.env, append([]string{"--set", "store.path=" + h.path("elsewhere.db")}, args...)...)
}

// haStatus is `status --json` as far as these tests read it.
type haStatus struct {
	statusReport
	Cluster *struct {
		Instances []struct {
			ID      string `json:"id"`
			Host    string `json:"host"`
			PID     int    `json:"pid"`
			Version string `json:"version"`
			Seen    string `json:"last_seen"`
			Alive   bool   `json:"alive"`
			Lister  bool   `json:"lister"`
		} `json:"instances"`
		Lister string `json:"lister"`
		Term   int64  `json:"lister_term"`
	} `json:"cluster"`
}

// listerPID is the pid of the instance that lists (0: none does).
func (st haStatus) listerPID() int {
	if st.Cluster == nil {
		return 0
	}
	for _, in := range st.Cluster.Instances {
		if in.Lister {
			return in.PID
		}
	}
	return 0
}

// statusElsewhere is `status --json` from another host, without the
// testing.T: the cursor watch calls it from its own goroutine.
func (h *haHarness) statusElsewhere(ctx context.Context) (haStatus, string, error) {
	var st haStatus
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, "--config", h.cfg, "--set", "store.path="+h.path("elsewhere.db"), "status", "--json")
	cmd.Env, cmd.Dir = h.env, h.dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return st, string(out), fmt.Errorf("status --json: %w: %s", err, stderr.String())
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, string(out), fmt.Errorf("status --json is not one JSON object: %w", err)
	}
	return st, string(out), nil
}

func (h *haHarness) mustStatus() (haStatus, string) {
	h.t.Helper()
	st, raw, err := h.statusElsewhere(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	return st, raw
}

// cursorWatch runs `status --json` from another host over and over while
// the test kills and pauses instances, and checks that complete_until never
// goes backwards.
type cursorWatch struct {
	mu        sync.Mutex
	last      time.Time
	backwards []string
	errs      []error
	reads     int
	stop      context.CancelFunc
	done      chan struct{}
}

func (h *haHarness) watchCursor() *cursorWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &cursorWatch{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			st, _, err := h.statusElsewhere(ctx)
			w.mu.Lock()
			switch {
			case ctx.Err() != nil:
			case err != nil:
				w.errs = append(w.errs, err)
			case st.Cursor.CompleteUntil != "":
				w.reads++
				at, perr := time.Parse(time.RFC3339, st.Cursor.CompleteUntil)
				switch {
				case perr != nil:
					w.errs = append(w.errs, perr)
				case at.Before(w.last):
					w.backwards = append(w.backwards, fmt.Sprintf("%s after %s", at.Format(time.RFC3339), w.last.Format(time.RFC3339)))
				default:
					w.last = at
				}
			}
			w.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return w
}

// check stops the watch and reports what it saw.
func (w *cursorWatch) check(t *testing.T) {
	t.Helper()
	w.stop()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range w.backwards {
		t.Errorf("status: cursor.complete_until went backwards: %s", b)
	}
	for _, err := range w.errs {
		t.Errorf("status from another host failed while instances were killed: %v", err)
	}
	if w.reads == 0 {
		t.Errorf("status from another host never showed cursor.complete_until")
	}
	t.Logf("read the cursor %d times from another host; complete_until ended at %s", w.reads, w.last.Format(time.RFC3339))
}

// ledgerRun is one run of ha_action.sh, from its start and end lines.
type ledgerRun struct {
	session, key, trigger string
	attempt               int
	instance, pid         int // fulfilld's pid, the action's
	start, end            time.Time
	ended, failed         bool
}

// ledger reads the action's start and end lines into runs, in start order.
func (h *haHarness) ledger() []ledgerRun {
	h.t.Helper()
	f, err := os.Open(h.path("ledger"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		h.t.Fatal(err)
	}
	defer f.Close()
	var runs []*ledgerRun
	byPID := map[int]*ledgerRun{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 8 {
			h.t.Fatalf("malformed ledger line %q", sc.Text())
		}
		var n [4]int64
		for i, s := range []string{fields[3], fields[5], fields[6], fields[7]} {
			if n[i], err = strconv.ParseInt(s, 10, 64); err != nil {
				h.t.Fatalf("ledger line %q: %v", sc.Text(), err)
			}
		}
		at := time.Unix(0, n[3])
		switch fields[0] {
		case "start":
			r := &ledgerRun{session: fields[1], key: fields[2], attempt: int(n[0]), trigger: fields[4],
				instance: int(n[1]), pid: int(n[2]), start: at}
			runs = append(runs, r)
			byPID[r.pid] = r
		case "end", "fail":
			r := byPID[int(n[2])]
			if r == nil {
				h.t.Fatalf("ledger: %q without its start", sc.Text())
			}
			r.end, r.ended, r.failed = at, true, fields[0] == "fail"
		default:
			h.t.Fatalf("malformed ledger line %q", sc.Text())
		}
	}
	if err := sc.Err(); err != nil {
		h.t.Fatal(err)
	}
	out := make([]ledgerRun, len(runs))
	for i, r := range runs {
		out[i] = *r
	}
	return out
}

// starts counts the action's runs so far, cheaply, for polling.
func (h *haHarness) starts() int {
	raw, err := os.ReadFile(h.path("ledger"))
	if err != nil {
		return 0
	}
	return strings.Count(string(raw), "start ")
}

// instances are the running instances by name, and when each process the
// test killed died (pid → time).
type instances struct {
	h      *haHarness
	byName map[string]*proc
	killed map[int]time.Time
}

func (in *instances) pid(name string) int { return in.byName[name].cmd.Process.Pid }

// named is the name of the instance with pid (or "").
func (in *instances) named(pid int) string {
	for name, p := range in.byName {
		if p.cmd.Process.Pid == pid {
			return name
		}
	}
	return ""
}

// lister waits until status from another host shows one of the running
// instances as the lister, and names it.
func (in *instances) lister(within time.Duration) string {
	in.h.t.Helper()
	var name string
	var last haStatus
	ok := waitFor(within, func() bool {
		st, _, err := in.h.statusElsewhere(context.Background())
		last = st
		name = in.named(st.listerPID())
		return err == nil && name != ""
	}, nil)
	if !ok {
		in.h.t.Fatalf("no running instance lists after %s; cluster: %+v", within, last.Cluster)
	}
	return name
}

// kill SIGKILLs an instance (a host going down: its actions die with it)
// and notes when.
func (in *instances) kill(name string) time.Time {
	in.h.t.Helper()
	p := in.byName[name]
	p.kill()
	if !p.killedBySignal() {
		in.h.t.Fatalf("instance %s ended on its own before the kill:\n%s", name, p.result())
	}
	at := time.Now()
	in.killed[p.cmd.Process.Pid] = at
	return at
}

// logCount is how many times p's log says what.
func logCount(p *proc, what string) int { return strings.Count(p.stderr.String(), what) }

const listsNow = "this instance lists events now"

// TestTwoDaemonsKilledDuringBackfill: two instances on one database work a
// backfill of a few hundred paid sessions while the test SIGKILLs the
// lister three times at random points (restarting it each time), SIGKILLs
// the other one mid-action, and pauses a lister past its lease.
func TestTwoDaemonsKilledDuringBackfill(t *testing.T) {
	t.Parallel()
	const (
		concurrency = 2
		lease       = 3 * time.Second
		timeout     = 4 * time.Second
		margin      = 6 * time.Second
	)
	h := newHAHarness(t, []string{
		envTestListerLease + "=" + lease.String(),
		envTestClaimMargin + "=" + margin.String(),
	}, func(c *configFile) {
		c.Concurrency = concurrency
		c.Timeout = timeout.String()
	})
	now := time.Now()
	paid := map[string]bool{}
	for i := range 240 {
		at := now.Add(-50*time.Minute + time.Duration(i)*10*time.Second)
		id := h.sim.CreateSession(stripesim.SessionParams{Created: at, LineItems: 1 + i%12})
		if i%10 == 0 {
			h.sim.CompleteSession(id, "unpaid", at.Add(time.Second))
			h.sim.AsyncPaymentSucceeded(id, at.Add(3*time.Minute))
		} else {
			h.sim.CompleteSession(id, "paid", at.Add(time.Second))
		}
		paid[id] = true
	}
	notPaid := h.notPaidSessions(now, 15)

	start := time.Now()
	in := &instances{h: h, byName: map[string]*proc{}, killed: map[int]time.Time{}}
	// The backfill first: `--since` moves complete_until back on purpose.
	// From the moment it started, the cursor must only move forwards.
	in.byName["a"] = h.instance("a", "--since", "1h")
	if !waitFor(30*time.Second, func() bool {
		st, _, err := h.statusElsewhere(context.Background())
		return err == nil && st.Cursor.CompleteUntil != ""
	}, in.byName["a"].done) {
		t.Fatalf("the backfill did not start within 30s:\n%s", in.byName["a"].stderr.String())
	}
	watch := h.watchCursor()
	in.byName["b"] = h.instance("b")
	other := func(name string) string {
		if name == "a" {
			return "b"
		}
		return "a"
	}
	// reach waits until the action has started n times.
	reach := func(n int, why string) {
		t.Helper()
		if !waitFor(60*time.Second, func() bool { return h.starts() >= n }, nil) {
			t.Fatalf("the action did not start %d times (for %s) within 60s; %d so far\n--- a:\n%s\n--- b:\n%s",
				n, why, h.starts(), tail(in.byName["a"].stderr.String(), 3000), tail(in.byName["b"].stderr.String(), 3000))
		}
	}
	var takeovers []time.Duration
	// killLister SIGKILLs the lister, measures how long the other instance
	// takes to list (its log says so), and restarts the killed one.
	killLister := func() {
		t.Helper()
		name := in.lister(30 * time.Second)
		survivor := in.byName[other(name)]
		before := logCount(survivor, listsNow)
		at := in.kill(name)
		if !waitFor(60*time.Second, func() bool { return logCount(survivor, listsNow) > before }, survivor.done) {
			t.Fatalf("the standby did not take listing over within 60s of the lister's SIGKILL:\n%s",
				tail(survivor.stderr.String(), 3000))
		}
		took := time.Since(at)
		takeovers = append(takeovers, took)
		if got := in.lister(30 * time.Second); got != other(name) {
			t.Fatalf("status shows instance %s as the lister after %s was killed", got, name)
		}
		t.Logf("killed lister %s at %d action starts (%s in); %s listed %s later",
			name, h.starts(), time.Since(start).Round(time.Millisecond), other(name), took.Round(time.Millisecond))
		in.byName[name] = h.instance(name)
	}

	// Both work the queue, whichever lists.
	ranOn := func(name string) func() bool {
		pid := strconv.Itoa(in.pid(name))
		return func() bool {
			raw, _ := os.ReadFile(h.path("ledger"))
			return strings.Contains(string(raw), " event "+pid+" ")
		}
	}
	for _, name := range []string{"a", "b"} {
		if !waitFor(20*time.Second, ranOn(name), in.byName[name].done) {
			t.Fatalf("instance %s ran no action within 20s of the start, while %d ran elsewhere:\n%s",
				name, h.starts(), tail(in.byName[name].stderr.String(), 3000))
		}
	}
	reach(5+rand.IntN(20), "the first kill of the lister")
	killLister()
	reach(40+rand.IntN(20), "the second kill of the lister")
	killLister()

	// A worker killed mid-action: its actions wait while slow.<pid> exists.
	reach(80, "the kill of a worker mid-action")
	worker := other(in.lister(30 * time.Second))
	wpid := in.pid(worker)
	slow := fmt.Sprintf("slow.%d", wpid)
	h.writeFile(slow, "")
	inflight := func() map[string]bool {
		cut := map[string]bool{}
		entries, _ := os.ReadDir(h.path("inflight"))
		for _, e := range entries {
			raw, _ := os.ReadFile(h.path(filepath.Join("inflight", e.Name())))
			if strings.TrimSpace(string(raw)) == strconv.Itoa(wpid) {
				cut[e.Name()] = true
			}
		}
		return cut
	}
	if !waitFor(30*time.Second, func() bool { return len(inflight()) > 0 }, in.byName[worker].done) {
		t.Fatalf("the worker %s started no action within 30s while the lister fulfilled:\n%s",
			worker, tail(in.byName[worker].stderr.String(), 3000))
	}
	in.kill(worker)
	cutOff := inflight()
	if err := os.Remove(h.path(slow)); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed worker %s with %d action(s) running, at %d action starts", worker, len(cutOff), h.starts())
	in.byName[worker] = h.instance(worker)

	// A lister paused past its lease, then woken.
	reach(110+rand.IntN(20), "the pause of the lister")
	paused := in.lister(30 * time.Second)
	pp := in.byName[paused]
	survivor := in.byName[other(paused)]
	before := logCount(survivor, listsNow)
	if err := pp.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	tookOver := waitFor(60*time.Second, func() bool { return logCount(survivor, listsNow) > before }, survivor.done)
	// The standby took over: the paused lister's lease has ended.
	pausedFor := time.Since(stopped)
	if err := pp.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if !tookOver {
		t.Fatalf("the standby did not take listing over within 60s of the lister's SIGSTOP:\n%s", tail(survivor.stderr.String(), 3000))
	}
	t.Logf("paused lister %s for %s at %d action starts", paused, pausedFor.Round(time.Millisecond), h.starts())
	if !waitFor(30*time.Second, func() bool {
		return strings.Contains(pp.stderr.String(), "stands by") || strings.Contains(pp.stderr.String(), "no longer holds the lister role")
	}, pp.done) {
		t.Errorf("the lister woken after its lease does not say it stands by or that its writes were refused:\n%s",
			tail(pp.stderr.String(), 3000))
	}
	if strings.Contains(pp.stderr.String(), "no longer holds the lister role") {
		t.Logf("the woken lister %s tried to write as the lister and was refused", paused)
	}
	if got := in.lister(30 * time.Second); got != other(paused) {
		t.Errorf("after the paused lister %s woke up, status shows %s listing", paused, got)
	}

	reach(150+rand.IntN(30), "the third kill of the lister")
	killLister()

	// The rest of the backfill, to the end.
	var st haStatus
	if !waitFor(90*time.Second, func() bool {
		var err error
		st, _, err = h.statusElsewhere(context.Background())
		return err == nil && st.Fulfillments["fulfilled"] == len(paid) && st.Queued == 0 && st.InFlight == 0
	}, nil) {
		t.Fatalf("not every paid session fulfilled within 90s: %v, queued %d, in flight %d\n--- a:\n%s\n--- b:\n%s",
			st.Fulfillments, st.Queued, st.InFlight, tail(in.byName["a"].stderr.String(), 4000), tail(in.byName["b"].stderr.String(), 4000))
	}
	watch.check(t)
	for name, p := range in.byName {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		if r := p.result(); r.code != 0 {
			t.Errorf("instance %s did not stop cleanly on SIGTERM:\n%s", name, r)
		}
	}
	t.Logf("backfill of %d paid sessions with 3 lister kills, 1 worker kill and 1 pause took %s; takeovers after SIGKILL: %v",
		len(paid), time.Since(start).Round(time.Millisecond), takeovers)

	h.checkRuns(paid, notPaid, cutOff, in.killed, "event")

	wantStates := map[string]int{"fulfilled": len(paid), "pending": 0, "failed": 0}
	for _, state := range notPaid {
		wantStates[state]++
	}
	for state, want := range wantStates {
		if got := st.Fulfillments[state]; got != want {
			t.Errorf("status: %d %s; want %d (all: %v)", got, state, want, st.Fulfillments)
		}
	}
	// Every event was handled, and counted, once: none queued twice.
	counted := 0
	for _, e := range st.Events {
		counted += e.Count
	}
	if want := h.sim.EventCount(); counted != want {
		t.Errorf("status counts %d handled events; Stripe listed %d: %+v", counted, want, st.Events)
	}
}

// checkRuns checks the action's ledger: every paid session ran and ended;
// a session ran again only after an attempt that a kill cut off (its
// instance was killed before it could record the result), always with the
// same key; no two runs of one session overlapped; no unpaid session ran.
func (h *haHarness) checkRuns(paid map[string]bool, notPaid map[string]string, cutOff map[string]bool, killed map[int]time.Time, trigger string) {
	t := h.t
	t.Helper()
	bySession := map[string][]ledgerRun{}
	for _, r := range h.ledger() {
		bySession[r.session] = append(bySession[r.session], r)
	}
	repeats := 0
	for id := range paid {
		runs := bySession[id]
		if len(runs) == 0 {
			t.Errorf("paid session %s was never fulfilled", id)
			continue
		}
		if last := runs[len(runs)-1]; !last.ended || last.failed {
			t.Errorf("paid session %s: its last run did not succeed: %+v", id, last)
		}
		repeats += len(runs) - 1
		for i, r := range runs {
			if r.key != runs[0].key || r.key == "" {
				t.Errorf("session %s ran with idempotency keys %q and %q", id, runs[0].key, r.key)
			}
			if r.trigger != trigger {
				t.Errorf("session %s ran with FULFILLD_TRIGGER %q, want %s", id, r.trigger, trigger)
			}
			end := r.end
			diedAt, wasKilled := killed[r.instance]
			if !r.ended {
				if !wasKilled {
					t.Errorf("session %s: a run on instance pid %d never ended, and that instance was not killed: %+v", id, r.instance, r)
					continue
				}
				end = diedAt
			}
			if i == len(runs)-1 {
				continue
			}
			// Repeated: this attempt must have been cut off by a kill.
			if !wasKilled || diedAt.Before(r.start) {
				t.Errorf("session %s ran again (attempt %d on pid %d, then %d on pid %d) though no kill cut the first off",
					id, r.attempt, r.instance, runs[i+1].attempt, runs[i+1].instance)
			}
			next := runs[i+1]
			if next.start.Before(end) {
				t.Errorf("session %s ran on two instances at once: pid %d from %s to %s, pid %d from %s",
					id, r.instance, r.start.Format(time.StampMicro), end.Format(time.StampMicro), next.instance, next.start.Format(time.StampMicro))
			}
			if next.attempt <= r.attempt {
				t.Errorf("session %s: repeated run has FULFILLD_ATTEMPT %d after %d", id, next.attempt, r.attempt)
			}
		}
	}
	for id := range cutOff {
		if runs := bySession[id]; len(runs) < 2 {
			t.Errorf("session %s was cut off mid-action by the kill of its instance, but its action ran %d time(s); want it repeated", id, len(runs))
		}
	}
	for id, state := range notPaid {
		if runs := bySession[id]; len(runs) > 0 {
			t.Errorf("the action ran for %s session %s: %+v", state, id, runs)
		}
	}
	var pids []int
	for pid := range killed {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	t.Logf("%d repeated runs after %d kills (pids %v); %d cut off mid-action", repeats, len(killed), pids, len(cutOff))
}

// TestListerTakeoverWithDefaultLease is SPEC's minute with the production
// lease and heartbeat (cluster.DefaultLeaseTTL, DefaultEvery): the lister
// is SIGKILLed and the standby must list within 60 s.
func TestListerTakeoverWithDefaultLease(t *testing.T) {
	t.Parallel()
	h := newHAHarness(t, nil, nil)
	in := &instances{h: h, byName: map[string]*proc{"a": h.instance("a"), "b": h.instance("b")}, killed: map[int]time.Time{}}
	name := in.lister(30 * time.Second)
	survivor := in.byName[map[string]string{"a": "b", "b": "a"}[name]]
	at := in.kill(name)
	if !waitFor(60*time.Second, func() bool { return logCount(survivor, listsNow) > 0 }, survivor.done) {
		t.Fatalf("the standby did not take listing over within 60s of the lister's SIGKILL:\n%s", survivor.stderr.String())
	}
	took := time.Since(at)
	t.Logf("with the default lease the standby listed %s after the lister's SIGKILL", took.Round(time.Millisecond))
	if got := in.lister(10 * time.Second); in.byName[got] != survivor {
		t.Errorf("status shows %s listing; want the survivor", got)
	}
}

// TestCommandsFromAnotherHost: with two instances running, status, fulfill,
// retry and reconcile from a host without their admin socket work against
// the database directly, with the answers the socket gives.
func TestCommandsFromAnotherHost(t *testing.T) {
	t.Parallel()
	h := newHAHarness(t, []string{envTestListerLease + "=3s"}, func(c *configFile) { c.MaxAttempts = 1 })
	// Older than the instances' first poll: only these commands reach them.
	old := time.Now().Add(-2 * time.Hour)
	var ids []string
	for i := range 7 {
		ids = append(ids, h.paidSession(old.Add(time.Duration(i)*time.Minute), 2))
	}
	in := &instances{h: h, byName: map[string]*proc{"a": h.instance("a"), "b": h.instance("b")}, killed: map[int]time.Time{}}
	in.lister(30 * time.Second)
	socket := func(args ...string) result {
		t.Helper()
		return h.fulfilldEnv(h.env, append([]string{"--set", "store.path=" + h.path("a.db")}, args...)...)
	}

	// status: both instances and the lister, the same either way.
	var views [2]haStatus
	for i, run := range []func(...string) result{socket, h.elsewhere} {
		r := run("status", "--json")
		if r.code != 0 {
			t.Fatalf("status --json:\n%s", r)
		}
		if err := json.Unmarshal([]byte(r.stdout), &views[i]); err != nil {
			t.Fatalf("status --json: %v\n%s", err, r.stdout)
		}
	}
	for i, st := range views {
		c := st.Cluster
		if c == nil {
			t.Fatalf("status %d has no cluster section", i)
		}
		pids := map[int]bool{}
		for _, inst := range c.Instances {
			if inst.Alive && inst.Host != "" && inst.Version != "" && inst.Seen != "" {
				pids[inst.PID] = true
			}
		}
		if !pids[in.pid("a")] || !pids[in.pid("b")] || c.Lister == "" || in.named(st.listerPID()) == "" {
			t.Errorf("status (%s) shows instances %+v, lister %q; want a and b alive with host, version and last seen, one listing",
				[]string{"through the socket", "from another host"}[i], c.Instances, c.Lister)
		}
	}
	if views[0].Cluster != nil && views[1].Cluster != nil && views[0].Cluster.Lister != views[1].Cluster.Lister {
		t.Errorf("the socket says %s lists, the database %s", views[0].Cluster.Lister, views[1].Cluster.Lister)
	}

	// fulfill: the first way runs the action, the second answers the same
	// record and runs nothing.
	type record struct {
		State    string `json:"state"`
		Attempts int    `json:"attempts"`
		Trigger  string `json:"trigger"`
	}
	fulfillBoth := func(id string, first, second func(...string) result) {
		t.Helper()
		var recs [2]record
		for i, run := range []func(...string) result{first, second} {
			r := run("fulfill", "--json", id)
			if r.code != 0 {
				t.Fatalf("fulfill %s:\n%s", id, r)
			}
			if err := json.Unmarshal([]byte(r.stdout), &recs[i]); err != nil {
				t.Fatalf("fulfill --json: %v\n%s", err, r.stdout)
			}
		}
		if recs[0] != recs[1] || recs[0].State != "fulfilled" || recs[0].Attempts != 1 || recs[0].Trigger != "manual" {
			t.Errorf("fulfill %s answered %+v, then %+v; want fulfilled at attempt 1 by a manual trigger, both times", id, recs[0], recs[1])
		}
	}
	fulfillBoth(ids[0], h.elsewhere, socket)
	fulfillBoth(ids[1], socket, h.elsewhere)

	// retry: a dead letter made either way is requeued either way.
	h.writeFile("fail-"+ids[2], "")
	h.writeFile("fail-"+ids[3], "")
	if r := h.elsewhere("fulfill", ids[2]); r.code != 1 {
		t.Fatalf("fulfill of a failing session from another host: want exit 1\n%s", r)
	}
	if r := socket("fulfill", ids[3]); r.code != 1 {
		t.Fatalf("fulfill of a failing session through the socket: want exit 1\n%s", r)
	}
	os.Remove(h.path("fail-" + ids[2]))
	os.Remove(h.path("fail-" + ids[3]))
	r1, r2 := h.elsewhere("retry", ids[2]), socket("retry", ids[3])
	if r1.code != 0 || r2.code != 0 || strings.ReplaceAll(r1.stdout, ids[2], "ID") != strings.ReplaceAll(r2.stdout, ids[3], "ID") {
		t.Errorf("retry from another host and through the socket answer differently:\n%s\n%s", r1, r2)
	}

	// reconcile: from another host it sweeps, and fulfils, the sessions the
	// stream never listed; through the socket the same sweep finds nothing
	// left to recover. (The ledger below shows each ran once.)
	r1 = h.elsewhere("reconcile", "--since", "3h")
	if r1.code != 0 || !strings.Contains(r1.stdout, "swept 7 complete sessions") {
		t.Errorf("reconcile from another host: want 7 swept\n%s", r1)
	}
	r2 = socket("reconcile", "--since", "3h")
	if r2.code != 0 || !strings.Contains(r2.stdout, "swept 7 complete sessions") || !strings.Contains(r2.stdout, "recovered 0 never seen in the event stream, 0 seen but not fulfilled") {
		t.Errorf("reconcile through the socket after it: want 7 swept, nothing to recover\n%s", r2)
	}

	var st haStatus
	if !waitFor(30*time.Second, func() bool {
		st, _ = h.mustStatus()
		return st.Fulfillments["fulfilled"] == len(ids) && st.Queued == 0 && st.InFlight == 0
	}, nil) {
		t.Fatalf("not all %d sessions fulfilled within 30s: %v, queued %d", len(ids), st.Fulfillments, st.Queued)
	}
	runs := map[string][]ledgerRun{}
	for _, r := range h.ledger() {
		runs[r.session] = append(runs[r.session], r)
	}
	for i, id := range ids {
		want := 1
		if i == 2 || i == 3 {
			want = 2 // the failed run, then the retried one
		}
		if len(runs[id]) != want {
			t.Errorf("session %d (%s) ran %d time(s); want %d: %+v", i, id, len(runs[id]), want, runs[id])
		}
	}
}
