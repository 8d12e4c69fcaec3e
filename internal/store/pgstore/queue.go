package pgstore

import (
	"fmt"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store/ledgerindex"
)

// A queue is rows of fulfilld_queue keyed (queue, id), read by due time
// (unix nanoseconds) then id; its length is a kept counter.

var knownQueues = map[fulfill.Queue]bool{fulfill.SessionQueue: true, fulfill.DeliveryQueue: true}

func checkQueue(q fulfill.Queue) error {
	if !knownQueues[q] {
		return fmt.Errorf("no queue %q", q)
	}
	return nil
}

// excluded lists the ids of exclude that are set.
func excluded(exclude map[string]bool) []string {
	ids := []string{}
	for id, ex := range exclude {
		if ex {
			ids = append(ids, id)
		}
	}
	return ids
}

// Schedule implements fulfill.Tx.
func (t *Tx) Schedule(q fulfill.Queue, id string, due time.Time) error {
	if err := checkQueue(q); err != nil {
		return err
	}
	n, err := t.exec(`INSERT INTO fulfilld_queue (queue, id, due) VALUES ($1, $2, $3) ON CONFLICT (queue, id) DO NOTHING`,
		string(q), id, nanos(due))
	if err != nil {
		return fmt.Errorf("queue %s in %s: %w", id, q, err)
	}
	if n == 1 {
		t.count(ledgerindex.QueueCount(q), 1)
		return nil
	}
	if _, err := t.exec(`UPDATE fulfilld_queue SET due = $3 WHERE queue = $1 AND id = $2`, string(q), id, nanos(due)); err != nil {
		return fmt.Errorf("queue %s in %s: %w", id, q, err)
	}
	return nil
}

// Unschedule implements fulfill.Tx.
func (t *Tx) Unschedule(q fulfill.Queue, id string) error {
	if err := checkQueue(q); err != nil {
		return err
	}
	n, err := t.exec(`DELETE FROM fulfilld_queue WHERE queue = $1 AND id = $2`, string(q), id)
	if err != nil {
		return fmt.Errorf("unqueue %s from %s: %w", id, q, err)
	}
	t.count(ledgerindex.QueueCount(q), -n)
	return nil
}

// DueAt implements fulfill.Tx.
func (t *Tx) DueAt(q fulfill.Queue, id string) (time.Time, bool, error) {
	if err := checkQueue(q); err != nil {
		return time.Time{}, false, err
	}
	var due int64
	ok, err := t.get(`SELECT due FROM fulfilld_queue WHERE queue = $1 AND id = $2`, []any{string(q), id}, &due)
	if err != nil || !ok {
		return time.Time{}, false, err
	}
	return time.Unix(0, due), true, nil
}

// Due implements fulfill.Tx.
func (t *Tx) Due(q fulfill.Queue, now time.Time, limit int, exclude map[string]bool) ([]string, error) {
	if err := checkQueue(q); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, nil
	}
	return t.ids(`SELECT id FROM fulfilld_queue WHERE queue = $1 AND due <= $2 AND NOT id = ANY($3)
		ORDER BY due, id LIMIT $4`, string(q), now.UnixNano(), excluded(exclude), limit)
}

// NextDue implements fulfill.Tx.
func (t *Tx) NextDue(q fulfill.Queue, exclude map[string]bool) (time.Time, error) {
	if err := checkQueue(q); err != nil {
		return time.Time{}, err
	}
	var due int64
	ok, err := t.get(`SELECT due FROM fulfilld_queue WHERE queue = $1 AND NOT id = ANY($2) ORDER BY due, id LIMIT 1`,
		[]any{string(q), excluded(exclude)}, &due)
	if err != nil || !ok {
		return time.Time{}, err
	}
	return time.Unix(0, due), nil
}

// QueueLen implements fulfill.Tx: a kept counter.
func (t *Tx) QueueLen(q fulfill.Queue) (int, error) {
	if err := checkQueue(q); err != nil {
		return 0, err
	}
	n, err := t.counter(ledgerindex.QueueCount(q))
	return int(n), err
}

// Queued implements fulfill.Tx.
func (t *Tx) Queued(q fulfill.Queue) ([]string, error) {
	if err := checkQueue(q); err != nil {
		return nil, err
	}
	return t.ids(`SELECT id FROM fulfilld_queue WHERE queue = $1 ORDER BY id`, string(q))
}
