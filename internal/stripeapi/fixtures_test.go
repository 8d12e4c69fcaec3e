package stripeapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/internal/fixtures"
)

// fixtureEvent is what a test knows of an event fixture without fulfilld's
// decoding: the fields as the file has them.
type fixtureEvent struct {
	ID         string `json:"id"`
	Type       string `json:"type"`
	APIVersion string `json:"api_version"`
	Created    int64  `json:"created"`
	Data       struct {
		Object struct {
			ID     string `json:"id"`
			Object string `json:"object"`
		} `json:"object"`
	} `json:"data"`
}

func readFixtureEvent(t *testing.T, name string) (fixtureEvent, []byte) {
	t.Helper()
	raw := fixtures.Load(t, name)
	var ev fixtureEvent
	if err := json.Unmarshal(raw, &ev); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return ev, raw
}

// wantObject is the kind of object an event of typ must carry for routing.
func wantObject(typ string) (object, prefix string) {
	if strings.HasPrefix(typ, "payment_intent.") {
		return "payment_intent", "pi_"
	}
	return "checkout.session", "cs_"
}

// Every event fixture, in the pinned and the older API version, is read
// without error, with the id, type and created time Stripe sent and the
// data.object routing needs: an older-version event (its request a bare
// string, its PaymentIntent with charges) is not rejected as malformed.
func TestDecodeEventFixtures(t *testing.T) {
	for _, name := range fixtures.Glob(t, "events/*/*.json") {
		t.Run(name, func(t *testing.T) {
			want, raw := readFixtureEvent(t, name)
			ev := decodeEvent(raw)
			if ev.Err != nil {
				t.Fatalf("decode: %v", ev.Err)
			}
			if ev.ID != want.ID || ev.Type != want.Type || !ev.Created.Equal(time.Unix(want.Created, 0)) {
				t.Errorf("read id %q type %q created %v, want %q %q %v", ev.ID, ev.Type, ev.Created, want.ID, want.Type, time.Unix(want.Created, 0).UTC())
			}
			var obj struct{ ID, Object string }
			if err := json.Unmarshal(ev.ObjectJSON(), &obj); err != nil {
				t.Fatalf("data.object: %v", err)
			}
			object, prefix := wantObject(want.Type)
			if obj.Object != object || !strings.HasPrefix(obj.ID, prefix) || obj.ID != want.Data.Object.ID {
				t.Errorf("data.object is %s %q, want the %s %q", obj.Object, obj.ID, object, want.Data.Object.ID)
			}
		})
	}
}

// fixtureServer answers GET /v1/events with every event fixture in one
// page, newest first, and GET /v1/checkout/sessions/{id} with the session
// fixture of that id, its line_items expanded with the line item fixture.
func fixtureServer(t *testing.T) (*httptest.Server, []string) {
	t.Helper()
	names := fixtures.Glob(t, "events/*/*.json")
	var page []json.RawMessage
	var ids []string
	for i := len(names) - 1; i >= 0; i-- { // the generator numbers them oldest first
		ev, raw := readFixtureEvent(t, names[i])
		page = append(page, raw)
		ids = append(ids, ev.ID)
	}
	sessions := map[string]json.RawMessage{}
	for _, name := range fixtures.Glob(t, "checkout_sessions/*.json") {
		if path.Base(name) == "line_item.json" {
			continue
		}
		var s struct{ ID string }
		raw := fixtures.Load(t, name)
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		sessions[s.ID] = raw
	}
	item := json.RawMessage(fixtures.Load(t, "checkout_sessions/line_item.json"))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch id, ok := strings.CutPrefix(r.URL.Path, "/v1/checkout/sessions/"); {
		case r.URL.Path == "/v1/events":
			json.NewEncoder(w).Encode(map[string]any{"object": "list", "url": "/v1/events", "has_more": false, "data": page})
		case ok && sessions[id] != nil:
			var s map[string]any
			json.Unmarshal(sessions[id], &s)
			if r.URL.Query().Get("expand[0]") == "line_items" {
				s["line_items"] = map[string]any{"object": "list", "url": r.URL.Path + "/line_items", "has_more": false, "data": []json.RawMessage{item}}
			}
			json.NewEncoder(w).Encode(s)
		default:
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such object"}}`))
		}
	}))
	t.Cleanup(srv.Close)
	return srv, ids
}

func fixtureClient(srv *httptest.Server) *Client {
	c := New(Config{APIKey: "sk_test_fixtures", APIBase: srv.URL, Limits: Limits{Global: 1000, Endpoint: 1000}, MaxRetries: 1})
	c.Transport.MinBackoff, c.Transport.MaxBackoff = time.Millisecond, time.Millisecond
	return c
}

// A page of every fixture event, both API versions mixed as an account that
// changed versions lists them, comes back through stripe-go in Stripe's
// order, each readable, each event's JSON kept as Stripe sent it (what
// forwarding delivers and notify hands over).
func TestListEventsReadsEveryFixture(t *testing.T) {
	srv, ids := fixtureServer(t)
	page, err := fixtureClient(srv).ListEvents(context.Background(), EventQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Events) != len(ids) {
		t.Fatalf("listed %d events, want %d", len(page.Events), len(ids))
	}
	for i, ev := range page.Events {
		if ev.Err != nil || ev.ID != ids[i] {
			t.Errorf("event %d: id %q err %v, want %q without error", i, ev.ID, ev.Err, ids[i])
			continue
		}
		var got, want any
		json.Unmarshal(ev.Raw, &got)
		json.Unmarshal(fixtures.Load(t, "events/"+apiVersionOf(t, ev.Raw)+"/"+fileOf(t, ev.ID)), &want)
		if gj, wj := mustJSON(t, got), mustJSON(t, want); gj != wj {
			t.Errorf("event %s: kept JSON differs from what Stripe sent", ev.ID)
		}
	}
}

func apiVersionOf(t *testing.T, raw []byte) string {
	t.Helper()
	var v struct {
		APIVersion string `json:"api_version"`
	}
	json.Unmarshal(raw, &v)
	return v.APIVersion
}

// fileOf finds the fixture file of an event id.
func fileOf(t *testing.T, id string) string {
	t.Helper()
	for _, name := range fixtures.Glob(t, "events/*/*.json") {
		if ev, _ := readFixtureEvent(t, name); ev.ID == id {
			return path.Base(name)
		}
	}
	t.Fatalf("no fixture has event %s", id)
	return ""
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Every session fixture — each mode, each payment_status — is retrieved
// through stripe-go v76 (whose types know 2023-10-16, while the fixtures
// carry fields added since) with what fulfilment acts on read correctly, and
// the JSON the operator's action receives is the session as Stripe sent it
// plus its line items.
func TestGetSessionReadsEveryFixture(t *testing.T) {
	srv, _ := fixtureServer(t)
	c := fixtureClient(srv)
	for _, name := range fixtures.Glob(t, "checkout_sessions/*.*.json") {
		t.Run(name, func(t *testing.T) {
			raw := fixtures.Load(t, name)
			var want map[string]any
			if err := json.Unmarshal(raw, &want); err != nil {
				t.Fatal(err)
			}
			id := want["id"].(string)
			s, err := c.GetSession(context.Background(), id)
			if err != nil {
				t.Fatalf("retrieve: %v", err)
			}
			wantPI, _ := want["payment_intent"].(string)
			if s.ID != id || s.Status != want["status"] || s.PaymentStatus != want["payment_status"] || s.PaymentIntent != wantPI {
				t.Errorf("read %s status %q payment_status %q payment_intent %q, want %s %v %v %q",
					s.ID, s.Status, s.PaymentStatus, s.PaymentIntent, id, want["status"], want["payment_status"], wantPI)
			}
			if s.LineItems != 1 {
				t.Errorf("line items = %d, want 1", s.LineItems)
			}
			var got map[string]any
			if err := json.Unmarshal(s.JSON, &got); err != nil {
				t.Fatal(err)
			}
			for k, v := range want {
				if mustJSON(t, got[k]) != mustJSON(t, v) {
					t.Errorf("the action's session JSON has %s = %s, Stripe sent %s", k, mustJSON(t, got[k]), mustJSON(t, v))
				}
			}
			if _, ok := got["line_items"]; !ok {
				t.Error("the action's session JSON has no line_items")
			}
		})
	}
}
