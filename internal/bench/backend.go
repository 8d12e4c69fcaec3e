package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/store/pgstore"
)

// backend is where a phase keeps its state: a fresh bbolt file, or a fresh
// PostgreSQL database shared by Instances daemons (each its own pool, as
// separate processes would have).
type backend struct {
	Name      string
	Instances int
	path      string // bbolt: the file
	server    string // PostgreSQL: the server's DSN; a database is made per phase
}

func (b backend) shared() bool { return b.server != "" }

// opened is a backend's stores for one phase, each timed.
type opened struct {
	stores []*timedStore
	pg     []*pgstore.Store
	close  func()
}

// conflicts sums the serialization conflicts of the PostgreSQL pools.
func (o *opened) conflicts() int64 {
	var n int64
	for _, s := range o.pg {
		n += s.Conflicts()
	}
	return n
}

// storeTime is the time spent in transactions and how many ran, summed over
// the instances.
func (o *opened) storeTime() (time.Duration, int64) {
	var d time.Duration
	var n int64
	for _, s := range o.stores {
		d += time.Duration(s.nanos.Load())
		n += s.txs.Load()
	}
	return d, n
}

func (b backend) open(ctx context.Context, phase string) (*opened, error) {
	if !b.shared() {
		for _, p := range []string{b.path, b.path + ".lock"} {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, err
			}
		}
		// The daemon's own store setup, so its options are what is measured.
		db, err := boltstore.Open(b.path, false, time.Second)
		if err != nil {
			return nil, err
		}
		return &opened{stores: []*timedStore{{Store: db}}, close: func() { db.Close() }}, nil
	}
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, err
	}
	name := "fulfilld_bench_" + phase + "_" + hex.EncodeToString(r[:])
	if err := adminExec(ctx, b.server, `CREATE DATABASE `+name); err != nil {
		return nil, fmt.Errorf("create a database for the benchmark (the role needs CREATEDB): %w", err)
	}
	o := &opened{}
	o.close = func() {
		for _, s := range o.pg {
			s.Close()
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		_ = adminExec(dctx, b.server, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`)
	}
	dsn := pgstore.WithDatabase(b.server, name)
	for range b.Instances {
		s, err := pgstore.Open(ctx, dsn, pgstore.Options{})
		if err != nil {
			o.close()
			return nil, err
		}
		o.pg = append(o.pg, s)
		o.stores = append(o.stores, &timedStore{Store: s})
	}
	return o, nil
}

func adminExec(ctx context.Context, server, sql string) error {
	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", pgstore.Redact(server), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// timedStore sums the wall time spent in the store's transactions (retries
// and waits for locks included): what the daemon spends on its store.
type timedStore struct {
	store.Store
	nanos, txs atomic.Int64
}

func (s *timedStore) View(fn func(store.Tx) error) error {
	defer s.took(time.Now())
	return s.Store.View(fn)
}

func (s *timedStore) Update(fn func(store.Tx) error) error {
	defer s.took(time.Now())
	return s.Store.Update(fn)
}

// Batch is the store's, timed, for a store that has it (bbolt): the
// fulfiller's writes share commits as the daemon's do.
func (s *timedStore) Batch(fn func(store.Tx) error) error {
	b, ok := s.Store.(store.Batcher)
	if !ok {
		return s.Update(fn)
	}
	defer s.took(time.Now())
	return b.Batch(fn)
}

// grouped reports whether the store commits batches of writes (bbolt).
func (s *timedStore) grouped() bool {
	_, ok := s.Store.(store.Batcher)
	return ok
}

func (s *timedStore) took(start time.Time) {
	s.nanos.Add(int64(time.Since(start)))
	s.txs.Add(1)
}
