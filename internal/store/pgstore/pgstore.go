// Package pgstore is fulfilld's store in PostgreSQL (store.postgres), for
// any number of instances on one database. It implements the transaction
// interfaces that cursor, fulfill, poller and stripeapi declare
// (internal/store.Tx is all of them) with boltstore's semantics, and owns
// its schema: the tables, how records are encoded, the counters and indexes
// kept beside them, and the migrations that create and upgrade them.
//
// Every Update holds one database-wide lock, the writers' (a transaction
// advisory lock, taken as its first statement), so the writers of every
// instance take turns as bbolt's writers do in one process: each sees what
// the one before it committed (READ COMMITTED, a fresh snapshot per
// statement after the lock), none can fail to serialize against another,
// and the ledger's read-then-write rules hold across instances. A first
// design ran writers side by side in SERIALIZABLE transactions and re-ran
// those PostgreSQL failed; under a backfill with two instances, page
// commits lost to each other (and to the predicate locks of whole index
// pages) thirty times in a row. Transactions are a few milliseconds; the
// actions, which take seconds, run outside them. A writer whose process
// freezes mid-transaction would hold every other back: the server ends such
// a session after idleInTx, releasing the lock. View is a read-only
// REPEATABLE READ snapshot and takes no lock. Should PostgreSQL still
// refuse a transaction (SQLSTATE 40001, or a deadlock, 40P01), it is re-run
// after a short jittered pause, a bounded number of times — which is why fn
// may have no effect outside the store.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fulfilld/fulfilld/internal/store"
)

// Sentinel errors.
var (
	// ErrSchemaNewer means the database was migrated by a newer fulfilld
	// than this one: it may hold what this binary would misread or destroy.
	ErrSchemaNewer = errors.New("database schema is newer than this fulfilld")
	// ErrConflict means an Update kept failing to serialize against other
	// transactions, past Options.MaxTries.
	ErrConflict = errors.New("transaction kept conflicting with others")
)

// Options tune an open store; the zero value is the default.
type Options struct {
	// MaxConns bounds the pool's connections (0: pgxpool's default, the
	// larger of 4 and the number of CPUs).
	MaxConns int32
	// MaxTries bounds how often an Update runs when it conflicts with
	// other transactions (0: 30). Most conflicts are PostgreSQL's
	// predicate locks covering a whole index page of a small table: a try
	// costs milliseconds, and giving up fails a write the daemon must then
	// redo itself.
	MaxTries int
	// TxTimeout bounds each try of a transaction, so a lost connection or
	// a lock held by a stuck peer fails it instead of hanging (0: 1m).
	TxTimeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.MaxTries <= 0 {
		o.MaxTries = 30
	}
	if o.TxTimeout <= 0 {
		o.TxTimeout = time.Minute
	}
	return o
}

// Store is an open PostgreSQL store: a pool of connections.
type Store struct {
	pool   *pgxpool.Pool
	opts   Options
	dest   destination
	ctx    context.Context // ends at Close: View and Update without a context use it
	cancel context.CancelFunc
	// conflicts counts the tries that failed to serialize and ran again.
	conflicts atomic.Int64
	// writer lets one Update of this process at a time wait for (and
	// hold) the writers' lock: they would take turns there anyway, and
	// an instance cut off from the database then leaves at most one
	// session behind that the server must time out before the others
	// write again, not one per pooled connection.
	writer chan struct{}
}

// Conflicts is how many tries of transactions failed to serialize against
// others (and ran again, or gave up) since the store was opened.
func (s *Store) Conflicts() int64 { return s.conflicts.Load() }

// Open connects to the database dsn names (a URL or libpq's key=value
// form; PGHOST, PGPASSWORD, PGPASSFILE, PGSSLMODE… fill in what it leaves
// out, as for psql), creates or upgrades the schema, and refuses one that
// a newer fulfilld wrote (ErrSchemaNewer). Errors name the server, the
// database and the user, never the password.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres connection string %s: %w", Redact(dsn), scrub(err, secretsOf(dsn)...))
	}
	opts = opts.withDefaults()
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	cfg.AfterConnect = prepareConn
	dest := destinationOf(cfg.ConnConfig)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, dest.wrap("open store on", err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, dest.wrap("open store on", err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	return &Store{pool: pool, opts: opts, dest: dest, ctx: sctx, cancel: cancel, writer: make(chan struct{}, 1)}, nil
}

// Close ends transactions still running and closes the pool.
func (s *Store) Close() error {
	s.cancel()
	s.pool.Close()
	return nil
}

// String names the database without its password, for logs.
func (s *Store) String() string { return s.dest.String() }

// View runs fn in a read-only transaction that sees one snapshot.
func (s *Store) View(fn func(store.Tx) error) error { return s.ViewContext(s.ctx, fn) }

// Update runs fn in one transaction that an error rolls back, holding the
// writers' lock (see the package comment).
func (s *Store) Update(fn func(store.Tx) error) error { return s.UpdateContext(s.ctx, fn) }

// ViewContext is View bounded by ctx.
func (s *Store) ViewContext(ctx context.Context, fn func(store.Tx) error) error {
	return s.run(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
}

// UpdateContext is Update bounded by ctx.
func (s *Store) UpdateContext(ctx context.Context, fn func(store.Tx) error) error {
	select {
	case s.writer <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.writer }()
	return s.run(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, fn)
}

func (s *Store) run(ctx context.Context, opts pgx.TxOptions, fn func(store.Tx) error) error {
	for try := 1; ; try++ {
		err := s.once(ctx, opts, fn)
		if err == nil || !retryable(err) {
			return err
		}
		s.conflicts.Add(1)
		if try >= s.opts.MaxTries {
			return fmt.Errorf("%w after %d tries: %w", ErrConflict, try, err)
		}
		// Full jitter over a doubling ceiling: two processes that
		// collided do not collide again in lockstep.
		ceiling := min(2*time.Millisecond<<(try-1), 100*time.Millisecond)
		pause := time.NewTimer(rand.N(ceiling) + time.Millisecond)
		select {
		case <-ctx.Done():
			pause.Stop()
			return fmt.Errorf("%w (then %w)", err, ctx.Err())
		case <-pause.C:
		}
	}
}

// once is one try of a transaction.
func (s *Store) once(ctx context.Context, opts pgx.TxOptions, fn func(store.Tx) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.TxTimeout)
	defer cancel()
	ptx, err := s.pool.BeginTx(ctx, opts)
	if err != nil {
		return s.dest.wrap("begin a transaction on", err)
	}
	// A panic in fn, or an error, rolls back; after a commit this does
	// nothing.
	defer ptx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	if opts.AccessMode != pgx.ReadOnly {
		if _, err := ptx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, writerLock); err != nil {
			return s.dest.wrap("wait for the writers' lock on", err)
		}
	}
	slot, ok := ptx.Conn().PgConn().CustomData()[slotKey].(int32)
	if !ok {
		return fmt.Errorf("a connection without a slot for its sums")
	}
	t := &Tx{ctx: ctx, tx: ptx, slot: slot}
	ferr := fn(t)
	switch {
	case t.failed != nil && retryable(t.failed):
		// A statement lost a conflict; whatever fn decided after it was
		// decided on an aborted transaction. Run it again.
		return t.failed
	case ferr != nil:
		return ferr
	case t.failed != nil:
		// fn went on past a failed statement; PostgreSQL will not commit
		// what followed it, and neither will we.
		return fmt.Errorf("a statement of the transaction failed: %w", t.failed)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if err := ptx.Commit(ctx); err != nil {
		return s.dest.wrap("commit to", err)
	}
	return nil
}

// retryable reports whether err is PostgreSQL refusing a transaction for
// another's sake: running it again may well succeed.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	return pgErr.Code == "40001" || pgErr.Code == "40P01"
}

// Check that *Tx is every user's transaction.
var _ store.Tx = (*Tx)(nil)

// Tx is one transaction. Its methods implement store.Tx: cursor.Tx,
// fulfill.Tx, poller.SweepTx and stripeapi.UsageTx. Each is a few
// statements; adding one is adding a method here and, if it needs a table,
// a numbered file in schema/.
type Tx struct {
	ctx context.Context
	tx  pgx.Tx
	// slot is the connection's slot: the rows of the sums it adds to.
	slot int32
	// failed is the first statement's error: PostgreSQL ignores every
	// statement after it until the transaction ends.
	failed error
	// pending is what the counters move by in this transaction. They are
	// written together at the end, in name order, so that transactions
	// hold the busiest rows for the shortest time and never lock them in
	// opposite orders; a read of a counter writes them first.
	pending map[string]int64
	// now is the database's clock, read once per transaction.
	now time.Time
}

func (t *Tx) note(err error) error {
	if err != nil && t.failed == nil && !errors.Is(err, pgx.ErrNoRows) {
		t.failed = err
	}
	return err
}

// exec runs a statement and says how many rows it touched.
func (t *Tx) exec(sql string, args ...any) (int64, error) {
	tag, err := t.tx.Exec(t.ctx, sql, args...)
	if t.note(err) != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// get scans one row; ok is false when there is none.
func (t *Tx) get(sql string, args []any, dest ...any) (ok bool, err error) {
	err = t.note(t.tx.QueryRow(t.ctx, sql, args...).Scan(dest...))
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// each runs fn on every row of a query.
func (t *Tx) each(sql string, args []any, fn func(pgx.Rows) error) error {
	rows, err := t.tx.Query(t.ctx, sql, args...)
	if t.note(err) != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return t.note(rows.Err())
}

// ids runs a query of one text column and returns it.
func (t *Tx) ids(sql string, args ...any) ([]string, error) {
	var ids []string
	err := t.each(sql, args, func(r pgx.Rows) error {
		var id string
		if err := r.Scan(&id); err != nil {
			return err
		}
		ids = append(ids, id)
		return nil
	})
	return ids, err
}

// count moves a kept counter by delta when the transaction commits.
func (t *Tx) count(name string, delta int64) {
	if delta == 0 {
		return
	}
	if t.pending == nil {
		t.pending = map[string]int64{}
	}
	t.pending[name] += delta
}

// flush writes the pending counter moves to the connection's slot.
func (t *Tx) flush() error {
	names := make([]string, 0, len(t.pending))
	for name, n := range t.pending {
		if n != 0 {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return nil
	}
	slices.Sort(names)
	deltas := make([]int64, len(names))
	for i, name := range names {
		deltas[i] = t.pending[name]
	}
	_, err := t.exec(`INSERT INTO fulfilld_counters AS c (name, slot, n)
		SELECT name, $3, delta FROM unnest($1::text[], $2::bigint[]) AS d(name, delta) ORDER BY name
		ON CONFLICT (name, slot) DO UPDATE SET n = c.n + excluded.n`, names, deltas, t.slot)
	if err != nil {
		return fmt.Errorf("write counters: %w", err)
	}
	clear(t.pending)
	return nil
}

// counter reads one kept counter, with this transaction's moves.
func (t *Tx) counter(name string) (int64, error) {
	if err := t.flush(); err != nil {
		return 0, err
	}
	var n int64
	_, err := t.get(`SELECT coalesce(sum(n), 0)::bigint FROM fulfilld_counters WHERE name = $1`, []any{name}, &n)
	return max(n, 0), err
}

// slotKey is where a connection keeps its slot (see schema/0001_init.sql).
const slotKey = "fulfilld.slot"

// maxSlots bounds the slots: far more than connections a database allows
// by default (100).
const maxSlots = 4096

// slotLock is the advisory lock class of slots ("fulf"); a slot is held by
// its connection until it closes, or dies with it.
const slotLock int32 = 0x66756c66

// writerLock is the advisory lock every Update holds ("fulfillw").
const writerLock int64 = 0x66756c66696c6c77

// idleInTx is how long the server lets a session sit idle inside a
// transaction before it ends the session (and its locks): fulfilld's
// transactions never wait on anything but the database.
const idleInTx = "5s"

// prepareConn sets a new connection up: the idle-in-transaction bound,
// and a slot for its sums.
func prepareConn(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, "SET idle_in_transaction_session_timeout = '"+idleInTx+"'"); err != nil {
		return fmt.Errorf("set idle_in_transaction_session_timeout: %w", err)
	}
	return takeSlot(ctx, conn)
}

// takeSlot gives a new connection the lowest slot no other live connection
// holds.
func takeSlot(ctx context.Context, conn *pgx.Conn) error {
	for slot := range int32(maxSlots) {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, slotLock, slot).Scan(&ok); err != nil {
			return fmt.Errorf("take a slot: %w", err)
		}
		if ok {
			conn.PgConn().CustomData()[slotKey] = slot
			return nil
		}
	}
	return fmt.Errorf("take a slot: all %d are held by other connections", maxSlots)
}

// nanos is a time as the indexes and queues keep it: unix nanoseconds,
// never before 1970, as boltstore's keys.
func nanos(t time.Time) int64 { return max(t.UnixNano(), 0) }
