package poller_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/fixtures"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/internal/stripesim"
	"github.com/fulfilld/fulfilld/poller"
)

// eventFixture is an event file as the test reads it, apart from fulfilld.
type eventFixture struct {
	name string
	raw  json.RawMessage
	ev   struct {
		ID         string `json:"id"`
		Type       string `json:"type"`
		APIVersion string `json:"api_version"`
		Created    int64  `json:"created"`
		Data       struct {
			Object struct {
				ID               string `json:"id"`
				Status           string `json:"status"`
				LastPaymentError *struct {
					Message string `json:"message"`
				} `json:"last_payment_error"`
			} `json:"object"`
		} `json:"data"`
	}
}

func loadEventFixtures(t *testing.T) []eventFixture {
	t.Helper()
	var out []eventFixture
	for _, name := range fixtures.Glob(t, "events/*/*.json") {
		f := eventFixture{name: name, raw: fixtures.Load(t, name)}
		if err := json.Unmarshal(f.raw, &f.ev); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out = append(out, f)
	}
	return out
}

// serveEventFixtures answers GET /v1/events as Stripe does for these
// events: filtered by created[gte], created[lt] and type or types[], newest
// first, in one page. GET /v1/checkout/sessions/{id} answers with the
// session as its event carries it, line_items expanded with the line item
// fixture.
func serveEventFixtures(t *testing.T, evs []eventFixture) *httptest.Server {
	t.Helper()
	sorted := slices.Clone(evs)
	slices.SortStableFunc(sorted, func(a, b eventFixture) int { return int(b.ev.Created - a.ev.Created) })
	sessions := map[string]json.RawMessage{}
	for _, f := range evs {
		var ev struct {
			Data struct{ Object json.RawMessage } `json:"data"`
		}
		if json.Unmarshal(f.raw, &ev) == nil && strings.HasPrefix(f.ev.Type, "checkout.session.") {
			sessions[f.ev.Data.Object.ID] = ev.Data.Object
		}
	}
	item := json.RawMessage(fixtures.Load(t, "checkout_sessions/line_item.json"))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if id, ok := strings.CutPrefix(r.URL.Path, "/v1/checkout/sessions/"); ok && sessions[id] != nil {
			var s map[string]any
			json.Unmarshal(sessions[id], &s)
			s["line_items"] = map[string]any{"object": "list", "url": r.URL.Path + "/line_items", "has_more": false, "data": []json.RawMessage{item}}
			json.NewEncoder(w).Encode(s)
			return
		}
		if r.URL.Path != "/v1/events" {
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such object"}}`))
			return
		}
		q := r.URL.Query()
		bound := func(key string) (int64, bool) {
			v, err := strconv.ParseInt(q.Get(key), 10, 64)
			return v, err == nil
		}
		var types []string
		for k, v := range q {
			if k == "type" || strings.HasPrefix(k, "types[") {
				types = append(types, v...)
			}
		}
		data := []json.RawMessage{}
		for _, f := range sorted {
			if gte, ok := bound("created[gte]"); ok && f.ev.Created < gte {
				continue
			}
			if lt, ok := bound("created[lt]"); ok && f.ev.Created >= lt {
				continue
			}
			if len(types) > 0 && !slices.Contains(types, f.ev.Type) {
				continue
			}
			data = append(data, f.raw)
		}
		json.NewEncoder(w).Encode(map[string]any{"object": "list", "url": "/v1/events", "has_more": false, "data": data})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// Every fixture event — each handled type, in the pinned API version and an
// older one — is handled as SPEC.md says: a completed or async-succeeded
// session is queued for fulfillment whatever its mode; an async failure or
// an expiry ends the session as payment_failed / expired; a payment_intent
// event records the PaymentIntent's status, with last_payment_error.message
// for a failure; the three payment-failure types queue one notification.
// None is reported as malformed.
func TestEveryFixtureEventIsHandled(t *testing.T) {
	evs := loadEventFixtures(t)
	var newest int64
	for _, f := range evs {
		newest = max(newest, f.ev.Created)
	}
	now := time.Unix(newest, 0).Add(time.Hour)
	db, err := boltstore.Open(filepath.Join(t.TempDir(), "fulfilld.db"), false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	client := stripeapi.New(stripeapi.Config{APIKey: testKey, APIBase: serveEventFixtures(t, evs).URL,
		Limits: stripeapi.Limits{Global: 1000, Endpoint: 1000}, Now: func() time.Time { return now }})
	p := &poller.Poller{DB: store.As[poller.Tx](db), Events: client, Types: defaultTypes, Lookback: 10 * time.Minute,
		Now: func() time.Time { return now }, Routes: fulfill.NotifyRoutes()}
	ctx := context.Background()
	if _, err := p.Start(ctx, now.Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	res, err := p.Poll(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if res.New != len(evs) {
		t.Errorf("pass handled %d new events, want all %d fixtures", res.New, len(evs))
	}

	wantCounts := map[[2]string]uint64{}
	err = db.View(func(tx store.Tx) error {
		for _, f := range evs {
			obj := f.ev.Data.Object
			var outcome string
			switch typ := f.ev.Type; {
			case typ == poller.TypeCompleted || typ == poller.TypeAsyncSucceeded:
				outcome = poller.OutcomeQueued
				checkSession(t, tx, f, fulfill.StatePending)
			case typ == poller.TypeAsyncFailed:
				outcome = poller.OutcomeEnded
				checkSession(t, tx, f, fulfill.StatePaymentFailed)
			case typ == poller.TypeExpired:
				outcome = poller.OutcomeEnded
				checkSession(t, tx, f, fulfill.StateExpired)
			case strings.HasPrefix(typ, "payment_intent."):
				outcome = poller.OutcomeRecorded
				pi, ok, _ := fulfill.GetPaymentIntent(tx, obj.ID)
				if !ok {
					t.Errorf("%s: PaymentIntent %s not recorded", f.name, obj.ID)
					break
				}
				if pi.Status != obj.Status || pi.EventID != f.ev.ID || pi.EventType != typ {
					t.Errorf("%s: recorded %s status %q from %s %s, want %q from %s %s",
						f.name, obj.ID, pi.Status, pi.EventType, pi.EventID, obj.Status, typ, f.ev.ID)
				}
				wantErr := ""
				if obj.LastPaymentError != nil {
					wantErr = obj.LastPaymentError.Message
				}
				if typ == "payment_intent.payment_failed" && wantErr == "" {
					t.Errorf("%s: the fixture has no last_payment_error.message to record", f.name)
				}
				if pi.LastError != wantErr {
					t.Errorf("%s: recorded last_payment_error %q, want %q", f.name, pi.LastError, wantErr)
				}
			default:
				t.Fatalf("%s: no expectation for type %s", f.name, typ)
			}
			wantCounts[[2]string{f.ev.Type, outcome}]++

			n, ok, err := fulfill.GetDelivery(tx, fulfill.DestNotify, f.ev.ID)
			if err != nil {
				return err
			}
			switch {
			case fulfill.NotifyTypes[f.ev.Type] && !ok:
				t.Errorf("%s: no notification queued for a payment failure", f.name)
			case fulfill.NotifyTypes[f.ev.Type] && mustCompact(t, n.Event) != mustCompact(t, f.raw):
				t.Errorf("%s: the notification would deliver other JSON than Stripe sent", f.name)
			case !fulfill.NotifyTypes[f.ev.Type] && ok:
				t.Errorf("%s: notification queued for %s", f.name, f.ev.Type)
			}
		}
		gotCounts := map[[2]string]uint64{}
		counts, err := cursor.Counts(tx)
		if err != nil {
			return err
		}
		for _, c := range counts {
			gotCounts[[2]string{c.Type, c.Outcome}] = c.Count
		}
		for k, n := range wantCounts {
			if gotCounts[k] != n {
				t.Errorf("%s counted %s %d times, want %d", k[0], k[1], gotCounts[k], n)
			}
		}
		for k, n := range gotCounts {
			if _, ok := wantCounts[k]; !ok {
				t.Errorf("%s counted %s %d times, want none", k[0], k[1], n)
			}
		}
		bad, total, err := cursor.BadEvents(tx, 10)
		if err != nil {
			return err
		}
		if total != 0 {
			t.Errorf("%d fixture events recorded as malformed: %+v", total, bad)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if versions := fixtureVersions(evs); !slices.Equal(versions, []string{"2017-02-14", stripeapi.APIVersion}) {
		t.Errorf("fixtures cover API versions %v, want the pinned one and an older one", versions)
	}
}

func checkSession(t *testing.T, tx store.Tx, f eventFixture, want fulfill.State) {
	t.Helper()
	id := f.ev.Data.Object.ID
	rec, ok, err := fulfill.Get(tx, id)
	switch {
	case err != nil:
		t.Errorf("%s: read session %s: %v", f.name, id, err)
	case !ok:
		t.Errorf("%s: session %s not recorded", f.name, id)
	case rec.State != want || rec.EventID != f.ev.ID:
		t.Errorf("%s: session %s is %s by event %q, want %s by %s", f.name, id, rec.State, rec.EventID, want, f.ev.ID)
	}
}

func mustCompact(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func fixtureVersions(evs []eventFixture) []string {
	var vs []string
	for _, f := range evs {
		if v := path.Base(path.Dir(f.name)); !slices.Contains(vs, v) {
			vs = append(vs, v)
		}
	}
	slices.Sort(vs)
	return vs
}

// A session event of every fixture, in both API versions, ends where SPEC.md
// says once the queue has been worked: a session whose completion or async
// success is listed is fulfilled when it is paid or needs no payment (every
// mode: payment, subscription, setup) — the action running once, with the
// event's id and all line items — and waits as awaiting_payment when it is
// unpaid; a session whose payment failed or that expired is never fulfilled.
func TestFixtureSessionsEndAsTheirPaymentStatusSays(t *testing.T) {
	evs := loadEventFixtures(t)
	var newest int64
	for _, f := range evs {
		newest = max(newest, f.ev.Created)
	}
	now := time.Unix(newest, 0).Add(time.Hour)
	h := &harness{t: t, clock: stripesim.NewClock(now), action: newRecorder()}
	h.client = stripeapi.New(stripeapi.Config{APIKey: testKey, APIBase: serveEventFixtures(t, evs).URL,
		Limits: stripeapi.Limits{Global: 1000, Endpoint: 1000}, Now: h.clock.Now})
	h.open(filepath.Join(t.TempDir(), "fulfilld.db"))
	h.pass(now.Add(-24 * time.Hour))

	sessions := 0
	for _, f := range evs {
		if !strings.HasPrefix(f.ev.Type, "checkout.session.") {
			continue
		}
		sessions++
		var obj struct {
			ID            string `json:"id"`
			Mode          string `json:"mode"`
			PaymentStatus string `json:"payment_status"`
		}
		var ev struct {
			Data struct{ Object json.RawMessage } `json:"data"`
		}
		if err := json.Unmarshal(f.raw, &ev); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(ev.Data.Object, &obj); err != nil {
			t.Fatal(err)
		}
		want := fulfill.StateFulfilled
		switch {
		case f.ev.Type == poller.TypeAsyncFailed:
			want = fulfill.StatePaymentFailed
		case f.ev.Type == poller.TypeExpired:
			want = fulfill.StateExpired
		case obj.PaymentStatus == "unpaid":
			want = fulfill.StateAwaitingPayment
		}
		rec := h.record(obj.ID)
		runs := h.action.calls(obj.ID)
		if rec.State != want {
			t.Errorf("%s (%s, %s): session is %s, want %s", f.name, obj.Mode, obj.PaymentStatus, rec.State, want)
		}
		switch {
		case want != fulfill.StateFulfilled && len(runs) > 0:
			t.Errorf("%s: the action ran for a session that is %s", f.name, want)
		case want == fulfill.StateFulfilled && len(runs) != 1:
			t.Errorf("%s: the action ran %d times, want once", f.name, len(runs))
		case want == fulfill.StateFulfilled && (runs[0].EventID != f.ev.ID || runs[0].Trigger != "event" || runs[0].LineItems != 1):
			t.Errorf("%s: the action ran with event %q trigger %q and %d line items, want %s, event, 1",
				f.name, runs[0].EventID, runs[0].Trigger, runs[0].LineItems, f.ev.ID)
		}
	}
	if sessions == 0 {
		t.Fatal("no checkout.session fixtures")
	}
}
