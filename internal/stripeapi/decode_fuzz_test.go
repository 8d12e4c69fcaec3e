package stripeapi

import (
	"encoding/json"
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
		`[]`, `null`, `"evt"`, `{`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev := decodeEvent(json.RawMessage(raw))
		if ev.Err != nil {
			return
		}
		if ev.ID == "" || ev.Type == "" || ev.Created.Unix() <= 0 || len(ev.Object) == 0 {
			t.Fatalf("event read without error but unroutable: %+v from %q", ev, raw)
		}
	})
}
