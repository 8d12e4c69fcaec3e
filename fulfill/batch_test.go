package fulfill_test

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// bodyAction keeps the body each session's action received.
type bodyAction struct {
	mu     sync.Mutex
	bodies map[string][]byte
	runs   map[string]int
}

func (a *bodyAction) Deliver(_ context.Context, d fulfill.Delivery) (fulfill.Outcome, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	id := d.IdempotencyKey[len("fulfilld-"):]
	a.bodies[id] = d.Body
	a.runs[id]++
	return fulfill.Outcome{}, nil
}

// TestQueueReadsSessionsInBatches: sessions queued with their created
// times are read a hundred to a list request, and what each action receives
// is byte for byte what a retrieve of that session returns. A session the
// list does not return (queued with a created time that is wrong, as when
// the list has not caught up) is retrieved on its own and fulfilled all the
// same.
func TestQueueReadsSessionsInBatches(t *testing.T) {
	sim := stripesim.New(stripesim.Options{})
	t.Cleanup(sim.Close)
	base := time.Now().Add(-3 * time.Hour).Truncate(time.Second)
	now := base.Add(2 * time.Hour)
	const n = 250
	created := map[string]time.Time{}
	var ids []string
	for i := range n {
		at := base.Add(time.Duration(i) * 10 * time.Second)
		id := sim.CreateSession(stripesim.SessionParams{Created: at, LineItems: 1 + i%4})
		sim.CompleteSession(id, "paid", at.Add(time.Minute))
		ids = append(ids, id)
		created[id] = at
	}
	// The lists miss this one: it was created a day before the time it was
	// queued with, outside every range listed.
	missed := sim.CreateSession(stripesim.SessionParams{Created: base.Add(-24 * time.Hour)})
	sim.CompleteSession(missed, "paid", base)
	ids = append(ids, missed)
	created[missed] = base.Add(5 * time.Second)

	db := openTestDB(t)
	if err := db.Update(func(tx store.Tx) error {
		for _, id := range ids {
			if _, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: id, EventID: "evt_" + id, Trigger: fulfill.TriggerEvent,
				At: now, SessionCreated: created[id]}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	client := stripeapi.New(stripeapi.Config{APIKey: stripesim.DefaultAPIKey, APIBase: sim.URL()})
	act := &bodyAction{bodies: map[string][]byte{}, runs: map[string]int{}}
	f := &fulfill.Fulfiller{DB: ledger(db), Sessions: client, Action: act, MaxAttempts: 3, Concurrency: 4,
		Now: func() time.Time { return now }}
	wake := make(chan struct{})
	close(wake)
	res, err := f.Run(context.Background(), fulfill.RunOptions{Wake: wake, UntilIdle: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Fulfilled != len(ids) {
		t.Fatalf("fulfilled %d of %d", res.Fulfilled, len(ids))
	}
	st := sim.Stats()
	lists, retrieves := st.ByEndpoint["GET /v1/checkout/sessions"], st.ByEndpoint["GET /v1/checkout/sessions/:id"]
	if retrieves != 1 {
		t.Errorf("%d sessions were retrieved one by one, want 1 (the one the list missed)", retrieves)
	}
	// Three pages hold them all; loads planned at the same moment may
	// overlap, so up to twice that is allowed (still under 0.03 a session).
	if max := int64(2 * (n/100 + 1)); lists > max {
		t.Errorf("%d list requests for %d sessions, want at most %d", lists, n, max)
	}
	t.Logf("%d sessions: %d list requests, %d retrieves, %d line-item pages; %+v", n, lists, retrieves,
		st.ByEndpoint["GET /v1/checkout/sessions/:id/line_items"], f.BatchStats())

	for _, id := range ids {
		if act.runs[id] != 1 {
			t.Errorf("%s: action ran %d times", id, act.runs[id])
			continue
		}
		want, err := client.GetSession(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(act.bodies[id], want.JSON) {
			t.Errorf("%s: the action received\n%.300s\nbut a retrieve returns\n%.300s", id, act.bodies[id], want.JSON)
		}
	}
}
