package stripeapi

import (
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// bucketUsage holds API usage per UTC day ("2026-11-22" → Usage JSON), so
// status can show totals and reads over Stripe's rolling 30 days.
var bucketUsage = []byte("api_usage")

// InitUsage creates the bucket usage is kept in.
func InitUsage(tx *bbolt.Tx) error {
	_, err := tx.CreateBucketIfNotExists(bucketUsage)
	return err
}

// SaveUsage adds u to the given day's usage.
func SaveUsage(tx *bbolt.Tx, day time.Time, u Usage) error {
	if u.Total() == 0 {
		return nil
	}
	b := tx.Bucket(bucketUsage)
	key := []byte(day.UTC().Format(time.DateOnly))
	var cur Usage
	if raw := b.Get(key); raw != nil {
		if err := json.Unmarshal(raw, &cur); err != nil {
			return fmt.Errorf("read api usage: %w", err)
		}
	}
	cur.Add(u)
	raw, err := json.Marshal(cur)
	if err != nil {
		return err
	}
	if err := b.Put(key, raw); err != nil {
		return err
	}
	return foldOldDays(b, day)
}

// keyFolded holds the usage of every day older than usageDays, summed: the
// totals stay right and the bucket keeps about a month of keys. It sorts
// before every date.
var keyFolded = []byte("0000-older")

// usageDays is how many days are kept one by one: Stripe's rolling 30 days
// and one more for the day boundary.
const usageDays = 31

func foldOldDays(b *bbolt.Bucket, day time.Time) error {
	edge := []byte(day.UTC().AddDate(0, 0, -usageDays).Format(time.DateOnly))
	var folded Usage
	if raw := b.Get(keyFolded); raw != nil {
		if err := json.Unmarshal(raw, &folded); err != nil {
			return fmt.Errorf("read api usage: %w", err)
		}
	}
	var old [][]byte
	c := b.Cursor()
	for k, v := c.Seek([]byte("0001")); k != nil && string(k) < string(edge); k, v = c.Next() {
		var u Usage
		if err := json.Unmarshal(v, &u); err != nil {
			return fmt.Errorf("read api usage of %s: %w", k, err)
		}
		folded.Add(u)
		old = append(old, append([]byte(nil), k...))
	}
	if len(old) == 0 {
		return nil
	}
	for _, k := range old {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	raw, err := json.Marshal(folded)
	if err != nil {
		return err
	}
	return b.Put(keyFolded, raw)
}

// UsageReport is API usage over all time and over the last 30 days.
type UsageReport struct {
	Total      Usage `json:"total"`
	Last30Days Usage `json:"last_30_days"`
}

// LoadUsage sums the kept usage.
func LoadUsage(tx *bbolt.Tx, now time.Time) (UsageReport, error) {
	var r UsageReport
	r.Total.Add(Usage{})
	r.Last30Days.Add(Usage{})
	since := now.UTC().AddDate(0, 0, -30).Format(time.DateOnly)
	b := tx.Bucket(bucketUsage)
	if b == nil {
		return r, nil
	}
	err := b.ForEach(func(k, v []byte) error {
		var u Usage
		if err := json.Unmarshal(v, &u); err != nil {
			return fmt.Errorf("read api usage of %s: %w", k, err)
		}
		r.Total.Add(u)
		if string(k) > since {
			r.Last30Days.Add(u)
		}
		return nil
	})
	return r, err
}
