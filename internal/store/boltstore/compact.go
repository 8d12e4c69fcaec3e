package boltstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"go.etcd.io/bbolt"
)

// Sizes are a compaction's before and after, in bytes.
type Sizes struct{ Before, After int64 }

// compactTxSize bounds each transaction of the copy, so a large store is
// not held in one huge write.
const compactTxSize = 64 << 20

// Compact rewrites the store at path without its free pages (bbolt never
// shrinks a file by itself) into a new file beside it, then renames that
// over the original: a crash at any point leaves either the old file or the
// new one, whole. The new file keeps the original's mode and owner, so a
// compaction run as root leaves a store the service user can still open.
// It holds the store's lock throughout, and fails with ErrHeld when another
// process (a running daemon) has it.
func Compact(path string, wait time.Duration) (Sizes, error) {
	var sz Sizes
	info, err := os.Stat(path)
	if err != nil {
		return sz, fmt.Errorf("compact: %w", err)
	}
	sz.Before = info.Size()
	opened, err := Open(path, false, wait)
	if err != nil {
		return sz, err
	}
	defer opened.Close()
	src := opened.db

	tmp := path + ".compact"
	_ = os.Remove(tmp) // a leftover of a compaction that was cut off
	// A file from before format 8 had 4 KiB pages: the copy gets this
	// binary's.
	dst, err := bbolt.Open(tmp, info.Mode().Perm(), &bbolt.Options{Timeout: wait, PageSize: pageSize})
	if err != nil {
		return sz, fmt.Errorf("compact: create %s: %w", tmp, err)
	}
	cleanup := func() { dst.Close(); os.Remove(tmp) }
	if err := bbolt.Compact(dst, src, compactTxSize); err != nil {
		cleanup()
		return sz, fmt.Errorf("compact %s: %w", path, err)
	}
	if err := dst.Sync(); err != nil {
		cleanup()
		return sz, fmt.Errorf("compact: sync %s: %w", tmp, err)
	}
	if err := dst.Close(); err != nil {
		os.Remove(tmp)
		return sz, fmt.Errorf("compact: close %s: %w", tmp, err)
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		if err := os.Chown(tmp, int(st.Uid), int(st.Gid)); err != nil && !errors.Is(err, os.ErrPermission) {
			os.Remove(tmp)
			return sz, fmt.Errorf("compact: keep the owner of %s: %w", path, err)
		}
	}
	if err := os.Chmod(tmp, info.Mode().Perm()); err != nil {
		os.Remove(tmp)
		return sz, fmt.Errorf("compact: keep the mode of %s: %w", path, err)
	}
	// Rename while still holding the old file's lock: no daemon can open
	// the old file in between and write to what is about to be replaced.
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return sz, fmt.Errorf("compact: replace %s: %w", path, err)
	}
	if dir, err := os.Open(filepath.Dir(path)); err == nil {
		_ = dir.Sync() // make the rename itself durable
		dir.Close()
	}
	after, err := os.Stat(path)
	if err != nil {
		return sz, fmt.Errorf("compact: %w", err)
	}
	sz.After = after.Size()
	return sz, nil
}
