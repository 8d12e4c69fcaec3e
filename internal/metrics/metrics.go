// Package metrics exposes fulfilld's state to Prometheus. Most series are
// the status model (internal/status) read when scraped, so /metrics and
// `fulfilld status` never disagree; the rest (polls, action durations) are
// counted as they happen.
package metrics

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/status"
)

// Metrics is fulfilld's registry and the series counted as things happen.
type Metrics struct {
	Registry       *prometheus.Registry
	polls          *prometheus.CounterVec
	actionDuration *prometheus.HistogramVec
	budget         readBudget
}

// readBudget is the configured stripe.monthly_read_budget, once known.
type readBudget struct {
	configured atomic.Int64
	set        atomic.Bool
}

// SetReadBudget tells /metrics the configured stripe.monthly_read_budget
// (config.ReadBudgetAuto, 0 or a number), so it shows the budget in force.
func (m *Metrics) SetReadBudget(configured int) {
	m.budget.configured.Store(int64(configured))
	m.budget.set.Store(true)
}

// New registers fulfilld's series, the store-backed ones reading db; now
// is the host's clock (the status model applies the skew to Stripe's).
func New(db status.Store, now func() time.Time) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fulfilld_polls_total",
			Help: "Polls of the Stripe events list, by outcome (ok, error).",
		}, []string{"outcome"}),
		actionDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fulfilld_action_duration_seconds",
			Help:    "Duration of the operator's action per attempt, by action (fulfill, notify) and outcome (ok, error).",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"action", "outcome"}),
	}
	if now == nil {
		now = time.Now
	}
	for _, outcome := range []string{"ok", "error"} {
		m.polls.WithLabelValues(outcome) // present at 0 before the first poll
	}
	m.Registry.MustRegister(m.polls, m.actionDuration, &storeCollector{db: db, now: now, budget: &m.budget},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Poll counts one poll.
func (m *Metrics) Poll(err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.polls.WithLabelValues(outcome).Inc()
}

// Instrument times every attempt of an action.
func (m *Metrics) Instrument(name string, a fulfill.Action) fulfill.Action {
	return &timedAction{next: a, hist: m.actionDuration, name: name}
}

type timedAction struct {
	next fulfill.Action
	hist *prometheus.HistogramVec
	name string
}

func (t *timedAction) Deliver(ctx context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	start := time.Now()
	out, err := t.next.Deliver(ctx, d)
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	t.hist.WithLabelValues(t.name, outcome).Observe(time.Since(start).Seconds())
	return out, err
}

var (
	descFulfillments = prometheus.NewDesc("fulfilld_fulfillments",
		"Checkout Sessions in the ledger, by state.", []string{"state"}, nil)
	descRecovered = prometheus.NewDesc("fulfilld_recovered_sessions",
		"Sessions found by reconciliation that the event stream had not fulfilled.", nil, nil)
	descQueue = prometheus.NewDesc("fulfilld_queue_depth",
		"Sessions queued for an attempt, due now or backing off.", nil, nil)
	descDeadLetters = prometheus.NewDesc("fulfilld_dead_letters",
		"Dead-lettered deliveries waiting for `fulfilld retry`, by kind (fulfill, notify, forward, repair).", []string{"kind"}, nil)
	descDeliveries = prometheus.NewDesc("fulfilld_deliveries",
		"Event deliveries in the store, by destination (forward, repair, notify) and state (pending, sent, failed). "+
			"repair is repair mode's re-deliveries of events Stripe could not deliver: sent is repaired, pending waiting, failed dead-lettered.",
		[]string{"destination", "state"}, nil)
	descEvents = prometheus.NewDesc("fulfilld_events_total",
		"Events taken from the stream, by type and outcome.", []string{"type", "outcome"}, nil)
	descMalformed = prometheus.NewDesc("fulfilld_malformed_events",
		"Events recorded as malformed.", nil, nil)
	descLag = prometheus.NewDesc("fulfilld_cursor_lag_seconds",
		"How far behind now the stream is known complete (complete_until).", nil, nil)
	descHorizon = prometheus.NewDesc("fulfilld_cursor_horizon_seconds",
		"Time until complete_until falls out of Stripe's 30-day event retention.", nil, nil)
	descLastSuccess = prometheus.NewDesc("fulfilld_last_successful_poll_timestamp_seconds",
		"When the most recent successful poll started.", nil, nil)
	descRequests = prometheus.NewDesc("fulfilld_stripe_requests_total",
		"Requests sent to Stripe, by endpoint (recorded after each poll).", []string{"endpoint"}, nil)
	descResponses = prometheus.NewDesc("fulfilld_stripe_responses_total",
		"Stripe responses by HTTP status (\"error\": no response).", []string{"status"}, nil)
	descRateLimited = prometheus.NewDesc("fulfilld_stripe_rate_limited_total",
		"Requests Stripe answered with 429.", nil, nil)
	descReads30d = prometheus.NewDesc("fulfilld_stripe_reads_30d",
		"Requests sent to Stripe over the last 30 days.", nil, nil)
	descReadBudget = prometheus.NewDesc("fulfilld_stripe_read_budget",
		"stripe.monthly_read_budget in force: reads allowed per rolling 30 days (0: no cap).", nil, nil)
	descReadsProjected = prometheus.NewDesc("fulfilld_stripe_reads_projected_30d",
		"Requests a rolling 30 days would hold at the pace of the last 7 days.", nil, nil)
	descClockSkew = prometheus.NewDesc("fulfilld_clock_skew_seconds",
		"Stripe's clock minus this host's, as the last poll observed it.", nil, nil)
	descInstances = prometheus.NewDesc("fulfilld_cluster_instances_alive",
		"Instances sharing the PostgreSQL store whose heartbeat is recent (store.postgres only).", nil, nil)
	descLister = prometheus.NewDesc("fulfilld_cluster_lister",
		"1 while some instance holds the lister role, 0 while none does (store.postgres only): alert when 0 for more than a minute.", nil, nil)
	descScrapeError = prometheus.NewDesc("fulfilld_store_scrape_error",
		"1 if the store could not be read for this scrape.", nil, nil)
)

// storeCollector reads the store on every scrape.
type storeCollector struct {
	db     status.Store
	now    func() time.Time
	budget *readBudget
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFulfillments, descRecovered, descQueue, descDeadLetters, descDeliveries, descEvents,
		descMalformed, descLag, descHorizon, descLastSuccess, descRequests, descResponses, descRateLimited,
		descReads30d, descReadBudget, descReadsProjected, descClockSkew, descInstances, descLister, descScrapeError} {
		ch <- d
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	st, err := status.Read(c.db, c.now())
	failed := 0.0
	if err != nil {
		if !errors.Is(err, bbolt.ErrDatabaseNotOpen) {
			failed = 1
		}
		ch <- prometheus.MustNewConstMetric(descScrapeError, prometheus.GaugeValue, failed)
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	for _, s := range fulfill.States {
		gauge(descFulfillments, float64(st.Fulfillments[string(s)]), string(s))
	}
	gauge(descRecovered, float64(st.Recovered))
	gauge(descQueue, float64(st.Queued))
	gauge(descDeadLetters, float64(st.Fulfillments[string(fulfill.StateFailed)]+st.IntentFulfillments[string(fulfill.StateFailed)]), "fulfill")
	for _, dest := range fulfill.Destinations {
		gauge(descDeadLetters, float64(st.Deliveries[dest][fulfill.DeliveryFailed]), dest)
		for _, state := range fulfill.DeliveryStates {
			gauge(descDeliveries, float64(st.Deliveries[dest][state]), dest, state)
		}
	}
	for _, e := range st.Events {
		counter(descEvents, float64(e.Count), e.Type, e.Outcome)
	}
	gauge(descMalformed, float64(st.BadEvents.Count))
	if st.Cursor.Started {
		gauge(descLag, st.Cursor.LagSeconds)
		gauge(descHorizon, st.Cursor.HorizonSeconds)
	}
	if st.LastPoll != nil && !st.LastPoll.LastSuccess.IsZero() {
		gauge(descLastSuccess, float64(st.LastPoll.LastSuccess.UnixMilli())/1000)
	}
	if st.ClockSkew != nil {
		gauge(descClockSkew, *st.ClockSkew)
	}
	for ep, n := range st.API.Total.Requests {
		counter(descRequests, float64(n), ep)
	}
	for code, n := range st.API.Total.ByStatus {
		counter(descResponses, float64(n), code)
	}
	counter(descRateLimited, float64(st.API.Total.RateLimited))
	gauge(descReads30d, float64(st.API.Last30Days.Total()))
	gauge(descReadsProjected, float64(st.API.Projected30Days()))
	if c.budget.set.Load() {
		st.SetReadBudget(int(c.budget.configured.Load()))
		gauge(descReadBudget, float64(st.API.ReadBudget.Budget))
	}
	if cl := st.Cluster; cl != nil {
		alive, lister := 0, 0.0
		for _, in := range cl.Instances {
			if in.Alive {
				alive++
			}
		}
		if cl.Lister != "" {
			lister = 1
		}
		gauge(descInstances, float64(alive))
		gauge(descLister, lister)
	}
	gauge(descScrapeError, failed)
}
