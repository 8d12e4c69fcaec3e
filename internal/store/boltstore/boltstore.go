// Package boltstore is fulfilld's store in one bbolt file: the default,
// for one host. It owns the schema — the buckets, how each record is
// encoded, the counters and indexes kept beside the records, retention's
// index and the on-disk format version — and implements the transaction
// interfaces that cursor, fulfill, poller and stripeapi declare
// (internal/store.Tx is all of them).
//
// bbolt lets one process hold the file; Open fails with ErrHeld while
// another does. Values read inside a transaction are copied out before it
// ends.
package boltstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/internal/store"
)

// Sentinel errors.
var (
	// ErrHeld means another process has the store open (bbolt's file lock).
	ErrHeld = errors.New("held by another process")
	// ErrFormat means the file's format is not one this binary can use as
	// it is.
	ErrFormat = errors.New("store format")
)

// Format is the on-disk format this binary writes. Each version names what
// it added; Open upgrades an older file in place, in one transaction.
//
//	1: buckets of records, queues and the cursor (no format key yet)
//	2: counters and time indexes kept beside the records, the seen-set's
//	   size kept, bad events and API usage days bounded
//	3: queue lengths kept as counters too (format 2 files had none)
//	4: notifications generalized to event deliveries keyed by destination
//	   and event id ("notify:evt_…", "forward:evt_…"), in the records, the
//	   delivery queue and the counters ("delivery:<dest>:<state>")
//	5: ledger records (sessions, deliveries, PaymentIntent statuses)
//	   written compressed (see codec.go). The upgrade rewrites nothing:
//	   format 4's plain JSON still reads, each record is compressed when
//	   it is next written, and retention prunes the rest — one
//	   transaction rewriting a multi-gigabyte file would stop every
//	   writer for minutes. A format 4 binary must not open it: it would
//	   misread the compressed records.
//	6: PaymentIntent statuses written in a binary form of their own (see
//	   encodeIntent); a session pruned to a tombstone moves from sessions
//	   to a bucket of its own (see PutSession). As for 5, nothing is
//	   rewritten: older values still read, tombstones already in sessions
//	   stay there, and a format 5 binary must not open it (it would miss
//	   the tombstones, and repeat their sessions).
//	7: the seen-set kept by created time and id only (see MarkSeen): the
//	   upgrade drops the bucket keyed by id alone, which format 6 kept
//	   beside it. A format 6 binary must not open it: it would find no
//	   event seen, and hand the lookback's events on again.
//	8: records in a final state kept in a log of their kind, by when they
//	   settled, behind an index of their ids' hashes (see logs.go).
//	   New files are made of 16 KiB pages (pageSize). As for 5, nothing is
//	   rewritten: format 7's settled records stay in sessions and
//	   settled_index until they are next written or pruned, and a format 7
//	   binary must not open it (it would not find the settled sessions,
//	   and run them again).
const Format = 8

// readableFrom is the oldest format a read-only open reads as it is: from
// format 4 on, what changed is only how records are encoded, and this
// binary reads every encoding.
const readableFrom = 4

// The buckets. Keys and values are described beside each.
var (
	bucketMeta       = []byte("meta")            // "format" → uint64
	bucketCursor     = []byte("cursor")          // "position", "last_poll" → JSON; "seen_count" → uint64
	bucketSeenByTime = []byte("seen_by_time")    // created (8 bytes) + event id → nothing (cursor.go)
	bucketSeenByID   = []byte("seen")            // before format 7: event id → created (unix, 8 bytes)
	bucketEventStats = []byte("event_stats")     // "type\x00outcome" → uint64
	bucketBad        = []byte("bad_events")      // event id → BadEvent JSON
	bucketSessions   = []byte("sessions")        // session id → Record (codec.go); a tombstone before format 6
	bucketTombstones = []byte("tombstones")      // session id → tombstone (ledger.go; format 6)
	bucketIntents    = []byte("payment_intents") // pi id → PaymentIntent (codec.go)
	bucketDeliveries = []byte("notifications")   // "<destination>:<event id>" → EventDelivery (codec.go; the bucket's name from format 2)
	bucketCounts     = []byte("fulfill_counts")  // "session:<state>", "pi_fulfill:<state>", "pi:<status>", "delivery:<dest>:<state>", … → uint64
	bucketFailed     = []byte("failed_index")    // kind byte + updated (8 bytes) + id → nothing
	bucketSettled    = []byte("settled_index")   // format 7: settled (8 bytes) + kind byte + id → nothing; from 8 see logs.go
	bucketUsage      = []byte("api_usage")       // "2026-11-22" or keyFolded → Usage JSON
	bucketReconcile  = []byte("reconcile")       // "last_sweep", "webhook_misses" → JSON

	keyFormat    = []byte("format")
	keyPosition  = []byte("position")
	keyPoll      = []byte("last_poll")
	keySeenCount = []byte("seen_count")
	keyLastSweep = []byte("last_sweep")
	keyMisses    = []byte("webhook_misses")
)

// queues maps a queue to its two buckets: items (due (8 bytes, unix nanos)
// + id → nothing) and index (id → its items key).
var queues = map[string]struct{ items, index []byte }{
	"sessions":   {[]byte("queue"), []byte("queue_index")},
	"deliveries": {[]byte("notify_queue"), []byte("notify_queue_index")}, // the buckets' names from format 2
}

func allBuckets() [][]byte {
	bs := [][]byte{bucketMeta, bucketCursor, bucketSeenByTime, bucketEventStats, bucketBad,
		bucketSessions, bucketTombstones, bucketIntents, bucketDeliveries, bucketCounts, bucketFailed, bucketSettled, bucketUsage,
		bucketReconcile}
	for _, q := range queues {
		bs = append(bs, q.items, q.index)
	}
	for _, k := range ledgerKinds {
		bs = append(bs, k.log, k.index)
	}
	bs = append(bs, bucketUnreadable)
	return bs
}

// Store is an open bbolt file.
type Store struct {
	db *bbolt.DB
}

// Open opens the store at path, created with mode 0600, waiting at most
// wait for another process's lock. A read-write open creates what is
// missing and upgrades an older format; a read-only one creates nothing
// and refuses a format it would misread.
func Open(path string, readOnly bool, wait time.Duration) (*Store, error) {
	var db *bbolt.DB
	for try := 1; ; try++ {
		var file *os.File
		var err error
		db, err = bbolt.Open(path, 0o600, &bbolt.Options{Timeout: wait, ReadOnly: readOnly,
			// A long-lived file gathers many free pages. Writing their
			// list at every commit made commits (and so every writer)
			// wait ever longer as the file aged; bbolt rebuilds the list
			// when the file opens instead, and keeps it as a map.
			NoFreelistSync: true, FreelistType: bbolt.FreelistMapType, PageSize: pageSize,
			InitialMmapSize: mapAhead(path),
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
		// bbolt grows a file mapped past its AllocSize by what a commit
		// needs plus AllocSize (16 MiB by default): mapped ahead, a new
		// store would be 16 MiB at once. A step of 1 MiB keeps a small
		// store small; growing costs a truncate (and an fsync, which the
		// commit makes anyway) per MiB.
		db.AllocSize = allocStep
		// Batch gathers the writes that concurrent callers ask for
		// within this window into one transaction (a batch closes when
		// its window ends, then waits for the writer); bbolt's default
		// of 10 ms made a lone write wait that long.
		db.MaxBatchDelay = batchDelay
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
		return &Store{db: db}, nil
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		for _, b := range allBuckets() {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		return migrate(&Tx{tx: tx})
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("prepare store %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// mapAhead is how much of the file to map when it opens: at least 1 GiB,
// and twice what the file holds. bbolt maps the file and, when a commit
// needs pages past the map, remaps it — which waits for every open read
// transaction to end and holds up every new one (a scrape, status) until
// it is done, while munmap tears down the old map of a multi-gigabyte
// file. Mapped ahead, a store remaps only when it doubles since it was
// opened (and not at all below 1 GiB). It is address space, not memory:
// only the pages read count towards the process's memory, and the file
// does not grow with it (Linux; compact.go already limits this package to
// Unix). A 32-bit process maps what it must.
func mapAhead(path string) int {
	if strconv.IntSize < 64 {
		return 0
	}
	var size int64
	if fi, err := os.Stat(path); err == nil {
		size = fi.Size()
	}
	const gib = 1 << 30
	return int(max(gib, (2*size+gib-1)/gib*gib))
}

// pageSize is the page size of a file this binary creates (and of the file
// compact writes); an existing file keeps its own. A settled session's
// record with 2 KiB of kept output is about 900 bytes compressed, and
// bbolt leaves at least two keys for the second page of a split: a 4 KiB
// page of an append-only log held three of its five records' room (0.73
// full, against 0.89 once compacted), a 16 KiB page loses two of eighteen.
// Measured with bench store over a tenth of the year, on a prototype of
// format 8: 114.1 MiB with 4 KiB pages, 99.0 with 16 KiB.
const pageSize = 16 << 10

// allocStep is how much a growing file grows by beyond what it needs.
const allocStep = 1 << 20

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

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Path is the file's path.
func (s *Store) Path() string { return s.db.Path() }

// View runs fn in a read-only transaction.
func (s *Store) View(fn func(store.Tx) error) error {
	return s.db.View(func(tx *bbolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// Update runs fn in a read-write transaction; an error rolls it back.
// Nothing with side effects outside the store may run inside fn: bbolt may
// not have committed when it returns.
func (s *Store) Update(fn func(store.Tx) error) error {
	return s.db.Update(func(tx *bbolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// Check that *Tx is every user's transaction.
var _ store.Tx = (*Tx)(nil)

// Tx is one transaction. Its methods implement store.Tx: cursor.Tx,
// fulfill.Tx, poller.SweepTx and stripeapi.UsageTx.
type Tx struct {
	tx *bbolt.Tx
}

// b is a bucket of the transaction. Every bucket but the logs (logs.go)
// splits its pages as bbolt does by default, in halves. Filling them whole where keys begin with a
// time (settled_index, seen_by_time) made those buckets twice as large, not
// smaller: the times arrive a little out of order (a page of events is
// listed newest first; a PaymentIntent settles at its event's time), and
// an insert into a full page split it into a full one and one with a key
// or two.
func (t *Tx) b(name []byte) *bbolt.Bucket { return t.tx.Bucket(name) }

// formatOf reads a file's format: 1 for one from before it was kept.
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

func newerFormat(v int) error {
	return fmt.Errorf("%w %d is newer than this fulfilld knows (%d): run the newer fulfilld, or restore a backup taken before the upgrade",
		ErrFormat, v, Format)
}

// migrate brings the file to Format, refusing one written by a newer
// binary: it may hold what this one would misread or destroy.
func migrate(t *Tx) error {
	v := formatOf(t.tx)
	switch {
	case v > Format:
		return newerFormat(v)
	case v == Format:
		return nil
	}
	if err := t.dropSeenByID(); err != nil {
		return fmt.Errorf("upgrade to format %d: %w", Format, err)
	}
	if v < 4 {
		// Rekeys notifications as deliveries (a no-op for records already
		// rekeyed), then counts everything once: counters, indexes, queue
		// lengths, the seen-set's size; and cuts bad events to their bound.
		if err := t.keyDeliveries(); err != nil {
			return fmt.Errorf("upgrade to format %d: %w", Format, err)
		}
		if err := t.recount(); err != nil {
			return fmt.Errorf("upgrade to format %d: %w", Format, err)
		}
		if err := t.trimBad(); err != nil {
			return fmt.Errorf("upgrade to format %d: %w", Format, err)
		}
	}
	return putUint(t.b(bucketMeta), keyFormat, Format)
}

// dropSeenByID is the upgrade to format 7: the seen-set's bucket keyed by
// id goes, after any id it holds that seen_by_time lacks (none, in a file
// written since format 2) is put there. The seen-set is bounded (the
// lookback's events, or those of a backfill being read), so this is a few
// megabytes of pages at most, once.
func (t *Tx) dropSeenByID() error {
	byID := t.tx.Bucket(bucketSeenByID)
	if byID == nil {
		return nil
	}
	byTime := t.b(bucketSeenByTime)
	n := byTime.Stats().KeyN // as committed: the bucket is not written yet
	if err := byID.ForEach(func(k, v []byte) error {
		if len(v) != 8 {
			return fmt.Errorf("seen event %q cannot be read", k)
		}
		key := append(bytes.Clone(v), k...)
		if has(byTime, key) {
			return nil
		}
		n++
		return byTime.Put(key, nil)
	}); err != nil {
		return err
	}
	if err := t.tx.DeleteBucket(bucketSeenByID); err != nil {
		return err
	}
	return putUint(t.b(bucketCursor), keySeenCount, uint64(n))
}

// checkFormat is migrate for a read-only open: it cannot upgrade, so an
// older file is refused with what to do.
func checkFormat(tx *bbolt.Tx) error {
	switch v := formatOf(tx); {
	case v > Format:
		return newerFormat(v)
	case v < readableFrom:
		return fmt.Errorf("%w %d predates this fulfilld (%d): start `fulfilld run` (or `fulfilld compact`) once to upgrade it in place",
			ErrFormat, v, Format)
	}
	return nil
}

func getUint(b *bbolt.Bucket, key []byte) uint64 {
	if v := b.Get(key); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func putUint(b *bbolt.Bucket, key []byte, n uint64) error {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], n)
	return b.Put(key, buf[:])
}

// addUint adds delta to a counter; it never goes below zero.
func addUint(b *bbolt.Bucket, key []byte, delta int64) error {
	if delta == 0 {
		return nil
	}
	return putUint(b, key, uint64(max(int64(getUint(b, key))+delta, 0)))
}

func timeKey(t time.Time) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(max(t.UnixNano(), 0)))
	return b[:]
}

func keyTime(k []byte) time.Time { return time.Unix(0, int64(binary.BigEndian.Uint64(k[:8]))) }

// batchDelay is how long Batch waits for other writers to join a commit.
const batchDelay = time.Millisecond

// Batch runs fn in a transaction it may share with other goroutines' Batch
// calls (bbolt's Batch): fn may run more than once, so it must have no
// effect outside the transaction. The daemon's fulfiller records its
// attempts' starts and results this way (store.AsGrouped).
func (s *Store) Batch(fn func(store.Tx) error) error {
	return s.db.Batch(func(tx *bbolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// Tune trades durability for speed, for a benchmark that measures the file
// and its readers rather than the disk: no fsync per commit (nor the one
// bbolt makes when a commit grows the file: with no other fsync, that one
// flushed every page written since the last growth, and took seconds on a
// multi-gigabyte file), and a short Batch window. Never for the daemon.
func (s *Store) Tune(noSync bool, maxBatchDelay time.Duration) {
	s.db.NoSync, s.db.NoGrowSync, s.db.MaxBatchDelay = noSync, noSync, maxBatchDelay
}

// Stats are bbolt's counters: a benchmark reads remaps (TxStats's
// NodeDeref moves only when a commit remaps the file) and commit times.
func (s *Store) Stats() bbolt.Stats { return s.db.Stats() }

// Now implements fulfill.Tx: a bbolt file is one process's alone, so the
// store's clock is the host's.
func (t *Tx) Now() (time.Time, error) { return time.Now(), nil }
