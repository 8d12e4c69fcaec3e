package poller_test

import (
	"errors"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/poller"
)

// retryingDB runs every write transaction twice, as PostgreSQL's store does
// after a serialization failure: the first run is rolled back, the second
// commits.
type retryingDB struct{ poller.DB }

var errSerialization = errors.New("could not serialize access (simulated)")

func (d retryingDB) Update(fn func(poller.Tx) error) error {
	if err := d.DB.Update(func(tx poller.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return errSerialization
	}); !errors.Is(err, errSerialization) {
		return err
	}
	return d.DB.Update(fn)
}

// A page whose transaction the store re-runs is counted once: the event
// counters status shows, and the poll's result. (Found by the two-daemon
// test on PostgreSQL: status counted 445 handled events of 324 listed.)
func TestCommitRerunByTheStoreCountsOnce(t *testing.T) {
	h := newHarness(t)
	for i := range 30 {
		h.paid(t0.Add(-30*time.Minute+time.Duration(i)*time.Minute), 1)
	}
	h.poller.DB = retryingDB{h.poller.DB}
	res, _ := h.pass(t0.Add(-time.Hour))
	var counts []cursor.EventCount
	if err := h.poller.DB.View(func(tx poller.Tx) (err error) { counts, err = cursor.Counts(tx); return err }); err != nil {
		t.Fatal(err)
	}
	total := uint64(0)
	for _, c := range counts {
		total += c.Count
	}
	if want := uint64(h.sim.EventCount()); total != want || res.New != int(want) {
		t.Errorf("counted %d handled events, the poll says %d new; Stripe listed %d", total, res.New, want)
	}
}
