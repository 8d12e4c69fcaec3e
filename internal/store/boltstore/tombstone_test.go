package boltstore

import (
	"reflect"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/store/ledgerindex"
)

// bbolt's compact tombstone keeps exactly what ledgerindex.Tombstone says a
// pruned record keeps, so every backend reads a pruned record back alike.
func TestTombstoneKeepsWhatLedgerindexSays(t *testing.T) {
	at := time.Date(2026, 11, 20, 12, 0, 0, 123456789, time.FixedZone("x", 3600))
	for _, r := range []fulfill.Record{
		{SessionID: "cs_1", State: fulfill.StateFulfilled, Trigger: "event", EventID: "evt_1", Attempts: 2, Output: "shipped",
			LastError: "e", Seq: 9, Recovered: true, Created: at, Updated: at.Add(time.Hour), FulfilledAt: at.Add(time.Minute), Pruned: true},
		{SessionID: "pi_2", Object: fulfill.ObjectPaymentIntent, Owner: "cs_9", State: fulfill.StateOwned, Attempts: -1,
			Created: time.Unix(0, 0), Pruned: true},
		{SessionID: "cs_3", State: fulfill.StateExpired, Pruned: true},
	} {
		got, err := decodeTombstone(r.SessionID, encodeTombstone(r))
		if err != nil {
			t.Fatal(err)
		}
		if want := ledgerindex.Tombstone(r); !reflect.DeepEqual(got, want) {
			t.Errorf("tombstone of %s reads back as\n%+v\nledgerindex says\n%+v", r.SessionID, got, want)
		}
	}
}
