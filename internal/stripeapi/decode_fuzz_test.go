package stripeapi

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// FuzzDecodeEvent: whatever Stripe (or anything between) sends as a listed
// event, reading it never panics, and an event without an error always has
// what routing needs. The seeds run as a plain test in CI; `go test -fuzz
// FuzzDecodeEvent ./internal/stripeapi` explores further.
func FuzzDecodeEvent(f *testing.F) {
	for _, seed := range []string{
		`{"id":"evt_1","type":"checkout.session.completed","created":1700000000,"data":{"object":{"id":"cs_1","object":"checkout.session"}}}`,
		`{"id":"evt_1","type":"checkout.session.completed","created":1700000000,"data":{"object":"oops"}}`,
		`{"id":7,"type":[],"created":"yesterday","data":null}`,
		`{"id":"evt_1","type":"x","created":-5,"data":{}}`,
		`{"id":"evt_1","type":"x","created":1e300,"data":{"object":{}}}`,
		`{"id":"evt_1","type":"payment_intent.payment_failed","created":1700000000.5,"data":{"object":{"id":"pi_1","object":"payment_intent","status":"requires_payment_method","last_payment_error":{"message":"declined"}}}}`,
		`{"id":"evt_1","type":"checkout.session.completed","created":1700000000,"data":{"object":{"id":"cs_1","object":"checkout.session","created":"soon"}}}`,
		`[]`, `null`, `"evt"`, `{`, ``,
		`{"id":"evt_1","type":"checkout.session.completed","created":1700000000,"data":{"object":{"id":"cs_a","object":"checkout.session"},"object":{"id":"cs_b"}}}`,
		// What encoding/json reads differently from a plain reading: the
		// quick read leaves these to the loose one.
		`{"id":"evt_1","ID":"evt_2","type":"x","created":1700000000,"data":{"object":{"id":"cs_1"}}}`,
		`{"id":"evt_1","type":"x","created":1700000000,"data":{"object":{"id":"cs_1","ſtatus":"open","statuS":"paid"}}}`,
		`{"id":"evt_1","type":"x","created":1700000000,"data":{"object":{"id":"cs_1","status":"a","status":"b"}}}`,
		`{"id":"evt_\ud800","type":"x","created":1700000000,"data":{"object":{"id":"cs_1"}}}`,
		`{"id":"evt_1","type":"x","created":1700000000,"data":{"object":{"id":"cs_\ud83d\u0041"}}}`,
		"{\"id\":\"evt_\xff\",\"type\":\"x\",\"created\":1700000000,\"data\":{\"object\":{\"id\":\"cs_1\"}}}",
		`{"id":"evt_\u0031","type":"x","created":1.7e9,"data":{"object":{"id":null,"created":1e3}}}`,
		`{"id":"evt_1","type":"x","created":1700000000,"data":{"object":{"id":"cs_1","last_payment_error":{"message":null,"MESSAGE":"x"}}}}`,
		`{"id":"evt_1","type":"x","created":1700000000,"data":{"object":{"id":"cs_1","last_payment_error":"declined"}}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev := decodeEvent(json.RawMessage(raw))
		// The quick read of well-typed events reads what the loose one does.
		loose := decodeEventLoose(json.RawMessage(raw))
		if ev.ID != loose.ID || ev.Type != loose.Type || !ev.Created.Equal(loose.Created) ||
			!bytes.Equal(ev.ObjectJSON(), loose.Object) || (ev.Err == nil) != (loose.Err == nil) {
			t.Fatalf("read %+v, the loose read %+v, from %q", ev, loose, raw)
		}
		if ev.Head != nil {
			var h ObjectHead
			if err := json.Unmarshal(ev.ObjectJSON(), &h); err != nil || !reflect.DeepEqual(*ev.Head, h) && !repeatsKey(raw) {
				t.Fatalf("head %+v is not data.object's %+v (%v)", *ev.Head, h, err)
			}
		}
		if ev.Err != nil {
			return
		}
		if ev.ID == "" || ev.Type == "" || ev.Created.Unix() <= 0 || len(ev.ObjectJSON()) == 0 {
			t.Fatalf("event read without error but unroutable: %+v from %q", ev, raw)
		}
	})
}

// FuzzDecodeEventPage: a page is read as encoding/json reads it, or is an
// error of the request: never a page cut short read as a run of bad events.
// What it lists are the page's events, each with exactly the bytes Stripe
// sent, each read as decodeEvent reads it alone.
func FuzzDecodeEventPage(f *testing.F) {
	for _, seed := range []string{
		`{"object":"list","data":[{"id":"evt_1","type":"x","created":1700000000,"data":{"object":{"id":"cs_1"}}}, "oops" ,7],"has_more":true}`,
		"{\n  \"object\": \"list\",\n  \"data\": [\n    {\n      \"id\": \"evt_1\",\n      \"type\": \"x\"\n    }\n  ],\n  \"has_more\": false\n}",
		`{"data":[{"id":"evt_1","type":"x","created":1700000000,"data":{"object":{"id":"cs_1"}}},{"id":"evt_2","ty`,
		`{"object":"list","data":[],"data":[{}]}`, `{"object":"list","data":null,"has_more":null}`, `{"object":"list","data":{},"has_more":1}`, `[]`, ``,
		`{}`, `{"error":{"message":"no"}}`, `{"object":"list","has_more":false}`, `{"OBJECT":"list","Data":[]}`,
		// Deeper than fastjson parses (300 levels), which encoding/json reads.
		`{"object":"list","data":[{"id":"evt_1","type":"x","created":1700000000,"data":{"object":{"id":"cs_1","metadata":` +
			strings.Repeat(`{"a":`, 310) + `1` + strings.Repeat(`}`, 310) + `}}}],"has_more":false}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		events, hasMore, err := decodeEventPage(body)
		var list struct {
			Object  string            `json:"object"`
			Data    []json.RawMessage `json:"data"`
			HasMore bool              `json:"has_more"`
		}
		jerr := json.Unmarshal(body, &list)
		if jerr == nil && (list.Object != "list" || list.Data == nil) {
			// Not a list: refused, whatever encoding/json makes of it.
			if err == nil {
				t.Fatalf("page %q read, yet it is not a list", body)
			}
			return
		}
		if err != nil {
			if jerr == nil && !dupKeys(body) {
				t.Fatalf("page %q refused (%v), yet encoding/json reads it", body, err)
			}
			return
		}
		if jerr != nil {
			t.Fatalf("page %q read, yet encoding/json refuses it: %v", body, jerr)
		}
		if hasMore != list.HasMore || len(events) != len(list.Data) {
			t.Fatalf("read has_more %t and %d events, encoding/json %t and %d", hasMore, len(events), list.HasMore, len(list.Data))
		}
		for i, ev := range events {
			if !bytes.Equal(ev.Raw, list.Data[i]) {
				t.Fatalf("event %d kept as %q, sent as %q", i, ev.Raw, list.Data[i])
			}
			if alone := decodeEvent(list.Data[i]); !reflect.DeepEqual(ev, alone) {
				t.Fatalf("event %d read as %+v in the page, %+v alone", i, ev, alone)
			}
		}
	})
}

// repeatsKey reports whether the event, or its data, names a key twice.
// Stripe never sends that; decoding data.object's head with the event then
// merges the two objects' fields (what routing does with it is decided by
// the session or PaymentIntent it names, which is read from Stripe again).
func repeatsKey(raw []byte) bool {
	var ev struct {
		Data json.RawMessage `json:"data"`
	}
	return dupKeys(raw) || json.Unmarshal(raw, &ev) == nil && dupKeys(ev.Data)
}

// dupKeys reports whether a JSON object names one of its own keys twice.
func dupKeys(obj []byte) bool {
	d := json.NewDecoder(bytes.NewReader(obj))
	if t, err := d.Token(); err != nil || t != json.Delim('{') {
		return false
	}
	seen := map[string]bool{}
	for d.More() {
		k, err := d.Token()
		if err != nil {
			return false
		}
		key, _ := k.(string)
		if seen[key] {
			return true
		}
		seen[key] = true
		var skip json.RawMessage
		if d.Decode(&skip) != nil {
			return false
		}
	}
	return false
}
