package config

import (
	"math"
	"strconv"
	"strings"
	"time"
)

const sinceAccepted = "give a duration such as 24h, 90m, 2h30m or 7d, or an RFC 3339 time such as 2024-05-01T00:00:00Z"

// ParseSince reads a --since style value: a duration back from now ("24h",
// "90m", "2h30m", and whole days "7d" or "1d12h"), or an RFC 3339 time. A time
// in the future and a zero or negative duration are refused. Errors are
// *Error with Key "--"+flag. Retention limits are left to the caller, since
// `reconcile --since` may reach past Stripe's 30 days of events.
func ParseSince(flag, value string, now time.Time) (time.Time, error) {
	key := "--" + flag
	s := strings.TrimSpace(value)
	if s == "" {
		return time.Time{}, &Error{Key: key, Msg: "is empty; " + sinceAccepted}
	}
	d, ok := parseDays(s)
	if !ok && strings.HasPrefix(s, "-") {
		_, ok = parseDays(s[1:]) // "-7d": a negative duration, say so
		d = -1
	}
	if ok {
		if d <= 0 {
			return time.Time{}, &Error{Key: key, Msg: "must be a duration greater than zero, such as 24h; got " + strconv.Quote(value)}
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		if t.After(now) {
			return time.Time{}, &Error{Key: key, Msg: s + " is in the future (now is " + now.UTC().Format(time.RFC3339) + "); " + sinceAccepted}
		}
		return t, nil
	}
	return time.Time{}, &Error{Key: key, Msg: strconv.Quote(value) + " is neither a duration nor a time; " + sinceAccepted}
}

// SinceIsDuration reports whether a --since style value counts back from
// now (a duration), rather than naming a time: only then does the clock it
// is read on matter.
func SinceIsDuration(value string) bool {
	_, ok := parseDays(strings.TrimSpace(value))
	return ok
}

// parseDays is time.ParseDuration plus a leading whole-days term ("7d",
// "1d12h"): operators think of backfills in days.
func parseDays(s string) (time.Duration, bool) {
	days, rest := 0, s
	if i := strings.IndexByte(s, 'd'); i > 0 && isDigits(s[:i]) {
		n, err := strconv.Atoi(s[:i])
		if err != nil || n > 100000 { // ~270 years; beyond that time.Duration overflows
			return 0, false
		}
		days, rest = n, s[i+1:]
	}
	var d time.Duration
	if rest != "" {
		var err error
		if d, err = time.ParseDuration(rest); err != nil {
			return 0, false
		}
		if days > 0 && (d < 0 || d > math.MaxInt64-time.Duration(days)*24*time.Hour) {
			return 0, false // "1d-2h", or past time.Duration's range
		}
	}
	return time.Duration(days)*24*time.Hour + d, true
}
