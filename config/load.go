package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/viper"
)

// Load reads the file (if any), then the environment, then src.Overrides —
// later sources win — fills in defaults, reads stripe.api_key_file when no key
// was given, and validates everything. Every error it returns is an *Error.
func Load(src Source) (*Config, error) {
	lookup, environ := src.LookupEnv, src.Environ
	if lookup == nil {
		lookup = os.LookupEnv
		if environ == nil {
			environ = os.Environ
		}
	}
	if environ != nil {
		if err := checkEnviron(environ()); err != nil {
			return nil, err
		}
	}
	// One viper per call: nothing is shared between loads, and tests can run
	// in parallel.
	v := viper.New()
	if src.File != "" {
		if err := readFile(v, src.File); err != nil {
			return nil, err
		}
	}
	// Defaults go in after the unknown-key check so they are not mistaken for
	// file contents.
	for _, k := range keys {
		if k.def != nil {
			v.SetDefault(k.path, k.def)
		}
	}
	d := &decoder{v: v, origin: map[string]string{}}

	// viper's own env binding reads os.Getenv and its AutomaticEnv is not
	// seen by Unmarshal, so each known key is looked up here, explicitly.
	// Set on a viper instance ranks above the file; overrides are Set after
	// the environment and so rank above both.
	for _, k := range keys {
		for _, name := range envNames(k) {
			val, ok := lookup(name)
			if !ok || strings.TrimSpace(val) == "" {
				continue // an empty variable counts as unset, as in viper
			}
			from := "set by " + name
			if err := d.set(k, val, from); err != nil {
				return nil, err
			}
			break
		}
	}
	paths := make([]string, 0, len(src.Overrides))
	for p := range src.Overrides {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		val := src.Overrides[p]
		if val == nil {
			continue
		}
		k, ok := lookupKey(strings.ToLower(p))
		if !ok {
			msg := "unknown key given on the command line"
			if guess := closest(strings.ToLower(p), Keys()); guess != "" {
				msg += " (did you mean " + guess + "?)"
			}
			return nil, &Error{Key: p, Msg: msg + "; known keys: " + strings.Join(Keys(), ", ")}
		}
		if err := d.set(k, val, "set by a command-line flag"); err != nil {
			return nil, err
		}
	}

	c := d.decode()
	if d.err != nil {
		return nil, d.err
	}
	if err := readAPIKeyFile(c, lookup); err != nil {
		return nil, err
	}
	if err := d.validate(c); err != nil {
		return nil, err
	}
	return c, nil
}

var fileTypes = map[string]string{"yaml": "YAML", "yml": "YAML", "toml": "TOML", "json": "JSON"}

func readFile(v *viper.Viper, path string) *Error {
	ext := strings.ToLower(strings.TrimPrefix(filepath.Ext(path), "."))
	name, ok := fileTypes[ext]
	if !ok {
		return &Error{Key: "--config", Msg: path + ": unsupported file type; name it .yaml, .yml, .toml or .json"}
	}
	v.SetConfigFile(path)
	v.SetConfigType(ext)
	if err := v.ReadInConfig(); err != nil {
		var pe *fs.PathError
		var parse viper.ConfigParseError
		switch {
		case errors.As(err, &pe):
			return &Error{Key: "--config", Msg: "cannot read " + path + ": " + pe.Err.Error()}
		case errors.As(err, &parse):
			cause := errors.Unwrap(parse)
			return &Error{Key: "--config", Msg: "cannot parse " + path + " as " + name + where(path, cause) + ": " + scrub(oneLine(cause.Error()))}
		default:
			return &Error{Key: "--config", Msg: "cannot read " + path + ": " + scrub(oneLine(err.Error()))}
		}
	}
	found := v.AllKeys()
	sort.Strings(found)
	for _, p := range found {
		if err := checkKey(p, v.Get, path); err != nil {
			return err
		}
	}
	return nil
}

// where returns " (line N)" for parse errors that know their position but
// do not say it (TOML and JSON; YAML's message already has the line).
func where(path string, err error) string {
	var pos interface{ Position() (row, column int) } // go-toml's DecodeError
	if errors.As(err, &pos) {
		row, _ := pos.Position()
		return fmt.Sprintf(" (line %d)", row)
	}
	var syntax *json.SyntaxError
	if errors.As(err, &syntax) {
		if data, err := os.ReadFile(path); err == nil && syntax.Offset <= int64(len(data)) {
			return fmt.Sprintf(" (line %d)", 1+bytes.Count(data[:syntax.Offset], []byte("\n")))
		}
	}
	return ""
}

// secretLike matches what a Stripe secret looks like, in case a parser
// quotes the line it choked on.
var secretLike = regexp.MustCompile(`\b(sk|rk|pk|whsec)_[A-Za-z0-9_]+`)

func scrub(s string) string { return secretLike.ReplaceAllString(s, "[redacted]") }

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// decoder turns viper's loosely typed values into a Config. It keeps the
// first error, so the user sees one clear line.
type decoder struct {
	v      *viper.Viper
	origin map[string]string // key path → "set by FULFILLD_…" for values not from the file
	err    *Error
}

func (d *decoder) fail(path, format string, args ...any) {
	if d.err != nil {
		return
	}
	msg := fmt.Sprintf(format, args...)
	if o := d.origin[path]; o != "" {
		msg += " (" + o + ")"
	}
	d.err = &Error{Key: path, Msg: msg}
}

// echo describes a bad value for an error message, unless the key is secret.
func echo(k key, val any) string {
	if k.secret {
		return ""
	}
	if s, ok := val.(string); ok {
		return fmt.Sprintf("; got %q", s)
	}
	return fmt.Sprintf("; got %v", val)
}

// set records an environment or flag value. Strings for list keys are split
// here, where it is known that they did not come from the file.
func (d *decoder) set(k key, val any, from string) *Error {
	d.origin[k.path] = from
	if s, ok := val.(string); ok && k.kind == kindList {
		list, err := splitList(k, s)
		if err != nil {
			d.fail(k.path, "%s", err)
			return d.err
		}
		val = list
	}
	d.v.Set(k.path, val)
	return nil
}

// splitList reads a list from one string: a JSON array, or else words
// separated by whitespace (commands) or commas (event types).
func splitList(k key, s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "[") {
		var list []string
		if err := json.Unmarshal([]byte(s), &list); err != nil {
			return nil, fmt.Errorf(`not a JSON array of strings (%v); use e.g. ["/usr/local/bin/ship","--fast"] or space-separated words`, err)
		}
		return list, nil
	}
	if k.path == "events.types" || k.path == "forward.types" {
		var list []string
		for _, t := range strings.Split(s, ",") {
			if t = strings.TrimSpace(t); t != "" {
				list = append(list, t)
			}
		}
		return list, nil
	}
	return strings.Fields(s), nil
}

func (d *decoder) decode() *Config {
	c := &Config{
		Stripe: Stripe{
			APIKey:     strings.TrimSpace(d.str("stripe.api_key")),
			APIKeyFile: d.str("stripe.api_key_file"),
			APIBase:    d.str("stripe.api_base"),
			Account:    d.str("stripe.account"),
			RateLimit:  d.float("stripe.rate_limit"),

			MonthlyReadBudget: d.intOrAuto("stripe.monthly_read_budget"),
		},
		Events: Events{
			Types:    d.list("events.types"),
			Lookback: d.dur("events.lookback"),
		},
		Schedule: d.str("schedule"),
		Store:    Store{Path: d.str("store.path"), Postgres: d.str("store.postgres"), Retention: d.dur("store.retention")},
		Fulfill: Fulfill{
			PaymentIntents: d.bool("fulfill.payment_intents"),
			Command:        d.list("fulfill.command"),
			URL:            d.str("fulfill.url"),
			Secret:         d.str("fulfill.secret"),
			Timeout:        d.dur("fulfill.timeout"),
			Concurrency:    d.int("fulfill.concurrency"),
			MaxAttempts:    d.int("fulfill.max_attempts"),
		},
		Notify: Notify{
			Command: d.list("notify.command"),
			URL:     d.str("notify.url"),
			Secret:  d.str("notify.secret"),
		},
		Forward: Forward{
			URL:    d.str("forward.url"),
			Secret: d.str("forward.secret"),
			Types:  d.list("forward.types"),

			UndeliveredOnly: d.bool("forward.undelivered_only"),
			Grace:           d.dur("forward.grace"),
		},
		Reconcile: Reconcile{
			Schedule: d.str("reconcile.schedule"),
			Window:   d.dur("reconcile.window"),
		},
		HTTP: HTTP{Listen: d.str("http.listen")},
	}
	if len(c.Events.Types) == 0 {
		c.Events.Types = slices.Clone(DefaultEventTypes)
	}
	if len(c.Forward.Types) == 0 {
		c.Forward.Types = slices.Clone(c.Events.Types)
	}
	return c
}

func (d *decoder) get(path string) (key, any) {
	k, ok := lookupKey(path)
	if !ok {
		panic("config: no such key " + path) // a bug in this package, not a user error
	}
	return k, d.v.Get(path)
}

func (d *decoder) str(path string) string {
	k, val := d.get(path)
	switch x := val.(type) {
	case nil:
		return ""
	case string:
		return x
	case int, int64, uint64, float64:
		if path == "http.listen" { // "listen: 9464" in a file is a number
			return fmt.Sprint(x)
		}
	}
	d.fail(path, "must be %s%s", describe(k.kind), echo(k, val))
	return ""
}

func (d *decoder) list(path string) []string {
	k, val := d.get(path)
	switch x := val.(type) {
	case nil:
		return nil
	case []string:
		return slices.Clone(x)
	case []any:
		out := make([]string, len(x))
		for i, e := range x {
			s, ok := e.(string)
			if !ok {
				d.fail(path, "must be %s; entry %d is not a string", describe(k.kind), i+1)
				return nil
			}
			out[i] = s
		}
		return out
	}
	d.fail(path, "must be %s%s", describe(k.kind), echo(k, val))
	return nil
}

func (d *decoder) dur(path string) time.Duration {
	k, val := d.get(path)
	switch x := val.(type) {
	case nil:
		return 0
	case time.Duration:
		return x
	case string:
		if dur, ok := parseDays(strings.TrimSpace(x)); ok {
			return dur
		}
	}
	// A bare number is refused rather than read as nanoseconds.
	d.fail(path, "must be %s%s", describe(k.kind), echo(k, val))
	return 0
}

func (d *decoder) int(path string) int {
	k, val := d.get(path)
	switch x := val.(type) {
	case nil:
		return 0
	case int:
		return x
	case int64:
		if x >= math.MinInt32 && x <= math.MaxInt32 {
			return int(x)
		}
	case uint64:
		if x <= math.MaxInt32 {
			return int(x)
		}
	case float64: // JSON numbers
		if x == math.Trunc(x) && math.Abs(x) <= math.MaxInt32 {
			return int(x)
		}
	case string:
		if n, err := strconv.Atoi(strings.TrimSpace(x)); err == nil {
			return n
		}
	}
	d.fail(path, "must be %s%s", describe(k.kind), echo(k, val))
	return 0
}

// bool reads true or false; from the environment or --set it is the
// word (strconv.ParseBool's spellings: 1, t, true, 0, f, false, …).
func (d *decoder) bool(path string) bool {
	k, val := d.get(path)
	switch x := val.(type) {
	case nil:
		return false
	case bool:
		return x
	case string:
		if b, err := strconv.ParseBool(strings.TrimSpace(x)); err == nil {
			return b
		}
	}
	d.fail(path, "must be %s%s", describe(k.kind), echo(k, val))
	return false
}

// intOrAuto is a whole number, or ReadBudgetAuto for "auto".
func (d *decoder) intOrAuto(path string) int {
	if _, val := d.get(path); val != nil {
		if s, ok := val.(string); ok && strings.EqualFold(strings.TrimSpace(s), "auto") {
			return ReadBudgetAuto
		}
	}
	n := d.int(path)
	if n < 0 {
		// Checked here: a -1 must not pass for auto.
		d.fail(path, "must be auto (half of Stripe's read allocation), 0 (no cap) or the most API reads to make in a rolling 30 days, e.g. 1000000; got %d", n)
		return 0
	}
	return n
}

func (d *decoder) float(path string) float64 {
	k, val := d.get(path)
	switch x := val.(type) {
	case nil:
		return 0
	case float64:
		return x
	case int:
		return float64(x)
	case int64:
		return float64(x)
	case uint64:
		return float64(x)
	case string:
		if f, err := strconv.ParseFloat(strings.TrimSpace(x), 64); err == nil {
			return f
		}
	}
	d.fail(path, "must be %s%s", describe(k.kind), echo(k, val))
	return 0
}
