package stripesim

import (
	"cmp"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
)

// seedEvents adds n events with shuffled creation times, three per second,
// so that ties are common and insertion order differs from time order. It
// returns their ids in Stripe's list order: created desc, then newest
// insertion first.
func seedEvents(t *testing.T, srv *Server, n int, typ string) []string {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	type added struct {
		id      string
		created time.Time
		order   int
	}
	evs := make([]added, n)
	for i, k := range rng.Perm(n) {
		created := t0.Add(time.Duration(k/3) * time.Second)
		evs[i] = added{id: srv.AddEvent("", typ, created, json.RawMessage(`{"object":"checkout.session"}`)), created: created, order: i}
	}
	slices.SortFunc(evs, func(a, b added) int {
		if c := b.created.Compare(a.created); c != 0 {
			return c
		}
		return cmp.Compare(b.order, a.order)
	})
	ids := make([]string, n)
	for i, e := range evs {
		ids[i] = e.id
	}
	return ids
}

func TestEventsAutoPagingNewestFirst(t *testing.T) {
	f := newFixture(t, Options{})
	want := seedEvents(t, f.srv, 250, "checkout.session.completed")

	p := &stripe.EventListParams{}
	p.Limit = stripe.Int64(100)
	got := mustListEventIDs(t, f.api, p)

	equalIDs(t, "auto-paged events", got, want)
	if n := f.srv.Stats().ByEndpoint["GET /v1/events"]; n != 3 {
		t.Errorf("GET /v1/events requests = %d, want 3 pages of 100", n)
	}
	reqs := f.srv.Requests()
	if last := reqs[len(reqs)-1]; last.Query.Get("starting_after") != want[199] || last.Status != http.StatusOK {
		t.Errorf("last page request = %+v, want starting_after=%s and 200", last, want[199])
	}
}

func TestEventsEndingBeforeYieldsOldestToNewest(t *testing.T) {
	f := newFixture(t, Options{})
	all := seedEvents(t, f.srv, 230, "payment_intent.succeeded")

	tests := []struct {
		name   string
		cursor int // index into all (newest-first)
		limit  int64
	}{
		{"from an old event, small pages", 200, 7},
		{"from the oldest event, full pages", 229, 100},
		{"from the newest event", 0, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &stripe.EventListParams{}
			p.Limit = stripe.Int64(tt.limit)
			p.EndingBefore = stripe.String(all[tt.cursor])
			got := mustListEventIDs(t, f.api, p)
			equalIDs(t, "events after cursor", got, reversed(all[:tt.cursor]))
		})
	}
}

func TestEventsFilters(t *testing.T) {
	f := newFixture(t, Options{})
	add := func(typ string, sec int, opts ...EventOpt) string {
		return f.srv.AddEvent("", typ, t0.Add(time.Duration(sec)*time.Second), json.RawMessage(`{}`), opts...)
	}
	// Newest first: e6 … e1.
	e1 := add("checkout.session.completed", 10)
	e2 := add("checkout.session.expired", 20, DeliveryFailed())
	e3 := add("payment_intent.succeeded", 30)
	e4 := add("charge.succeeded", 30)
	e5 := add("checkout.session.async_payment_succeeded", 40, DeliveryFailed())
	e6 := add("customer.created", 50)
	sec := func(n int) int64 { return t0.Unix() + int64(n) }

	tests := []struct {
		name  string
		setup func(p *stripe.EventListParams)
		want  []string
	}{
		{"no filter", func(p *stripe.EventListParams) {}, []string{e6, e5, e4, e3, e2, e1}},
		{"types", func(p *stripe.EventListParams) {
			p.Types = stripe.StringSlice([]string{"checkout.session.completed", "payment_intent.succeeded"})
		}, []string{e3, e1}},
		{"type exact", func(p *stripe.EventListParams) { p.Type = stripe.String("charge.succeeded") }, []string{e4}},
		{"type wildcard", func(p *stripe.EventListParams) { p.Type = stripe.String("checkout.session.*") }, []string{e5, e2, e1}},
		{"type star", func(p *stripe.EventListParams) { p.Type = stripe.String("*") }, []string{e6, e5, e4, e3, e2, e1}},
		{"delivery failed", func(p *stripe.EventListParams) { p.DeliverySuccess = stripe.Bool(false) }, []string{e5, e2}},
		{"delivery succeeded", func(p *stripe.EventListParams) { p.DeliverySuccess = stripe.Bool(true) }, []string{e6, e4, e3, e1}},
		{"created exact", func(p *stripe.EventListParams) { p.Created = stripe.Int64(sec(30)) }, []string{e4, e3}},
		{"created gt", func(p *stripe.EventListParams) {
			p.CreatedRange = &stripe.RangeQueryParams{GreaterThan: sec(30)}
		}, []string{e6, e5}},
		{"created gte and lt", func(p *stripe.EventListParams) {
			p.CreatedRange = &stripe.RangeQueryParams{GreaterThanOrEqual: sec(20), LesserThan: sec(40)}
		}, []string{e4, e3, e2}},
		{"created lte", func(p *stripe.EventListParams) {
			p.CreatedRange = &stripe.RangeQueryParams{LesserThanOrEqual: sec(20)}
		}, []string{e2, e1}},
		{"created empty range", func(p *stripe.EventListParams) {
			p.CreatedRange = &stripe.RangeQueryParams{GreaterThan: sec(40), LesserThan: sec(50)}
		}, nil},
		{"types with created and limit 1", func(p *stripe.EventListParams) {
			p.Types = stripe.StringSlice([]string{"checkout.session.expired", "checkout.session.completed", "customer.created"})
			p.CreatedRange = &stripe.RangeQueryParams{LesserThan: sec(50)}
			p.Limit = stripe.Int64(1)
		}, []string{e2, e1}},
		{"delivery failed, types and created range (a repair sweep)", func(p *stripe.EventListParams) {
			p.DeliverySuccess = stripe.Bool(false)
			p.Types = stripe.StringSlice([]string{"checkout.session.expired", "checkout.session.async_payment_succeeded", "checkout.session.completed"})
			p.CreatedRange = &stripe.RangeQueryParams{GreaterThanOrEqual: sec(10), LesserThan: sec(40)}
		}, []string{e2}},
		{"starting_after with a type filter", func(p *stripe.EventListParams) {
			p.Type = stripe.String("checkout.session.*")
			p.StartingAfter = stripe.String(e3) // a cursor the filter itself excludes
		}, []string{e2, e1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &stripe.EventListParams{}
			tt.setup(p)
			equalIDs(t, "events", mustListEventIDs(t, f.api, p), tt.want)
		})
	}
}

func TestEventsListErrors(t *testing.T) {
	f := newFixture(t, Options{})
	id := f.srv.AddEvent("", "checkout.session.completed", t0, json.RawMessage(`{}`))
	many := make([]string, 21)
	for i := range many {
		many[i] = "checkout.session.completed"
	}

	tests := []struct {
		name  string
		setup func(p *stripe.EventListParams)
		want  wantStripeError
	}{
		{"type with types", func(p *stripe.EventListParams) {
			p.Type = stripe.String("checkout.session.*")
			p.Types = stripe.StringSlice([]string{"checkout.session.completed"})
		}, wantStripeError{status: 400, code: "parameters_exclusive", param: "types", message: "You may pass either type or types, but not both"}},
		{"21 types", func(p *stripe.EventListParams) { p.Types = stripe.StringSlice(many) },
			wantStripeError{status: 400, param: "types", message: "at most 20"}},
		{"both cursors", func(p *stripe.EventListParams) {
			p.StartingAfter, p.EndingBefore = stripe.String(id), stripe.String(id)
		}, wantStripeError{status: 400, code: "parameters_exclusive", param: "ending_before", message: "only specify one"}},
		{"limit 0", func(p *stripe.EventListParams) { p.Limit = stripe.Int64(0) },
			wantStripeError{status: 400, param: "limit", message: "greater than or equal to 1"}},
		{"limit 101", func(p *stripe.EventListParams) { p.Limit = stripe.Int64(101) },
			wantStripeError{status: 400, param: "limit", message: "less than or equal to 100"}},
		{"unknown starting_after", func(p *stripe.EventListParams) { p.StartingAfter = stripe.String("evt_nope") },
			wantStripeError{status: 400, code: "resource_missing", param: "starting_after", message: "No such event: 'evt_nope'"}},
		{"unknown ending_before", func(p *stripe.EventListParams) { p.EndingBefore = stripe.String("evt_nope") },
			wantStripeError{status: 400, code: "resource_missing", param: "ending_before", message: "No such event: 'evt_nope'"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &stripe.EventListParams{}
			tt.setup(p)
			_, err := listEventIDs(t, f.api, p)
			checkStripeError(t, err, tt.want)
		})
	}
}

func TestEventsLateVisible(t *testing.T) {
	f := newFixture(t, Options{})
	f.clock.Set(t0.Add(time.Minute))
	e1 := f.srv.AddEvent("", "checkout.session.completed", t0, json.RawMessage(`{}`))
	late := f.srv.AddEvent("", "checkout.session.completed", t0.Add(10*time.Second), json.RawMessage(`{}`), VisibleAt(t0.Add(5*time.Minute)))
	e3 := f.srv.AddEvent("", "checkout.session.completed", t0.Add(20*time.Second), json.RawMessage(`{}`))

	equalIDs(t, "before it is visible", mustListEventIDs(t, f.api, nil), []string{e3, e1})
	_, err := f.api.Events.Get(late, nil)
	checkStripeError(t, err, wantStripeError{status: 404, code: "resource_missing", param: "id", message: "No such event"})
	p := &stripe.EventListParams{}
	p.StartingAfter = stripe.String(late)
	_, err = listEventIDs(t, f.api, p)
	checkStripeError(t, err, wantStripeError{status: 400, code: "resource_missing", param: "starting_after"})

	f.clock.Set(t0.Add(5 * time.Minute))
	// It shows up where its created time puts it, behind newer events.
	equalIDs(t, "once visible", mustListEventIDs(t, f.api, nil), []string{e3, late, e1})
	if ev, err := f.api.Events.Get(late, nil); err != nil || ev.ID != late {
		t.Errorf("get late event = %v, %v", ev, err)
	}
}

func TestEventsRetention(t *testing.T) {
	tests := []struct {
		name      string
		retention time.Duration
		age       time.Duration // of the old event when listing
		days      string
	}{
		{"default 30 days", 0, 31 * 24 * time.Hour, "30-day"},
		{"custom 2 days", 48 * time.Hour, 49 * time.Hour, "2-day"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, Options{Retention: tt.retention})
			old := f.srv.AddEvent("", "checkout.session.completed", t0, json.RawMessage(`{}`))
			recent := f.srv.AddEvent("", "checkout.session.completed", t0.Add(tt.age-time.Hour), json.RawMessage(`{}`))
			f.clock.Set(t0.Add(tt.age))

			equalIDs(t, "listed", mustListEventIDs(t, f.api, nil), []string{recent})
			_, err := f.api.Events.Get(old, nil)
			checkStripeError(t, err, wantStripeError{status: 404, code: "resource_missing", param: "id"})
			for _, cursor := range []string{"starting_after", "ending_before"} {
				p := &stripe.EventListParams{}
				if cursor == "starting_after" {
					p.StartingAfter = stripe.String(old)
				} else {
					p.EndingBefore = stripe.String(old)
				}
				_, err = listEventIDs(t, f.api, p)
				se := checkStripeError(t, err, wantStripeError{status: 400, param: cursor, message: "aged out"})
				if !strings.Contains(se.Msg, tt.days) {
					t.Errorf("message %q does not name the %s retention", se.Msg, tt.days)
				}
			}
		})
	}
}

func TestEventsLateInsertion(t *testing.T) {
	f := newFixture(t, Options{})
	want := seedEvents(t, f.srv, 120, "checkout.session.completed")
	equalIDs(t, "before", mustListEventIDs(t, f.api, nil), want)

	// Added after the list was read, but created in the middle of it; in a
	// tie it sorts before older insertions.
	mid := f.srv.AddEvent("", "checkout.session.completed", t0.Add(20*time.Second), json.RawMessage(`{}`))
	var at int
	for at = 0; at < len(want); at++ {
		if ev, _ := f.api.Events.Get(want[at], nil); ev.Created <= t0.Add(20*time.Second).Unix() {
			break
		}
	}
	want = slices.Insert(want, at, mid)
	p := &stripe.EventListParams{}
	p.Limit = stripe.Int64(100)
	equalIDs(t, "after", mustListEventIDs(t, f.api, p), want)
}

func TestTimelineRandomBulkLoad(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var tl timeline[int]
	type key struct {
		created int64
		seq     uint64
	}
	var keys []key
	for round := range 5 {
		for i := range 4000 {
			k := key{created: rng.Int64N(1000), seq: uint64(round*4000 + i + 1)}
			keys = append(keys, k)
			tl.add(k.created, k.seq, nil)
		}
		tl.flush()
		slices.SortFunc(keys, func(a, b key) int {
			return cmp.Or(cmp.Compare(a.created, b.created), cmp.Compare(a.seq, b.seq))
		})
		for i, k := range keys {
			if e := tl.sorted[i]; e.created != k.created || e.seq != k.seq {
				t.Fatalf("round %d: sorted[%d] = %d/%d, want %d/%d", round, i, e.created, e.seq, k.created, k.seq)
			}
			if got := tl.index(k.created, k.seq); got != i {
				t.Fatalf("index(%v) = %d, want %d", k, got, i)
			}
		}
	}
}

func TestEventWireFormat(t *testing.T) {
	f := newFixture(t, Options{})
	cs := f.srv.CreateSession(SessionParams{Created: t0, AmountTotal: 4200, Metadata: map[string]string{"order": "42"}})
	completed := f.srv.CompleteSession(cs, "paid", t0.Add(time.Minute), DeliveryFailed())
	oops := f.srv.AddEvent("evt_custom_oops", "checkout.session.completed", t0.Add(2*time.Minute), json.RawMessage(`"oops"`))

	resp, body := rawGet(t, f.srv, "/v1/events/"+completed, DefaultAPIKey)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Request-Id"), "req_") {
		t.Fatalf("status %d, Request-Id %q", resp.StatusCode, resp.Header.Get("Request-Id"))
	}
	for k, want := range map[string]any{
		"object": "event", "api_version": "2023-10-16", "livemode": false, "pending_webhooks": 1.0,
		"type": "checkout.session.completed", "created": float64(t0.Add(time.Minute).Unix()),
		"request": map[string]any{"id": nil, "idempotency_key": nil},
	} {
		if got, _ := json.Marshal(body[k]); string(got) != mustJSON(t, want) {
			t.Errorf("%s = %s, want %s", k, got, mustJSON(t, want))
		}
	}
	obj := body["data"].(map[string]any)["object"].(map[string]any)
	for k, want := range map[string]any{
		"id": cs, "object": "checkout.session", "status": "complete", "payment_status": "paid",
		"amount_total": 4200.0, "currency": "usd", "mode": "payment", "url": nil,
		"metadata": map[string]any{"order": "42"}, "payment_intent": f.srv.PaymentIntentID(cs),
	} {
		if got, _ := json.Marshal(obj[k]); string(got) != mustJSON(t, want) {
			t.Errorf("data.object.%s = %s, want %s", k, got, mustJSON(t, want))
		}
	}
	if _, ok := obj["line_items"]; ok {
		t.Error("event snapshot carries line_items; Stripe's does not")
	}

	// stripe-go cannot decode a non-object data.object; the raw body is
	// what a defensive client sees.
	if _, err := f.api.Events.Get(oops, nil); err == nil {
		t.Error("stripe-go decoded a string data.object; expected it to refuse")
	}
	if _, body := rawGet(t, f.srv, "/v1/events/"+oops, DefaultAPIKey); body["data"].(map[string]any)["object"] != "oops" {
		t.Errorf("data = %v, want object \"oops\"", body["data"])
	}
	if !strings.HasPrefix(completed, "evt_") || len(completed) != 28 {
		t.Errorf("generated event id %q, want evt_ and 24 characters", completed)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
