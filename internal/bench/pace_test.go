package bench

import "testing"

// TestPaceQuietAndBusy: with the defaults, a quiet account's polls stretch
// so that a month of reads fits the smallest auto budget (5,000), and a busy
// one (1,000 orders a day) keeps polling at schedule.
func TestPaceQuietAndBusy(t *testing.T) {
	if testing.Short() {
		t.Skip("simulates days of polling")
	}
	quiet, err := RunPace(t.Context(), PaceConfig{Name: "quiet", Days: 3, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if quiet.Projected > 5_000 {
		t.Errorf("quiet account: %d reads in 3 days project to %d a month, want ≤ 5,000", quiet.Reads, quiet.Projected)
	}
	busy, err := RunPace(t.Context(), PaceConfig{Name: "busy", Days: 1, OrdersPerDay: 1000, History: true, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if busy.Longest > paceSchedule || busy.Polls != busy.Ticks {
		t.Errorf("busy account: %d polls in %d ticks, longest gap %s; want every tick at schedule", busy.Polls, busy.Ticks, busy.Longest)
	}
	t.Logf("quiet: %+v", *quiet)
	t.Logf("busy: %+v", *busy)
}
