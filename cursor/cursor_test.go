package cursor_test

import (
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
)

var base = time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)

func at(h int) time.Time { return base.Add(time.Duration(h) * time.Hour) }

func slice(from, to int) cursor.Slice { return cursor.Slice{From: at(from), To: at(to)} }

// TestRecordSettlesOnlyTheListedPrefix: slices listed at once finish in any
// order; complete_until covers only what is listed without a gap.
func TestRecordSettlesOnlyTheListedPrefix(t *testing.T) {
	type step struct {
		s    cursor.Slice
		done bool
	}
	tests := []struct {
		name      string
		steps     []step
		settled   int
		scans     int
		rescanned int
	}{
		{"a later slice done first", []step{{slice(1, 2), true}}, 0, 0, 1},
		{"a page of the first slice", []step{{slice(1, 2), true}, {slice(0, 1), false}}, 0, 1, 1},
		{"the first slice done joins the later one", []step{{slice(1, 2), true}, {slice(0, 1), false}, {slice(0, 1), true}}, 2, 0, 0},
		{"a gap nobody listed holds it", []step{{slice(0, 1), true}, {slice(2, 3), true}}, 1, 0, 1},
		{"adjacent later ranges merge", []step{{slice(2, 3), true}, {slice(3, 4), true}, {slice(1, 2), true}}, 0, 0, 1},
		{"all in order", []step{{slice(0, 1), true}, {slice(1, 2), true}, {slice(2, 3), true}}, 3, 0, 0},
		{"pages replace the slice's position", []step{{slice(0, 1), false}, {slice(0, 1), false}, {slice(1, 2), false}}, 0, 2, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pos := cursor.Position{Settled: at(0)}
			for _, st := range tt.steps {
				pos.Record(st.s, st.done)
			}
			if !pos.Settled.Equal(at(tt.settled)) || len(pos.Scans) != tt.scans || len(pos.Rescanned) != tt.rescanned {
				t.Errorf("got complete_until %s, %d in progress, %d listed ahead: %+v; want hour %d, %d, %d",
					pos.Settled.Format(time.TimeOnly), len(pos.Scans), len(pos.Rescanned), pos, tt.settled, tt.scans, tt.rescanned)
			}
			if len(pos.Scans) > 0 && (pos.Scan == nil || !pos.Scan.From.Equal(pos.Scans[0].From)) {
				t.Errorf("scan %+v is not the oldest in progress %+v", pos.Scan, pos.Scans[0])
			}
		})
	}
}
