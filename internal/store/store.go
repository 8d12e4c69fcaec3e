// Package store opens fulfilld's bbolt file with every bucket the other
// packages own, so the daemon, the commands and the tests agree on what a
// store holds.
package store

import (
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

// ErrHeld means another process has the store open (bbolt's file lock).
var ErrHeld = errors.New("held by another process")

// Init creates every bucket; it is a no-op on a store that has them.
func Init(tx *bbolt.Tx) error {
	return errors.Join(cursor.Init(tx), fulfill.Init(tx), stripeapi.InitUsage(tx), poller.InitReconcile(tx))
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
		return db, nil
	}
	if err := db.Update(Init); err != nil {
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
