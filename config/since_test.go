package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseSince(t *testing.T) {
	now := time.Date(2024, 5, 10, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		value   string
		want    time.Time
		errSays string // "" = no error
	}{
		{value: "24h", want: now.Add(-24 * time.Hour)},
		{value: "90m", want: now.Add(-90 * time.Minute)},
		{value: "2h30m", want: now.Add(-150 * time.Minute)},
		{value: " 24h ", want: now.Add(-24 * time.Hour)},
		{value: "7d", want: now.Add(-7 * 24 * time.Hour)},
		{value: "1d12h", want: now.Add(-36 * time.Hour)},
		{value: "45d", want: now.Add(-45 * 24 * time.Hour)}, // retention is the caller's check
		{value: "2024-05-01T00:00:00Z", want: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)},
		{value: "2024-05-10T13:00:00+02:00", want: time.Date(2024, 5, 10, 11, 0, 0, 0, time.UTC)},
		{value: "2024-05-10T12:00:00Z", want: now},
		{value: "2024-05-10T12:00:01Z", errSays: "in the future"},
		{value: "2030-01-01T00:00:00Z", errSays: "in the future"},
		{value: "0s", errSays: "greater than zero"},
		{value: "0", errSays: "greater than zero"},
		{value: "-1h", errSays: "greater than zero"},
		{value: "-7d", errSays: "greater than zero"},
		{value: "", errSays: "is empty"},
		{value: "24", errSays: "neither a duration nor a time"},
		{value: "yesterday", errSays: "neither a duration nor a time"},
		{value: "2024-05-01", errSays: "RFC 3339"},
		{value: "1d-2h", errSays: "neither"},
		{value: "999999999999d", errSays: "neither"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			got, err := ParseSince("since", tt.value, now)
			if tt.errSays == "" {
				if err != nil {
					t.Fatalf("ParseSince(%q): %v", tt.value, err)
				}
				if !got.Equal(tt.want) {
					t.Errorf("ParseSince(%q) = %s, want %s", tt.value, got, tt.want)
				}
				return
			}
			ce, ok := err.(*Error)
			if !ok {
				t.Fatalf("ParseSince(%q) = %v, %v; want a *config.Error", tt.value, got, err)
			}
			if ce.Key != "--since" || !strings.Contains(ce.Msg, tt.errSays) {
				t.Errorf("ParseSince(%q) error %q; want key --since and %q", tt.value, ce, tt.errSays)
			}
		})
	}
}
