package fulfill

import "time"

// SetBatchWaits sets how long the queue must stop growing before partial
// pages are listed, and how long an attempt waits for its page at the
// most: long enough that a test's pauses do not count.
func SetBatchWaits(f *Fulfiller, settle, linger time.Duration) {
	f.batch.settle, f.batch.linger = settle, linger
}
