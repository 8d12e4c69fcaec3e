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
}

// LoadUsage reads usage over all time and over the 30 days before now.
func LoadUsage(tx UsageTx, now time.Time) (UsageReport, error) { return tx.UsageReport(now) }
