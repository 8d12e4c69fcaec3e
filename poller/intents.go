package poller

import (
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
)

// enqueueIntent queues a succeeded PaymentIntent for fulfilment
// (fulfill.payment_intents), in the page's transaction. One whose record
// already says a Checkout Session owns it, because that session was
// fulfilled first, is left as it is: it costs no request.
func (p *Poller) enqueueIntent(tx Tx, id, eventID string, now time.Time) (string, error) {
	queued, err := fulfill.Enqueue(tx, fulfill.Request{SessionID: id, EventID: eventID, Trigger: fulfill.TriggerEvent, At: now})
	if err != nil {
		return "", err
	}
	if queued {
		return OutcomeQueued, nil
	}
	return OutcomeHandled, nil
}
