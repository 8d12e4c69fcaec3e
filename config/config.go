// Package config loads fulfilld's settings from a file, the environment and
// command-line flags, fills in defaults and refuses bad values with a message
// that names the key and says what is accepted.
//
// It is a leaf: it imports no other package of fulfilld, and no viper type
// leaves it. A viper instance lives only for the duration of one Load call.
package config

import (
	"time"
)

// DefaultEventTypes are the event types fulfilld asks Stripe for when
// events.types is not set: the Checkout Session events that drive fulfillment
// and the PaymentIntent events whose status it records.
var DefaultEventTypes = []string{
	"checkout.session.completed",
	"checkout.session.async_payment_succeeded",
	"checkout.session.async_payment_failed",
	"checkout.session.expired",
	"payment_intent.succeeded",
	"payment_intent.payment_failed",
	"payment_intent.processing",
	"payment_intent.amount_capturable_updated",
	"payment_intent.canceled",
}

// DefaultAPIBase is Stripe's API, used when stripe.api_base is not set.
const DefaultAPIBase = "https://api.stripe.com"

// Retention is how long Stripe keeps events listable. A poll window older than
// this cannot be served from the event stream.
const Retention = 30 * 24 * time.Hour

// Config is fulfilld's complete, validated configuration.
//
// Printing a Config with fmt or logging it with log/slog never shows the API
// key or the signing secrets.
type Config struct {
	Stripe    Stripe
	Events    Events
	Schedule  string // robfig/cron spec for polls
	Store     Store
	Fulfill   Fulfill
	Notify    Notify
	Forward   Forward
	Reconcile Reconcile
	HTTP      HTTP
}

// Stripe holds how fulfilld reaches the Stripe API.
type Stripe struct {
	// APIKey is the secret (sk_…) or restricted (rk_…) key. After Load it
	// also holds a key read from APIKeyFile.
	APIKey string
	// APIKeyFile is where the key was read from when APIKey was not set,
	// resolved against $CREDENTIALS_DIRECTORY when relative.
	APIKeyFile string
	// APIBase is the API's base URL without a trailing slash.
	APIBase string
	// Account is an optional Connect account id (Stripe-Account header).
	Account string
	// RateLimit is the requests/second budget for all calls; 0 = automatic.
	RateLimit float64
	// MonthlyReadBudget caps the API reads of a rolling 30 days; polls are
	// spread out to stay inside it. 0 = no cap; ReadBudgetAuto (the
	// default, "auto") = half of Stripe's read allocation for the account,
	// max(10,000, 500 × payments in 30 days) / 2.
	MonthlyReadBudget int
}

// ReadBudgetAuto is MonthlyReadBudget's value for "auto".
const ReadBudgetAuto = -1

// Events selects what the poller lists.
type Events struct {
	Types    []string
	Lookback time.Duration // how late an event may appear in the list and still be caught
}

// Store is where the state lives: the bbolt file, or PostgreSQL.
type Store struct {
	// Path is the bbolt file; with Postgres set it only names the admin
	// socket (Path + ".sock").
	Path string
	// Postgres, when set, is a libpq connection string (a postgres:// URL
	// or key=value pairs) of the database that any number of instances
	// share; PGPASSWORD, PGPASSFILE, sslmode and the rest of libpq's
	// conventions apply. Its password is a secret.
	Postgres string
	// Retention is how long settled records keep their full detail (kept
	// output, errors, event bodies); after it only what prevents a repeat
	// is kept.
	Retention time.Duration
}

// Fulfill is the operator's action for a paid session: a command or a URL.
type Fulfill struct {
	// PaymentIntents also fulfils PaymentIntents that no Checkout Session
	// owns (payment_intent.succeeded; Payment Element payments).
	PaymentIntents bool
	Command        []string // argv, no shell
	URL            string
	Secret         string // signs URL deliveries
	Timeout        time.Duration
	Concurrency    int
	MaxAttempts    int
}

// Notify is the optional action for payment failures and expiries.
type Notify struct {
	Command []string
	URL     string
	Secret  string
}

// Forward relays listed events to an existing webhook endpoint, signed as
// Stripe signs them.
type Forward struct {
	URL    string
	Secret string   // that endpoint's signing secret (whsec_…)
	Types  []string // default: every type in events.types
	// UndeliveredOnly is repair mode: the stream forwards nothing, and
	// every sweep forwards the events of Types that Stripe could not
	// deliver (delivery_success=false) and that are older than Grace.
	UndeliveredOnly bool
	// Grace is how long Stripe gets to deliver an event itself (its own
	// retries) before repair mode forwards it.
	Grace time.Duration
}

// Reconcile is the periodic sweep over recent Checkout Sessions.
type Reconcile struct {
	Schedule string
	Window   time.Duration
}

// HTTP is the optional metrics/health/fulfill endpoint.
type HTTP struct {
	// Listen is "" (off) or host:port; a bare port is bound to 127.0.0.1.
	Listen string
}

// Source says where Load reads settings from. Later sources win: the file,
// then the environment, then Overrides.
type Source struct {
	// File is the --config path; "" means no file.
	File string
	// LookupEnv reads the environment; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// Environ lists the environment as KEY=value, so that a FULFILLD_*
	// variable that names no key is refused instead of ignored. nil means
	// os.Environ when LookupEnv is nil too; with only LookupEnv given (a
	// test's own environment) no variable is listed.
	Environ func() []string
	// Overrides come from command-line flags, keyed by key path such as
	// "store.path". A nil value is skipped.
	Overrides map[string]any
}

// Error is a bad setting. Its message is one line that names the key (or
// flag) and says what is accepted; it never contains a secret.
type Error struct {
	Key string // config key path ("fulfill.url"), or a flag ("--config", "--since")
	Msg string
}

func (e *Error) Error() string { return e.Key + ": " + e.Msg }

// RequireAPIKey refuses a configuration without a Stripe API key. Commands
// that talk to Stripe call it; `demo` does not.
func (c *Config) RequireAPIKey() error {
	if c.Stripe.APIKey != "" {
		return nil
	}
	return &Error{Key: "stripe.api_key", Msg: "no Stripe API key; set stripe.api_key in the config file, " +
		"STRIPE_API_KEY or FULFILLD_STRIPE_API_KEY in the environment, " +
		"or stripe.api_key_file to a file holding the key (e.g. a systemd credential)"}
}

// RequireAction refuses a configuration with nothing to run for a paid
// session, and a fulfill.command or notify.command whose program is missing
// or not executable: found out at start, not by an hour of failed attempts.
// The commands that run actions in this process call it (`run` unless
// --dry-run, and `fulfill` and `reconcile` when no daemon runs).
func (c *Config) RequireAction() error {
	if !c.HasFulfillAction() && c.Forward.URL == "" {
		return &Error{Key: "fulfill", Msg: "no action; set fulfill.command (an argv list) or fulfill.url, " +
			"or forward.url to relay events to a webhook handler you already have, " +
			"or use --dry-run to only record what would be fulfilled"}
	}
	if err := checkProgram("fulfill.command", c.Fulfill.Command); err != nil {
		return err
	}
	return checkProgram("notify.command", c.Notify.Command)
}

// HasFulfillAction reports whether fulfilld runs an action of its own for
// paid sessions; without one, and with forward.url, it only relays.
func (c *Config) HasFulfillAction() bool { return len(c.Fulfill.Command) > 0 || c.Fulfill.URL != "" }

// RelayOnly reports forward alone: fulfilld relays events to forward.url
// and runs no action of its own. (Without forward either, as in a dry run,
// it still records what it would fulfil.)
func (c *Config) RelayOnly() bool { return !c.HasFulfillAction() && c.Forward.URL != "" }

// Repair reports repair mode (forward.undelivered_only): fulfilld
// re-delivers to forward.url only what Stripe could not deliver, from its
// sweeps, and runs no action of its own.
func (c *Config) Repair() bool { return c.Forward.UndeliveredOnly && c.Forward.URL != "" }

// RequireFulfillAction refuses to fulfil a session by hand (`fulfill`,
// `reconcile`) when fulfilld has no action of its own: with forward alone,
// the shop's handler fulfils, and fulfilld must not guess how.
func (c *Config) RequireFulfillAction() error {
	if !c.HasFulfillAction() {
		return &Error{Key: "fulfill", Msg: "no fulfillment action; set fulfill.command (an argv list) or fulfill.url " +
			"(with forward alone, the webhook handler at forward.url fulfils)"}
	}
	return c.RequireAction()
}

// LiveMode reports whether the API key is a live-mode key.
func (c *Config) LiveMode() bool {
	k := c.Stripe.APIKey
	return len(k) > 8 && (k[:8] == "sk_live_" || k[:8] == "rk_live_")
}
