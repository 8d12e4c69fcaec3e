package boltstore

import (
	"encoding/binary"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/internal/store"
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

// A format 6 file kept the seen-set twice, by id and by created time.
// Opened read-only it is read as it is; upgraded, the bucket by id goes,
// and every event in it is still seen (one the other bucket lacked is put
// there first), counted once: the lookback's events are not handed on
// again.
func TestFormat6SeenSetUpgraded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fulfilld.db")
	s, err := Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"evt_b", "evt_a", "evt_c"}
	if err := s.Update(func(tx store.Tx) error {
		for i, id := range ids[:2] {
			if err := tx.MarkSeen(id, at(i)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// As format 6 wrote it: each id in seen too, and one there alone.
	if err := s.db.Update(func(tx *bbolt.Tx) error {
		byID, err := tx.CreateBucket([]byte("seen"))
		if err != nil {
			return err
		}
		for i, id := range ids {
			var v [8]byte
			binary.BigEndian.PutUint64(v[:], uint64(at(i).Unix()))
			if err := byID.Put([]byte(id), v[:]); err != nil {
				return err
			}
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], 6)
		return tx.Bucket([]byte("meta")).Put([]byte("format"), v[:])
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	seenAll := func(s *Store, want int) {
		t.Helper()
		if err := s.View(func(tx store.Tx) error {
			for i, id := range ids[:want] {
				if ok, err := tx.Seen(id, at(i)); err != nil || !ok {
					t.Errorf("%s not seen (%v)", id, err)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	ro, err := Open(path, true, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	seenAll(ro, 2)
	ro.Close()

	s, err = Open(path, false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	seenAll(s, 3)
	if err := s.db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket([]byte("seen")) != nil {
			t.Error("the seen-set by id is still there")
		}
		if v := formatOf(tx); v != Format {
			t.Errorf("format %d, want %d", v, Format)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.View(func(tx store.Tx) error {
		if n, err := tx.SeenCount(); err != nil || n != 3 {
			t.Errorf("seen count %d (%v), want 3", n, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
