package pgstore

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store/ledgerindex"
)

// Every write of a session, event delivery or PaymentIntent status writes
// its row with its place in the two indexes (failed_at, settled_at) and
// moves the counters, in the same transaction; ledgerindex says what each
// record counts for, as it does for boltstore.

// ledgerTable is where one kind of record lives. Its kind letter orders
// records that settled at the same instant, as boltstore's keys do.
type ledgerTable struct {
	name   string
	letter string
}

var ledgerTables = map[string]ledgerTable{
	fulfill.KindSession:       {"fulfilld_sessions", "s"},
	fulfill.KindDelivery:      {"fulfilld_deliveries", "n"},
	fulfill.KindPaymentIntent: {"fulfilld_payment_intents", "p"},
}

var letterKind = map[string]string{"s": fulfill.KindSession, "n": fulfill.KindDelivery, "p": fulfill.KindPaymentIntent}

// readRecord reads a record's JSON; ok is false when there is none.
func (t *Tx) readRecord(kind, id string, v any) (ok bool, err error) {
	var raw []byte
	if ok, err := t.get(`SELECT body FROM `+ledgerTables[kind].name+` WHERE id = $1`, []any{id}, &raw); err != nil || !ok {
		return false, err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, err
	}
	return true, nil
}

// writeRecord writes a record (cur says what it counts for) that was old
// (had says whether it existed), and moves the counters.
func (t *Tx) writeRecord(kind, id string, v any, old ledgerindex.Indexed, had bool, cur ledgerindex.Indexed) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var failedAt, settledAt *int64
	if cur.Failed {
		failedAt = new(nanos(cur.At))
	}
	if cur.Settled {
		settledAt = new(nanos(cur.At))
	}
	if _, err := t.exec(`INSERT INTO `+ledgerTables[kind].name+` (id, body, failed_at, settled_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (id) DO UPDATE SET body = excluded.body, failed_at = excluded.failed_at, settled_at = excluded.settled_at`,
		id, raw, failedAt, settledAt); err != nil {
		return err
	}
	for name, n := range ledgerindex.Deltas(old, had, cur) {
		t.count(name, n)
	}
	return nil
}

// deleteRecord removes a record that counted for old.
func (t *Tx) deleteRecord(kind, id string, old ledgerindex.Indexed) error {
	if _, err := t.exec(`DELETE FROM `+ledgerTables[kind].name+` WHERE id = $1`, id); err != nil {
		return err
	}
	for name, n := range ledgerindex.Deltas(old, true, ledgerindex.Indexed{}) {
		t.count(name, n)
	}
	return nil
}

// Session implements fulfill.Tx.
func (t *Tx) Session(id string) (fulfill.Record, bool, error) {
	var r fulfill.Record
	ok, err := t.readRecord(fulfill.KindSession, id, &r)
	if err != nil {
		return fulfill.Record{}, false, fmt.Errorf("read record of %s: %w", id, err)
	}
	return r, ok, nil
}

// PutSession implements fulfill.Tx. A pruned record keeps only what a
// tombstone keeps (ledgerindex.Tombstone), as in boltstore.
func (t *Tx) PutSession(r fulfill.Record) error {
	old, had, err := t.Session(r.SessionID)
	if err != nil {
		return err
	}
	if r.Pruned {
		r = ledgerindex.Tombstone(r)
	}
	if err := t.writeRecord(fulfill.KindSession, r.SessionID, r, ledgerindex.Session(old), had, ledgerindex.Session(r)); err != nil {
		return fmt.Errorf("write record of %s: %w", r.SessionID, err)
	}
	return nil
}

// DeleteSession implements fulfill.Tx.
func (t *Tx) DeleteSession(id string) error {
	old, had, err := t.Session(id)
	if err != nil || !had {
		return err
	}
	if err := t.deleteRecord(fulfill.KindSession, id, ledgerindex.Session(old)); err != nil {
		return fmt.Errorf("delete record of %s: %w", id, err)
	}
	return nil
}

// EventDelivery implements fulfill.Tx.
func (t *Tx) EventDelivery(key string) (fulfill.EventDelivery, bool, error) {
	var n fulfill.EventDelivery
	ok, err := t.readRecord(fulfill.KindDelivery, key, &n)
	if err != nil {
		return fulfill.EventDelivery{}, false, fmt.Errorf("read delivery %s: %w", key, err)
	}
	return n, ok, nil
}

// PutEventDelivery implements fulfill.Tx. A record that cannot be read
// counts as absent: writing this one repairs it.
func (t *Tx) PutEventDelivery(n fulfill.EventDelivery) error {
	key, err := ledgerindex.DeliveryKey(n)
	if err != nil {
		return err
	}
	old, had, rerr := t.EventDelivery(key)
	if rerr != nil {
		if t.failed != nil {
			return rerr // not a record that cannot be read: the statement failed
		}
		had = false
	}
	if err := t.writeRecord(fulfill.KindDelivery, key, n, ledgerindex.Delivery(old), had, ledgerindex.Delivery(n)); err != nil {
		return fmt.Errorf("write delivery %s: %w", key, err)
	}
	return nil
}

// DeleteEventDelivery implements fulfill.Tx.
func (t *Tx) DeleteEventDelivery(key string) error {
	old, had, err := t.EventDelivery(key)
	if err != nil || !had {
		return err
	}
	if err := t.deleteRecord(fulfill.KindDelivery, key, ledgerindex.Delivery(old)); err != nil {
		return fmt.Errorf("delete delivery %s: %w", key, err)
	}
	return nil
}

// PaymentIntent implements fulfill.Tx.
func (t *Tx) PaymentIntent(id string) (fulfill.PaymentIntent, bool, error) {
	var pi fulfill.PaymentIntent
	ok, err := t.readRecord(fulfill.KindPaymentIntent, id, &pi)
	if err != nil {
		return fulfill.PaymentIntent{}, false, fmt.Errorf("read payment intent %s: %w", id, err)
	}
	return pi, ok, nil
}

// PutPaymentIntent implements fulfill.Tx. A record that cannot be read is
// replaced.
func (t *Tx) PutPaymentIntent(pi fulfill.PaymentIntent) error {
	old, had, err := t.PaymentIntent(pi.ID)
	if err != nil {
		if t.failed != nil {
			return err
		}
		had = false
	}
	if err := t.writeRecord(fulfill.KindPaymentIntent, pi.ID, pi, ledgerindex.Intent(old), had, ledgerindex.Intent(pi)); err != nil {
		return fmt.Errorf("write payment intent %s: %w", pi.ID, err)
	}
	return nil
}

// DeletePaymentIntent implements fulfill.Tx.
func (t *Tx) DeletePaymentIntent(id string) error {
	old, had, err := t.PaymentIntent(id)
	if err != nil || !had {
		return err
	}
	if err := t.deleteRecord(fulfill.KindPaymentIntent, id, ledgerindex.Intent(old)); err != nil {
		return fmt.Errorf("delete payment intent %s: %w", id, err)
	}
	return nil
}

// Counts implements fulfill.Tx: kept counters, not a scan.
func (t *Tx) Counts() (fulfill.Counts, error) {
	if err := t.flush(); err != nil {
		return fulfill.Counts{}, err
	}
	c := ledgerindex.NewCounts()
	err := t.each(`SELECT name, GREATEST(sum(n), 0)::bigint FROM fulfilld_counters GROUP BY name`, nil, func(r pgx.Rows) error {
		var name string
		var n int64
		if err := r.Scan(&name, &n); err != nil {
			return err
		}
		ledgerindex.Fold(&c, name, int(n))
		return nil
	})
	return c, err
}

// Failed implements fulfill.Tx, from the dead-letter index: newest first.
func (t *Tx) Failed(kind string, limit int) ([]string, error) {
	tbl, ok := ledgerTables[kind]
	if !ok {
		return nil, nil
	}
	lim := any(nil) // LIMIT NULL: all
	if limit > 0 {
		lim = limit
	}
	return t.ids(`SELECT id FROM `+tbl.name+` WHERE failed_at IS NOT NULL ORDER BY failed_at DESC, id DESC LIMIT $1`, lim)
}

// SettledBefore implements fulfill.Tx, from the settled index: oldest
// first, across the three kinds of record.
func (t *Tx) SettledBefore(before time.Time, limit int) ([]fulfill.Settled, bool, error) {
	limit = max(limit, 0)
	var out []fulfill.Settled
	more := false
	err := t.each(`
		SELECT settled_at, 'n' AS kind, id FROM fulfilld_deliveries WHERE settled_at < $1
		UNION ALL SELECT settled_at, 'p', id FROM fulfilld_payment_intents WHERE settled_at < $1
		UNION ALL SELECT settled_at, 's', id FROM fulfilld_sessions WHERE settled_at < $1
		ORDER BY 1, 2, 3 LIMIT $2`, []any{nanos(before), limit + 1}, func(r pgx.Rows) error {
		var at int64
		var letter, id string
		if err := r.Scan(&at, &letter, &id); err != nil {
			return err
		}
		if len(out) >= limit {
			more = true
			return nil
		}
		out = append(out, fulfill.Settled{Kind: letterKind[letter], ID: id, At: time.Unix(0, at)})
		return nil
	})
	return out, more, err
}

// DropSettled implements fulfill.Tx.
func (t *Tx) DropSettled(s fulfill.Settled) error {
	tbl, ok := ledgerTables[s.Kind]
	if !ok {
		return fmt.Errorf("no record kind %q", s.Kind)
	}
	_, err := t.exec(`UPDATE `+tbl.name+` SET settled_at = NULL WHERE id = $1 AND settled_at = $2`, s.ID, nanos(s.At))
	return err
}
