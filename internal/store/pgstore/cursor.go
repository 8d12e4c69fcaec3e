package pgstore

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/poller"
)

// maxBadEvents bounds the bad events kept, as boltstore does.
const maxBadEvents = 1000

// The names of fulfilld_kv's values, and the counter of the seen-set's size.
const (
	keyPosition  = "position"
	keyPoll      = "last_poll"
	keyLastSweep = "last_sweep"
	keyMisses    = "webhook_misses"
	countSeen    = "cursor:seen"
)

func (t *Tx) getValue(name string, v any) (bool, error) {
	var raw []byte
	ok, err := t.get(`SELECT value FROM fulfilld_kv WHERE name = $1`, []any{name}, &raw)
	if err != nil || !ok {
		return false, err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("read %s: %w", name, err)
	}
	return true, nil
}

func (t *Tx) putValue(name string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := t.exec(`INSERT INTO fulfilld_kv (name, value) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value`, name, raw); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

// Position implements cursor.Tx.
func (t *Tx) Position() (cursor.Position, error) {
	var p cursor.Position
	_, err := t.getValue(keyPosition, &p)
	return p, err
}

// PutPosition implements cursor.Tx.
func (t *Tx) PutPosition(p cursor.Position) error { return t.putValue(keyPosition, p) }

// LastPoll implements cursor.Tx.
func (t *Tx) LastPoll() (cursor.Poll, error) {
	var p cursor.Poll
	_, err := t.getValue(keyPoll, &p)
	return p, err
}

// PutLastPoll implements cursor.Tx.
func (t *Tx) PutLastPoll(p cursor.Poll) error { return t.putValue(keyPoll, p) }

// Seen implements cursor.Tx. The table is keyed by event id alone.
func (t *Tx) Seen(id string, _ time.Time) (bool, error) {
	var one int
	return t.get(`SELECT 1 FROM fulfilld_seen WHERE event_id = $1`, []any{id}, &one)
}

// MarkSeen implements cursor.Tx.
func (t *Tx) MarkSeen(id string, created time.Time) error {
	ts := max(created.Unix(), 0)
	n, err := t.exec(`INSERT INTO fulfilld_seen (event_id, created) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING`, id, ts)
	if err != nil {
		return fmt.Errorf("mark event %s seen: %w", id, err)
	}
	if n == 1 {
		t.count(countSeen, 1)
		return nil
	}
	if _, err := t.exec(`UPDATE fulfilld_seen SET created = $2 WHERE event_id = $1 AND created <> $2`, id, ts); err != nil {
		return fmt.Errorf("mark event %s seen: %w", id, err)
	}
	return nil
}

// ForgetSeen implements cursor.Tx.
func (t *Tx) ForgetSeen(before time.Time, limit int) (int, error) {
	if limit <= 0 {
		return 0, nil
	}
	n, err := t.exec(`DELETE FROM fulfilld_seen WHERE event_id IN (
		SELECT event_id FROM fulfilld_seen WHERE created < $1 ORDER BY created, event_id LIMIT $2)`,
		max(before.Unix(), 0), limit)
	if err != nil {
		return 0, fmt.Errorf("forget seen events: %w", err)
	}
	t.count(countSeen, -n)
	return int(n), nil
}

// SeenCount implements cursor.Tx: a kept counter.
func (t *Tx) SeenCount() (int, error) {
	n, err := t.counter(countSeen)
	return int(n), err
}

// CountEvents implements cursor.Tx.
func (t *Tx) CountEvents(counts map[[2]string]int) error {
	var types, outcomes []string
	var ns []int64
	for k, n := range counts {
		if n != 0 {
			types, outcomes, ns = append(types, k[0]), append(outcomes, k[1]), append(ns, int64(n))
		}
	}
	if len(ns) == 0 {
		return nil
	}
	_, err := t.exec(`INSERT INTO fulfilld_event_stats AS s (type, outcome, slot, n)
		SELECT type, outcome, $4, n FROM unnest($1::text[], $2::text[], $3::bigint[]) AS d(type, outcome, n)
		ORDER BY type, outcome
		ON CONFLICT (type, outcome, slot) DO UPDATE SET n = s.n + excluded.n`,
		types, outcomes, ns, t.slot)
	if err != nil {
		return fmt.Errorf("count events: %w", err)
	}
	return nil
}

// EventCounts implements cursor.Tx.
func (t *Tx) EventCounts() ([]cursor.EventCount, error) {
	out := []cursor.EventCount{}
	err := t.each(`SELECT type, outcome, sum(n)::bigint FROM fulfilld_event_stats GROUP BY type, outcome ORDER BY type, outcome`, nil, func(r pgx.Rows) error {
		var c cursor.EventCount
		var n int64
		if err := r.Scan(&c.Type, &c.Outcome, &n); err != nil {
			return err
		}
		c.Count = uint64(max(n, 0))
		out = append(out, c)
		return nil
	})
	return out, err
}

func badKey(ev cursor.BadEvent) string {
	if ev.ID == "" {
		return fmt.Sprintf("unknown-%d", ev.SeenAt.UnixNano())
	}
	return ev.ID
}

// RecordBad implements cursor.Tx; past maxBadEvents the oldest go.
func (t *Tx) RecordBad(ev cursor.BadEvent) error {
	raw, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	if _, err := t.exec(`INSERT INTO fulfilld_bad_events (id, seen_at, body) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at, body = excluded.body`,
		badKey(ev), ev.SeenAt.UnixNano(), raw); err != nil {
		return fmt.Errorf("record bad event %s: %w", ev.ID, err)
	}
	_, err = t.exec(`DELETE FROM fulfilld_bad_events WHERE id IN (
		SELECT id FROM fulfilld_bad_events ORDER BY seen_at DESC, id OFFSET $1)`, maxBadEvents)
	return err
}

// BadEvents implements cursor.Tx.
func (t *Tx) BadEvents(limit int) ([]cursor.BadEvent, int, error) {
	var total int
	if _, err := t.get(`SELECT count(*) FROM fulfilld_bad_events`, nil, &total); err != nil {
		return nil, 0, err
	}
	var out []cursor.BadEvent
	err := t.each(`SELECT body FROM fulfilld_bad_events ORDER BY seen_at DESC, id LIMIT $1`,
		[]any{int64(min(max(limit, 0), math.MaxInt64))}, func(r pgx.Rows) error {
			var raw []byte
			if err := r.Scan(&raw); err != nil {
				return err
			}
			var ev cursor.BadEvent
			if err := json.Unmarshal(raw, &ev); err != nil {
				return err
			}
			out = append(out, ev)
			return nil
		})
	return out, total, err
}

// LastSweep implements poller.SweepTx.
func (t *Tx) LastSweep() (*poller.Sweep, *poller.WebhookMisses, error) {
	var sw poller.Sweep
	var m poller.WebhookMisses
	okSweep, err := t.getValue(keyLastSweep, &sw)
	if err != nil {
		return nil, nil, err
	}
	okMisses, err := t.getValue(keyMisses, &m)
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
func (t *Tx) PutLastSweep(sw poller.Sweep) error { return t.putValue(keyLastSweep, sw) }

// PutWebhookMisses implements poller.SweepTx.
func (t *Tx) PutWebhookMisses(m poller.WebhookMisses) error { return t.putValue(keyMisses, m) }
