package bench

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/status"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
)

// TestRunStoreSmall runs the store benchmark at a tiny size and holds its
// result to what fulfilld promises; the timings are not asserted.
func TestRunStoreSmall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bench.db")
	cfg := StoreConfig{
		Days: 3, OrdersPerDay: 50, Retention: 24 * time.Hour, OutputBytes: 3000, Path: path,
		// The counts status shows, read as it reads them.
		Status: func(db status.Store, _ time.Time) (map[string]int, error) {
			out := map[string]int{}
			err := db.View(func(tx store.Tx) error {
				sum, err := fulfill.Summarize(tx)
				for s, n := range sum.Sessions {
					out[string(s)] = n
				}
				return err
			})
			return out, err
		},
	}
	rep, err := RunStore(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Orders != 150 || rep.Events != 450 {
		t.Errorf("orders %d, events %d; want 150 and 450", rep.Orders, rep.Events)
	}
	for what, got := range map[string]int{"fulfilled": rep.Fulfilled, "status: fulfilled": rep.StatusFulfilled,
		"expired": rep.Expired, "sent": rep.Sent, "payment intents": rep.PaymentIntents} {
		if got != rep.Orders {
			t.Errorf("%s = %d, want %d", what, got, rep.Orders)
		}
	}
	if rep.Doubled != 0 || rep.RepeatRan {
		t.Errorf("an action ran twice: doubled %d, repeat after retention %t", rep.Doubled, rep.RepeatRan)
	}
	if rep.Pruned == 0 {
		t.Error("nothing was pruned after three days with a retention of one")
	}
	if rep.SizeAfter <= 0 || rep.SizeAfter > rep.SizeBefore {
		t.Errorf("compact went from %d to %d bytes; it must shrink the file or keep it", rep.SizeBefore, rep.SizeAfter)
	}
	if rep.ScrapeEnd.N == 0 || rep.StatusEnd.N == 0 || rep.Writes == 0 {
		t.Errorf("nothing measured: %d scrapes, %d status reads, %d writes", rep.ScrapeEnd.N, rep.StatusEnd.N, rep.Writes)
	}

	// The compacted file, read on its own: every record settled before the
	// retention edge is a tombstone, every later one keeps its detail.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	end := benchEpoch.Add(3 * 24 * time.Hour)
	edge := end.Add(-cfg.Retention)
	var tomb, full int
	err = db.View(func(tx *bbolt.Tx) error {
		// Records on their way in sessions, settled ones in session_log
		// (the record names itself), tombstones in a bucket of their own.
		each := func(fn func(k, v []byte) error) error {
			if err := tx.Bucket([]byte("sessions")).ForEach(fn); err != nil {
				return err
			}
			if err := tx.Bucket([]byte("session_log")).ForEach(func(_, v []byte) error {
				r, err := boltstore.DecodeSession("", v)
				if err != nil {
					return err
				}
				return fn([]byte(r.SessionID), v)
			}); err != nil {
				return err
			}
			return tx.Bucket([]byte("tombstones")).ForEach(fn)
		}
		if err := each(func(k, v []byte) error {
			r, err := boltstore.DecodeSession(string(k), v)
			if err != nil {
				return err
			}
			if inTombstones := tx.Bucket([]byte("tombstones")).Get(k) != nil; inTombstones != r.Pruned {
				t.Errorf("%s (pruned %t) is in the tombstones bucket: %t", k, r.Pruned, inTombstones)
			}
			old := r.Updated.Before(edge)
			switch {
			case old && (!r.Pruned || r.Output != "" || r.LastError != ""):
				t.Errorf("%s settled %s, before the retention edge %s, but kept its detail (pruned %t, %d bytes of output)",
					k, r.Updated, edge, r.Pruned, len(r.Output))
			case !old && r.Pruned:
				t.Errorf("%s settled %s, after the retention edge %s, but was pruned", k, r.Updated, edge)
			case !old && r.State == fulfill.StateFulfilled && len(r.Output) != cfg.OutputBytes:
				t.Errorf("%s keeps %d bytes of output, want %d", k, len(r.Output), cfg.OutputBytes)
			case !old && r.State == fulfill.StateFulfilled && !strings.Contains(r.Output, "INFO fulfil start session="+string(k)):
				t.Errorf("%s keeps output that is not what its action printed: %.80q", k, r.Output)
			}
			if r.Pruned {
				tomb++
			} else {
				full++
			}
			return nil
		}); err != nil {
			return err
		}
		// Deliveries on their way or pruned under their keys, settled ones
		// in delivery_log.
		deliveries := 0
		defer func() {
			if deliveries == 0 {
				t.Error("no notification in the store")
			}
		}()
		check := func(k, v []byte) error {
			deliveries++
			n, err := boltstore.DecodeEventDelivery(v)
			if err != nil {
				return err
			}
			if len(n.Event) != 0 {
				t.Errorf("notification %s was sent but kept its event body", k)
			}
			if n.Updated.Before(edge) && (!n.Pruned || n.Output != "") {
				t.Errorf("notification %s is past retention but not a tombstone", k)
			}
			return nil
		}
		if err := tx.Bucket([]byte("notifications")).ForEach(check); err != nil {
			return err
		}
		return tx.Bucket([]byte("delivery_log")).ForEach(check)
	})
	if err != nil {
		t.Fatal(err)
	}
	if tomb == 0 || full == 0 {
		t.Errorf("%d tombstones and %d full records; want some of each", tomb, full)
	}

	var out bytes.Buffer
	PrintStore(&out, rep)
	for _, want := range []string{"file size after compact", "bytes per order", "/metrics scrape at the end",
		"status read at the end", "longest wait of a write on a reader", "longest write, call to return", "status says 150"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the report lacks %q:\n%s", want, out.String())
		}
	}
}

// TestRunStoreRefusesExistingFile: the benchmark writes a store of its own
// and never into one that holds somebody's data.
func TestRunStoreRefusesExistingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.db")
	db, err := boltstore.Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = RunStore(context.Background(), StoreConfig{Days: 1, OrdersPerDay: 1, Retention: time.Hour, Path: path})
	if err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("err = %v, want a refusal naming the existing file", err)
	}
}
