package status_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/internal/status"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
)

// A `run --since` start still counted on the host's clock is shown while
// it can move complete_until, and not when the cursor already reaches
// further back than it: a start after complete_until moved nothing, and an
// operator reading "backfill start" would think the stream begins there.
func TestBackfillStartShownOnlyWhileItCanMoveTheCursor(t *testing.T) {
	db, err := boltstore.Open(filepath.Join(t.TempDir(), "f.db"), false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name             string
		settled, started time.Time
		shown            bool
	}{
		{"the start is the cursor", now.Add(-24 * time.Hour), now.Add(-24 * time.Hour), true},
		{"the cursor is three days back", now.Add(-72 * time.Hour), now.Add(-24 * time.Hour), false},
	} {
		if err := db.Update(func(tx store.Tx) error {
			return cursor.Save(tx, cursor.Position{Settled: c.settled, HostSince: &c.started})
		}); err != nil {
			t.Fatal(err)
		}
		st, err := status.Read(db, now)
		if err != nil {
			t.Fatal(err)
		}
		var text strings.Builder
		st.WriteText(&text)
		want := ""
		if c.shown {
			want = c.started.Format(time.RFC3339)
		}
		if st.Cursor.HostSince != want || strings.Contains(text.String(), "backfill start") != c.shown {
			t.Errorf("%s: host_since %q, want %q; text:\n%s", c.name, st.Cursor.HostSince, want, text.String())
		}
	}
}
