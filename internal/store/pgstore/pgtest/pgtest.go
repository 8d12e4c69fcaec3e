// Package pgtest runs tests against a real PostgreSQL: the server that
// FULFILLD_TEST_POSTGRES names (a role allowed to CREATE DATABASE), a
// fresh database for each test, dropped when it ends, so tests run in
// parallel and leave nothing behind. Without the variable they skip, and
// Main says so where a developer sees it. `.ci/run` starts a throwaway
// cluster and sets the variable.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fulfilld/fulfilld/internal/store/pgstore"
)

// Env names the variable that holds the server's DSN.
const Env = "FULFILLD_TEST_POSTGRES"

// Skipped is what a test without a server says.
const Skipped = "PostgreSQL tests skipped: " + Env + " is not set. Run .ci/run (it starts a throwaway cluster), " +
	"or set " + Env + "=postgres://user:password@127.0.0.1:5432/postgres (a role allowed to CREATE DATABASE)"

// Main is a TestMain for packages with PostgreSQL tests. `go test ./...`
// shows nothing a passing package prints, so without a server it also
// writes Skipped to the terminal, when there is one: a developer sees it,
// and a CI log (no terminal) is not cluttered — CI sets the variable.
func Main(m *testing.M) {
	if os.Getenv(Env) == "" {
		fmt.Fprintln(os.Stderr, Skipped)
		if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
			fmt.Fprintln(tty, Skipped)
			tty.Close()
		}
	}
	os.Exit(m.Run())
}

// ServerDSN is the server's DSN; without one the test is skipped.
func ServerDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(Env)
	if dsn == "" {
		t.Skip(Skipped)
	}
	return dsn
}

// NewDatabase creates an empty database with a random name on the server
// and returns the DSN that reaches it; the database is dropped when the
// test ends (after the cleanups registered later, such as closing a
// store on it).
func NewDatabase(t testing.TB) string {
	t.Helper()
	server := ServerDSN(t)
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "fulfilld_test_" + hex.EncodeToString(b[:])
	admin := func(sql string) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, server)
		if err != nil {
			return fmt.Errorf("connect to %s: %w", pgstore.Redact(server), err)
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := admin(`CREATE DATABASE ` + name); err != nil {
		t.Fatalf("create a test database: %v", err)
	}
	t.Cleanup(func() {
		// FORCE: a test that failed half-way may have left connections.
		if err := admin(`DROP DATABASE IF EXISTS ` + name + ` WITH (FORCE)`); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	return WithDatabase(server, name)
}

// WithDatabase returns dsn pointed at another database of the same server.
func WithDatabase(dsn, database string) string { return pgstore.WithDatabase(dsn, database) }

// Open opens a store on a fresh database, closed when the test ends.
func Open(t testing.TB) *pgstore.Store {
	t.Helper()
	return OpenDSN(t, NewDatabase(t), pgstore.Options{})
}

// OpenDSN opens another store (another pool: as another process would) on
// the database dsn names, closed when the test ends.
func OpenDSN(t testing.TB, dsn string, opts pgstore.Options) *pgstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := pgstore.Open(ctx, dsn, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
