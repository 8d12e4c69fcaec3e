package pgstore

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fulfilld/fulfilld/internal/cluster"
)

// Check that *Tx is also what the instances sharing the store coordinate
// through.
var _ cluster.Tx = (*Tx)(nil)

// Now implements fulfill.Tx and cluster.Tx: the database's clock, the one
// all instances agree on, read once per transaction (clock_timestamp():
// after the writers' lock was taken, not when the transaction began
// waiting for it).
func (t *Tx) Now() (time.Time, error) {
	if !t.now.IsZero() {
		return t.now, nil
	}
	var now time.Time
	if _, err := t.get(`SELECT clock_timestamp()`, nil, &now); err != nil {
		return time.Time{}, fmt.Errorf("read the database's clock: %w", err)
	}
	t.now = now
	return now, nil
}

// Lease implements cluster.Tx.
func (t *Tx) Lease(role string) (cluster.Lease, bool, error) {
	l := cluster.Lease{Role: role}
	var expires int64
	ok, err := t.get(`SELECT holder, term, expires FROM fulfilld_leases WHERE role = $1`, []any{role},
		&l.Holder, &l.Term, &expires)
	if err != nil || !ok {
		return cluster.Lease{}, false, err
	}
	l.Expires = time.Unix(0, expires)
	return l, true, nil
}

// PutLease implements cluster.Tx.
func (t *Tx) PutLease(l cluster.Lease) error {
	_, err := t.exec(`INSERT INTO fulfilld_leases (role, holder, term, expires) VALUES ($1, $2, $3, $4)
		ON CONFLICT (role) DO UPDATE SET holder = excluded.holder, term = excluded.term, expires = excluded.expires`,
		l.Role, l.Holder, l.Term, l.Expires.UnixNano())
	if err != nil {
		return fmt.Errorf("write the %s lease: %w", l.Role, err)
	}
	return nil
}

// Instances implements cluster.Tx.
func (t *Tx) Instances() ([]cluster.Instance, error) {
	var out []cluster.Instance
	err := t.each(`SELECT body FROM fulfilld_instances ORDER BY id`, nil, func(r pgx.Rows) error {
		var raw []byte
		if err := r.Scan(&raw); err != nil {
			return err
		}
		var in cluster.Instance
		if err := json.Unmarshal(raw, &in); err != nil {
			return fmt.Errorf("read an instance: %w", err)
		}
		out = append(out, in)
		return nil
	})
	return out, err
}

// PutInstance implements cluster.Tx.
func (t *Tx) PutInstance(in cluster.Instance) error {
	raw, err := json.Marshal(in)
	if err != nil {
		return err
	}
	if _, err := t.exec(`INSERT INTO fulfilld_instances (id, body) VALUES ($1, $2)
		ON CONFLICT (id) DO UPDATE SET body = excluded.body`, in.ID, raw); err != nil {
		return fmt.Errorf("write instance %s: %w", in.ID, err)
	}
	return nil
}

// DeleteInstance implements cluster.Tx.
func (t *Tx) DeleteInstance(id string) error {
	_, err := t.exec(`DELETE FROM fulfilld_instances WHERE id = $1`, id)
	return err
}

// Mark implements cluster.Tx.
func (t *Tx) Mark(name string) (time.Time, bool, error) {
	var at int64
	ok, err := t.get(`SELECT at FROM fulfilld_marks WHERE name = $1`, []any{name}, &at)
	if err != nil || !ok {
		return time.Time{}, false, err
	}
	return time.Unix(0, at), true, nil
}

// PutMark implements cluster.Tx.
func (t *Tx) PutMark(name string, at time.Time) error {
	_, err := t.exec(`INSERT INTO fulfilld_marks (name, at) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET at = excluded.at`, name, at.UnixNano())
	return err
}

// DeleteMark implements cluster.Tx.
func (t *Tx) DeleteMark(name string) error {
	_, err := t.exec(`DELETE FROM fulfilld_marks WHERE name = $1`, name)
	return err
}
