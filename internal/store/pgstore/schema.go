package pgstore

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The schema is migrated by fulfilld itself, with pgx alone: numbered SQL
// files in schema/, applied in order in one transaction that holds an
// advisory lock, with the version kept in fulfilld_schema. PostgreSQL's
// DDL is transactional, so a migration cut off halfway leaves the schema as
// it was (no "dirty" state to repair by hand), and instances that start
// together wait for one another instead of racing.

//go:embed schema/*.sql
var schemaFiles embed.FS

// migration is one numbered file of schema/.
type migration struct {
	version int
	name    string
	sql     string
}

// Schema is the newest schema version this binary knows.
var Schema = len(mustMigrations())

// schemaLock is the advisory lock migrations hold ("fulfilld" in ASCII):
// advisory locks belong to one database, so this blocks only instances on
// this one.
const schemaLock int64 = 0x66756c66696c6c64

func mustMigrations() []migration {
	ms, err := migrations()
	if err != nil {
		panic(err)
	}
	return ms
}

// migrations reads schema/: files named NNNN_what.sql, numbered from 1
// without gaps.
func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(schemaFiles, "schema")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || path.Ext(e.Name()) != ".sql" {
			return nil, fmt.Errorf("schema/%s: not NNNN_name.sql", e.Name())
		}
		raw, err := schemaFiles.ReadFile("schema/" + e.Name())
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(raw)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("schema/%s: version %d, want %d", m.name, m.version, i+1)
		}
	}
	return ms, nil
}

// migrate brings the database to Schema, or refuses one that is newer.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	_, err := migrateTo(ctx, pool, mustMigrations())
	return err
}

// migrateTo applies what of ms the database lacks and reports the version
// it found. Read committed: each statement sees what committed before the
// lock was granted, so a second instance finds the first one's work done.
func migrateTo(ctx context.Context, pool *pgxpool.Pool, ms []migration) (found int, err error) {
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, schemaLock); err != nil {
		return 0, fmt.Errorf("wait for the schema lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS fulfilld_schema (
		only_row bool PRIMARY KEY DEFAULT true CHECK (only_row),
		version  int NOT NULL,
		updated  timestamptz NOT NULL DEFAULT now())`); err != nil {
		return 0, fmt.Errorf("create fulfilld_schema: %w", err)
	}
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM fulfilld_schema`).Scan(&found); err != nil {
		return 0, fmt.Errorf("read the schema version: %w", err)
	}
	if found > len(ms) {
		return found, fmt.Errorf("%w: the database is at schema version %d, this fulfilld knows versions up to %d; "+
			"upgrade fulfilld to the release that migrated it (every instance on this database)", ErrSchemaNewer, found, len(ms))
	}
	if found == len(ms) {
		return found, nil
	}
	for _, m := range ms[found:] {
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return found, fmt.Errorf("migrate the schema to version %d (%s): %w", m.version, m.name, err)
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO fulfilld_schema (version) VALUES ($1)
		ON CONFLICT (only_row) DO UPDATE SET version = excluded.version, updated = now()`, len(ms)); err != nil {
		return found, fmt.Errorf("record schema version %d: %w", len(ms), err)
	}
	return found, tx.Commit(ctx)
}
