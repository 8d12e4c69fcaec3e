package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/cluster"
	"github.com/fulfilld/fulfilld/internal/logging"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/store/pgstore"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

// app holds what every command shares: flags, configuration and logger.
type app struct {
	stdout, stderr io.Writer
	lookupEnv      func(string) (string, bool)
	environ        func() []string // to refuse misspelt FULFILLD_* variables
	now            func() time.Time

	configFile string
	logFormat  string
	logLevel   string
	sets       []string // --set key=value

	cfg    *config.Config
	log    *slog.Logger
	line   *logging.Line // stderr, shared by the logger and the progress line
	redact func(string) string
	// client is the process's one Stripe client: one request budget and
	// one learned Stripe clock for every command's calls.
	client *stripeapi.Client
	// self is this process among the instances of a shared store.
	self cluster.Instance
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "fulfilld",
		Short:         "Fulfill every paid Stripe Checkout Session exactly once",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&a.configFile, "config", "", "config file (YAML, TOML or JSON)")
	root.PersistentFlags().StringVar(&a.logFormat, "log-format", "auto", "log format: text, json, or auto (text on a terminal, JSON otherwise)")
	root.PersistentFlags().StringVar(&a.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringArrayVar(&a.sets, "set", nil, "set a config key, over the file and the environment: --set store.path=/var/lib/fulfilld/f.db (repeatable; lists as JSON or words)")
	root.AddCommand(a.initCommand(), a.runCommand(), a.statusCommand(), a.fulfillCommand(), a.retryCommand(), a.reconcileCommand(), a.demoCommand(), a.benchCommand(), a.compactCommand(), a.migrateStoreCommand(), a.versionCommand())
	return root
}

func (a *app) clock() time.Time {
	if a.now != nil {
		return a.now()
	}
	return time.Now()
}

// setup loads the configuration and builds the logger. Flags that map to
// configuration keys are passed as overrides.
func (a *app) setup(overrides map[string]any) error {
	if err := logging.CheckFormat(a.logFormat); err != nil {
		return &usageError{err}
	}
	level, err := logging.ParseLevel(a.logLevel)
	if err != nil {
		return &usageError{err}
	}
	// Flags win: --set over the file and the environment, and what the
	// command itself fixes (the demo's settings) over --set.
	merged := map[string]any{}
	for _, kv := range a.sets {
		key, value, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(key) == "" {
			return usagef("--set: %q is not key=value (for example --set schedule=@every 1m)", kv)
		}
		merged[strings.TrimSpace(key)] = value
	}
	for k, v := range overrides {
		merged[k] = v
	}
	cfg, err := config.Load(config.Source{File: a.configFile, LookupEnv: a.lookupEnv, Environ: a.environ, Overrides: merged})
	if err != nil {
		return err
	}
	a.cfg = cfg
	// Log records and the progress line share stderr through one Line, so
	// a record never overwrites the line or glues onto it; what writes to
	// a.stderr from here on goes through it too.
	if _, ok := a.stderr.(*logging.Line); !ok {
		a.line = logging.NewLine(a.stderr)
		a.stderr = a.line
	}
	a.log = logging.New(a.stderr, a.logFormat, level, cfg.Secrets())
	if r, ok := logging.NewRedactor(slog.DiscardHandler, cfg.Secrets()).(*logging.Redactor); ok {
		a.redact = r.Redact
	}
	return nil
}

// openStore opens the store: PostgreSQL with store.postgres (any number of
// processes may), else the bbolt file, failing fast when another process
// holds it.
func (a *app) openStore(readOnly bool) (store.Store, error) {
	if a.shared() {
		return a.openPostgres()
	}
	return a.openBolt(readOnly)
}

// openPostgres connects, creating or upgrading the schema. A schema that a
// newer fulfilld wrote is refused: upgrade this one first.
func (a *app) openPostgres() (store.Store, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := pgstore.Open(ctx, a.cfg.Store.Postgres, pgstore.Options{})
	if errors.Is(err, pgstore.ErrSchemaNewer) {
		return nil, &usageError{fmt.Errorf("store.postgres: %w", err)}
	}
	if err != nil {
		return nil, fmt.Errorf("store.postgres: %w", err)
	}
	return db, nil
}

// openBolt opens the bbolt file, failing fast when another process holds it.
func (a *app) openBolt(readOnly bool) (*boltstore.Store, error) {
	path := a.cfg.Store.Path
	if readOnly {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil, &usageError{fmt.Errorf("store.path: %s does not exist yet; it is created by `fulfilld run`", path)}
		}
	}
	db, err := boltstore.Open(path, readOnly, time.Second)
	if errors.Is(err, boltstore.ErrHeld) {
		return nil, &usageError{fmt.Errorf("store.path: %w (is `fulfilld run` running? stop it, or wait for it to finish)", err)}
	}
	return db, err
}

func (a *app) stripeClient() *stripeapi.Client {
	if a.client != nil {
		return a.client
	}
	c := a.cfg.Stripe
	a.client = stripeapi.New(stripeapi.Config{
		APIKey:  c.APIKey,
		APIBase: c.APIBase,
		Account: c.Account,
		Limits:  stripeapi.AutoLimits(c.RateLimit, a.cfg.LiveMode()),
		Logger:  a.log.With("component", "stripe"),
		Now:     a.now,
	})
	return a.client
}

// stripeNow is Stripe's time, learned with one request when no answer from
// Stripe was seen yet: what the stream covers is decided on Stripe's
// clock, never the host's alone.
func (a *app) stripeNow(ctx context.Context) (time.Time, error) {
	c := a.stripeClient()
	if err := c.SyncClock(ctx); err != nil {
		return time.Time{}, authHint(err)
	}
	return c.Clock.Now(), nil
}

// action builds the operator's action: an argv to run, or a URL to POST to.
func (a *app) action(command []string, url, secret string) fulfill.Action {
	timeout := a.cfg.Fulfill.Timeout
	if url != "" {
		return &fulfill.URL{URL: url, Secret: secret, Timeout: timeout}
	}
	return &fulfill.Command{Argv: command, Timeout: timeout, BaseEnv: actionEnv(os.Environ())}
}

// actionEnv is the environment the operator's action inherits: ours, minus
// the Stripe key, fulfilld's own settings (which may hold the signing
// secrets) and systemd's credentials directory (which holds the key file).
// The action protocol's FULFILLD_* variables are added per attempt.
func actionEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if name == "STRIPE_API_KEY" || name == "CREDENTIALS_DIRECTORY" || strings.HasPrefix(name, "FULFILLD_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func (a *app) fulfiller(db fulfill.DB, client *stripeapi.Client) *fulfill.Fulfiller {
	return &fulfill.Fulfiller{
		DB:          db,
		Sessions:    client,
		Intents:     a.intents(client),
		Action:      a.action(a.cfg.Fulfill.Command, a.cfg.Fulfill.URL, a.cfg.Fulfill.Secret),
		MaxAttempts: a.cfg.Fulfill.MaxAttempts,
		Concurrency: a.cfg.Fulfill.Concurrency,
		Now:         a.now,
		Logger:      a.log.With("component", "fulfill"),
		Sharing:     a.sharing(),
	}
}

// deliverer is nil when neither notify nor forward is configured. Both
// are destinations of the one delivery queue.
func (a *app) deliverer(db fulfill.DB) *fulfill.Deliverer {
	dests, routes := map[string]fulfill.Action{}, fulfill.Routes{}
	if n := a.cfg.Notify; len(n.Command) > 0 || n.URL != "" {
		dests[fulfill.DestNotify] = a.action(n.Command, n.URL, n.Secret)
		routes = fulfill.NotifyRoutes()
	}
	if fw := a.cfg.Forward; fw.URL != "" {
		handler := &fulfill.URL{URL: fw.URL, Secret: fw.Secret, Timeout: a.cfg.Fulfill.Timeout,
			ContentType: "application/json; charset=utf-8"}
		// Deliveries queued before a switch between forward and repair
		// mode still reach the handler, whichever mode is on now: the
		// other mode never queues an event that has one (see
		// fulfill.EnqueueDelivery), so nothing else would deliver it.
		// Only what queues them differs: the stream, or the sweeps.
		dests[fulfill.DestForward] = handler
		dests[fulfill.DestRepair] = handler
		if !a.cfg.Repair() {
			routes.Add(fulfill.DestForward, fw.Types...)
		}
	}
	if len(dests) == 0 {
		return nil
	}
	return &fulfill.Deliverer{
		DB:           db,
		Destinations: dests,
		Routes:       routes,
		MaxAttempts:  a.cfg.Fulfill.MaxAttempts,
		Concurrency:  a.cfg.Fulfill.Concurrency,
		Now:          a.now,
		Logger:       a.log.With("component", "deliver"),
		Sharing:      a.sharing(),
	}
}

func (a *app) reconciler(db poller.DB, client *stripeapi.Client) *poller.Reconciler {
	return &poller.Reconciler{
		DB:       db,
		Sessions: client,
		Events:   client,
		Types:    a.cfg.Events.Types,
		Now:      a.now,
		Clock:    poller.ClientClock{Client: client},
		Logger:   a.log.With("component", "reconcile"),
		// With forward alone the shop's handler fulfils; fulfilld relays.
		RelayOnly: a.cfg.RelayOnly(),
		Repair:    a.repair(),
	}
}

// repair is the sweeps' repair mode (forward.undelivered_only), or nil.
func (a *app) repair() *poller.Repair {
	if !a.cfg.Repair() {
		return nil
	}
	return &poller.Repair{Types: a.cfg.Forward.Types, Grace: a.cfg.Forward.Grace}
}

func (a *app) poller(db poller.DB, client *stripeapi.Client) *poller.Poller {
	return &poller.Poller{
		DB:        db,
		Events:    client,
		Types:     a.cfg.Events.Types,
		Lookback:  a.cfg.Events.Lookback,
		Now:       a.now,
		Clock:     poller.ClientClock{Client: client},
		Logger:    a.log.With("component", "poller"),
		RelayOnly: a.cfg.RelayOnly(),

		PaymentIntents: a.cfg.Fulfill.PaymentIntents,
	}
}

// intents is the fulfiller's PaymentIntent source: nil (not a nil
// pointer in an interface) unless fulfill.payment_intents is on.
func (a *app) intents(client *stripeapi.Client) fulfill.IntentSource {
	if !a.cfg.Fulfill.PaymentIntents {
		return nil
	}
	return client
}

func (a *app) socketPath() string { return a.cfg.Store.Path + ".sock" }

// authHint turns a rejected key into the one line an operator needs.
func authHint(err error) error {
	if errors.Is(err, stripeapi.ErrAuth) {
		return &exitError{code: exitFailure, err: err}
	}
	return err
}

// isCanceled reports a shutdown, which is not an error.
func isCanceled(ctx context.Context, err error) bool {
	return ctx.Err() != nil && errors.Is(err, context.Canceled)
}
