package fulfill

import "time"

// SetBatchSettle sets how long the queue must stop growing before partial
// pages are listed: long enough that a test's pauses do not count.
func SetBatchSettle(f *Fulfiller, d time.Duration) { f.batch.settle = d }
