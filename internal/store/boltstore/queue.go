package boltstore

import (
	"bytes"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store/ledgerindex"
)

// A queue is ordered by due time: its items bucket holds due (8 bytes, unix
// nanos) + id → nothing, its index id → that items key.

func (t *Tx) queue(q fulfill.Queue) (items, index *bbolt.Bucket, err error) {
	b, ok := queues[string(q)]
	if !ok {
		return nil, nil, fmt.Errorf("no queue %q", q)
	}
	return t.b(b.items), t.b(b.index), nil
}

// queueCount is the counter that keeps a queue's length.
func queueCount(q fulfill.Queue) []byte { return []byte(ledgerindex.QueueCount(q)) }

// Schedule implements fulfill.Tx.
func (t *Tx) Schedule(q fulfill.Queue, id string, due time.Time) error {
	if err := t.Unschedule(q, id); err != nil {
		return err
	}
	items, index, err := t.queue(q)
	if err != nil {
		return err
	}
	key := append(timeKey(due), id...)
	if err := items.Put(key, nil); err != nil {
		return err
	}
	if err := index.Put([]byte(id), key); err != nil {
		return err
	}
	return addUint(t.b(bucketCounts), queueCount(q), 1)
}

// Unschedule implements fulfill.Tx.
func (t *Tx) Unschedule(q fulfill.Queue, id string) error {
	items, index, err := t.queue(q)
	if err != nil {
		return err
	}
	old := index.Get([]byte(id))
	if old == nil {
		return nil
	}
	if err := items.Delete(bytes.Clone(old)); err != nil {
		return err
	}
	if err := index.Delete([]byte(id)); err != nil {
		return err
	}
	return addUint(t.b(bucketCounts), queueCount(q), -1)
}

// DueAt implements fulfill.Tx.
func (t *Tx) DueAt(q fulfill.Queue, id string) (time.Time, bool, error) {
	_, index, err := t.queue(q)
	if err != nil {
		return time.Time{}, false, err
	}
	key := index.Get([]byte(id))
	if len(key) < 8 {
		return time.Time{}, false, nil
	}
	return keyTime(key), true, nil
}

// Due implements fulfill.Tx.
func (t *Tx) Due(q fulfill.Queue, now time.Time, limit int, exclude map[string]bool) ([]string, error) {
	items, _, err := t.queue(q)
	if err != nil {
		return nil, err
	}
	var ids []string
	c := items.Cursor()
	for k, _ := c.First(); k != nil && len(ids) < limit; k, _ = c.Next() {
		if keyTime(k).After(now) {
			break
		}
		if id := string(k[8:]); !exclude[id] {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// NextDue implements fulfill.Tx.
func (t *Tx) NextDue(q fulfill.Queue, exclude map[string]bool) (time.Time, error) {
	items, _, err := t.queue(q)
	if err != nil {
		return time.Time{}, err
	}
	c := items.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if !exclude[string(k[8:])] {
			return keyTime(k), nil
		}
	}
	return time.Time{}, nil
}

// QueueLen implements fulfill.Tx: a kept counter.
func (t *Tx) QueueLen(q fulfill.Queue) (int, error) {
	if _, _, err := t.queue(q); err != nil {
		return 0, err
	}
	return int(getUint(t.b(bucketCounts), queueCount(q))), nil
}

// Queued implements fulfill.Tx.
func (t *Tx) Queued(q fulfill.Queue) ([]string, error) {
	_, index, err := t.queue(q)
	if err != nil {
		return nil, err
	}
	var ids []string
	err = index.ForEach(func(k, _ []byte) error {
		ids = append(ids, string(k))
		return nil
	})
	return ids, err
}
