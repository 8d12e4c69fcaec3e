package fulfill

import (
	"context"
	"fmt"
	"testing"

	"github.com/fulfilld/fulfilld/internal/storehealth"
)

// TestKeptResultKeptMeanwhileStays: while a kept result is being saved, a
// later attempt of the same item has its own result refused and kept; the
// save that ends afterwards must not drop that one, or its action would
// run again with nothing to say it ran.
func TestKeptResultKeptMeanwhileStays(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // keep after the first refusal, without waiting
	refused := fmt.Errorf("%w: no space left on device", storehealth.ErrUnwritable)
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
