package boltstore

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

// API usage is kept per UTC day ("2026-11-22" → Usage JSON) for Stripe's
// rolling 30 days and one more; older days are summed under keyFolded,
// which sorts before every date, so totals stay right and the bucket keeps
// about a month of keys.
var keyFolded = []byte("0000-older")

const usageDays = 31

// AddUsage implements stripeapi.UsageTx.
func (t *Tx) AddUsage(day time.Time, u stripeapi.Usage) error {
	if u.Total() == 0 && u.Payments == 0 {
		return nil
	}
	key := []byte(day.UTC().Format(time.DateOnly))
	var cur stripeapi.Usage
	if _, err := t.getJSON(bucketUsage, key, &cur); err != nil {
		return fmt.Errorf("read api usage: %w", err)
	}
	cur.Add(u)
	if err := t.putJSON(bucketUsage, key, cur); err != nil {
		return err
	}
	return t.foldOldDays(day)
}

// AddPayments implements fulfill.Tx: payments are kept per day beside the
// requests, so the rolling 30 days of both are read together.
func (t *Tx) AddPayments(day time.Time, n int64) error {
	return t.AddUsage(day, stripeapi.Usage{Payments: n})
}

func (t *Tx) foldOldDays(day time.Time) error {
	b := t.b(bucketUsage)
	edge := day.UTC().AddDate(0, 0, -usageDays).Format(time.DateOnly)
	var folded stripeapi.Usage
	if _, err := t.getJSON(bucketUsage, keyFolded, &folded); err != nil {
		return err
	}
	var old [][]byte
	c := b.Cursor()
	for k, v := c.Seek([]byte("0001")); k != nil && string(k) < edge; k, v = c.Next() {
		var u stripeapi.Usage
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
	return t.putJSON(bucketUsage, keyFolded, folded)
}

// UsageReport implements stripeapi.UsageTx: all time, and the 30 days
// before now.
func (t *Tx) UsageReport(now time.Time) (stripeapi.UsageReport, error) {
	var r stripeapi.UsageReport
	r.Total.Add(stripeapi.Usage{})
	r.Last30Days.Add(stripeapi.Usage{})
	r.Last7Days.Add(stripeapi.Usage{})
	since := now.UTC().AddDate(0, 0, -30).Format(time.DateOnly)
	since7 := now.UTC().AddDate(0, 0, -7).Format(time.DateOnly)
	err := t.b(bucketUsage).ForEach(func(k, v []byte) error {
		var u stripeapi.Usage
		if err := json.Unmarshal(v, &u); err != nil {
			return fmt.Errorf("read api usage of %s: %w", k, err)
		}
		r.Total.Add(u)
		if string(k) > since {
			r.Last30Days.Add(u)
		}
		if string(k) > since7 && u.Total() > 0 {
			r.Last7Days.Add(u)
			r.DaysUsed7++
		}
		return nil
	})
	return r, err
}

// LastSweep implements poller.SweepTx.
func (t *Tx) LastSweep() (*poller.Sweep, *poller.WebhookMisses, error) {
	var sw poller.Sweep
	var m poller.WebhookMisses
	okSweep, err := t.getJSON(bucketReconcile, keyLastSweep, &sw)
	if err != nil {
		return nil, nil, err
	}
	okMisses, err := t.getJSON(bucketReconcile, keyMisses, &m)
	if err != nil {
		return nil, nil, err
	}
	var swp *poller.Sweep
	var mp *poller.WebhookMisses
	if okSweep {
		swp = &sw
	}
	if okMisses {
		mp = &m
	}
	return swp, mp, nil
}

// PutLastSweep implements poller.SweepTx.
func (t *Tx) PutLastSweep(sw poller.Sweep) error { return t.putJSON(bucketReconcile, keyLastSweep, sw) }

// PutWebhookMisses implements poller.SweepTx.
func (t *Tx) PutWebhookMisses(m poller.WebhookMisses) error {
	return t.putJSON(bucketReconcile, keyMisses, m)
}
