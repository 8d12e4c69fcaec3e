package stripeapi

import (
	"time"
)

// UsageTx is the storage API usage needs: a sum per day, kept by the store
// for Stripe's rolling 30 days (older days summed into the total).
type UsageTx interface {
	AddUsage(day time.Time, u Usage) error
	UsageReport(now time.Time) (UsageReport, error)
}

// SaveUsage adds u to the given day's usage.
func SaveUsage(tx UsageTx, day time.Time, u Usage) error { return tx.AddUsage(day, u) }

// UsageReport is API usage over all time and over the last 30 days.
type UsageReport struct {
	Total      Usage `json:"total"`
	Last30Days Usage `json:"last_30_days"`
	// Last7Days and DaysUsed7 (the days of those 7 with any request) are
	// the current pace, from which a 30-day projection is made.
	Last7Days Usage `json:"last_7_days"`
	DaysUsed7 int   `json:"days_used_last_7"`
}

// Projected30Days is the reads a rolling 30 days would hold at the pace of
// the last 7 days (those the daemon ran on).
func (r UsageReport) Projected30Days() int64 {
	if r.DaysUsed7 == 0 {
		return 0
	}
	return r.Last7Days.Total() * 30 / int64(r.DaysUsed7)
}

// LoadUsage reads usage over all time and over the 30 days before now.
func LoadUsage(tx UsageTx, now time.Time) (UsageReport, error) { return tx.UsageReport(now) }
