package config

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"regexp"
	"strings"
)

// redacted stands in for a secret that is set; an unset secret stays "" so
// output still shows whether it is configured.
const redacted = "[redacted]"

// Secrets returns the secret values in c, for a log redactor: the API key,
// fulfill.secret, notify.secret and any password embedded in a URL.
func (c *Config) Secrets() []string {
	var out []string
	add := func(s string) {
		if s == "" {
			return
		}
		for _, o := range out {
			if o == s {
				return
			}
		}
		out = append(out, s)
	}
	add(c.Stripe.APIKey)
	add(c.Fulfill.Secret)
	add(c.Notify.Secret)
	add(c.Forward.Secret)
	if c.Store.Postgres != "" {
		for _, p := range DSNPasswords(c.Store.Postgres) {
			add(p)
		}
		// libpq's own variable: a password given there is as secret.
		add(os.Getenv("PGPASSWORD"))
	}
	for _, raw := range []string{c.Stripe.APIBase, c.Fulfill.URL, c.Notify.URL, c.Forward.URL} {
		if u, err := url.Parse(raw); err == nil && u.User != nil {
			if p, ok := u.User.Password(); ok {
				add(p)
			}
		}
	}
	return out
}

// The parts of a connection string that hold a password, in either form
// libpq accepts.
var (
	dsnURLPassword   = regexp.MustCompile(`^(postgres(?:ql)?://[^:@/]*:)([^@]*)@`)
	dsnQueryPassword = regexp.MustCompile(`([?&]password=)([^&#]*)`)
	dsnKVPassword    = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)
)

func isDSNURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// DSNPasswords is every password a connection string holds: in the URL's
// user part or its password parameter (also in a URL Go cannot parse, such
// as a multi-host one), or in key=value form. libpq's PGPASSWORD is not
// included.
func DSNPasswords(dsn string) []string {
	var out []string
	if isDSNURL(dsn) {
		if u, err := url.Parse(dsn); err == nil {
			if p, ok := u.User.Password(); ok && p != "" {
				out = append(out, p)
			}
			if p := u.Query().Get("password"); p != "" {
				out = append(out, p)
			}
			return out
		}
		if m := dsnURLPassword.FindStringSubmatch(dsn); m != nil && m[2] != "" {
			p, err := url.PathUnescape(m[2])
			if err != nil {
				p = m[2]
			}
			out = append(out, p)
		}
		for _, m := range dsnQueryPassword.FindAllStringSubmatch(dsn, -1) {
			if p, err := url.QueryUnescape(m[2]); err == nil && p != "" {
				out = append(out, p)
			}
		}
		return out
	}
	for _, m := range dsnKVPassword.FindAllStringSubmatch(dsn, -1) {
		p := m[2]
		if strings.HasPrefix(p, "'") {
			p = strings.ReplaceAll(strings.Trim(p, "'"), `\'`, "'")
		}
		out = append(out, p)
	}
	return out
}

// RedactDSN is a connection string with its password replaced by xxxxx,
// for errors and logs: the host, port, database and user stay, so it still
// says which database is meant.
func RedactDSN(dsn string) string {
	if isDSNURL(dsn) {
		if u, err := url.Parse(dsn); err == nil {
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
			}
			if q := u.Query(); q.Has("password") {
				q.Set("password", "xxxxx")
				u.RawQuery = q.Encode()
			}
			return u.String()
		}
		// Not a URL Go can parse: cut whatever sits between the user and
		// the host, and any password parameter.
		dsn = dsnURLPassword.ReplaceAllString(dsn, "${1}xxxxx@")
		return dsnQueryPassword.ReplaceAllString(dsn, "${1}xxxxx")
	}
	return dsnKVPassword.ReplaceAllString(dsn, "${1}xxxxx")
}

func hide(s string) string {
	if s == "" {
		return ""
	}
	return redacted
}

// hideURL removes a password from a URL ("https://user:xxxxx@host/").
func hideURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		if strings.Contains(s, "@") {
			return redacted // unparsable and may hold credentials
		}
		return s
	}
	return u.Redacted()
}

// The plain* types have the fields of their namesakes and none of their
// methods, so printing them does not recurse into Format.
type (
	plainStripe  Stripe
	plainFulfill Fulfill
	plainNotify  Notify
	plainForward Forward
)

func (s Stripe) redact() plainStripe {
	s.APIKey = hide(s.APIKey)
	s.APIBase = hideURL(s.APIBase)
	return plainStripe(s)
}

func (f Fulfill) redact() plainFulfill {
	f.Secret = hide(f.Secret)
	f.URL = hideURL(f.URL)
	return plainFulfill(f)
}

func (n Notify) redact() plainNotify {
	n.Secret = hide(n.Secret)
	n.URL = hideURL(n.URL)
	return plainNotify(n)
}

func (fw Forward) redact() plainForward {
	fw.Secret = hide(fw.Secret)
	fw.URL = hideURL(fw.URL)
	return plainForward(fw)
}

// Format prints fw with the signing secret redacted.
func (fw Forward) Format(f fmt.State, verb rune) { format(f, verb, "Forward", fw.redact()) }

// MarshalJSON encodes fw with the signing secret redacted.
func (fw Forward) MarshalJSON() ([]byte, error) { return json.Marshal(fw.redact()) }

// LogValue logs fw by its config key names, with the signing secret redacted.
func (fw Forward) LogValue() slog.Value {
	r := fw.redact()
	return slog.GroupValue(
		slog.String("url", r.URL),
		slog.String("secret", r.Secret),
		slog.Any("types", r.Types),
		slog.Bool("undelivered_only", r.UndeliveredOnly),
		slog.Duration("grace", r.Grace),
	)
}

// Format prints s with the API key redacted, for every verb, so that
// fmt.Printf("%+v", cfg) is safe.
func (s Stripe) Format(f fmt.State, verb rune) { format(f, verb, "Stripe", s.redact()) }

// Format prints f with the signing secret redacted.
func (f Fulfill) Format(st fmt.State, verb rune) { format(st, verb, "Fulfill", f.redact()) }

// Format prints n with the signing secret redacted.
func (n Notify) Format(f fmt.State, verb rune) { format(f, verb, "Notify", n.redact()) }

func format(f fmt.State, verb rune, name string, v any) {
	out := fmt.Sprintf(fmt.FormatString(f, verb), v)
	if verb == 'v' && f.Flag('#') {
		out = strings.Replace(out, "config.plain"+name, "config."+name, 1)
	}
	io.WriteString(f, out)
}

// MarshalJSON encodes s with the API key redacted, so a Config dumped as
// JSON (or logged by a JSON handler that skips LogValue) is safe.
func (s Stripe) MarshalJSON() ([]byte, error) { return json.Marshal(s.redact()) }

// MarshalJSON encodes f with the signing secret redacted.
func (f Fulfill) MarshalJSON() ([]byte, error) { return json.Marshal(f.redact()) }

// MarshalJSON encodes n with the signing secret redacted.
func (n Notify) MarshalJSON() ([]byte, error) { return json.Marshal(n.redact()) }

// LogValue logs s by its config key names, with the API key redacted.
func (s Stripe) LogValue() slog.Value {
	r := s.redact()
	return slog.GroupValue(
		slog.String("api_key", r.APIKey),
		slog.String("api_key_file", r.APIKeyFile),
		slog.String("api_base", r.APIBase),
		slog.String("account", r.Account),
		slog.Float64("rate_limit", r.RateLimit),
		slog.Int("monthly_read_budget", r.MonthlyReadBudget),
	)
}

// LogValue logs f by its config key names, with the signing secret redacted.
func (f Fulfill) LogValue() slog.Value {
	r := f.redact()
	return slog.GroupValue(
		slog.Any("command", r.Command),
		slog.String("url", r.URL),
		slog.String("secret", r.Secret),
		slog.Duration("timeout", r.Timeout),
		slog.Int("concurrency", r.Concurrency),
		slog.Int("max_attempts", r.MaxAttempts),
	)
}

// LogValue logs n by its config key names, with the signing secret redacted.
func (n Notify) LogValue() slog.Value {
	r := n.redact()
	return slog.GroupValue(
		slog.Any("command", r.Command),
		slog.String("url", r.URL),
		slog.String("secret", r.Secret),
	)
}

// LogValue logs the whole configuration by its config key names, secrets
// redacted: logger.Info("config", "config", cfg).
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Any("stripe", c.Stripe),
		slog.Group("events", slog.Any("types", c.Events.Types), slog.Duration("lookback", c.Events.Lookback)),
		slog.String("schedule", c.Schedule),
		slog.Group("store", slog.String("path", c.Store.Path), slog.String("postgres", RedactDSN(c.Store.Postgres))),
		slog.Any("fulfill", c.Fulfill),
		slog.Any("notify", c.Notify),
		slog.Any("forward", c.Forward),
		slog.Group("reconcile", slog.String("schedule", c.Reconcile.Schedule), slog.Duration("window", c.Reconcile.Window)),
		slog.Group("http", slog.String("listen", c.HTTP.Listen)),
	)
}
