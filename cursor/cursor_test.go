package cursor_test

import (
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

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

// TestLoadReadsALoneScan: a cursor written when the re-scan kept one slice
// resumes that slice, and the single field is still written for a version
// that reads only it.
func TestLoadReadsALoneScan(t *testing.T) {
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "fulfilld.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	old := `{"complete_until":"2026-11-20T00:00:00Z","tip":"2026-11-20T05:00:00Z",` +
		`"scan":{"from":"2026-11-20T00:00:00Z","to":"2026-11-20T01:00:00Z","starting_after":"evt_1","pages":3}}`
	if err := db.Update(func(tx *bbolt.Tx) error {
		if err := cursor.Init(tx); err != nil {
			return err
		}
		return tx.Bucket([]byte("cursor")).Put([]byte("position"), []byte(old))
	}); err != nil {
		t.Fatal(err)
	}
	var raw []byte
	if err := db.Update(func(tx *bbolt.Tx) error {
		pos, err := cursor.Load(tx)
		if err != nil {
			return err
		}
		if len(pos.Scans) != 1 || pos.Scans[0].StartingAfter != "evt_1" || pos.Scans[0].Pages != 3 {
			t.Errorf("old scan read as %+v", pos.Scans)
		}
		pos.Record(slice(2, 3), true)
		pos.Record(cursor.Slice{From: at(1), To: at(2), StartingAfter: "evt_2", Pages: 1}, false)
		if err := cursor.Save(tx, pos); err != nil {
			return err
		}
		raw = append(raw, tx.Bucket([]byte("cursor")).Get([]byte("position"))...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var oldView struct {
		Settled time.Time    `json:"complete_until"`
		Scan    cursor.Slice `json:"scan"`
	}
	if err := json.Unmarshal(raw, &oldView); err != nil {
		t.Fatal(err)
	}
	if !oldView.Settled.Equal(at(0)) || oldView.Scan.StartingAfter != "evt_1" {
		t.Errorf("an older version would read %+v from %s, want the oldest slice in progress", oldView, raw)
	}
}
