package boltstore

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

// TestLoadReadsALoneScan: a cursor written when the re-scan kept one slice
// resumes that slice, and the single field is still written for a version
// that reads only it.
func TestLoadReadsALoneScan(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "fulfilld.db"), false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	db := s.db
	old := `{"complete_until":"2026-11-20T00:00:00Z","tip":"2026-11-20T05:00:00Z",` +
		`"scan":{"from":"2026-11-20T00:00:00Z","to":"2026-11-20T01:00:00Z","starting_after":"evt_1","pages":3}}`
	if err := db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte("cursor")).Put([]byte("position"), []byte(old))
	}); err != nil {
		t.Fatal(err)
	}
	var raw []byte
	if err := db.Update(func(btx *bbolt.Tx) error {
		tx := &Tx{tx: btx}
		pos, err := cursor.Load(tx)
		if err != nil {
			return err
		}
		if len(pos.Scans) != 1 || pos.Scans[0].StartingAfter != "evt_1" || pos.Scans[0].Pages != 3 {
			t.Errorf("old scan read as %+v", pos.Scans)
		}
		pos.Record(cursor.Slice{From: at(2), To: at(3)}, true)
		pos.Record(cursor.Slice{From: at(1), To: at(2), StartingAfter: "evt_2", Pages: 1}, false)
		if err := cursor.Save(tx, pos); err != nil {
			return err
		}
		raw = append(raw, btx.Bucket([]byte("cursor")).Get([]byte("position"))...)
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
