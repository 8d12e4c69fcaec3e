package stripeapi_test

import (
	"bytes"
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// TestListedSessionsEqualRetrieves: a page of complete sessions listed
// with their line items is, session for session, what one retrieve each
// returns — line items past the expanded first page included — and costs
// one request for the page plus one per extra page of line items.
func TestListedSessionsEqualRetrieves(t *testing.T) {
	sim := stripesim.New(stripesim.Options{})
	t.Cleanup(sim.Close)
	base := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
	var ids []string
	for i := range 7 {
		items := 1 + i
		if i == 3 {
			items = 230 // three pages of line items
		}
		id := sim.CreateSession(stripesim.SessionParams{Created: base.Add(time.Duration(i) * time.Second), LineItems: items})
		status := "paid"
		if i == 5 {
			status = "unpaid"
		}
		sim.CompleteSession(id, status, base.Add(time.Minute))
		ids = append(ids, id)
	}
	// Outside the range: not listed.
	outside := sim.CreateSession(stripesim.SessionParams{Created: base.Add(time.Hour)})
	sim.CompleteSession(outside, "paid", base.Add(time.Hour))

	c := newClient(t, sim, stripeapi.Limits{})
	ctx := context.Background()
	before := sim.Stats().Total
	page, err := c.ListCompleteSessions(ctx, base, base.Add(6*time.Second), "")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := sim.Stats().Total-before, int64(1+3); got != want {
		t.Errorf("the page took %d requests, want %d (the list, then the 220 line items past the expanded ten in pages of 100)", got, want)
	}
	if page.HasMore || page.Unreadable != 0 || len(page.Sessions) != len(ids) {
		t.Fatalf("listed %d sessions (has_more %v, unreadable %d), want %d", len(page.Sessions), page.HasMore, page.Unreadable, len(ids))
	}
	listed := map[string]*stripeapi.Session{}
	for _, s := range page.Sessions {
		listed[s.ID] = s
	}
	for _, id := range ids {
		got := listed[id]
		if got == nil {
			t.Errorf("%s: not listed", id)
			continue
		}
		want, err := c.GetSession(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.JSON, want.JSON) {
			t.Errorf("%s: listed body differs from the retrieved one:\nlisted    %.300s\nretrieved %.300s", id, got.JSON, want.JSON)
		}
		g, w := *got, *want
		g.JSON, w.JSON = nil, nil
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%s: listed %+v, retrieved %+v", id, *got, *want)
		}
	}
	if listed[outside] != nil {
		t.Errorf("%s was created outside the range but listed", outside)
	}
}
