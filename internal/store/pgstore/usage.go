package pgstore

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// API usage is kept per UTC day and metric, in the connection's slot (see
// schema/0001_init.sql), so every instance adds its own requests without
// waiting for another's. As in boltstore, days past
// Stripe's rolling 30 days and one more are folded into dayFolded, which
// sorts before every date.
const (
	dayFolded = "0000-older"
	usageDays = 31
)

// The metrics a Usage is kept as.
const (
	metricRequest     = "request:" // + "GET /v1/events"
	metricStatus      = "status:"  // + "200"
	metricRateLimited = "rate_limited"
	metricRetries     = "retries"
	metricPayments    = "payments"
)

func usageMetrics(u stripeapi.Usage) map[string]int64 {
	m := map[string]int64{}
	for k, n := range u.Requests {
		m[metricRequest+k] += n
	}
	for k, n := range u.ByStatus {
		m[metricStatus+k] += n
	}
	m[metricRateLimited] += u.RateLimited
	m[metricRetries] += u.Retries
	m[metricPayments] += u.Payments
	return m
}

func addMetric(u *stripeapi.Usage, metric string, n int64) {
	switch {
	case strings.HasPrefix(metric, metricRequest):
		u.Requests[strings.TrimPrefix(metric, metricRequest)] += n
	case strings.HasPrefix(metric, metricStatus):
		u.ByStatus[strings.TrimPrefix(metric, metricStatus)] += n
	case metric == metricRateLimited:
		u.RateLimited += n
	case metric == metricRetries:
		u.Retries += n
	case metric == metricPayments:
		u.Payments += n
	}
}

// AddUsage implements stripeapi.UsageTx.
func (t *Tx) AddUsage(day time.Time, u stripeapi.Usage) error {
	if u.Total() == 0 && u.Payments == 0 {
		return nil
	}
	m := usageMetrics(u)
	metrics := make([]string, 0, len(m))
	for k, n := range m {
		if n != 0 {
			metrics = append(metrics, k)
		}
	}
	slices.Sort(metrics)
	ns := make([]int64, len(metrics))
	for i, k := range metrics {
		ns[i] = m[k]
	}
	if _, err := t.exec(`INSERT INTO fulfilld_api_usage AS u (day, metric, slot, n)
		SELECT $1, metric, $4, n FROM unnest($2::text[], $3::bigint[]) AS d(metric, n) ORDER BY metric
		ON CONFLICT (day, metric, slot) DO UPDATE SET n = u.n + excluded.n`,
		day.UTC().Format(time.DateOnly), metrics, ns, t.slot); err != nil {
		return fmt.Errorf("write api usage: %w", err)
	}
	return t.foldOldDays(day)
}

// AddPayments implements fulfill.Tx: payments are kept per day beside the
// requests, so the rolling 30 days of both are read together.
func (t *Tx) AddPayments(day time.Time, n int64) error {
	return t.AddUsage(day, stripeapi.Usage{Payments: n})
}

func (t *Tx) foldOldDays(day time.Time) error {
	edge := day.UTC().AddDate(0, 0, -usageDays).Format(time.DateOnly)
	if _, err := t.exec(`WITH old AS (
			DELETE FROM fulfilld_api_usage WHERE day >= '0001' AND day < $1 RETURNING metric, n)
		INSERT INTO fulfilld_api_usage AS u (day, metric, slot, n)
		SELECT $2, metric, $3, sum(n)::bigint FROM old GROUP BY metric ORDER BY metric
		ON CONFLICT (day, metric, slot) DO UPDATE SET n = u.n + excluded.n`, edge, dayFolded, t.slot); err != nil {
		return fmt.Errorf("fold old api usage: %w", err)
	}
	return nil
}

// UsageReport implements stripeapi.UsageTx: all time, and the 30 days
// before now.
func (t *Tx) UsageReport(now time.Time) (stripeapi.UsageReport, error) {
	var r stripeapi.UsageReport
	r.Total.Add(stripeapi.Usage{})
	r.Last30Days.Add(stripeapi.Usage{})
	r.Last7Days.Add(stripeapi.Usage{})
	days := map[string]*stripeapi.Usage{}
	err := t.each(`SELECT day, metric, n FROM fulfilld_api_usage`, nil, func(row pgx.Rows) error {
		var day, metric string
		var n int64
		if err := row.Scan(&day, &metric, &n); err != nil {
			return err
		}
		u := days[day]
		if u == nil {
			u = &stripeapi.Usage{Requests: map[string]int64{}, ByStatus: map[string]int64{}}
			days[day] = u
		}
		addMetric(u, metric, n)
		return nil
	})
	if err != nil {
		return r, fmt.Errorf("read api usage: %w", err)
	}
	since := now.UTC().AddDate(0, 0, -30).Format(time.DateOnly)
	since7 := now.UTC().AddDate(0, 0, -7).Format(time.DateOnly)
	for day, u := range days {
		r.Total.Add(*u)
		if day > since {
			r.Last30Days.Add(*u)
		}
		if day > since7 && u.Total() > 0 {
			r.Last7Days.Add(*u)
			r.DaysUsed7++
		}
	}
	return r, nil
}
