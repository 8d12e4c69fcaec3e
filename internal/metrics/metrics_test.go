package metrics_test

import (
	"context"
	"errors"
	"math"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/metrics"
	"github.com/fulfilld/fulfilld/internal/metrics/metricstest"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/store/storetest"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

var now = time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)

func openStore(t *testing.T) *boltstore.Store { return storetest.Open(t) }

// paidSessions answers every retrieve with a paid session.
type paidSessions struct{}

func (paidSessions) GetSession(_ context.Context, id string) (*stripeapi.Session, error) {
	return &stripeapi.Session{ID: id, Status: "complete", PaymentStatus: "paid", LineItems: 1, JSON: []byte(`{}`)}, nil
}

// action succeeds unless the session id says "broken".
type action struct{}

func (action) Deliver(_ context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	for _, kv := range d.Env {
		if strings.HasPrefix(kv, "FULFILLD_SESSION_ID=") && strings.Contains(kv, "broken") {
			return fulfill.Outcome{ExitCode: 1}, errors.New("action exited with status 1")
		}
	}
	return fulfill.Outcome{}, nil
}

// gather collects the registry into name → family.
func gather(t *testing.T, r *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := r.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// TestStoreGauges: the series read from the store say what `fulfilld status`
// says (fulfill.Summarize and friends), so an alert and the operator's look
// at status never disagree.
func TestStoreGauges(t *testing.T) {
	t.Parallel()
	db := openStore(t)
	// The host's clock runs 30 minutes ahead of Stripe's (the skew the
	// last poll saw is -1800 s): lag and horizon are on Stripe's clock.
	m := metrics.New(db, func() time.Time { return now.Add(30 * time.Minute) })
	m.SetReadBudget(config.ReadBudgetAuto)
	f := &fulfill.Fulfiller{
		DB: store.As[fulfill.Tx](db), Sessions: paidSessions{}, Action: m.Instrument("fulfill", action{}),
		MaxAttempts: 1, Concurrency: 1, Now: func() time.Time { return now },
	}
	ctx := context.Background()
	for _, id := range []string{"cs_ok1", "cs_ok2", "cs_ok3", "cs_broken1"} {
		_, _ = f.Fulfill(ctx, id, fulfill.TriggerManual, "")
	}
	settled := now.Add(-3 * time.Minute)
	err := db.Update(func(tx store.Tx) error {
		for _, req := range []fulfill.Request{
			{SessionID: "cs_pending1", EventID: "evt_1", Trigger: fulfill.TriggerEvent, At: now},
			{SessionID: "cs_pending2", EventID: "evt_2", Trigger: fulfill.TriggerEvent, At: now.Add(time.Hour)},
			{SessionID: "cs_recovered", Trigger: fulfill.TriggerReconcile, At: now, Recovered: true},
		} {
			if _, err := fulfill.Enqueue(tx, req); err != nil {
				return err
			}
		}
		if err := fulfill.Await(tx, "cs_unpaid", now); err != nil {
			return err
		}
		if _, err := fulfill.End(tx, "cs_expired", fulfill.StateExpired, "evt_3", now); err != nil {
			return err
		}
		if err := cursor.Count(tx, map[[2]string]int{
			{"checkout.session.completed", "queued"}:    5,
			{"checkout.session.expired", "ended"}:       1,
			{"checkout.session.completed", "malformed"}: 1,
			{"customer.created", "ignored"}:             2,
		}); err != nil {
			return err
		}
		if err := cursor.RecordBad(tx, cursor.BadEvent{ID: "evt_bad", Type: "checkout.session.completed", Error: "not an object", SeenAt: now}); err != nil {
			return err
		}
		if err := cursor.Save(tx, cursor.Position{Settled: settled, Tip: now}); err != nil {
			return err
		}
		skew := -1800.0
		if err := cursor.SavePoll(tx, cursor.Poll{At: now, Outcome: "ok", LastSuccess: now.Add(-30 * time.Second), ClockSkew: &skew}); err != nil {
			return err
		}
		return stripeapi.SaveUsage(tx, now, stripeapi.Usage{
			Requests:    map[string]int64{"GET /v1/events": 7, "GET /v1/checkout/sessions/:id": 4},
			ByStatus:    map[string]int64{"200": 10, "429": 1},
			RateLimited: 1,
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	m.Poll(nil)
	m.Poll(nil)
	m.Poll(errors.New("stripe answered 500"))

	var sum fulfill.Summary
	var queued int
	if err := db.View(func(tx store.Tx) (err error) {
		if sum, err = fulfill.Summarize(tx); err != nil {
			return err
		}
		queued, err = fulfill.QueueLen(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// The seeding is what the test thinks it is.
	wantStates := map[fulfill.State]int{fulfill.StateFulfilled: 3, fulfill.StateFailed: 1, fulfill.StatePending: 3,
		fulfill.StateAwaitingPayment: 1, fulfill.StateExpired: 1, fulfill.StatePaymentFailed: 0}
	for st, n := range wantStates {
		if sum.Sessions[st] != n {
			t.Fatalf("seeded store: Summarize says %v, want %v", sum.Sessions, wantStates)
		}
	}

	mfs := gather(t, m.Registry)
	for _, st := range fulfill.States {
		if got, ok := metricstest.Sample(mfs, "fulfilld_fulfillments", map[string]string{"state": string(st)}); !ok || got != float64(sum.Sessions[st]) {
			t.Errorf("fulfilld_fulfillments{state=%q} = %v (present %v); Summarize says %d", st, got, ok, sum.Sessions[st])
		}
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"fulfilld_recovered_sessions", nil, float64(sum.Recovered)},
		{"fulfilld_queue_depth", nil, float64(queued)},
		{"fulfilld_dead_letters", map[string]string{"kind": "fulfill"}, float64(sum.Sessions[fulfill.StateFailed])},
		{"fulfilld_dead_letters", map[string]string{"kind": "notify"}, 0},
		{"fulfilld_events_total", map[string]string{"type": "checkout.session.completed", "outcome": "queued"}, 5},
		{"fulfilld_events_total", map[string]string{"type": "customer.created", "outcome": "ignored"}, 2},
		{"fulfilld_malformed_events", nil, 1},
		{"fulfilld_cursor_lag_seconds", nil, 180},
		{"fulfilld_cursor_horizon_seconds", nil, (poller.Retention - 3*time.Minute).Seconds()},
		{"fulfilld_last_successful_poll_timestamp_seconds", nil, float64(now.Add(-30 * time.Second).Unix())},
		{"fulfilld_clock_skew_seconds", nil, -1800},
		{"fulfilld_stripe_requests_total", map[string]string{"endpoint": "GET /v1/events"}, 7},
		{"fulfilld_stripe_requests_total", map[string]string{"endpoint": "GET /v1/checkout/sessions/:id"}, 4},
		{"fulfilld_stripe_responses_total", map[string]string{"status": "429"}, 1},
		{"fulfilld_stripe_rate_limited_total", nil, 1},
		{"fulfilld_stripe_reads_30d", nil, 11},
		// auto with a handful of payments: the floor, half of 10,000; 11
		// reads on the one day so far project to 330 in 30 days.
		{"fulfilld_stripe_read_budget", nil, 5000},
		{"fulfilld_stripe_reads_projected_30d", nil, 330},
		{"fulfilld_store_scrape_error", nil, 0},
		{"fulfilld_polls_total", map[string]string{"outcome": "ok"}, 2},
		{"fulfilld_polls_total", map[string]string{"outcome": "error"}, 1},
		{"fulfilld_action_duration_seconds", map[string]string{"action": "fulfill", "outcome": "ok"}, 3},
		{"fulfilld_action_duration_seconds", map[string]string{"action": "fulfill", "outcome": "error"}, 1},
	}
	for _, c := range checks {
		got, ok := metricstest.Sample(mfs, c.name, c.labels)
		if !ok || math.Abs(got-c.want) > 1e-6 {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	if sum.Recovered != 1 || queued != 3 {
		t.Errorf("seeded store: %d recovered, %d queued; want 1 and 3", sum.Recovered, queued)
	}
	for name, typ := range map[string]dto.MetricType{
		"fulfilld_fulfillments": dto.MetricType_GAUGE, "fulfilld_events_total": dto.MetricType_COUNTER,
		"fulfilld_stripe_requests_total": dto.MetricType_COUNTER, "fulfilld_polls_total": dto.MetricType_COUNTER,
		"fulfilld_action_duration_seconds": dto.MetricType_HISTOGRAM, "fulfilld_queue_depth": dto.MetricType_GAUGE,
	} {
		if mf := mfs[name]; mf == nil || mf.GetType() != typ {
			t.Errorf("%s: type %v, want %v", name, mfs[name].GetType(), typ)
		}
	}
}

// TestEmptyStore: a store that was never polled exposes the counts as
// zeros and no cursor series (there is no cursor to lag), not errors.
func TestEmptyStore(t *testing.T) {
	t.Parallel()
	db := openStore(t)
	m := metrics.New(db, func() time.Time { return now })
	mfs := gather(t, m.Registry)
	for _, st := range fulfill.States {
		if got, ok := metricstest.Sample(mfs, "fulfilld_fulfillments", map[string]string{"state": string(st)}); !ok || got != 0 {
			t.Errorf("fulfilld_fulfillments{state=%q} = %v (present %v), want 0", st, got, ok)
		}
	}
	for _, name := range []string{"fulfilld_cursor_lag_seconds", "fulfilld_cursor_horizon_seconds", "fulfilld_last_successful_poll_timestamp_seconds",
		"fulfilld_clock_skew_seconds"} {
		if _, ok := mfs[name]; ok {
			t.Errorf("%s is exposed before the cursor started", name)
		}
	}
	if got, ok := metricstest.Sample(mfs, "fulfilld_store_scrape_error", nil); !ok || got != 0 {
		t.Errorf("fulfilld_store_scrape_error = %v (present %v), want 0", got, ok)
	}
}

// TestStoreUnreadable: a scrape of a store that cannot be read says so in
// fulfilld_store_scrape_error, and the scrape itself still succeeds.
func TestStoreUnreadable(t *testing.T) {
	t.Parallel()
	m := metrics.New(unreadable{}, func() time.Time { return now })
	mfs := gather(t, m.Registry)
	if got, ok := metricstest.Sample(mfs, "fulfilld_store_scrape_error", nil); !ok || got != 1 {
		t.Errorf("fulfilld_store_scrape_error = %v (present %v) with a garbled cursor, want 1", got, ok)
	}
}

// unreadable is a store whose reads fail, as an I/O error makes them.
type unreadable struct{}

func (unreadable) View(func(store.Tx) error) error {
	return errors.New("read fulfilld.db: input/output error")
}

// TestLint: every series follows Prometheus naming conventions (units,
// _total on counters, help text), checked with promlint as
// testutil.GatherAndLint would.
func TestLint(t *testing.T) {
	t.Parallel()
	db := openStore(t)
	m := metrics.New(db, func() time.Time { return now })
	if err := db.Update(func(tx store.Tx) error {
		if err := cursor.Save(tx, cursor.Position{Settled: now.Add(-time.Minute), Tip: now}); err != nil {
			return err
		}
		if err := cursor.SavePoll(tx, cursor.Poll{At: now, Outcome: "ok", LastSuccess: now}); err != nil {
			return err
		}
		if err := cursor.Count(tx, map[[2]string]int{{"checkout.session.completed", "queued"}: 1}); err != nil {
			return err
		}
		return stripeapi.SaveUsage(tx, now, stripeapi.Usage{Requests: map[string]int64{"GET /v1/events": 1}, ByStatus: map[string]int64{"200": 1}})
	}); err != nil {
		t.Fatal(err)
	}
	m.Poll(nil)
	_, _ = m.Instrument("fulfill", action{}).Deliver(context.Background(), fulfill.Delivery{})
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var ours []*dto.MetricFamily
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "fulfilld_") {
			ours = append(ours, mf)
		}
	}
	if len(ours) < 15 {
		t.Errorf("only %d fulfilld_ families gathered", len(ours))
	}
	problems, err := promlint.NewWithMetricFamilies(ours).Lint()
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(problems, func(i, j int) bool { return problems[i].Metric < problems[j].Metric })
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}
