// Package transfer moves a bbolt store into another backend
// (`fulfilld migrate-store`): everything the file holds, written through
// the target's own store.Tx, so that the target keeps its counters and
// indexes as it would have kept them had it been written from the start;
// then the kept figures of both are compared.
package transfer

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// ErrNotEmpty means the target already holds state: a copy into it would
// mix two histories (and counters), so it is refused.
var ErrNotEmpty = errors.New("the target store is not empty")

// DefaultBatch is how many items one target transaction writes: a large
// store is not one huge transaction, and a try that conflicts redoes little.
const DefaultBatch = 500

// Source is a store that can hand out everything it holds.
type Source interface {
	Export(fn func(boltstore.Item) error) error
	View(fn func(store.Tx) error) error
}

// Moved counts the items written, by boltstore.Item kind.
type Moved map[string]int

// Copy writes everything src holds into dst, batch items a transaction
// (DefaultBatch when batch <= 0), after checking that dst is empty.
// progress, when set, is called after each batch with the items so far.
// A copy cut short leaves dst partly filled and without a cursor position
// (it is written last); Copy refuses such a dst afterwards, like any other
// that is not empty.
func Copy(dst store.Store, src Source, batch int, progress func(done int)) (Moved, error) {
	if batch <= 0 {
		batch = DefaultBatch
	}
	var before Figures
	if err := dst.View(func(tx store.Tx) (err error) {
		before, err = Tally(tx, time.Now())
		return err
	}); err != nil {
		return nil, fmt.Errorf("read the target: %w", err)
	}
	if !before.Empty() {
		return nil, fmt.Errorf("%w: it holds %s", ErrNotEmpty, before.Summary())
	}
	moved, done := Moved{}, 0
	var pending []boltstore.Item
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		if err := dst.Update(func(tx store.Tx) error {
			for _, it := range pending {
				if err := it.Put(tx); err != nil {
					return fmt.Errorf("write %s %s: %w", it.Kind, it.Key, err)
				}
			}
			return nil
		}); err != nil {
			return err
		}
		for _, it := range pending {
			moved[it.Kind]++
		}
		done += len(pending)
		pending = pending[:0]
		if progress != nil {
			progress(done)
		}
		return nil
	}
	err := src.Export(func(it boltstore.Item) error {
		// The position goes in a transaction of its own, after all else:
		// a target with a cursor holds everything.
		if it.Kind == boltstore.ItemPosition {
			if err := flush(); err != nil {
				return err
			}
		}
		pending = append(pending, it)
		if len(pending) >= batch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	return moved, err
}

// Figures are what a store keeps count of and the values it keeps once,
// read through store.Tx alone: what must be equal on both sides of a copy.
type Figures struct {
	Counts map[string]int64  // name → count; zeros left out
	Values map[string]string // name → JSON; absent values left out
}

// Tally reads a store's figures; now dates the rolling 30 days of usage.
func Tally(tx store.Tx, now time.Time) (Figures, error) {
	f := Figures{Counts: map[string]int64{}, Values: map[string]string{}}
	add := func(name string, n int64) {
		if n != 0 {
			f.Counts[name] = n
		}
	}
	c, err := tx.Counts()
	if err != nil {
		return f, fmt.Errorf("counts: %w", err)
	}
	for s, n := range c.Sessions {
		add("sessions "+string(s), int64(n))
	}
	for s, n := range c.IntentFulfillments {
		add("payment intent fulfillments "+string(s), int64(n))
	}
	for s, n := range c.PaymentIntents {
		add("payment intents "+s, int64(n))
	}
	for d, states := range c.Deliveries {
		for s, n := range states {
			add("deliveries "+d+" "+s, int64(n))
		}
	}
	add("recovered", int64(c.Recovered))
	add("in flight", int64(c.InFlight))
	for _, q := range []fulfill.Queue{fulfill.SessionQueue, fulfill.DeliveryQueue} {
		n, err := tx.QueueLen(q)
		if err != nil {
			return f, fmt.Errorf("length of the %s queue: %w", q, err)
		}
		add("queued "+string(q), int64(n))
	}
	seen, err := tx.SeenCount()
	if err != nil {
		return f, fmt.Errorf("seen events: %w", err)
	}
	add("seen events", int64(seen))
	events, err := tx.EventCounts()
	if err != nil {
		return f, fmt.Errorf("event counts: %w", err)
	}
	for _, e := range events {
		add("events "+e.Type+" "+e.Outcome, int64(e.Count))
	}
	_, bad, err := tx.BadEvents(0)
	if err != nil {
		return f, fmt.Errorf("bad events: %w", err)
	}
	add("bad events", int64(bad))
	usage, err := tx.UsageReport(now)
	if err != nil {
		return f, fmt.Errorf("api usage: %w", err)
	}
	addUsage(add, "api usage all time", usage.Total)
	addUsage(add, "api usage last 30 days", usage.Last30Days)

	value := func(name string, v any, present bool) error {
		if !present {
			return nil
		}
		raw, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		f.Values[name] = string(raw)
		return nil
	}
	pos, err := tx.Position()
	if err != nil {
		return f, fmt.Errorf("cursor position: %w", err)
	}
	poll, err := tx.LastPoll()
	if err != nil {
		return f, fmt.Errorf("last poll: %w", err)
	}
	sweep, misses, err := tx.LastSweep()
	if err != nil {
		return f, fmt.Errorf("last sweep: %w", err)
	}
	return f, errors.Join(
		value("cursor position", pos, !reflect.ValueOf(pos).IsZero()),
		value("last poll", poll, !reflect.ValueOf(poll).IsZero()),
		value("last sweep", sweep, sweep != nil),
		value("webhook misses", misses, misses != nil))
}

func addUsage(add func(string, int64), prefix string, u stripeapi.Usage) {
	for k, n := range u.Requests {
		add(prefix+" requests "+k, n)
	}
	for k, n := range u.ByStatus {
		add(prefix+" status "+k, n)
	}
	add(prefix+" rate limited", u.RateLimited)
	add(prefix+" retries", u.Retries)
	add(prefix+" payments", u.Payments)
}

// Empty reports whether the figures are a store's that holds nothing.
func (f Figures) Empty() bool { return len(f.Counts) == 0 && len(f.Values) == 0 }

// Summary says in a few words what a store holds.
func (f Figures) Summary() string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(f.Values)) {
		parts = append(parts, "a "+name)
	}
	for _, name := range slices.Sorted(maps.Keys(f.Counts)) {
		parts = append(parts, strconv.FormatInt(f.Counts[name], 10)+" "+name)
		if len(parts) >= 6 {
			parts = append(parts, "…")
			break
		}
	}
	return fmt.Sprint(parts)
}

// Diff lists, one line each, the figures of got that differ from want.
func Diff(want, got Figures) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(unionCounts(want.Counts, got.Counts))) {
		if want.Counts[name] != got.Counts[name] {
			out = append(out, fmt.Sprintf("%s: %d in the source, %d in the target", name, want.Counts[name], got.Counts[name]))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(unionValues(want.Values, got.Values))) {
		if want.Values[name] != got.Values[name] {
			out = append(out, fmt.Sprintf("%s: %s in the source, %s in the target", name, orNone(want.Values[name]), orNone(got.Values[name])))
		}
	}
	return out
}

func unionCounts(a, b map[string]int64) map[string]int64 {
	u := maps.Clone(a)
	maps.Copy(u, b)
	return u
}

func unionValues(a, b map[string]string) map[string]string {
	u := maps.Clone(a)
	maps.Copy(u, b)
	return u
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
