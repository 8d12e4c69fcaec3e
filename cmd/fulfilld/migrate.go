package main

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/store/transfer"
)

// migrateStoreCommand is `fulfilld migrate-store`: the bbolt file at
// store.path moved into the PostgreSQL database store.postgres names.
//
// The target is store.postgres, not a flag of its own: it is the database
// the daemons open once the move is done, so the two cannot disagree, and
// a DSN on the command line would put its password in `ps` and the shell's
// history (PGPASSWORD, PGPASSFILE or FULFILLD_STORE_POSTGRES keep it out).
//
// There is no --force: a target that holds state has a history of its own
// (a cursor, fulfilled sessions, counters) that a copy would mix with the
// file's, and mixing them could let a session be fulfilled twice or lose
// one. The refusal says how to start clean instead.
func (a *app) migrateStoreCommand() *cobra.Command {
	var batch int
	cmd := &cobra.Command{
		Use:   "migrate-store",
		Short: "Move the bbolt store (store.path) into PostgreSQL (store.postgres); stop the daemon first",
		Long: "migrate-store copies everything the bbolt file at store.path holds — sessions (tombstones included), event\n" +
			"deliveries, PaymentIntents, both queues with their due times, the seen events, the cursor, the last poll\n" +
			"and sweep, event counts, bad events, API usage and payments per day — into the empty PostgreSQL database\n" +
			"store.postgres names, then checks that every kept count is equal on both sides. The bbolt file is only\n" +
			"read: keep it as a backup.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.setup(nil); err != nil {
				return err
			}
			return a.migrateStore(batch)
		},
	}
	cmd.Flags().IntVar(&batch, "batch", transfer.DefaultBatch, "items written per PostgreSQL transaction")
	return cmd
}

func (a *app) migrateStore(batch int) error {
	if batch < 1 {
		return usagef("--batch %d: want at least 1", batch)
	}
	if !a.shared() {
		return usagef("store.postgres is not set: migrate-store moves store.path into the PostgreSQL database it names " +
			"(set it in the config file or FULFILLD_STORE_POSTGRES; keep the password in PGPASSWORD or PGPASSFILE)")
	}
	path := a.cfg.Store.Path
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return usagef("store.path: %s does not exist: there is nothing to move", path)
	}
	// Read-only: the file is the operator's backup and stays as it was.
	src, err := boltstore.Open(path, true, time.Second)
	if errors.Is(err, boltstore.ErrHeld) {
		return usagef("store.path: %v: stop `fulfilld run` (systemctl stop fulfilld) before moving the store, "+
			"so that nothing it does after the copy is lost", err)
	}
	if errors.Is(err, boltstore.ErrFormat) {
		return &usageError{fmt.Errorf("store.path: %w", err)}
	}
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := a.openPostgres()
	if err != nil {
		return err
	}
	defer dst.Close()
	target := "PostgreSQL"
	if s, ok := dst.(fmt.Stringer); ok {
		target = s.String() // names server, database and user; never the password
	}
	fmt.Fprintf(a.stdout, "moving %s into %s\n", path, target)

	start := time.Now()
	last := start
	moved, err := transfer.Copy(dst, src, batch, func(done int) {
		if time.Since(last) >= 5*time.Second {
			last = time.Now()
			fmt.Fprintf(a.stderr, "migrate-store: %d items written\n", done)
		}
	})
	if errors.Is(err, transfer.ErrNotEmpty) {
		return usagef("store.postgres: %v. migrate-store only fills an empty database, so that two histories are never mixed: "+
			"create a new one (createdb fulfilld) and point store.postgres at it; if this one holds only an earlier, "+
			"interrupted migrate-store, drop it and create it again", err)
	}
	if err != nil {
		return fmt.Errorf("migrate-store: %w (the database now holds part of the store: drop it and create it again before the next try; %s is unchanged)", err, path)
	}
	fmt.Fprintf(a.stdout, "moved in %s:\n", time.Since(start).Round(time.Millisecond))
	for _, kind := range slices.Sorted(maps.Keys(moved)) {
		fmt.Fprintf(a.stdout, "  %-16s %d\n", kind, moved[kind])
	}

	now := time.Now()
	var want, got transfer.Figures
	if err := src.View(func(tx store.Tx) (err error) { want, err = transfer.Tally(tx, now); return err }); err != nil {
		return fmt.Errorf("migrate-store: verify: read %s: %w", path, err)
	}
	if err := dst.View(func(tx store.Tx) (err error) { got, err = transfer.Tally(tx, now); return err }); err != nil {
		return fmt.Errorf("migrate-store: verify: read the database: %w", err)
	}
	if diff := transfer.Diff(want, got); len(diff) > 0 {
		fmt.Fprintf(a.stdout, "verification FAILED: %d figures differ:\n  %s\n", len(diff), strings.Join(diff, "\n  "))
		return &exitError{code: exitFailure, err: fmt.Errorf("migrate-store: the database does not hold what %s holds: "+
			"do not start fulfilld on it; keep running on %s and report this", path, path)}
	}
	fmt.Fprintf(a.stdout, "verified: %d counts and %d kept values equal on both sides\n", len(want.Counts), len(want.Values))
	fmt.Fprintf(a.stdout, "%s was only read and is unchanged: keep it as a backup, and start fulfilld with store.postgres set. "+
		"Do not run fulfilld on the file again: it would not see what happens in PostgreSQL from now on.\n", path)
	return nil
}
