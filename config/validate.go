package config

import (
	"errors"
	"io"
	"io/fs"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

const (
	maxEventTypes   = 20 // Stripe's limit for types[] on GET /v1/events
	minLookback     = time.Minute
	minRetention    = 24 * time.Hour
	maxLookback     = 24 * time.Hour
	maxConcurrency  = 64
	maxMaxAttempts  = 100
	maxKeyFileBytes = 4096
	// minGrace is the shortest forward.grace: less would race Stripe's own
	// first delivery attempt of an event.
	minGrace = time.Minute
)

const keyAdvice = "use a secret key sk_… or a restricted key rk_…"

// readAPIKeyFile fills Stripe.APIKey from Stripe.APIKeyFile when no key was
// given directly. The file's content is never put in an error.
func readAPIKeyFile(c *Config, lookup func(string) (string, bool)) *Error {
	s := &c.Stripe
	if s.APIKey != "" || s.APIKeyFile == "" {
		return nil
	}
	path := s.APIKeyFile
	where := ""
	// systemd's LoadCredential= puts credentials in $CREDENTIALS_DIRECTORY;
	// a relative name is meant to be found there.
	if dir, ok := lookup("CREDENTIALS_DIRECTORY"); ok && dir != "" && !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
		where = " (resolved in $CREDENTIALS_DIRECTORY)"
	}
	s.APIKeyFile = path
	f, err := os.Open(path)
	if err != nil {
		return keyFileError(path, where, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes+1))
	if err != nil {
		return keyFileError(path, where, err)
	}
	if len(b) > maxKeyFileBytes {
		return &Error{Key: "stripe.api_key_file", Msg: path + where + " is larger than 4 KiB; it must hold only the API key"}
	}
	key := strings.TrimSpace(string(b))
	if key == "" {
		return &Error{Key: "stripe.api_key_file", Msg: path + where + " is empty; it must hold the API key (" + keyAdvice + ")"}
	}
	if msg := checkAPIKey(key); msg != "" {
		return &Error{Key: "stripe.api_key_file", Msg: "the key in " + path + where + ": " + msg}
	}
	s.APIKey = key
	return nil
}

func keyFileError(path, where string, err error) *Error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return &Error{Key: "stripe.api_key_file", Msg: "cannot read " + path + where + ": " + err.Error()}
}

// checkAPIKey says what is wrong with an API key, without quoting any of it.
func checkAPIKey(k string) string {
	switch {
	case strings.IndexFunc(k, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0:
		return "contains whitespace or control characters; it must be a single key (" + keyAdvice + ")"
	case strings.HasPrefix(k, "sk_"), strings.HasPrefix(k, "rk_"):
		return ""
	case strings.HasPrefix(k, "pk_"):
		return "a publishable key cannot read events; " + keyAdvice
	case strings.HasPrefix(k, "whsec_"):
		return "this is a webhook signing secret, not an API key; " + keyAdvice
	default:
		return "not a Stripe API key; " + keyAdvice
	}
}

func (d *decoder) validate(c *Config) *Error {
	s := &c.Stripe
	if s.APIKey != "" {
		if msg := checkAPIKey(s.APIKey); msg != "" {
			d.fail("stripe.api_key", "%s", msg)
		}
	}
	if s.APIBase == "" {
		s.APIBase = DefaultAPIBase
	}
	s.APIBase = strings.TrimRight(s.APIBase, "/")
	if u, ok := httpURL(s.APIBase); !ok {
		d.fail("stripe.api_base", "must be an absolute http:// or https:// URL such as %s", DefaultAPIBase)
	} else if u.RawQuery != "" || u.Fragment != "" {
		d.fail("stripe.api_base", "must be a base URL without a query or fragment, such as %s", DefaultAPIBase)
	} else if strings.HasSuffix(u.Path, "/v1") {
		d.fail("stripe.api_base", "must not end in /v1 (the client adds it); use e.g. %s", DefaultAPIBase)
	}
	if s.Account != "" && !strings.HasPrefix(s.Account, "acct_") {
		d.fail("stripe.account", "must be a Connect account id starting with acct_, or empty; got %q", s.Account)
	}
	if s.RateLimit < 0 || math.IsNaN(s.RateLimit) || math.IsInf(s.RateLimit, 0) {
		d.fail("stripe.rate_limit", "must be 0 (automatic) or a positive number of requests per second; got %v", s.RateLimit)
	}

	d.validateTypes(c.Events.Types)
	d.requireTypes(c)
	if l := c.Events.Lookback; l < minLookback || l > maxLookback {
		d.fail("events.lookback", "must be between 1m and 24h; got %s", l)
	}
	d.validateSchedule("schedule", c.Schedule)
	if strings.TrimSpace(c.Store.Path) == "" {
		d.fail("store.path", "must not be empty; give the bbolt file, e.g. /var/lib/fulfilld/fulfilld.db")
	}
	if dsn := strings.TrimSpace(c.Store.Postgres); dsn != "" {
		d.validatePostgres(dsn)
	}
	if c.Store.Retention < minRetention {
		d.fail("store.retention", "must be at least 1d (settled records keep full detail this long, e.g. 90d); got %s", c.Store.Retention)
	}

	f := &c.Fulfill
	d.validateAction("fulfill", f.Command, f.URL)
	if f.Timeout <= 0 {
		d.fail("fulfill.timeout", `must be a duration greater than 0, such as "30s"; got %s`, f.Timeout)
	}
	if f.Concurrency < 1 || f.Concurrency > maxConcurrency {
		d.fail("fulfill.concurrency", "must be between 1 and %d; got %d", maxConcurrency, f.Concurrency)
	}
	if f.MaxAttempts < 1 || f.MaxAttempts > maxMaxAttempts {
		d.fail("fulfill.max_attempts", "must be between 1 and %d; got %d", maxMaxAttempts, f.MaxAttempts)
	}
	d.validateAction("notify", c.Notify.Command, c.Notify.URL)
	d.validateSecret("fulfill.secret", f.Secret)
	d.validateSecret("notify.secret", c.Notify.Secret)
	d.validateForward(c)

	d.validateSchedule("reconcile.schedule", c.Reconcile.Schedule)
	if c.Reconcile.Window <= 0 {
		d.fail("reconcile.window", `must be a duration greater than 0, such as "72h"; got %s`, c.Reconcile.Window)
	}

	if listen, msg := normalizeListen(c.HTTP.Listen); msg == "" {
		c.HTTP.Listen = listen
	} else {
		d.fail("http.listen", "%s; got %q", msg, c.HTTP.Listen)
	}
	return d.err
}

func (d *decoder) validateTypes(types []string) {
	if len(types) > maxEventTypes {
		d.fail("events.types", "must list at most %d event types (Stripe's limit per request); got %d", maxEventTypes, len(types))
		return
	}
	seen := make(map[string]bool, len(types))
	for i, t := range types {
		switch {
		case t == "":
			d.fail("events.types", "entry %d is empty; each entry is an event type such as checkout.session.completed", i+1)
		case strings.ContainsFunc(t, func(r rune) bool { return r <= ' ' || r == ',' }):
			d.fail("events.types", "%q is not an event type; list one type per entry, such as checkout.session.completed", t)
		case seen[t]:
			d.fail("events.types", "%s is listed twice", t)
		}
		seen[t] = true
	}
}

// Event types the actions depend on: without them in events.types the
// action would never run (or never for the paid-later half of the payments).
var (
	fulfillTypes = []string{"checkout.session.completed", "checkout.session.async_payment_succeeded"}
	notifyTypes  = []string{"checkout.session.async_payment_failed", "checkout.session.expired", "payment_intent.payment_failed"}
)

// requireTypes refuses an events.types that leaves out a type a configured
// action needs: such a daemon would run and look healthy, and fulfil nothing.
func (d *decoder) requireTypes(c *Config) {
	var missing []string
	check := func(section string, types []string) {
		for _, t := range types {
			if !slices.Contains(c.Events.Types, t) {
				missing = append(missing, t+" (for "+section+")")
			}
		}
	}
	if len(c.Fulfill.Command) > 0 || c.Fulfill.URL != "" {
		check("fulfill", fulfillTypes)
	}
	if c.Fulfill.PaymentIntents && (len(c.Fulfill.Command) > 0 || c.Fulfill.URL != "") {
		check("fulfill.payment_intents", []string{"payment_intent.succeeded"})
	}
	if len(c.Notify.Command) > 0 || c.Notify.URL != "" {
		check("notify", notifyTypes)
	}
	if len(missing) > 0 {
		d.fail("events.types", "leaves out %s: the configured action would never hear of those payments; "+
			"add them, or leave events.types empty for the default", strings.Join(missing, ", "))
	}
}

// validateForward checks forward.url like the other URLs, its secret like
// the other secrets, and that forward.types only names listed types: a
// type fulfilld does not list would never be forwarded.
func (d *decoder) validateForward(c *Config) {
	fw := c.Forward
	if fw.URL != "" {
		if u, ok := httpURL(fw.URL); !ok {
			d.fail("forward.url", "must be an absolute http:// or https:// URL, such as http://127.0.0.1:4242/webhook")
		} else if u.Fragment != "" {
			d.fail("forward.url", "must not have a #fragment")
		}
	}
	d.validateSecret("forward.secret", fw.Secret)
	if fw.Secret != "" && fw.URL == "" {
		d.fail("forward.secret", "is set but forward.url is not; set forward.url to the endpoint this secret signs for")
	}
	var unlisted []string
	for _, t := range fw.Types {
		if !slices.Contains(c.Events.Types, t) {
			unlisted = append(unlisted, t)
		}
	}
	if len(unlisted) > 0 {
		d.fail("forward.types", "names %s, which events.types does not list, so it would never be forwarded; "+
			"add it to events.types or leave forward.types empty for all of events.types", strings.Join(unlisted, ", "))
	}
	d.validateRepair(c)
}

// validateRepair checks repair mode (forward.undelivered_only): it needs
// the handler to re-deliver to, it must be the only way fulfilld fulfils,
// and forward.grace must leave a sweep something to list.
func (d *decoder) validateRepair(c *Config) {
	fw := c.Forward
	if fw.Grace < minGrace || fw.Grace >= Retention {
		d.fail("forward.grace", "must be at least 1m and less than 30d (Stripe lists events for 30 days); got %s", fw.Grace)
	}
	if !fw.UndeliveredOnly {
		return
	}
	switch {
	case fw.URL == "":
		d.fail("forward.undelivered_only", "is true but forward.url is not set; set forward.url to the webhook handler "+
			"that should get the events Stripe could not deliver to it")
	case len(c.Fulfill.Command) > 0 || c.Fulfill.URL != "":
		action := "fulfill.command"
		if c.Fulfill.URL != "" {
			action = "fulfill.url"
		}
		d.fail("forward.undelivered_only", "is true and %[1]s is set: repair mode re-delivers missed events to a webhook "+
			"handler that fulfils, and %[1]s would fulfil the same orders a second time; remove %[1]s, "+
			"or set forward.undelivered_only to false", action)
	case fw.Grace >= c.Reconcile.Window && c.Reconcile.Window > 0:
		d.fail("forward.grace", "must be shorter than reconcile.window (%s): a scheduled sweep re-delivers the events "+
			"created between reconcile.window and forward.grace ago, so it would have nothing to list; got %s",
			c.Reconcile.Window, fw.Grace)
	}
}

func (d *decoder) validateSchedule(path, spec string) {
	const accepted = `use a cron spec such as "@every 30s", "@hourly" or "*/5 * * * *"`
	if _, err := cron.ParseStandard(spec); err != nil {
		d.fail(path, "%q is not a valid schedule (%v); %s", spec, err, accepted)
		return
	}
	// cron silently turns "@every 0s" or "@every 200ms" into one second.
	if rest, ok := strings.CutPrefix(spec, "@every "); ok {
		if every, err := time.ParseDuration(strings.TrimSpace(rest)); err == nil && every < time.Second {
			d.fail(path, "%q is shorter than one second; %s", spec, accepted)
		}
	}
}

func (d *decoder) validateAction(section string, command []string, rawURL string) {
	if len(command) > 0 && rawURL != "" {
		d.fail(section, "set either %[1]s.command or %[1]s.url, not both", section)
		return
	}
	if len(command) > 0 && strings.TrimSpace(command[0]) == "" {
		d.fail(section+".command", "the first entry, the program to run, is empty")
	}
	if rawURL != "" {
		if _, ok := httpURL(rawURL); !ok {
			d.fail(section+".url", "must be an absolute http:// or https:// URL")
		}
	}
}

// minSecret is the shortest signing secret accepted: a shorter one is easy
// to guess, and too short for the log redactor to remove safely.
const minSecret = 16

// validateSecret refuses a signing secret too short to be one. The message
// never shows the secret.
func (d *decoder) validateSecret(path, secret string) {
	if secret != "" && len(secret) < minSecret {
		d.fail(path, "is too short to sign deliveries: use at least %d random characters (e.g. the output of `openssl rand -hex 32`)", minSecret)
	}
}

func httpURL(s string) (*url.URL, bool) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return nil, false
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
		return u, true
	}
	return nil, false
}

// normalizeListen turns "9464" and ":9464" into "127.0.0.1:9464": the
// endpoint can trigger fulfillments, so it is only exposed beyond the host
// when an address is named (e.g. "0.0.0.0:9464"). A non-empty msg says what
// is wrong.
func normalizeListen(s string) (addr, msg string) {
	const accepted = `must be "host:port", ":port" or "port" (e.g. 127.0.0.1:9464), or empty to turn it off`
	s = strings.TrimSpace(s)
	if s == "" {
		return "", ""
	}
	host, port := "", s
	if !isDigits(s) {
		h, p, err := net.SplitHostPort(s)
		if err != nil {
			return "", accepted
		}
		host, port = h, p
	}
	n, err := strconv.Atoi(port)
	if !isDigits(port) || err != nil || n < 1 || n > 65535 {
		return "", "the port must be a number from 1 to 65535"
	}
	if strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r == '/' }) {
		return "", accepted
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, strconv.Itoa(n)), ""
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// validatePostgres checks the shape of store.postgres; the database itself
// judges the rest when it is opened.
func (d *decoder) validatePostgres(dsn string) {
	if strings.Contains(dsn, "://") {
		u, err := url.Parse(dsn)
		if err != nil || u.Scheme != "postgres" && u.Scheme != "postgresql" {
			d.fail("store.postgres", "must be a postgres:// URL or libpq key=value pairs, e.g. postgres://fulfilld@db.internal/fulfilld; got %s", RedactDSN(dsn))
		}
		return
	}
	if !strings.Contains(dsn, "=") {
		d.fail("store.postgres", "must be a postgres:// URL or libpq key=value pairs, e.g. \"host=db.internal dbname=fulfilld user=fulfilld\"")
	}
}
