package fulfill

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/storehealth"
)

// TestKeptResultKeptMeanwhileStays: while a kept result is being saved, a
// later attempt of the same item has its own result refused and kept; the
// save that ends afterwards must not drop that one, or its action would
// run again with nothing to say it ran.
func TestKeptResultKeptMeanwhileStays(t *testing.T) {
	ctx := keptAtOnce()
	u := &unsaved{}
	flushing := false
	first := func() error {
		if !flushing {
			return refused
		}
		// The store takes writes again; meanwhile a later attempt's
		// result was refused and kept.
		_ = u.save(ctx, "cs_1", func() error { return refused })
		return nil
	}
	_ = u.save(ctx, "cs_1", first)
	if u.len() != 1 {
		t.Fatalf("%d results kept, want the first", u.len())
	}
	flushing = true
	if found, err := u.flushOne("cs_1"); !found || err != nil {
		t.Fatalf("flushOne: found %v, %v", found, err)
	}
	if u.len() != 1 {
		t.Errorf("%d results kept after the first was saved, want the later one still kept", u.len())
	}
}

// TestGateTakesNoPlaceAfterShutdown: once its context has ended, acquire
// takes no place, even a free one: a shutdown starts no more actions.
func TestGateTakesNoPlaceAfterShutdown(t *testing.T) {
	g := &gate{limit: func() int { return 2 }}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.acquire(ctx); err == nil {
		t.Errorf("acquire after shutdown took a free place")
	}
	if g.n != 0 {
		t.Errorf("%d places held, want none", g.n)
	}
	if err := g.acquire(context.Background()); err != nil || g.n != 1 {
		t.Errorf("acquire before shutdown: %v, %d held", err, g.n)
	}
}

// TestKeptResultsFlushedPastOneThatFails: a kept result that cannot be
// saved does not hold back the others, and one whose item another instance
// took over (its lease ran out while this one could not write) is dropped
// rather than tried for ever.
func TestKeptResultsFlushedPastOneThatFails(t *testing.T) {
	ctx := keptAtOnce()
	u := &unsaved{}
	writable := false
	saved := map[string]int{}
	for _, id := range []string{"cs_a", "cs_b", "cs_c"} {
		_ = u.save(ctx, id, func() error {
			switch {
			case !writable:
				return refused
			case id == "cs_a":
				return refused // still refused: this one's write fails
			case id == "cs_b":
				return fmt.Errorf("record result: %w", ErrClaimLost)
			}
			saved[id]++
			return nil
		})
	}
	writable = true
	if err := u.flush(); err == nil {
		t.Errorf("flush said every result was saved")
	}
	if saved["cs_c"] != 1 {
		t.Errorf("cs_c saved %d times, want once whatever the others did", saved["cs_c"])
	}
	if u.len() != 1 {
		t.Errorf("%d results still kept, want only the refused one (the one taken over is dropped)", u.len())
	}
}

// TestKeptResultSavedOnceAtATime: while one caller saves a kept result (the
// worker's flush), another (an attempt of the same item) is told it is not
// recorded yet, rather than saving it a second time — a second save could
// land after the attempt that follows it.
func TestKeptResultSavedOnceAtATime(t *testing.T) {
	u, saves, release, done := savingKept()
	if found, err := u.flushOne("cs_1"); !found || err == nil {
		t.Errorf("while it is being saved: found %v, err %v; want found and not recorded yet", found, err)
	}
	// A flush at shutdown waits for that save rather than report it
	// unsaved.
	flushed := make(chan error, 1)
	go func() { flushed <- u.flush() }()
	select {
	case err := <-flushed:
		t.Errorf("flush returned %v while the save was still running", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-flushed; err != nil {
		t.Errorf("flush after the save ended: %v, want nil", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if *saves != 1 || u.len() != 0 {
		t.Errorf("saved %d times, %d still kept; want once, none", *saves, u.len())
	}
}

// TestResultKeptDuringASaveWaitsForIt: a later result kept for the same id
// while an earlier one is being saved is not saved beside it (the older
// could land last), and whoever waits for that save is woken when it ends,
// then saves the later one.
func TestResultKeptDuringASaveWaitsForIt(t *testing.T) {
	ctx := keptAtOnce()
	u, _, release, first := savingKept()
	laterSaves := 0
	tries := 0
	_ = u.save(ctx, "cs_1", func() error {
		if tries++; tries == 1 {
			return refused // kept
		}
		laterSaves++
		return nil
	})
	if found, err := u.flushOne("cs_1"); !found || err == nil {
		t.Errorf("the later result while the earlier is being saved: found %v, err %v; want it not saved beside it", found, err)
	}
	flushed := make(chan error, 1)
	go func() { flushed <- u.flush() }()
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-flushed:
		if err != nil {
			t.Errorf("flush: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("flush still waits after the earlier save ended")
	}
	if laterSaves != 1 || u.len() != 0 {
		t.Errorf("the later result saved %d times, %d kept; want once, none", laterSaves, u.len())
	}
}

// refused is what a full disk makes a result's save return.
var refused = fmt.Errorf("%w: no space left on device", storehealth.ErrUnwritable)

// keptAtOnce is a context that has ended: a result whose save is refused is
// kept at once, without the in-line retries.
func keptAtOnce() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// savingKept keeps a refused result for cs_1, then starts flushOne on it
// and returns while that save runs: it ends when release is closed, and
// done then says how flushOne ended. saves counts the save's runs once the
// store took writes.
func savingKept() (u *unsaved, saves *int, release chan struct{}, done chan error) {
	u, saves = &unsaved{}, new(int)
	entered, release, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	writable := false
	_ = u.save(keptAtOnce(), "cs_1", func() error {
		if !writable {
			return refused
		}
		*saves++
		close(entered)
		<-release
		return nil
	})
	writable = true
	go func() {
		_, err := u.flushOne("cs_1")
		done <- err
	}()
	<-entered
	return u, saves, release, done
}
