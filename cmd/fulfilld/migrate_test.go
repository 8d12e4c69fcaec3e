package main

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/store/pgstore"
	"github.com/fulfilld/fulfilld/internal/store/pgstore/pgtest"
)

var errRollback = errors.New("rolled back on purpose")

// TestMigrateStore runs `fulfilld migrate-store` in process: it moves a
// bbolt store into PostgreSQL and verifies it, refuses a second run into
// the same database, a store a daemon holds and a missing store.postgres —
// and no output, on success or refusal, holds the database password.
func TestMigrateStore(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	// The server's own password when it asks for one (CI's cluster does);
	// a server that trusts loopback ignores the one set here.
	password, ok := u.User.Password()
	if !ok || len(password) < 8 {
		password = "Pg5ecretNeverPrinted9"
		u.User = url.UserPassword(u.User.Username(), password)
	}
	dsn := u.String()
	path := filepath.Join(t.TempDir(), "f.db")
	now := time.Now()
	db, err := boltstore.Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx store.Tx) error {
		if _, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: "cs_test_q", Trigger: fulfill.TriggerEvent, EventID: "evt_1", At: now}); err != nil {
			return err
		}
		if _, err := fulfill.End(tx, "cs_test_x", fulfill.StateExpired, "evt_2", now); err != nil {
			return err
		}
		// Two sessions fulfilled long ago and pruned to tombstones.
		for _, id := range []string{"cs_test_old", "cs_test_older"} {
			if err := tx.PutSession(fulfill.Record{SessionID: id, State: fulfill.StateFulfilled, Attempts: 1, Pruned: true,
				Created: now.Add(-200 * 24 * time.Hour), Updated: now.Add(-200 * 24 * time.Hour), FulfilledAt: now.Add(-200 * 24 * time.Hour)}); err != nil {
				return err
			}
		}
		return cursor.Save(tx, cursor.Position{Settled: now.Add(-time.Minute), Tip: now})
	}); err != nil {
		t.Fatal(err)
	}

	run := func(args ...string) (int, string) {
		var stdout, stderr bytes.Buffer
		code := Main(context.Background(), append([]string{"--set", "store.path=" + path}, args...), &stdout, &stderr)
		out := stdout.String() + stderr.String()
		if strings.Contains(out, password) {
			t.Errorf("fulfilld %s printed the database password:\n%s", strings.Join(args, " "), out)
		}
		return code, out
	}
	withPG := []string{"--set", "store.postgres=" + dsn, "migrate-store", "--batch", "2"}

	// The older tombstone where a format 5 file kept it, among the full
	// records.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.Update(func(tx *bbolt.Tx) error {
		v := bytes.Clone(tx.Bucket([]byte("tombstones")).Get([]byte("cs_test_older")))
		if v == nil {
			return errors.New("no tombstone for cs_test_older")
		}
		if err := tx.Bucket([]byte("tombstones")).Delete([]byte("cs_test_older")); err != nil {
			return err
		}
		return tx.Bucket([]byte("sessions")).Put([]byte("cs_test_older"), v)
	}); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	if db, err = boltstore.Open(path, false, time.Second); err != nil {
		t.Fatal(err)
	}

	// A daemon holds the file: refused, nothing moved.
	if code, out := run(withPG...); code != 2 || !strings.Contains(out, "held") || !strings.Contains(out, "stop") {
		t.Errorf("migrate-store while the file is held: exit %d, want 2 and what to do:\n%s", code, out)
	}
	db.Close()

	if code, out := run("migrate-store"); code != 2 || !strings.Contains(out, "store.postgres") {
		t.Errorf("migrate-store without store.postgres: exit %d, want 2 naming store.postgres:\n%s", code, out)
	}

	code, out := run(withPG...)
	if code != 0 {
		t.Fatalf("migrate-store: exit %d:\n%s", code, out)
	}
	for _, want := range []string{"session          4", "queued           1", "cursor           1", "verified", "unchanged", "backup"} {
		if !strings.Contains(out, want) {
			t.Errorf("migrate-store output lacks %q:\n%s", want, out)
		}
	}

	// status on PostgreSQL sees what the file held.
	code, out = run("--set", "store.postgres="+dsn, "status", "--json")
	if code != 0 || !strings.Contains(out, `"expired": 1`) && !strings.Contains(out, `"expired":1`) {
		t.Errorf("status on the database after the move: exit %d, want one expired session:\n%s", code, out)
	}

	// The tombstones, both kinds, came along: those sessions never run
	// again.
	pg := pgtest.OpenDSN(t, dsn, pgstore.Options{})
	if err := pg.Update(func(tx store.Tx) error {
		for _, id := range []string{"cs_test_old", "cs_test_older"} {
			rec, ok, err := tx.Session(id)
			if err != nil || !ok || !rec.Pruned || rec.State != fulfill.StateFulfilled {
				t.Errorf("%s in the database: %+v, %t, %v; want a fulfilled tombstone", id, rec, ok, err)
			}
			queued, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: id, Trigger: fulfill.TriggerEvent, EventID: "evt_again", At: now})
			if err != nil {
				return err
			}
			if queued {
				t.Errorf("%s, fulfilled and pruned, was queued again after the move", id)
			}
		}
		// Roll back whatever a regression queued.
		return errRollback
	}); !errors.Is(err, errRollback) {
		t.Fatal(err)
	}
	pg.Close()

	if code, out := run(withPG...); code != 2 || !strings.Contains(out, "not empty") || !strings.Contains(out, "createdb") {
		t.Errorf("a second migrate-store into the same database: exit %d, want 2 and how to start clean:\n%s", code, out)
	}
}
