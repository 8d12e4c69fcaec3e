package config

import (
	"slices"
	"strings"
	"time"
)

type kind int

const (
	kindString kind = iota
	kindList
	kindDuration
	kindInt
	kindFloat
	kindBool
	kindIntOrAuto // "auto" or a whole number
)

// key is one setting. The table below is the single list of what fulfilld
// accepts: it drives defaults, environment names, the unknown-key check and
// decoding, so a key cannot be known to one of them and not the others.
type key struct {
	path   string
	kind   kind
	def    any  // nil: no default
	secret bool // never echo the value, not even in a type error
}

var keys = []key{
	{path: "stripe.api_key", kind: kindString, secret: true},
	{path: "stripe.api_key_file", kind: kindString},
	{path: "stripe.api_base", kind: kindString},
	{path: "stripe.account", kind: kindString},
	{path: "stripe.rate_limit", kind: kindFloat, def: 0.0},
	{path: "stripe.monthly_read_budget", kind: kindIntOrAuto, def: "auto"},
	{path: "events.types", kind: kindList}, // default applied in decode: an empty list means the default too
	{path: "events.lookback", kind: kindDuration, def: 10 * time.Minute},
	{path: "schedule", kind: kindString, def: "@every 30s"},
	{path: "store.path", kind: kindString, def: "fulfilld.db"},
	{path: "store.postgres", kind: kindString},
	{path: "store.retention", kind: kindDuration, def: 90 * 24 * time.Hour},
	{path: "fulfill.payment_intents", kind: kindBool, def: false},
	{path: "fulfill.command", kind: kindList},
	{path: "fulfill.url", kind: kindString},
	{path: "fulfill.secret", kind: kindString, secret: true},
	{path: "fulfill.timeout", kind: kindDuration, def: 30 * time.Second},
	{path: "fulfill.concurrency", kind: kindInt, def: 4},
	{path: "fulfill.max_attempts", kind: kindInt, def: 8},
	{path: "notify.command", kind: kindList},
	{path: "notify.url", kind: kindString},
	{path: "notify.secret", kind: kindString, secret: true},
	{path: "forward.url", kind: kindString},
	{path: "forward.secret", kind: kindString, secret: true},
	{path: "forward.types", kind: kindList}, // empty: every type in events.types
	{path: "forward.undelivered_only", kind: kindBool, def: false},
	{path: "forward.grace", kind: kindDuration, def: 15 * time.Minute},
	{path: "reconcile.schedule", kind: kindString, def: "@every 1h"},
	{path: "reconcile.window", kind: kindDuration, def: 72 * time.Hour},
	{path: "http.listen", kind: kindString},
}

// Keys returns every config key path fulfilld accepts, in the order of the
// annotated example config.
func Keys() []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.path
	}
	return out
}

// EnvName is the environment variable for a key path:
// "fulfill.max_attempts" → "FULFILLD_FULFILL_MAX_ATTEMPTS".
func EnvName(path string) string {
	return "FULFILLD_" + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
}

// envNames lists the variables read for k, the winning one first.
func envNames(k key) []string {
	if k.path == "stripe.api_key" {
		return []string{EnvName(k.path), "STRIPE_API_KEY"}
	}
	return []string{EnvName(k.path)}
}

// actionVars are the FULFILLD_* variables fulfilld sets for an action (the
// action protocol). An action that calls fulfilld itself, say `fulfilld
// status`, passes them on; they are not settings and not typos.
var actionVars = []string{
	"FULFILLD_SESSION_ID", "FULFILLD_PAYMENT_INTENT_ID", "FULFILLD_EVENT_ID", "FULFILLD_EVENT_TYPE",
	"FULFILLD_TRIGGER", "FULFILLD_IDEMPOTENCY_KEY", "FULFILLD_ATTEMPT",
}

// testVarPrefix marks the test suite's own variables (FULFILLD_TEST_POSTGRES
// names the server the PostgreSQL tests use): a developer who exports one
// still runs fulfilld, and the tests that load a config still pass in CI.
const testVarPrefix = "FULFILLD_TEST_"

// checkEnviron refuses a non-empty FULFILLD_* variable that names no key:
// a misspelt FULFILLD_FULFILL_CONCURENCY=3 would otherwise be silently
// ignored and the default used. (An empty one counts as unset, as for keys.)
func checkEnviron(environ []string) *Error {
	known := make([]string, 0, len(keys))
	for _, k := range keys {
		known = append(known, EnvName(k.path))
	}
	var bad []string
	for _, kv := range environ {
		name, val, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "FULFILLD_") || strings.TrimSpace(val) == "" ||
			slices.Contains(known, name) || slices.Contains(actionVars, name) || strings.HasPrefix(name, testVarPrefix) {
			continue
		}
		bad = append(bad, name)
	}
	if len(bad) == 0 {
		return nil
	}
	slices.Sort(bad) // the same line whatever the environment's order
	name := bad[0]
	if guess := closest(name, known); guess != "" {
		return &Error{Key: name, Msg: "unknown environment variable (did you mean " + guess + "?); " +
			"a setting's variable is FULFILLD_ + its key path in upper case, with _ for ."}
	}
	return &Error{Key: name, Msg: "unknown environment variable; unset it, or use one of " + strings.Join(known, ", ")}
}

func lookupKey(path string) (key, bool) {
	for _, k := range keys {
		if k.path == path {
			return k, true
		}
	}
	return key{}, false
}

// children lists the names directly under a section ("" is the top level),
// in table order.
func children(section string) []string {
	var out []string
	prefix := ""
	if section != "" {
		prefix = section + "."
	}
	for _, k := range keys {
		rest, ok := strings.CutPrefix(k.path, prefix)
		if !ok {
			continue
		}
		name, _, _ := strings.Cut(rest, ".")
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out
}

func isSection(path string) bool {
	for _, k := range keys {
		if strings.HasPrefix(k.path, path+".") {
			return true
		}
	}
	return false
}

// checkKey rejects a file path p that is not a known setting. value reads
// the file's value at p (a leaf, possibly nil for an empty section).
func checkKey(p string, value func(string) any, file string) *Error {
	if _, ok := lookupKey(p); ok {
		return nil
	}
	parts := strings.Split(p, ".")
	// A known leaf given as a section: "stripe.api_key: {x: 1}".
	for i := 1; i < len(parts); i++ {
		if k, ok := lookupKey(strings.Join(parts[:i], ".")); ok {
			return &Error{Key: k.path, Msg: "must be " + describe(k.kind) + ", not a section"}
		}
	}
	// A known section given as a value: "fulfill: /usr/bin/ship".
	if isSection(p) {
		if value(p) == nil {
			return nil // an empty section, e.g. "notify:" with only comments below it
		}
		return &Error{Key: p, Msg: "must be a section with the keys " + strings.Join(children(p), ", ")}
	}
	// Unknown: name the first unknown component and what its section accepts.
	section := ""
	unknown := parts[0]
	for i := 1; i < len(parts); i++ {
		if !isSection(strings.Join(parts[:i], ".")) {
			break
		}
		section = strings.Join(parts[:i], ".")
		unknown = strings.Join(parts[:i+1], ".")
	}
	known := children(section)
	msg := "unknown key in " + file
	last := unknown[strings.LastIndex(unknown, ".")+1:]
	if guess := closest(last, known); guess != "" {
		if section != "" {
			guess = section + "." + guess
		}
		msg += " (did you mean " + guess + "?)"
	}
	if section == "" {
		msg += "; known top-level keys: " + strings.Join(known, ", ")
	} else {
		msg += "; known keys under " + section + ": " + strings.Join(known, ", ")
	}
	return &Error{Key: unknown, Msg: msg}
}

func describe(k kind) string {
	switch k {
	case kindList:
		return `a list of strings, e.g. ["/usr/local/bin/ship", "--fast"]`
	case kindDuration:
		return `a duration such as "30s", "10m" or "72h"`
	case kindInt:
		return "a whole number"
	case kindFloat:
		return "a number"
	case kindBool:
		return "true or false"
	case kindIntOrAuto:
		return `"auto" or a whole number`
	default:
		return "a string"
	}
}

// closest returns the candidate within edit distance 2 of s, if any, to turn
// a typo into a suggestion.
func closest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := distance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
