package stripesim

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
)

func TestSessionLineItems(t *testing.T) {
	f := newFixture(t, Options{})
	id := f.srv.CreateSession(SessionParams{Created: t0, LineItems: 250, AmountTotal: 123457})

	p := &stripe.CheckoutSessionParams{}
	p.AddExpand("line_items")
	cs, err := f.api.CheckoutSessions.Get(id, p)
	if err != nil {
		t.Fatalf("get session: %v", err)
	}
	if cs.LineItems == nil || len(cs.LineItems.Data) != 10 || !cs.LineItems.HasMore ||
		cs.LineItems.URL != "/v1/checkout/sessions/"+id+"/line_items" {
		t.Fatalf("expanded line_items = %+v, want the first 10 with has_more and the list URL", cs.LineItems)
	}

	listItems := func(t *testing.T, p *stripe.CheckoutSessionListLineItemsParams) []*stripe.LineItem {
		t.Helper()
		p.Session = stripe.String(id)
		var got []*stripe.LineItem
		it := f.api.CheckoutSessions.ListLineItems(p)
		for it.Next() {
			got = append(got, it.LineItem())
		}
		if err := it.Err(); err != nil {
			t.Fatalf("list line items: %v", err)
		}
		return got
	}
	before := f.srv.Stats().ByEndpoint["GET /v1/checkout/sessions/:id/line_items"]
	all := listItems(t, &stripe.CheckoutSessionListLineItemsParams{ListParams: stripe.ListParams{Limit: stripe.Int64(100)}})
	checkAllLineItems(t, all, cs)
	if n := f.srv.Stats().ByEndpoint["GET /v1/checkout/sessions/:id/line_items"] - before; n != 3 {
		t.Errorf("paged 250 items in %d requests, want 3", n)
	}

	backwards := make([]*stripe.LineItem, 0, 25)
	for i := 24; i >= 0; i-- {
		backwards = append(backwards, all[i])
	}
	tests := []struct {
		name   string
		params stripe.ListParams
		want   []*stripe.LineItem
	}{
		{"starting_after", stripe.ListParams{StartingAfter: stripe.String(all[239].ID)}, all[240:]},
		{"ending_before walks backwards", stripe.ListParams{EndingBefore: stripe.String(all[25].ID), Limit: stripe.Int64(7)}, backwards},
		{"single page", stripe.ListParams{Limit: stripe.Int64(3), Single: true}, all[:3]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := listItems(t, &stripe.CheckoutSessionListLineItemsParams{ListParams: tt.params})
			if len(got) != len(tt.want) {
				t.Fatalf("got %d items, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if got[i].ID != tt.want[i].ID {
					t.Fatalf("item %d = %s, want %s", i, got[i].ID, tt.want[i].ID)
				}
			}
		})
	}
}

func checkAllLineItems(t *testing.T, items []*stripe.LineItem, cs *stripe.CheckoutSession) {
	t.Helper()
	if len(items) != 250 {
		t.Fatalf("got %d line items, want 250", len(items))
	}
	seen := map[string]bool{}
	var sum int64
	for i, li := range items {
		if seen[li.ID] || !strings.HasPrefix(li.ID, "li_") {
			t.Errorf("item %d: id %q duplicated or malformed", i, li.ID)
		}
		seen[li.ID] = true
		sum += li.AmountTotal
		if li.Price == nil || li.Price.UnitAmount != li.AmountTotal || li.Quantity != 1 || li.Currency != "usd" {
			t.Errorf("item %d: %+v", i, li)
		}
		if i < 10 && cs.LineItems.Data[i].ID != li.ID {
			t.Errorf("item %d = %s, expanded list has %s", i, li.ID, cs.LineItems.Data[i].ID)
		}
	}
	if sum != cs.AmountTotal {
		t.Errorf("line items add up to %d, amount_total is %d", sum, cs.AmountTotal)
	}
}

func TestSessionMissing(t *testing.T) {
	f := newFixture(t, Options{})
	deleted := f.srv.CreateSession(SessionParams{Created: t0})
	f.srv.DeleteSession(deleted)

	tests := []struct {
		name string
		call func(id string) error
		id   string
	}{
		{"unknown", func(id string) error { _, err := f.api.CheckoutSessions.Get(id, nil); return err }, "cs_test_missing"},
		{"deleted", func(id string) error { _, err := f.api.CheckoutSessions.Get(id, nil); return err }, deleted},
		{"line items of deleted", func(id string) error {
			it := f.api.CheckoutSessions.ListLineItems(&stripe.CheckoutSessionListLineItemsParams{Session: stripe.String(id)})
			for it.Next() {
			}
			return it.Err()
		}, deleted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkStripeError(t, tt.call(tt.id), wantStripeError{
				status: 404, code: stripe.ErrorCodeResourceMissing, param: "session",
				message: "No such checkout.session: '" + tt.id + "'",
			})
		})
	}
}

func TestSessionLifecycleAndSnapshots(t *testing.T) {
	f := newFixture(t, Options{})
	id := f.srv.CreateSession(SessionParams{Created: t0, AmountTotal: 5000, Metadata: map[string]string{"sku": "book"}})
	cs, err := f.api.CheckoutSessions.Get(id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cs.Status != "open" || cs.PaymentStatus != "unpaid" || cs.PaymentIntent == nil || !strings.HasPrefix(cs.PaymentIntent.ID, "pi_") {
		t.Fatalf("new session = status %s, payment %s, intent %v", cs.Status, cs.PaymentStatus, cs.PaymentIntent)
	}
	if !strings.HasPrefix(id, "cs_test_") || cs.CustomerDetails == nil || cs.CustomerDetails.Email == "" || cs.Metadata["sku"] != "book" {
		t.Errorf("session = %+v", cs)
	}

	completed := f.srv.CompleteSession(id, "unpaid", t0.Add(time.Minute))
	succeeded := f.srv.AsyncPaymentSucceeded(id, t0.Add(2*time.Minute))

	snapshot := func(evtID string) *stripe.CheckoutSession {
		t.Helper()
		ev, err := f.api.Events.Get(evtID, nil)
		if err != nil {
			t.Fatal(err)
		}
		var s stripe.CheckoutSession
		if err := json.Unmarshal(ev.Data.Raw, &s); err != nil {
			t.Fatal(err)
		}
		return &s
	}
	if s := snapshot(completed); s.Status != "complete" || s.PaymentStatus != "unpaid" {
		t.Errorf("completed event shows %s/%s, want complete/unpaid as at that time", s.Status, s.PaymentStatus)
	}
	if s := snapshot(succeeded); s.PaymentStatus != "paid" {
		t.Errorf("async_payment_succeeded event shows %s, want paid", s.PaymentStatus)
	}

	p := &stripe.CheckoutSessionParams{}
	p.AddExpand("payment_intent")
	cs, err = f.api.CheckoutSessions.Get(id, p)
	if err != nil {
		t.Fatal(err)
	}
	if cs.PaymentStatus != "paid" || cs.PaymentIntent.Status != stripe.PaymentIntentStatusSucceeded || cs.PaymentIntent.AmountReceived != 5000 {
		t.Errorf("session now %s with intent %+v", cs.PaymentStatus, cs.PaymentIntent)
	}

	expired := f.srv.CreateSession(SessionParams{Created: t0})
	evt := f.srv.ExpireSession(expired, t0.Add(time.Hour))
	if s := snapshot(evt); s.Status != "expired" || s.PaymentStatus != "unpaid" {
		t.Errorf("expired event shows %s/%s", s.Status, s.PaymentStatus)
	}
}

func TestPaymentIntentEvents(t *testing.T) {
	f := newFixture(t, Options{})
	cs := f.srv.CreateSession(SessionParams{Created: t0, AmountTotal: 700})
	pi := f.srv.PaymentIntentID(cs)

	tests := []struct {
		typ     string
		lastErr string
		status  stripe.PaymentIntentStatus
	}{
		{"payment_intent.processing", "", stripe.PaymentIntentStatusProcessing},
		{"payment_intent.payment_failed", "Your card was declined.", stripe.PaymentIntentStatusRequiresPaymentMethod},
		{"payment_intent.amount_capturable_updated", "", stripe.PaymentIntentStatusRequiresCapture},
		{"payment_intent.canceled", "", stripe.PaymentIntentStatusCanceled},
		{"payment_intent.succeeded", "", stripe.PaymentIntentStatusSucceeded},
	}
	for i, tt := range tests {
		t.Run(tt.typ, func(t *testing.T) {
			id := f.srv.PaymentIntentEvent(tt.typ, pi, t0.Add(time.Duration(i)*time.Minute), tt.lastErr)
			ev, err := f.api.Events.Get(id, nil)
			if err != nil {
				t.Fatal(err)
			}
			var got stripe.PaymentIntent
			if err := json.Unmarshal(ev.Data.Raw, &got); err != nil {
				t.Fatal(err)
			}
			if string(ev.Type) != tt.typ || got.ID != pi || got.Status != tt.status || got.Amount != 700 {
				t.Errorf("event %s: intent %s status %s amount %d", ev.Type, got.ID, got.Status, got.Amount)
			}
			gotErr := ""
			if got.LastPaymentError != nil {
				gotErr = got.LastPaymentError.Msg
			}
			if gotErr != tt.lastErr {
				t.Errorf("last_payment_error.message = %q, want %q", gotErr, tt.lastErr)
			}
			cur, err := f.api.PaymentIntents.Get(pi, nil)
			if err != nil || cur.Status != tt.status {
				t.Errorf("retrieved intent = %v, %v; want status %s", cur, err, tt.status)
			}
		})
	}
}

func TestListSessions(t *testing.T) {
	f := newFixture(t, Options{})
	var ids []string // oldest first
	for i := range 30 {
		id := f.srv.CreateSession(SessionParams{Created: t0.Add(time.Duration(i) * time.Minute), LineItems: 12})
		if i%3 == 0 {
			f.srv.CompleteSession(id, "paid", t0.Add(time.Duration(i)*time.Minute+time.Second))
		}
		ids = append(ids, id)
	}
	var completeNewestFirst []string
	for i := 27; i >= 0; i -= 3 {
		completeNewestFirst = append(completeNewestFirst, ids[i])
	}

	tests := []struct {
		name  string
		setup func(p *stripe.CheckoutSessionListParams)
		want  []string
	}{
		{"all newest first", func(p *stripe.CheckoutSessionListParams) { p.Limit = stripe.Int64(7) }, reversed(ids)},
		{"status complete", func(p *stripe.CheckoutSessionListParams) { p.Status = stripe.String("complete") }, completeNewestFirst},
		{"created window", func(p *stripe.CheckoutSessionListParams) {
			p.CreatedRange = &stripe.RangeQueryParams{GreaterThanOrEqual: t0.Add(10 * time.Minute).Unix(), LesserThan: t0.Add(13 * time.Minute).Unix()}
		}, []string{ids[12], ids[11], ids[10]}},
		{"payment_intent", func(p *stripe.CheckoutSessionListParams) {
			p.PaymentIntent = stripe.String(f.srv.PaymentIntentID(ids[4]))
		}, []string{ids[4]}},
		{"ending_before", func(p *stripe.CheckoutSessionListParams) {
			p.EndingBefore = stripe.String(ids[25])
			p.Limit = stripe.Int64(2)
		}, ids[26:]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &stripe.CheckoutSessionListParams{}
			tt.setup(p)
			var got []string
			it := f.api.CheckoutSessions.List(p)
			for it.Next() {
				got = append(got, it.CheckoutSession().ID)
			}
			if err := it.Err(); err != nil {
				t.Fatal(err)
			}
			equalIDs(t, "sessions", got, tt.want)
		})
	}

	t.Run("expand data.line_items", func(t *testing.T) {
		p := &stripe.CheckoutSessionListParams{}
		p.AddExpand("data.line_items")
		p.Limit = stripe.Int64(1)
		p.Single = true
		it := f.api.CheckoutSessions.List(p)
		if !it.Next() {
			t.Fatal(it.Err())
		}
		if li := it.CheckoutSession().LineItems; li == nil || len(li.Data) != 10 || !li.HasMore {
			t.Errorf("line_items = %+v", li)
		}
	})
}
