// Package store opens fulfilld's bbolt file with every bucket the other
// packages own, so the daemon, the commands and the tests agree on what a
// store holds.
package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

// Sentinel errors.
var (
	// ErrHeld means another process has the store open (bbolt's file lock).
	ErrHeld = errors.New("held by another process")
	// ErrFormat means the store's on-disk format is not one this binary
	// can use as it is.
	ErrFormat = errors.New("store format")
)

// Format is the on-disk format this binary writes. Each version names what
// it added; Open upgrades an older store in place, in one transaction.
//
//	1: buckets of records, queues and the cursor (no format key yet)
//	2: counters and time indexes kept beside the records (fulfill.Recount),
//	   the seen-set's size kept (cursor.CountSeen)
const Format = 2

var (
	bucketMeta = []byte("meta")
	keyFormat  = []byte("format")
)

// Init creates every bucket; it is a no-op on a store that has them.
func Init(tx *bbolt.Tx) error {
	if _, err := tx.CreateBucketIfNotExists(bucketMeta); err != nil {
		return err
	}
	return errors.Join(cursor.Init(tx), fulfill.Init(tx), stripeapi.InitUsage(tx), poller.InitReconcile(tx))
}

// formatOf reads a store's format: 1 for a store from before it was kept,
// and for a new, empty one (which migrate brings to Format at no cost).
func formatOf(tx *bbolt.Tx) int {
	b := tx.Bucket(bucketMeta)
	if b == nil {
		return 1
	}
	v := b.Get(keyFormat)
	if len(v) != 8 {
		return 1
	}
	return int(binary.BigEndian.Uint64(v))
}

// migrate brings the store to Format, refusing one written by a newer
// binary: it may hold what this one would misread or destroy.
func migrate(tx *bbolt.Tx) error {
	v := formatOf(tx)
	switch {
	case v > Format:
		return fmt.Errorf("%w %d is newer than this fulfilld knows (%d): run the newer fulfilld, or restore a backup taken before the upgrade", ErrFormat, v, Format)
	case v == Format:
		return nil
	}
	if v < 2 {
		if err := fulfill.Recount(tx); err != nil {
			return fmt.Errorf("upgrade to format 2: %w", err)
		}
		if err := cursor.CountSeen(tx); err != nil {
			return fmt.Errorf("upgrade to format 2: %w", err)
		}
	}
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], Format)
	return tx.Bucket(bucketMeta).Put(keyFormat, buf[:])
}

// checkFormat is migrate for a read-only open: it cannot upgrade, so an
// older store is refused with what to do.
func checkFormat(tx *bbolt.Tx) error {
	switch v := formatOf(tx); {
	case v > Format:
		return fmt.Errorf("%w %d is newer than this fulfilld knows (%d): run the newer fulfilld, or restore a backup taken before the upgrade", ErrFormat, v, Format)
	case v < Format:
		return fmt.Errorf("%w %d predates this fulfilld (%d): start `fulfilld run` (or `fulfilld compact`) once to upgrade it in place", ErrFormat, v, Format)
	}
	return nil
}

// Open opens the store at path, created with mode 0600, waiting at most
// wait for another process's lock. Read-only opens create nothing.
func Open(path string, readOnly bool, wait time.Duration) (*bbolt.DB, error) {
	var db *bbolt.DB
	for try := 1; ; try++ {
		var file *os.File
		var err error
		db, err = bbolt.Open(path, 0o600, &bbolt.Options{Timeout: wait, ReadOnly: readOnly,
			OpenFile: func(name string, flag int, mode os.FileMode) (*os.File, error) {
				file, err = os.OpenFile(name, flag, mode)
				return file, err
			}})
		if errors.Is(err, bbolt.ErrTimeout) {
			return nil, fmt.Errorf("%s is %w", path, ErrHeld)
		}
		if err != nil {
			return nil, fmt.Errorf("open store %s: %w", path, err)
		}
		// A compaction renames a new file over the path while it holds the
		// old one's lock; whoever waited for that lock holds a file that
		// is no longer the store. Open the one that is.
		if replaced(path, file) && try < 5 {
			db.Close()
			continue
		}
		break
	}
	if readOnly {
		if err := db.View(checkFormat); err != nil {
			db.Close()
			return nil, fmt.Errorf("open store %s: %w", path, err)
		}
		return db, nil
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		if err := Init(tx); err != nil {
			return err
		}
		return migrate(tx)
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("prepare store %s: %w", path, err)
	}
	return db, nil
}

// replaced reports whether path no longer names the file that was opened.
func replaced(path string, opened *os.File) bool {
	if opened == nil {
		return false
	}
	a, err := opened.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	return err == nil && !os.SameFile(a, b)
}
