package poller_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/internal/logtest"
	"github.com/fulfilld/fulfilld/internal/status"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/internal/stripesim"
	"github.com/fulfilld/fulfilld/poller"
)

// TestStripesClockDecidesWhatTheStreamCovers: the simulated Stripe runs on
// its own clock, the host's is off it (or jumps an hour ahead for one poll
// and back), and live traffic comes in across a first start with no cursor,
// polls every 30 s and a final complete pass. Every session paid after the
// start is fulfilled exactly once, by its own event; none paid before the
// start is (a first start begins at Stripe's now); the poll records the
// skew; the log warns once when the skew passes lookback/2 and says once
// when it is back.
func TestStripesClockDecidesWhatTheStreamCovers(t *testing.T) {
	tests := []struct {
		name     string
		skew     time.Duration // Stripe's clock minus the host's
		jumpPoll int           // the poll at which the host jumps +1h for one poll; -1: none
		warns    int           // WARN lines about the clock
		backs    int           // INFO lines saying it is back
	}{
		{name: "stripe 30m ahead of the host", skew: 30 * time.Minute, jumpPoll: -1, warns: 1},
		{name: "stripe 30m behind the host", skew: -30 * time.Minute, jumpPoll: -1, warns: 1},
		{name: "stripe 5m ahead of the host", skew: 5 * time.Minute, jumpPoll: -1},
		{name: "stripe 5m behind the host, as measured", skew: -5 * time.Minute, jumpPoll: -1},
		{name: "the host jumps 1h ahead for one poll, then back", jumpPoll: 6, warns: 1, backs: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stripe := stripesim.NewClock(t0.Add(tt.skew))
			h := newHarness(t, onStripesClock(stripe))
			logs := &logtest.Buffer{}
			h.poller.Logger = slog.New(slog.NewTextHandler(logs, nil))
			advance := func(d time.Duration) {
				h.clock.Advance(d)
				stripe.Advance(d)
			}
			type paid struct{ session, event string }
			pay := func(at time.Time, opts ...stripesim.EventOpt) paid {
				id := h.sim.CreateSession(stripesim.SessionParams{Created: at.Add(-time.Minute)})
				return paid{id, h.sim.CompleteSession(id, "paid", at, opts...)}
			}

			// Paid before the first start: left to a backfill.
			var before []paid
			for i := range 4 {
				before = append(before, pay(stripe.Now().Add(-time.Duration(2+3*i)*time.Minute)))
			}
			advance(time.Second)
			if _, err := h.poller.Start(t.Context(), time.Time{}); err != nil {
				t.Fatal(err)
			}
			if got := h.position().Settled; !got.Equal(stripe.Now()) {
				t.Errorf("first start: complete_until %s, want Stripe's now %s", got, stripe.Now())
			}

			var want []paid
			for i := range 16 {
				advance(30 * time.Second)
				now := stripe.Now()
				want = append(want, pay(now.Add(-time.Second)), pay(now.Add(-3*time.Second)))
				// Listed late: within the lookback, after the tip passed it.
				created := now.Add(-20 * time.Second)
				want = append(want, pay(created, stripesim.VisibleAt(created.Add(time.Duration(1+i%8)*time.Minute))))
				if i == tt.jumpPoll {
					h.clock.Advance(time.Hour)
				}
				h.poll(false)
				if i == tt.jumpPoll {
					if skew := h.lastPoll().ClockSkew; skew == nil || math.Abs(*skew+3600) > 2 {
						t.Errorf("the poll during the jump recorded skew %v, want about -3600", fmtSkew(skew))
					}
					h.clock.Advance(-time.Hour)
				}
			}
			advance(h.poller.Lookback + time.Minute)
			h.poll(true)

			fulfilled := 0
			for _, p := range want {
				runs := h.action.calls(p.session)
				switch {
				case len(runs) != 1:
					t.Errorf("%s: action ran %d times, want once", p.session, len(runs))
				case runs[0].Trigger != "event" || runs[0].EventID != p.event:
					t.Errorf("%s: triggered by %s %q, want its event %s", p.session, runs[0].Trigger, runs[0].EventID, p.event)
				default:
					fulfilled++
				}
			}
			if fulfilled != len(want) {
				t.Errorf("fulfilled %d of %d sessions paid after the start", fulfilled, len(want))
			}
			for _, p := range before {
				if n := len(h.action.calls(p.session)); n != 0 {
					t.Errorf("%s, paid before the first start: action ran %d times, want 0 (a first start begins at Stripe's now)", p.session, n)
				}
			}
			if h.action.overlaps != 0 {
				t.Errorf("%d overlapping runs", h.action.overlaps)
			}
			if got, want := h.position().Settled, stripe.Now().Add(-h.poller.Lookback); !got.Equal(want) {
				t.Errorf("complete_until %s, want Stripe's now − lookback %s", got, want)
			}
			if skew := h.lastPoll().ClockSkew; skew == nil || math.Abs(*skew-tt.skew.Seconds()) > 2 {
				t.Errorf("last poll recorded clock_skew_seconds %s, want about %.0f", fmtSkew(skew), tt.skew.Seconds())
			}
			warns, backs := logs.Count("level=WARN", "clock is wrong"), logs.Count("level=INFO", "back within")
			if warns != tt.warns || backs != tt.backs {
				t.Errorf("logged %d warnings and %d all-clears about the clock, want %d and %d:\n%s", warns, backs, tt.warns, tt.backs, logs)
			}
		})
	}
}

func (h *harness) lastPoll() cursor.Poll {
	h.t.Helper()
	var p cursor.Poll
	if err := h.db.View(func(tx store.Tx) (err error) { p, err = cursor.LoadPoll(tx); return err }); err != nil {
		h.t.Fatal(err)
	}
	return p
}

func fmtSkew(s *float64) string {
	if s == nil {
		return "none"
	}
	return time.Duration(*s * float64(time.Second)).String()
}

// TestSweepOnStripesClock: with the host's clock half an hour behind
// Stripe's, a sweep's time and end are Stripe's, and what it recovers is
// queued on the host's clock, which the queue runs on: fulfilled in the same
// pass, not half an hour later.
func TestSweepOnStripesClock(t *testing.T) {
	for _, skew := range []time.Duration{30 * time.Minute, -30 * time.Minute} {
		t.Run(skew.String(), func(t *testing.T) {
			stripe := stripesim.NewClock(t0.Add(skew))
			h := newHarness(t, onStripesClock(stripe))
			var paid []string
			for i := range 5 {
				paid = append(paid, h.paid(stripe.Now().Add(-time.Duration(i+1)*time.Hour), 1))
			}
			sw := h.sweep(stripe.Now().Add(-72 * time.Hour))
			for _, id := range paid {
				if n := len(h.action.calls(id)); n != 1 {
					t.Errorf("%s: action ran %d times in the sweep's pass, want 1", id, n)
				}
			}
			if !sw.At.Equal(stripe.Now()) || !sw.Until.Equal(stripe.Now()) {
				t.Errorf("sweep at %s until %s, want Stripe's now %s", sw.At, sw.Until, stripe.Now())
			}
		})
	}
}

// TestStartWithACursorNeedsNoStripe: a daemon restarted while Stripe is
// unreachable starts (and works its queues) on the stored cursor; only a
// first start, which needs Stripe's "now", asks Stripe first.
func TestStartWithACursorNeedsNoStripe(t *testing.T) {
	h := newHarness(t)
	h.pass(time.Time{}) // the first start: a cursor exists from here on
	nowhere := stripeapi.New(stripeapi.Config{APIKey: testKey, APIBase: "http://127.0.0.1:1",
		Limits: stripeapi.Limits{Global: 1000, Endpoint: 1000}, MaxRetries: 1})
	nowhere.Transport.MinBackoff, nowhere.Transport.MaxBackoff = time.Millisecond, time.Millisecond
	h.poller.Events, h.poller.Clock = nowhere, poller.ClientClock{Client: nowhere}
	if _, err := h.poller.Start(context.Background(), time.Time{}); err != nil {
		t.Fatalf("start on a stored cursor with Stripe unreachable: %v", err)
	}
	if n := nowhere.Transport.Sent(); n != 0 {
		t.Errorf("start on a stored cursor sent %d requests, want none", n)
	}

	// A first start does need Stripe, and says so.
	h2 := newHarness(t)
	h2.poller.Events, h2.poller.Clock = nowhere, poller.ClientClock{Client: nowhere}
	if _, err := h2.poller.Start(context.Background(), time.Time{}); err == nil {
		t.Error("a first start with Stripe unreachable succeeded; it cannot know where \"now\" is")
	}
}

// TestBackfillBeforeStripesClockIsKnown: a backfill's first pass (run
// --once, with --since as a cluster's recorded backfill gives it) begins
// before any answer told Stripe's time: it makes no request of its own to
// learn it, and its tip begins on the host's clock. Whether that clock is
// days ahead or hours behind, the pass fulfils each paid session once, up
// to the tip, and ends with complete_until at Stripe's now − lookback,
// neither past it nor short of it; an event within Stripe's 30 days that
// the host's clock would call aged out is still listed, and the pass is
// recorded at Stripe's time.
func TestBackfillBeforeStripesClockIsKnown(t *testing.T) {
	tests := []struct {
		name string
		skew time.Duration // Stripe's clock minus the host's
	}{
		{name: "host 3 days ahead", skew: -72 * time.Hour},
		{name: "host 30m ahead", skew: -30 * time.Minute},
		{name: "host 2h behind", skew: 2 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stripe := stripesim.NewClock(t0.Add(tt.skew))
			h := newHarness(t, onStripesClock(stripe))
			since := stripe.Now().Add(-29 * 24 * time.Hour)
			ids := []string{h.paid(since.Add(time.Hour), 1)} // aged out on a host 3 days ahead
			for i := range 40 {
				ids = append(ids, h.paid(stripe.Now().Add(-20*time.Hour+time.Duration(i)*30*time.Minute), 1))
			}
			for i := range 400 { // a busy two hours, older than the tip's range on Stripe's clock
				ids = append(ids, h.paid(stripe.Now().Add(-135*time.Minute+time.Duration(i)*18*time.Second), 1))
			}
			ids = append(ids, h.paid(stripe.Now().Add(-2*time.Minute), 1)) // the tip's
			var tipPages atomic.Int32
			h.poller.Events = &lister{src: h.client, n: 4, hook: func(_ context.Context, q stripeapi.EventQuery) error {
				if !isRescan(q) {
					tipPages.Add(1)
				}
				return nil
			}}

			h.pass(since)
			ranOnce := func(when string) {
				t.Helper()
				for _, id := range ids {
					if runs := len(h.action.calls(id)); runs != 1 {
						t.Errorf("%s: %s, action ran %d times, want once", id, when, runs)
					}
				}
			}
			ranOnce("after the first pass")
			// On a host clock behind, the tip began two hours back; once
			// the first answer told Stripe's time, it lists from Stripe's
			// now − lookback instead of page after page of the re-scan's.
			if n := tipPages.Load(); n > 2 {
				t.Errorf("the first pass's tip listed %d pages, want at most 2", n)
			}
			if got, horizon := h.position().Settled, stripe.Now().Add(-h.poller.Lookback); got.After(horizon) || horizon.Sub(got) > 2*time.Second {
				t.Errorf("complete_until %s after the first pass, want Stripe's now − lookback %s", got, horizon)
			}
			if at := h.lastPoll().At; at.Sub(stripe.Now()).Abs() > 2*time.Second {
				t.Errorf("the first pass recorded at %s, want Stripe's time %s", at, stripe.Now())
			}
			h.clock.Advance(h.poller.Lookback + time.Minute)
			stripe.Advance(h.poller.Lookback + time.Minute)
			h.poll(true)

			ranOnce("after the second")
			if got, want := h.position().Settled, stripe.Now().Add(-h.poller.Lookback); !got.Equal(want) {
				t.Errorf("complete_until %s, want Stripe's now − lookback %s", got, want)
			}
		})
	}
}

// TestAgedOutCursorFoundOnStripesClock: a backfill from 31 days back, begun
// on a host clock two days behind Stripe's — 29 days on the host's — is
// found past Stripe's 30-day retention once the tip's answer told Stripe's
// time, before the re-scan: the gap is recorded for the sessions sweep,
// where listing on would have moved the cursor over it and left the
// sessions paid in it to nobody.
func TestAgedOutCursorFoundOnStripesClock(t *testing.T) {
	stripe := stripesim.NewClock(t0.Add(48 * time.Hour))
	h := newHarness(t, onStripesClock(stripe))
	since := stripe.Now().Add(-31 * 24 * time.Hour)
	id := h.paid(stripe.Now().Add(-5*time.Hour), 1)

	h.pass(since)

	pos := h.position()
	if pos.AgedOut == nil || !pos.AgedOut.From.Equal(since) {
		t.Fatalf("cursor after the first pass: %+v, want the aged-out gap from %s recorded", pos, since)
	}
	if edge := poller.RetentionEdge(stripe.Now()); pos.AgedOut.To.Sub(edge).Abs() > 2*time.Second {
		t.Errorf("aged-out gap ends %s, want Stripe's retention edge %s", pos.AgedOut.To, edge)
	}
	if runs := len(h.action.calls(id)); runs != 1 {
		t.Errorf("%s: action ran %d times, want once", id, runs)
	}
}

// TestCronPassOnAWrongHostClock: `run --once` from cron, each run a new
// process with a cursor and Stripe's clock unknown until its first answer.
// On a host a little ahead or hours behind, each run lists up to Stripe's
// now − lookback and from there on in its tip: a session paid just inside
// the lookback and one Stripe listed late are fulfilled by the run after
// them, once, and complete_until keeps to Stripe's clock. A dry run on
// that clock reports each session once.
func TestCronPassOnAWrongHostClock(t *testing.T) {
	for _, skew := range []time.Duration{-30 * time.Second, -1500 * time.Millisecond, 1500 * time.Millisecond, 2 * time.Hour} { // Stripe's minus the host's
		t.Run(fmt.Sprintf("stripe %s from the host", skew), func(t *testing.T) {
			stripe := stripesim.NewClock(t0.Add(skew))
			h := newHarness(t, onStripesClock(stripe))
			advance := func(d time.Duration) {
				h.clock.Advance(d)
				stripe.Advance(d)
			}
			h.pass(time.Time{}) // the first start: a cursor at Stripe's now
			var ids []string
			for run := range 4 {
				advance(15 * time.Minute)
				now := stripe.Now()
				inside := h.paid(now.Add(-h.poller.Lookback+10*time.Second), 1) // just inside the lookback
				// Where a tip begun on a host 1.5 s ahead starts: the
				// re-scan must reach it.
				edge := h.paid(now.Add(-h.poller.Lookback+time.Second), 1)
				ids = append(ids, inside, edge,
					h.paid(now.Add(-90*time.Second), 1, stripesim.VisibleAt(now.Add(2*time.Minute))), // listed late
					h.paid(now.Add(-5*time.Minute), 1),
					// Where a tip begun on a host 1.5 s behind starts: the
					// re-scan must end there, not list it again.
					h.paid(now.Add(-h.poller.Lookback-1500*time.Millisecond), 1))
				h.newProcess()
				if run == 3 {
					h.poller.DryRun = true
					if _, err := h.poller.Start(t.Context(), time.Time{}); err != nil {
						t.Fatal(err)
					}
					res, _ := h.poll(true)
					// This run's four visible ones and the last run's late one.
					if res.New != 5 {
						t.Errorf("a dry run on the host's clock reported %d new events, want 5", res.New)
					}
					h.newProcess()
				}
				h.poll(true)
				for _, id := range []string{inside, edge} {
					if runs := len(h.action.calls(id)); runs != 1 {
						t.Errorf("run %d: %s, paid just inside the lookback, ran %d times in it, want once", run, id, runs)
					}
				}
				if got, want := h.position().Settled, stripe.Now().Add(-h.poller.Lookback); got.Sub(want).Abs() > 2*time.Second {
					t.Errorf("run %d: complete_until %s, want Stripe's now − lookback %s", run, got, want)
				}
			}
			advance(15 * time.Minute)
			h.newProcess()
			h.poll(true)
			for i, id := range ids {
				if runs := len(h.action.calls(id)); runs != 1 {
					t.Errorf("%s (run %d, #%d): action ran %d times, want once", id, i/5, i%5, runs)
				}
			}
		})
	}
}

// TestShortBackfillOnAHostBehind: an hour's backfill whose start the host's
// clock, two hours behind, puts within the tip's reach is still re-scanned
// in slices once the tip's first answer told Stripe's time, not listed by
// the tip one page after another.
func TestShortBackfillOnAHostBehind(t *testing.T) {
	stripe := stripesim.NewClock(t0.Add(2 * time.Hour))
	h := newHarness(t, onStripesClock(stripe))
	since := stripe.Now().Add(-time.Hour)
	var ids []string
	for i := range 300 {
		ids = append(ids, h.paid(since.Add(time.Duration(i)*10*time.Second), 1))
	}
	var tipPages, rescanPages atomic.Int32
	h.poller.Events = &lister{src: h.client, n: 4, hook: func(_ context.Context, q stripeapi.EventQuery) error {
		if isRescan(q) {
			rescanPages.Add(1)
		} else {
			tipPages.Add(1)
		}
		return nil
	}}

	h.pass(since)

	if tp, rp := tipPages.Load(), rescanPages.Load(); tp > 2 || rp == 0 {
		t.Errorf("the tip listed %d pages and the re-scan %d: want the tip at most 2, the rest re-scanned", tp, rp)
	}
	for _, id := range ids {
		if runs := len(h.action.calls(id)); runs != 1 {
			t.Errorf("%s: action ran %d times, want once", id, runs)
		}
	}
}

// TestRunSinceListsFromItsFirstRequest: `run --since 24h` counts its start
// back on the host's clock and lists from its first request, the re-scan
// beside the tip before any answer told Stripe's time (the tip's first
// answer is held until a re-scan request arrives). Whether the host is
// right, a little off, half an hour ahead or two hours behind, every
// session paid since Stripe's now − 24h is fulfilled once — on a host ahead,
// the half hour its own clock would have left out among them — and
// complete_until ends at Stripe's now − lookback. So too when an answer
// (a retrieve of the queue's) told Stripe's time before the first poll,
// and when the first poll's tip failed and a new process without --since
// (the next cron run) carries on — even on a host clock fixed in between,
// which no longer shows how far ahead it was when it counted.
func TestRunSinceListsFromItsFirstRequest(t *testing.T) {
	tests := []struct {
		skew       time.Duration // Stripe's minus the host's
		learnFirst bool          // Stripe's clock known before the first poll
		failTip    bool          // the first poll's tip fails; a new process polls
		fixClock   bool          // and the host's clock is set right before it
	}{
		{0, false, false, false}, {1500 * time.Millisecond, false, false, false}, {-30 * time.Minute, false, false, false},
		{2 * time.Hour, false, false, false}, {-30 * time.Minute, true, false, false}, {-30 * time.Minute, false, true, false},
		{-30 * time.Minute, false, true, true},
	}
	for _, tt := range tests {
		skew := tt.skew
		t.Run(fmt.Sprintf("stripe %s from the host, known first %v, tip fails %v, fixed %v", skew, tt.learnFirst, tt.failTip, tt.fixClock), func(t *testing.T) {
			stripe := stripesim.NewClock(t0.Add(skew))
			h := newHarness(t, onStripesClock(stripe))
			asked := stripe.Now().Add(-24 * time.Hour) // what --since 24h means
			ids := []string{h.paid(asked.Add(30*time.Second), 1), h.paid(asked.Add(20*time.Minute), 1)}
			for i := range 60 {
				ids = append(ids, h.paid(asked.Add(time.Hour+time.Duration(i)*20*time.Minute), 1))
			}
			ids = append(ids, h.paid(stripe.Now().Add(-2*time.Minute), 1)) // the tip's
			rescanning := make(chan struct{})
			var once sync.Once
			h.poller.Events = &lister{src: h.client, n: 4, hook: func(ctx context.Context, q stripeapi.EventQuery) error {
				if isRescan(q) {
					once.Do(func() { close(rescanning) })
					return nil
				}
				if err := wait(ctx, rescanning, "a re-scan request before the tip's first answer"); err != nil || !tt.failTip {
					return err
				}
				// The tip fails once a re-scan answer told Stripe's clock.
				for deadline := time.Now().Add(10 * time.Second); !h.client.Clock.Synced() && time.Now().Before(deadline); {
					time.Sleep(time.Millisecond)
				}
				return errors.New("stripe is unavailable")
			}}

			if _, err := h.poller.StartOnHostClock(t.Context(), h.clock.Now().Add(-24*time.Hour)); err != nil {
				t.Fatal(err)
			}
			if tt.learnFirst {
				if err := h.client.SyncClock(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			if tt.failTip {
				if _, err := h.poller.Poll(t.Context(), true); err == nil {
					t.Fatal("the first poll succeeded with its tip failing")
				}
				if tt.fixClock {
					h.clock.Set(stripe.Now())
				}
				h.newProcess()
			}
			h.poll(true)

			for _, id := range ids {
				if runs := len(h.action.calls(id)); runs != 1 {
					t.Errorf("%s: action ran %d times, want once", id, runs)
				}
			}
			if got, horizon := h.position().Settled, stripe.Now().Add(-h.poller.Lookback); got.After(horizon) || horizon.Sub(got) > 2*time.Second {
				t.Errorf("complete_until %s after the backfill, want Stripe's now − lookback %s", got, horizon)
			}
		})
	}
}

// TestShortSinceOnAHostAhead: `run --once --since 5m` on a host half an
// hour ahead fulfils the five minutes, counted on Stripe's clock, in its
// own pass: the tip lists from the start the first answer moved back, not
// from one in Stripe's future.
func TestShortSinceOnAHostAhead(t *testing.T) {
	stripe := stripesim.NewClock(t0.Add(-30 * time.Minute))
	h := newHarness(t, onStripesClock(stripe))
	ids := []string{h.paid(stripe.Now().Add(-4*time.Minute), 1), h.paid(stripe.Now().Add(-time.Minute), 1)}
	if _, err := h.poller.StartOnHostClock(t.Context(), h.clock.Now().Add(-5*time.Minute)); err != nil {
		t.Fatal(err)
	}
	h.poll(true)
	h.ranOnce(ids)
}

// TestSecondSinceKeepsTheFirstStart: `run --since 24h` on a host half an
// hour ahead gets no answer at all; the operator then runs `run --since 2h`
// in a new process. The first window's start, counted on the same clock,
// is still the one judged: the whole 24 hours since Stripe's now − 24h are
// fulfilled, not only what the 2h start would have moved.
func TestSecondSinceKeepsTheFirstStart(t *testing.T) {
	h, _, ids := aDayOnAHostAhead(t)
	h.poller.Events = &lister{src: h.client, n: 4, hook: func(context.Context, stripeapi.EventQuery) error {
		return errors.New("stripe is unreachable")
	}}
	if _, err := h.poller.StartOnHostClock(t.Context(), h.clock.Now().Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.poller.Poll(t.Context(), true); err == nil {
		t.Fatal("a poll with every request failing succeeded")
	}
	start := h.clock.Now().Add(-24*time.Hour - 2*time.Second).UTC().Format(time.RFC3339)
	if shown := h.shownStart(); shown != start {
		t.Errorf("status shows the unjudged start as %q, want %s", shown, start)
	}
	h.newProcess()
	if _, err := h.poller.StartOnHostClock(t.Context(), h.clock.Now().Add(-2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if shown := h.shownStart(); shown != start {
		t.Errorf("after a second, shorter --since, status shows the unjudged start as %q, want the first, %s", shown, start)
	}
	h.poll(true)
	h.ranOnce(ids)
	if shown := h.shownStart(); shown != "" {
		t.Errorf("status still shows a start on the host's clock (%s) after a poll judged it", shown)
	}
}

// shownStart is the unjudged `run --since` start as status reports it, in
// JSON and in text ("" when there is none, and then no text line).
func (h *harness) shownStart() string {
	h.t.Helper()
	st, err := status.Read(h.db, h.clock.Now())
	if err != nil {
		h.t.Fatal(err)
	}
	raw, err := json.Marshal(st)
	if err != nil {
		h.t.Fatal(err)
	}
	var fields struct {
		Cursor struct {
			HostSince string `json:"host_since"`
		} `json:"cursor"`
	}
	if err := json.Unmarshal(raw, &fields); err != nil {
		h.t.Fatal(err)
	}
	var text strings.Builder
	st.WriteText(&text)
	if line := strings.Contains(text.String(), "backfill start"); line != (fields.Cursor.HostSince != "") {
		h.t.Errorf("status --json host_since %q, but the text's backfill start line shown %v:\n%s", fields.Cursor.HostSince, line, text.String())
	}
	return fields.Cursor.HostSince
}

// TestCancelledFirstPollJudgesItsStart: `run --since 24h` on a host half an
// hour ahead is stopped during its first poll, after a re-scan answer told
// Stripe's clock but before the tip's; the host's clock is then set right
// and the next cron run (a new process, no --since) polls. The first
// process judged its start as it stopped, by the skew when it counted it,
// so the next run fulfils the whole 24 hours since Stripe's now − 24h.
func TestCancelledFirstPollJudgesItsStart(t *testing.T) {
	h, stripe, ids := aDayOnAHostAhead(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	client := h.client
	h.poller.Events = &lister{src: client, n: 4, hook: func(hctx context.Context, q stripeapi.EventQuery) error {
		if isRescan(q) {
			return nil
		}
		for deadline := time.Now().Add(10 * time.Second); !client.Clock.Synced() && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		cancel() // the operator stops it
		<-hctx.Done()
		return hctx.Err()
	}}
	if _, err := h.poller.StartOnHostClock(t.Context(), h.clock.Now().Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.poller.Poll(ctx, true); err == nil {
		t.Fatal("a poll stopped during its tip succeeded")
	}
	if !client.Clock.Synced() {
		t.Fatal("no re-scan answer told Stripe's clock before the stop")
	}
	h.clock.Set(stripe.Now())
	h.newProcess()
	h.poll(true)
	h.ranOnce(ids)
}

// TestCorrectedStartPastRetentionIsSwept: a start counted on a host half an
// hour ahead, 29 days 23 hours back, and polled an hour and a half later
// (Stripe was unreachable), is 30 minutes past Stripe's retention once
// corrected: that gap is recorded for the sessions sweep, not dropped at
// the edge.
func TestCorrectedStartPastRetentionIsSwept(t *testing.T) {
	stripe := stripesim.NewClock(t0.Add(-30 * time.Minute))
	h := newHarness(t, onStripesClock(stripe))
	if _, err := h.poller.StartOnHostClock(t.Context(), h.clock.Now().Add(-poller.Retention+time.Hour)); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(90 * time.Minute)
	stripe.Advance(90 * time.Minute)
	h.poll(true)
	pos := h.position()
	if want := poller.RetentionEdge(stripe.Now()).Add(-29 * time.Minute); pos.AgedOut == nil || pos.AgedOut.From.After(want) {
		t.Errorf("cursor after the pass: aged-out gap %+v, want one from %s or earlier for the sweep", pos.AgedOut, want)
	}
}

// aDayOnAHostAhead is a store on a host half an hour ahead of Stripe, with
// sessions paid a minute after Stripe's now − 24h, 20 minutes later (both
// before the host's now − 24h) and 3 hours ago.
func aDayOnAHostAhead(t *testing.T) (*harness, *stripesim.Clock, []string) {
	stripe := stripesim.NewClock(t0.Add(-30 * time.Minute))
	h := newHarness(t, onStripesClock(stripe))
	return h, stripe, []string{h.paid(stripe.Now().Add(-24*time.Hour+time.Minute), 1),
		h.paid(stripe.Now().Add(-23*time.Hour-40*time.Minute), 1), h.paid(stripe.Now().Add(-3*time.Hour), 1)}
}

// ranOnce checks that each of ids had its action run once.
func (h *harness) ranOnce(ids []string) {
	h.t.Helper()
	for _, id := range ids {
		if runs := len(h.action.calls(id)); runs != 1 {
			h.t.Errorf("%s: action ran %d times, want once", id, runs)
		}
	}
}
