package stripesim

import (
	"encoding/json"
	"strconv"
)

// Objects are rendered with the field names and shapes of API version
// 2023-10-16. Fields fulfilld has no use for are rendered as Stripe renders
// them when unset, to keep stripe-go's decoding exercised.

type customerDetailsJSON struct {
	Address   *struct{} `json:"address"`
	Email     string    `json:"email"`
	Name      *string   `json:"name"`
	Phone     *string   `json:"phone"`
	TaxExempt string    `json:"tax_exempt"`
	TaxIDs    []string  `json:"tax_ids"`
}

type sessionJSON struct {
	ID                 string              `json:"id"`
	Object             string              `json:"object"`
	AmountSubtotal     int64               `json:"amount_subtotal"`
	AmountTotal        int64               `json:"amount_total"`
	CancelURL          *string             `json:"cancel_url"`
	ClientReferenceID  *string             `json:"client_reference_id"`
	Created            int64               `json:"created"`
	Currency           string              `json:"currency"`
	Customer           *string             `json:"customer"`
	CustomerDetails    customerDetailsJSON `json:"customer_details"`
	CustomerEmail      *string             `json:"customer_email"`
	ExpiresAt          int64               `json:"expires_at"`
	LineItems          json.RawMessage     `json:"line_items,omitempty"`
	Livemode           bool                `json:"livemode"`
	Metadata           map[string]string   `json:"metadata"`
	Mode               string              `json:"mode"`
	PaymentIntent      json.RawMessage     `json:"payment_intent"`
	PaymentMethodTypes []string            `json:"payment_method_types"`
	PaymentStatus      string              `json:"payment_status"`
	Status             string              `json:"status"`
	Subscription       *string             `json:"subscription"`
	SuccessURL         string              `json:"success_url"`
	TotalDetails       sessionTotalsJSON   `json:"total_details"`
	URL                *string             `json:"url"`
}

type sessionTotalsJSON struct {
	AmountDiscount int64 `json:"amount_discount"`
	AmountShipping int64 `json:"amount_shipping"`
	AmountTax      int64 `json:"amount_tax"`
}

// renderSession renders a session in the given state. With expandItems the
// first page of line items is embedded, as Stripe does for
// expand[]=line_items; a non-nil pi replaces the payment_intent id by the
// object (expand[]=payment_intent).
func renderSession(c *session, status, payment uint8, expandItems bool, pi *paymentIntent) []byte {
	v := sessionJSON{
		ID:                 c.id,
		Object:             "checkout.session",
		AmountSubtotal:     c.amount,
		AmountTotal:        c.amount,
		Created:            c.created,
		Currency:           c.currency,
		CustomerDetails:    customerDetailsJSON{Email: c.customerEmail(), TaxExempt: "none", TaxIDs: []string{}},
		ExpiresAt:          c.expiresAt,
		Metadata:           c.metadata,
		Mode:               c.mode,
		PaymentIntent:      json.RawMessage("null"),
		PaymentMethodTypes: []string{"card"},
		PaymentStatus:      payNames[payment],
		Status:             statusNames[status],
		SuccessURL:         "https://example.com/success",
	}
	if v.Metadata == nil {
		v.Metadata = map[string]string{}
	}
	switch {
	case pi != nil:
		v.PaymentIntent = renderIntent(pi)
	case c.intent != "":
		v.PaymentIntent = appendString(nil, c.intent)
	}
	if expandItems {
		v.LineItems = renderLineItems(c, 0, min(10, c.items), c.items > 10)
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic("stripesim: render session: " + err.Error())
	}
	return b
}

// renderLineItems renders items [from, to) as a list object.
func renderLineItems(c *session, from, to int, hasMore bool) []byte {
	return appendList("/v1/checkout/sessions/"+c.id+"/line_items", hasMore, to-from, func(b []byte, i int) []byte {
		return appendLineItem(b, c, c.lineItem(from+i))
	})
}

type priceJSON struct {
	ID         string `json:"id"`
	Object     string `json:"object"`
	Active     bool   `json:"active"`
	Currency   string `json:"currency"`
	Product    string `json:"product"`
	Type       string `json:"type"`
	UnitAmount int64  `json:"unit_amount"`
}

type lineItemJSON struct {
	ID             string    `json:"id"`
	Object         string    `json:"object"`
	AmountDiscount int64     `json:"amount_discount"`
	AmountSubtotal int64     `json:"amount_subtotal"`
	AmountTax      int64     `json:"amount_tax"`
	AmountTotal    int64     `json:"amount_total"`
	Currency       string    `json:"currency"`
	Description    string    `json:"description"`
	Price          priceJSON `json:"price"`
	Quantity       int64     `json:"quantity"`
}

func appendLineItem(b []byte, c *session, li lineItem) []byte {
	v := lineItemJSON{
		ID:             li.id,
		Object:         "item",
		AmountSubtotal: li.amount,
		AmountTotal:    li.amount,
		Currency:       c.currency,
		Description:    "Item " + strconv.Itoa(li.index+1),
		Price: priceJSON{
			ID:         li.priceID,
			Object:     "price",
			Active:     true,
			Currency:   c.currency,
			Product:    "prod_" + li.priceID[len("price_"):len("price_")+14],
			Type:       "one_time",
			UnitAmount: li.amount,
		},
		Quantity: 1,
	}
	out, _ := json.Marshal(v)
	return append(b, out...)
}

type paymentErrorJSON struct {
	Code        string `json:"code"`
	DeclineCode string `json:"decline_code"`
	Message     string `json:"message"`
	Type        string `json:"type"`
}

type intentJSON struct {
	ID                 string            `json:"id"`
	Object             string            `json:"object"`
	Amount             int64             `json:"amount"`
	AmountCapturable   int64             `json:"amount_capturable"`
	AmountReceived     int64             `json:"amount_received"`
	CaptureMethod      string            `json:"capture_method"`
	Created            int64             `json:"created"`
	Currency           string            `json:"currency"`
	LastPaymentError   *paymentErrorJSON `json:"last_payment_error"`
	LatestCharge       *string           `json:"latest_charge"`
	Livemode           bool              `json:"livemode"`
	Metadata           map[string]string `json:"metadata"`
	PaymentMethodTypes []string          `json:"payment_method_types"`
	Status             string            `json:"status"`
}

func renderIntent(p *paymentIntent) []byte {
	v := intentJSON{
		ID:                 p.id,
		Object:             "payment_intent",
		Amount:             p.amount,
		CaptureMethod:      "automatic",
		Created:            p.created,
		Currency:           p.currency,
		Metadata:           map[string]string{},
		PaymentMethodTypes: []string{"card"},
		Status:             p.status,
	}
	switch p.status {
	case "succeeded":
		v.AmountReceived = p.amount
	case "requires_capture":
		v.AmountCapturable = p.amount
		v.CaptureMethod = "manual"
	}
	if p.lastErr != "" {
		v.LastPaymentError = &paymentErrorJSON{Code: "card_declined", DeclineCode: "generic_decline", Message: p.lastErr, Type: "card_error"}
	}
	b, _ := json.Marshal(v)
	return b
}

func appendEvent(b []byte, ev *event) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, ev.id)
	b = append(b, `,"object":"event","api_version":"`+APIVersion+`","created":`...)
	b = strconv.AppendInt(b, ev.created, 10)
	b = append(b, `,"data":{"object":`...)
	b = ev.obj.appendJSON(b)
	b = append(b, `},"livemode":false,"pending_webhooks":`...)
	if ev.failed {
		b = append(b, '1')
	} else {
		b = append(b, '0')
	}
	b = append(b, `,"request":{"id":null,"idempotency_key":null},"type":`...)
	b = appendString(b, ev.typ)
	return append(b, '}')
}

// appendList wraps rendered items in Stripe's list envelope.
func appendList(url string, hasMore bool, n int, item func(b []byte, i int) []byte) []byte {
	b := []byte(`{"object":"list","data":[`)
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		b = item(b, i)
	}
	b = append(b, `],"has_more":`...)
	b = strconv.AppendBool(b, hasMore)
	b = append(b, `,"url":`...)
	b = appendString(b, url)
	return append(b, '}')
}

func appendString(b []byte, s string) []byte {
	q, _ := json.Marshal(s)
	return append(b, q...)
}
