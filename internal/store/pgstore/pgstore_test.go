package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/pgstore"
	"github.com/fulfilld/fulfilld/internal/store/pgstore/pgtest"
)

var t0 = time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)

// psql runs one statement on the database dsn names, beside the store.
func psql(t *testing.T, dsn, sql string, dest ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if len(dest) == 0 {
		_, err = conn.Exec(ctx, sql)
	} else {
		err = conn.QueryRow(ctx, sql).Scan(dest...)
	}
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// An empty database gets the whole schema; opening it again changes
// nothing and keeps what was written; instances that start together on an
// empty database wait for one another's migration instead of failing.
func TestSchemaCreatedOnceAndKept(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			s, err := pgstore.Open(context.Background(), dsn, pgstore.Options{})
			if err == nil {
				s.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("instances starting together on an empty database: %v", err)
	}
	var version int
	var updated time.Time
	psql(t, dsn, `SELECT version, updated FROM fulfilld_schema`, &version, &updated)
	if version != pgstore.Schema {
		t.Fatalf("schema version %d after migration, want %d", version, pgstore.Schema)
	}

	s := pgtest.OpenDSN(t, dsn, pgstore.Options{})
	if err := s.Update(func(tx store.Tx) error {
		_, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: "cs_1", Trigger: fulfill.TriggerEvent, At: t0})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = pgtest.OpenDSN(t, dsn, pgstore.Options{})
	var again time.Time
	psql(t, dsn, `SELECT version, updated FROM fulfilld_schema`, &version, &again)
	if version != pgstore.Schema || !again.Equal(updated) {
		t.Errorf("re-open rewrote the schema version: %d at %v, was %d at %v", version, again, pgstore.Schema, updated)
	}
	if err := s.View(func(tx store.Tx) error {
		if _, ok, err := tx.Session("cs_1"); err != nil || !ok {
			t.Errorf("a session written before the re-open is gone (%v)", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A database a newer fulfilld migrated is refused, with both versions and
// what to do.
func TestNewerSchemaRefused(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.OpenDSN(t, dsn, pgstore.Options{}).Close()
	psql(t, dsn, fmt.Sprintf(`UPDATE fulfilld_schema SET version = %d`, pgstore.Schema+1))
	s, err := pgstore.Open(context.Background(), dsn, pgstore.Options{})
	if err == nil {
		s.Close()
		t.Fatal("a newer schema was opened")
	}
	msg := err.Error()
	if !errors.Is(err, pgstore.ErrSchemaNewer) || !strings.Contains(msg, strconv.Itoa(pgstore.Schema+1)) ||
		!strings.Contains(msg, strconv.Itoa(pgstore.Schema)) || !strings.Contains(msg, "upgrade fulfilld") {
		t.Errorf("newer schema refused with %q; want ErrSchemaNewer naming both versions and the upgrade", msg)
	}
	var version int
	psql(t, dsn, `SELECT version FROM fulfilld_schema`, &version)
	if version != pgstore.Schema+1 {
		t.Errorf("the refusal changed the schema version to %d", version)
	}
}

// Two processes (two pools) work the same sessions at once: every session
// is queued once, moves to fulfilled exactly once, and the kept counters,
// queue length and payments per day equal the model.
func TestConcurrentUpdatesFromTwoProcesses(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	stores := []*pgstore.Store{pgtest.OpenDSN(t, dsn, pgstore.Options{}), pgtest.OpenDSN(t, dsn, pgstore.Options{})}
	const sessions, workers = 200, 8
	ids := make([]string, sessions)
	for i := range ids {
		ids[i] = fmt.Sprintf("cs_%03d", i)
	}
	// each runs fn on every id from every store, workers goroutines a store.
	each := func(fn func(s *pgstore.Store, who, id string) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, len(stores)*sessions)
		for n, s := range stores {
			who := fmt.Sprintf("store%d", n)
			work := make(chan string)
			for range workers {
				wg.Go(func() {
					for id := range work {
						if err := fn(s, who, id); err != nil {
							errs <- fmt.Errorf("%s, %s: %w", who, id, err)
						}
					}
				})
			}
			wg.Go(func() {
				defer close(work)
				for i := range ids {
					work <- ids[(i*7+n*101)%sessions] // the stores in different orders
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}

	each(func(s *pgstore.Store, who, id string) error {
		return s.Update(func(tx store.Tx) error {
			if _, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: id, Trigger: fulfill.TriggerEvent, At: t0}); err != nil {
				return err
			}
			return tx.CountEvents(map[[2]string]int{{"checkout.session.completed", "queued"}: 1})
		})
	})
	each(func(s *pgstore.Store, who, id string) error {
		return s.Update(func(tx store.Tx) error {
			rec, ok, err := tx.Session(id)
			if err != nil || !ok || rec.State != fulfill.StatePending {
				return err
			}
			rec.State, rec.FulfilledAt, rec.Updated, rec.Attempts = fulfill.StateFulfilled, t0, t0, rec.Attempts+1
			if err := tx.PutSession(rec); err != nil {
				return err
			}
			if err := tx.Unschedule(fulfill.SessionQueue, id); err != nil {
				return err
			}
			// Who moved it: the sum over the stores must be one per session.
			return tx.CountEvents(map[[2]string]int{{"fulfilled by", who}: 1})
		})
	})

	if err := stores[0].View(func(tx store.Tx) error {
		c, err := tx.Counts()
		if err != nil {
			return err
		}
		if c.Sessions[fulfill.StateFulfilled] != sessions || c.Sessions[fulfill.StatePending] != 0 {
			t.Errorf("counts %v, want %d fulfilled and none pending", c.Sessions, sessions)
		}
		if n, _ := tx.QueueLen(fulfill.SessionQueue); n != 0 {
			t.Errorf("queue length %d, want 0", n)
		}
		fulfilled, attempts := 0, 0
		for _, id := range ids {
			rec, ok, err := tx.Session(id)
			if err != nil || !ok {
				return fmt.Errorf("session %s: %v %w", id, ok, err)
			}
			if rec.State == fulfill.StateFulfilled {
				fulfilled++
			}
			attempts += rec.Attempts
		}
		if fulfilled != sessions || attempts != sessions {
			t.Errorf("records: %d fulfilled with %d attempts, want %d of each", fulfilled, attempts, sessions)
		}
		counts, err := tx.EventCounts()
		if err != nil {
			return err
		}
		moved := 0
		for _, ec := range counts {
			switch ec.Type {
			case "fulfilled by":
				moved += int(ec.Count)
			case "checkout.session.completed":
				if ec.Count != 2*sessions {
					t.Errorf("%d queued events counted, want %d", ec.Count, 2*sessions)
				}
			}
		}
		if moved != sessions {
			t.Errorf("%d transitions to fulfilled, want exactly %d (%+v)", moved, sessions, counts)
		}
		r, err := tx.UsageReport(t0)
		if err != nil || r.Total.Payments != sessions {
			t.Errorf("payments %d (%v), want one per session, %d", r.Total.Payments, err, sessions)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A wrong password fails the connection with an error that names where it
// went and never the password.
func TestConnectErrorHidesThePassword(t *testing.T) {
	server := pgtest.ServerDSN(t)
	cfg, err := pgx.ParseConfig(server)
	if err != nil {
		t.Fatal(err)
	}
	const secret = "not-the-password-9f3b"
	dsn := fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable&connect_timeout=10", cfg.User, secret, cfg.Host, cfg.Port, cfg.Database)
	s, err := pgstore.Open(context.Background(), dsn, pgstore.Options{})
	if err == nil {
		s.Close()
		t.Skip("the server accepted a wrong password (trust authentication): nothing to hide")
	}
	msg := err.Error()
	if strings.Contains(msg, secret) {
		t.Errorf("the connection error shows the password: %s", msg)
	}
	if !strings.Contains(msg, cfg.Host) || !strings.Contains(msg, strconv.Itoa(int(cfg.Port))) || !strings.Contains(msg, cfg.User) {
		t.Errorf("the connection error does not say where it went: %s", msg)
	}
	t.Log(msg)

	// Nor through libpq's PGPASSWORD.
	t.Setenv("PGPASSWORD", secret)
	s, err = pgstore.Open(context.Background(), fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, cfg.Database), pgstore.Options{})
	if err == nil {
		s.Close()
		t.Fatal("connected with a wrong PGPASSWORD")
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("the connection error shows PGPASSWORD: %s", err)
	}
}

// libpq's conventions: a password kept only in a PGPASSFILE connects.
func TestPasswordFromPassfile(t *testing.T) {
	db := pgtest.NewDatabase(t)
	cfg, err := pgx.ParseConfig(db)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Password == "" {
		t.Skip(pgtest.Env + " carries no password to move into a PGPASSFILE")
	}
	passfile := filepath.Join(t.TempDir(), "pgpass")
	line := fmt.Sprintf("%s:%d:%s:%s:%s\n", cfg.Host, cfg.Port, cfg.Database, cfg.User, strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(cfg.Password))
	if err := os.WriteFile(passfile, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGPASSFILE", passfile)
	t.Setenv("PGPASSWORD", "")
	os.Unsetenv("PGPASSWORD")
	dsn := fmt.Sprintf("host=%s port=%d dbname=%s user=%s sslmode=disable", cfg.Host, cfg.Port, cfg.Database, cfg.User)
	s := pgtest.OpenDSN(t, dsn, pgstore.Options{})
	if err := s.View(func(tx store.Tx) error { _, err := tx.Counts(); return err }); err != nil {
		t.Fatal(err)
	}
}

func TestRedact(t *testing.T) {
	for _, c := range []struct{ dsn, want string }{
		{"postgres://fulfilld:s3cret@db.example:5432/fulfilld?sslmode=require", "postgres://fulfilld:xxxxx@db.example:5432/fulfilld?sslmode=require"},
		{"postgresql://fulfilld@db/fulfilld", "postgresql://fulfilld@db/fulfilld"},
		{"postgres://u@h/db?password=s3cret&sslmode=disable", "postgres://u@h/db?password=xxxxx&sslmode=disable"},
		{"postgres://u:s3cret@h:bad-port/db", "postgres://u:xxxxx@h:bad-port/db"},
		{"host=db user=fulfilld password=s3cret dbname=fulfilld", "host=db user=fulfilld password=xxxxx dbname=fulfilld"},
		{"host=db password = 's3 cr\\'et' user=u", "host=db password = xxxxx user=u"},
		{"host=/run/postgresql dbname=fulfilld", "host=/run/postgresql dbname=fulfilld"},
	} {
		got := pgstore.Redact(c.dsn)
		if got != c.want || strings.Contains(got, "s3cret") || strings.Contains(got, "cr\\'et") {
			t.Errorf("Redact(%q) = %q, want %q", c.dsn, got, c.want)
		}
	}
}

// A DSN that does not parse is refused without repeating its password.
func TestBadDSNHidesThePassword(t *testing.T) {
	_, err := pgstore.Open(context.Background(), "postgres://u:s3cret@h:notaport/db", pgstore.Options{})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("a bad DSN was refused with %v", err)
	}
}
