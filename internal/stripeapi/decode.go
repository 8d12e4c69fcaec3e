package stripeapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"github.com/buger/jsonparser"
	"github.com/valyala/fastjson"
)

// Reading a page of events is most of what the lister does with its CPU:
// a page is about 100 KiB of JSON, and at Stripe's pace it is nothing, but
// a backfill with no latency (the local ceiling) spent 20 µs an event in
// encoding/json: stripe-go checked and decoded the page, then each event
// was checked and decoded again. A page is now read once:
//
//   - fastjson checks the page strictly (RFC 8259), so a page cut short or
//     mangled on the way is an error of the request, as it was when
//     stripe-go decoded it, never a run of bad events;
//   - fastjson parses it, and each event's fields are taken from the tree;
//   - jsonparser finds where each event's bytes begin and end, so an event
//     keeps the bytes Stripe sent (forwarded and notified as they are),
//     a slice of the answer's body rather than a copy of its own (the
//     parser keeps a working copy of the page, reused for the next).
//
// That takes about 3 µs an event. What fastjson reads differently from
// encoding/json (keys that differ only in case, a key named twice, strings
// with escapes or bytes that are not UTF-8, fields of the wrong type) is
// never decided here: such an event is read again by decodeEventLoose, the
// encoding/json reading it always had.

var parsers fastjson.ParserPool

// decodeEventPage reads a page of GET /v1/events as Stripe sends it.
func decodeEventPage(body []byte) (events []Event, hasMore bool, err error) {
	if err := fastjson.ValidateBytes(body); err != nil {
		return nil, false, fmt.Errorf("the page is not JSON: %w", err)
	}
	p := parsers.Get()
	defer parsers.Put(p)
	v, err := p.ParseBytes(body)
	if err != nil {
		// Valid JSON that fastjson does not parse: nested deeper than
		// it goes (300 levels).
		return decodeEventPageLoose(body)
	}
	var data []*fastjson.Value
	list, hasData := false, false
	ok := visit(v, pageKeys, func(i int, v *fastjson.Value) bool {
		switch t := v.Type(); {
		case i == 2:
			list = string(v.GetStringBytes()) == "list"
			return t == fastjson.TypeString
		case i == 1:
			hasMore = t == fastjson.TypeTrue
			return t == fastjson.TypeTrue || t == fastjson.TypeFalse || t == fastjson.TypeNull
		case t == fastjson.TypeArray:
			data, _ = v.Array()
			hasData = true
			return true
		default:
			return t == fastjson.TypeNull
		}
	})
	if !ok || !list || !hasData {
		return decodeEventPageLoose(body)
	}
	events = make([]Event, 0, len(data))
	n := 0
	if len(data) > 0 {
		_, err = jsonparser.ArrayEach(body, func(raw []byte, typ jsonparser.ValueType, _ int, err error) {
			if err != nil || n >= len(data) {
				return
			}
			if typ == jsonparser.String {
				// jsonparser gives a string without its quotes (an
				// event that is a string is a bad one, kept as sent).
				raw = append(append([]byte{'"'}, raw...), '"')
			}
			events = append(events, readEvent(data[n], raw))
			n++
		}, "data")
	}
	if err != nil || n != len(data) {
		// The page is JSON (checked above): jsonparser did not find the
		// events fastjson did, in a page written in some way Stripe
		// does not write one.
		return decodeEventPageLoose(body)
	}
	return events, hasMore, nil
}

// decodeEventPageLoose reads a page that is not plainly what Stripe sends
// (its fields of other types, named twice or in another case) as
// encoding/json reads it, as every page once was.
//
// An answer that is not a list (no "object": "list", no data: what a
// proxy or a wrong stripe.api_base may answer with 200) is an error, not an
// empty last page that would let the tip pass events never listed.
func decodeEventPageLoose(body []byte) ([]Event, bool, error) {
	var list struct {
		Object  string            `json:"object"`
		Data    []json.RawMessage `json:"data"`
		HasMore bool              `json:"has_more"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, false, fmt.Errorf("the page is not a list of events: %w", err)
	}
	if list.Object != "list" || list.Data == nil {
		return nil, false, errors.New("the answer is not a list of events")
	}
	events := make([]Event, 0, len(list.Data))
	for _, raw := range list.Data {
		events = append(events, decodeEvent(raw))
	}
	return events, list.HasMore, nil
}

// decodeEvent reads one event's JSON as decodeEventPage reads each of a
// page's. It never fails: a bad event carries Err, so the stream can
// record it and move on.
func decodeEvent(raw json.RawMessage) Event {
	if fastjson.ValidateBytes(raw) != nil {
		return decodeEventLoose(raw)
	}
	p := parsers.Get()
	defer parsers.Put(p)
	v, err := p.ParseBytes(raw)
	if err != nil {
		return decodeEventLoose(raw)
	}
	return readEvent(v, raw)
}

// readEvent takes the fields routing needs, and data.object's head with
// them, from an event parsed by fastjson, in the listing goroutine: the
// store's transaction, which pages of events take one at a time, does not
// parse the object again. An event that is not plainly what Stripe sends
// is read by decodeEventLoose instead, which says what is wrong with it.
func readEvent(v *fastjson.Value, raw []byte) Event {
	if ev, ok := quickEvent(v); ok {
		ev.Raw = raw
		return ev
	}
	return decodeEventLoose(raw)
}

// The keys read of a page, an event, its data, its object and the
// object's last_payment_error.
var (
	pageKeys  = []string{"data", "has_more", "object"}
	eventKeys = []string{"id", "type", "created", "data"}
	dataKeys  = []string{"object"}
	headKeys  = []string{"id", "object", "created", "status", "last_payment_error"}
	errorKeys = []string{"message"}
)

// quickEvent reads an event whose fields are all there, each of the type
// Stripe sends, each named once and in Stripe's spelling; false otherwise.
func quickEvent(v *fastjson.Value) (Event, bool) {
	var (
		ev           Event
		created      float64
		data, object *fastjson.Value
		head         = &ObjectHead{}
	)
	ok := visit(v, eventKeys, func(i int, v *fastjson.Value) (ok bool) {
		switch i {
		case 0:
			ev.ID, ok = str(v)
		case 1:
			ev.Type, ok = str(v)
		case 2:
			created, ok = number(v, (*fastjson.Value).Float64)
		case 3:
			data, ok = v, true
		}
		return ok
	})
	if !ok || ev.ID == "" || ev.Type == "" || created <= 0 || created > maxCreated || created != math.Trunc(created) ||
		data == nil || !visit(data, dataKeys, func(_ int, v *fastjson.Value) bool { object = v; return true }) ||
		object == nil || object.Type() != fastjson.TypeObject || !readHead(object, head) {
		return ev, false
	}
	ev.Created, ev.Head = time.Unix(int64(created), 0).UTC(), head
	return ev, true
}

// readHead reads data.object's head as encoding/json would into
// ObjectHead: null leaves a field empty.
func readHead(object *fastjson.Value, h *ObjectHead) bool {
	return visit(object, headKeys, func(i int, v *fastjson.Value) (ok bool) {
		switch i {
		case 0:
			h.ID, ok = str(v)
		case 1:
			h.Object, ok = str(v)
		case 2:
			h.Created, ok = number(v, (*fastjson.Value).Int64)
		case 3:
			h.Status, ok = str(v)
		case 4:
			if v.Type() == fastjson.TypeNull {
				return true
			}
			h.LastPaymentError = &struct {
				Message string `json:"message"`
			}{}
			return visit(v, errorKeys, func(_ int, v *fastjson.Value) (ok bool) {
				h.LastPaymentError.Message, ok = str(v)
				return ok
			})
		}
		return ok
	})
}

// visit calls f with the index in names of each of an object's keys that
// is one of them, and says whether v is an object and f returned true
// every time. A name given twice, or a key that encoding/json would take
// for one of the names without being it (it matches names without regard
// to case, Unicode's included), makes it false: encoding/json keeps the
// last of such keys, or merges them, which decodeEventLoose does.
func visit(v *fastjson.Value, names []string, f func(int, *fastjson.Value) bool) bool {
	o, err := v.Object()
	if err != nil {
		return false
	}
	var seen uint8
	ok := true
	o.Visit(func(k []byte, v *fastjson.Value) {
		if !ok {
			return
		}
		for i, name := range names {
			if string(k) == name {
				if seen&(1<<i) != 0 {
					ok = false
					return
				}
				seen |= 1 << i
				ok = f(i, v)
				return
			}
		}
		// Only a key starting with one of the names' first letters, in
		// either case, or with a byte outside ASCII can fold to a name.
		if len(k) == 0 || k[0] < utf8.RuneSelf && !startsOne(k[0]|0x20, names) {
			return
		}
		for _, name := range names {
			if bytes.EqualFold(k, []byte(name)) {
				ok = false
				return
			}
		}
	})
	return ok
}

// number reads a number with read, or null as 0, as encoding/json would.
func number[T int64 | float64](v *fastjson.Value, read func(*fastjson.Value) (T, error)) (T, bool) {
	switch v.Type() {
	case fastjson.TypeNull:
		return 0, true
	case fastjson.TypeNumber:
		n, err := read(v)
		return n, err == nil
	}
	return 0, false
}

func startsOne(c byte, names []string) bool {
	for _, name := range names {
		if name[0] == c {
			return true
		}
	}
	return false
}

// str reads a string, or null as "", as encoding/json would; false for
// another type, or a string fastjson may have read otherwise (bytes that
// are not UTF-8, which encoding/json replaces; a backslash or U+FFFD left
// by an escape, which fastjson may keep as written).
func str(v *fastjson.Value) (string, bool) {
	switch v.Type() {
	case fastjson.TypeNull:
		return "", true
	case fastjson.TypeString:
		b := v.GetStringBytes()
		if bytes.IndexByte(b, '\\') >= 0 || !utf8.Valid(b) || bytes.ContainsRune(b, utf8.RuneError) {
			return "", false
		}
		return string(b), true
	}
	return "", false
}

// decodeEventLoose reads what it can of an event whatever its fields'
// types, and says what is missing.
func decodeEventLoose(raw json.RawMessage) Event {
	ev := Event{Raw: raw}
	var head struct {
		ID      any `json:"id"`
		Type    any `json:"type"`
		Created any `json:"created"`
		Data    *struct {
			Object json.RawMessage `json:"object"`
		} `json:"data"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		ev.Err = fmt.Errorf("event is not a JSON object: %w", err)
		return ev
	}
	ev.ID, _ = head.ID.(string)
	ev.Type, _ = head.Type.(string)
	created, _ := head.Created.(float64)
	switch {
	case ev.ID == "":
		ev.Err = errors.New("event has no id")
	case ev.Type == "":
		ev.Err = errors.New("event has no type")
	case created <= 0 || created > maxCreated || created != math.Trunc(created):
		// Out of range, it would overflow into a time no listing or
		// pruning ever reaches.
		ev.Err = errors.New("event has no valid created time")
	case head.Data == nil || len(head.Data.Object) == 0:
		ev.Err = errors.New("event has no data.object")
	}
	ev.Created = time.Unix(int64(created), 0).UTC()
	if head.Data != nil {
		ev.Object = head.Data.Object
	}
	return ev
}
