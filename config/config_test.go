package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// env returns a LookupEnv reading only vars, so tests do not see (or race
// on) the process environment.
func env(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

var noEnv = env(nil)

// writeFile writes content to name in a fresh temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustLoad(t *testing.T, src Source) *Config {
	t.Helper()
	c, err := Load(src)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

// loadErr loads src, requires a *Error, and checks that it names key.
func loadErr(t *testing.T, src Source, key string) *Error {
	t.Helper()
	c, err := Load(src)
	if err == nil {
		t.Fatalf("Load succeeded (%+v), want an error for %s", c, key)
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("Load error %T %q is not a *config.Error", err, err)
	}
	if ce.Key != key {
		t.Errorf("error names key %q, want %q: %v", ce.Key, key, err)
	}
	if strings.Contains(ce.Msg, "\n") {
		t.Errorf("error is not one line: %q", err)
	}
	return ce
}

func defaults() Config {
	return Config{
		Stripe:    Stripe{APIBase: DefaultAPIBase, MonthlyReadBudget: ReadBudgetAuto},
		Events:    Events{Types: slices.Clone(DefaultEventTypes), Lookback: 10 * time.Minute},
		Schedule:  "@every 30s",
		Store:     Store{Path: "fulfilld.db", Retention: 90 * 24 * time.Hour},
		Fulfill:   Fulfill{Timeout: 30 * time.Second, Concurrency: 4, MaxAttempts: 8},
		Forward:   Forward{Types: slices.Clone(DefaultEventTypes), Grace: 15 * time.Minute},
		Reconcile: Reconcile{Schedule: "@every 1h", Window: 72 * time.Hour},
	}
}

func TestDefaults(t *testing.T) {
	got := mustLoad(t, Source{LookupEnv: noEnv})
	if want := defaults(); !reflect.DeepEqual(*got, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", *got, want)
	}
	if len(DefaultEventTypes) != 9 {
		t.Errorf("DefaultEventTypes has %d types, SPEC.md lists 9", len(DefaultEventTypes))
	}
	// The returned slice is the caller's: changing it must not change the
	// defaults of the next Load.
	got.Events.Types[0] = "changed"
	if DefaultEventTypes[0] != "checkout.session.completed" {
		t.Fatal("Load handed out DefaultEventTypes itself")
	}
}

// TestFullExample loads the annotated example and its TOML and JSON twins;
// all three must mean the same configuration.
func TestFullExample(t *testing.T) {
	creds, err := filepath.Abs("testdata/credentials")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Stripe: Stripe{
			APIKey:            "sk_test_FIXTURE0000000000000000",
			APIKeyFile:        filepath.Join(creds, "stripe_api_key"),
			APIBase:           "https://api.stripe.com",
			Account:           "acct_1Fixture",
			RateLimit:         20,
			MonthlyReadBudget: ReadBudgetAuto,
		},
		Events: Events{
			Types: []string{
				"checkout.session.completed",
				"checkout.session.async_payment_succeeded",
				"checkout.session.async_payment_failed",
				"checkout.session.expired",
				"payment_intent.payment_failed",
			},
			Lookback: 15 * time.Minute,
		},
		Schedule: "@every 1m",
		Store:    Store{Path: "/var/lib/fulfilld/fulfilld.db", Retention: 400 * 24 * time.Hour},
		Fulfill: Fulfill{
			Command:     []string{"/usr/local/bin/ship-order", "--warehouse", "berlin"},
			Timeout:     45 * time.Second,
			Concurrency: 2,
			MaxAttempts: 10,
		},
		Notify: Notify{
			Command: []string{},
			URL:     "https://hooks.example.com/payment-failed",
			Secret:  "notify-signing-secret-fixture",
		},
		Forward:   Forward{Types: []string{"checkout.session.completed", "checkout.session.async_payment_succeeded", "checkout.session.async_payment_failed", "checkout.session.expired", "payment_intent.payment_failed"}, Grace: 15 * time.Minute},
		Reconcile: Reconcile{Schedule: "@every 2h", Window: 96 * time.Hour},
		HTTP:      HTTP{Listen: "127.0.0.1:9464"},
	}
	for _, file := range []string{"full.yaml", "full.toml", "full.json"} {
		t.Run(file, func(t *testing.T) {
			got := mustLoad(t, Source{
				File:      filepath.Join("testdata", file),
				LookupEnv: env(map[string]string{"CREDENTIALS_DIRECTORY": creds}),
			})
			w := want
			if file != "full.yaml" { // only the YAML spells out "command: []"
				w.Notify.Command = nil
			}
			if !reflect.DeepEqual(*got, w) {
				t.Errorf("%s:\n got %+v\nwant %+v", file, got, w)
			}
		})
	}
}

func TestPrecedence(t *testing.T) {
	file := writeFile(t, "fulfilld.yaml", "store:\n  path: from-file.db\nfulfill:\n  concurrency: 3\n")
	tests := []struct {
		name      string
		env       map[string]string
		overrides map[string]any
		wantPath  string
		wantConc  int
	}{
		{name: "file only", wantPath: "from-file.db", wantConc: 3},
		{
			name:     "env beats file",
			env:      map[string]string{"FULFILLD_STORE_PATH": "from-env.db", "FULFILLD_FULFILL_CONCURRENCY": "5"},
			wantPath: "from-env.db", wantConc: 5,
		},
		{
			name:      "override beats env",
			env:       map[string]string{"FULFILLD_STORE_PATH": "from-env.db", "FULFILLD_FULFILL_CONCURRENCY": "5"},
			overrides: map[string]any{"store.path": "from-flag.db", "fulfill.concurrency": 6},
			wantPath:  "from-flag.db", wantConc: 6,
		},
		{
			name:      "nil override is skipped",
			env:       map[string]string{"FULFILLD_STORE_PATH": "from-env.db"},
			overrides: map[string]any{"store.path": nil},
			wantPath:  "from-env.db", wantConc: 3,
		},
		{
			name:     "empty env var counts as unset",
			env:      map[string]string{"FULFILLD_STORE_PATH": ""},
			wantPath: "from-file.db", wantConc: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustLoad(t, Source{File: file, LookupEnv: env(tt.env), Overrides: tt.overrides})
			if c.Store.Path != tt.wantPath || c.Fulfill.Concurrency != tt.wantConc {
				t.Errorf("store.path = %q, fulfill.concurrency = %d; want %q, %d",
					c.Store.Path, c.Fulfill.Concurrency, tt.wantPath, tt.wantConc)
			}
		})
	}
}

// TestEveryKeyFromEnv sets each key through its FULFILLD_ variable, so a key
// added to Config but not bound to the environment is caught.
func TestEveryKeyFromEnv(t *testing.T) {
	vars := map[string]string{
		"FULFILLD_STRIPE_API_KEY":          "rk_test_envkey",
		"FULFILLD_STRIPE_API_BASE":         "http://127.0.0.1:12111/",
		"FULFILLD_STRIPE_ACCOUNT":          "acct_env",
		"FULFILLD_STRIPE_RATE_LIMIT":       "2.5",
		"FULFILLD_EVENTS_TYPES":            "checkout.session.completed, checkout.session.async_payment_succeeded, checkout.session.async_payment_failed, checkout.session.expired, payment_intent.payment_failed, payment_intent.succeeded",
		"FULFILLD_EVENTS_LOOKBACK":         "20m",
		"FULFILLD_SCHEDULE":                "*/5 * * * *",
		"FULFILLD_STORE_PATH":              "env.db",
		"FULFILLD_STORE_RETENTION":         "1d12h",
		"FULFILLD_FULFILL_PAYMENT_INTENTS": "true",
		"FULFILLD_FULFILL_URL":             "https://shop.example.com/fulfill",
		"FULFILLD_FULFILL_SECRET":          "whsec_envfulfill_0123456789",
		"FULFILLD_FULFILL_TIMEOUT":         "1m",
		"FULFILLD_FULFILL_CONCURRENCY":     "8",
		"FULFILLD_FULFILL_MAX_ATTEMPTS":    "3",
		"FULFILLD_NOTIFY_COMMAND":          `["/usr/local/bin/tell customer", "--why"]`,
		"FULFILLD_NOTIFY_SECRET":           "envnotify_0123456789abcdef",
		"FULFILLD_FORWARD_URL":             "http://127.0.0.1:4242/webhook",
		"FULFILLD_FORWARD_SECRET":          "whsec_envforward_0123456789",
		"FULFILLD_FORWARD_TYPES":           "checkout.session.completed,payment_intent.payment_failed",
		"FULFILLD_FORWARD_GRACE":           "40m",
		"FULFILLD_RECONCILE_SCHEDULE":      "@daily",
		"FULFILLD_RECONCILE_WINDOW":        "24h",
		"FULFILLD_HTTP_LISTEN":             ":9000",
	}
	got := mustLoad(t, Source{LookupEnv: env(vars)})
	want := Config{
		Stripe: Stripe{APIKey: "rk_test_envkey", APIBase: "http://127.0.0.1:12111", Account: "acct_env", RateLimit: 2.5, MonthlyReadBudget: ReadBudgetAuto},
		Events: Events{Types: []string{"checkout.session.completed", "checkout.session.async_payment_succeeded",
			"checkout.session.async_payment_failed", "checkout.session.expired", "payment_intent.payment_failed", "payment_intent.succeeded"}, Lookback: 20 * time.Minute},
		Schedule: "*/5 * * * *",
		Store:    Store{Path: "env.db", Retention: 36 * time.Hour},
		Fulfill:  Fulfill{PaymentIntents: true, URL: "https://shop.example.com/fulfill", Secret: "whsec_envfulfill_0123456789", Timeout: time.Minute, Concurrency: 8, MaxAttempts: 3},
		Notify:   Notify{Command: []string{"/usr/local/bin/tell customer", "--why"}, Secret: "envnotify_0123456789abcdef"},
		Forward: Forward{URL: "http://127.0.0.1:4242/webhook", Secret: "whsec_envforward_0123456789",
			Types: []string{"checkout.session.completed", "payment_intent.payment_failed"}, Grace: 40 * time.Minute},
		Reconcile: Reconcile{Schedule: "@daily", Window: 24 * time.Hour},
		HTTP:      HTTP{Listen: "127.0.0.1:9000"},
	}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("\n got %+v\nwant %+v", got, want)
	}
	// api_key_file has no other test through the environment.
	keyFile := writeFile(t, "key", "sk_test_fromfile\n")
	c := mustLoad(t, Source{LookupEnv: env(map[string]string{"FULFILLD_STRIPE_API_KEY_FILE": keyFile})})
	if c.Stripe.APIKey != "sk_test_fromfile" {
		t.Errorf("FULFILLD_STRIPE_API_KEY_FILE: key = %q", c.Stripe.APIKey)
	}
}

// TestStripeAPIKeyEnv uses the real process environment (LookupEnv nil).
func TestStripeAPIKeyEnv(t *testing.T) {
	file := writeFile(t, "fulfilld.yaml", "stripe:\n  api_key: sk_test_fromfile\n")
	tests := []struct {
		name    string
		stripe  string // STRIPE_API_KEY; "" = unset
		fd      string // FULFILLD_STRIPE_API_KEY
		file    string
		wantKey string
	}{
		{name: "conventional variable", stripe: "sk_test_conventional", wantKey: "sk_test_conventional"},
		{name: "FULFILLD_ wins", stripe: "sk_test_conventional", fd: "sk_test_prefixed", wantKey: "sk_test_prefixed"},
		{name: "env wins over file", stripe: "sk_test_conventional", file: file, wantKey: "sk_test_conventional"},
		{name: "file alone", file: file, wantKey: "sk_test_fromfile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("STRIPE_API_KEY", tt.stripe)
			t.Setenv("FULFILLD_STRIPE_API_KEY", tt.fd)
			if tt.stripe == "" {
				os.Unsetenv("STRIPE_API_KEY")
			}
			if tt.fd == "" {
				os.Unsetenv("FULFILLD_STRIPE_API_KEY")
			}
			c := mustLoad(t, Source{File: tt.file})
			if c.Stripe.APIKey != tt.wantKey {
				t.Errorf("api key = %q, want %q", c.Stripe.APIKey, tt.wantKey)
			}
		})
	}
}

func TestListValues(t *testing.T) {
	tests := []struct {
		name  string
		env   map[string]string
		over  map[string]any
		cmd   []string
		types []string
	}{
		{
			name: "JSON array keeps spaces inside arguments",
			env:  map[string]string{"FULFILLD_FULFILL_COMMAND": `["/opt/my shop/ship", "--fast"]`},
			cmd:  []string{"/opt/my shop/ship", "--fast"},
		},
		{
			name: "whitespace-separated command",
			env:  map[string]string{"FULFILLD_FULFILL_COMMAND": " /usr/bin/ship   --fast\t--quiet "},
			cmd:  []string{"/usr/bin/ship", "--fast", "--quiet"},
		},
		{
			name:  "comma-separated types, trailing comma",
			env:   map[string]string{"FULFILLD_EVENTS_TYPES": "checkout.session.completed,payment_intent.succeeded,"},
			types: []string{"checkout.session.completed", "payment_intent.succeeded"},
		},
		{
			name:  "JSON array of types",
			env:   map[string]string{"FULFILLD_EVENTS_TYPES": `["checkout.session.completed"]`},
			types: []string{"checkout.session.completed"},
		},
		{
			name:  "empty JSON array means the default types",
			env:   map[string]string{"FULFILLD_EVENTS_TYPES": `[]`},
			types: DefaultEventTypes,
		},
		{
			name: "override as a string is split like the environment",
			over: map[string]any{"fulfill.command": "/usr/bin/ship --fast"},
			cmd:  []string{"/usr/bin/ship", "--fast"},
		},
		{
			name:  "override as a slice",
			over:  map[string]any{"fulfill.command": []string{"/usr/bin/ship"}, "events.types": []string{"checkout.session.async_payment_succeeded", "checkout.session.completed"}},
			cmd:   []string{"/usr/bin/ship"},
			types: []string{"checkout.session.async_payment_succeeded", "checkout.session.completed"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustLoad(t, Source{LookupEnv: env(tt.env), Overrides: tt.over})
			if !slices.Equal(c.Fulfill.Command, tt.cmd) {
				t.Errorf("fulfill.command = %q, want %q", c.Fulfill.Command, tt.cmd)
			}
			want := tt.types
			if want == nil {
				want = DefaultEventTypes
			}
			if !slices.Equal(c.Events.Types, want) {
				t.Errorf("events.types = %q, want %q", c.Events.Types, want)
			}
		})
	}

	ce := loadErr(t, Source{LookupEnv: env(map[string]string{"FULFILLD_FULFILL_COMMAND": `["/usr/bin/ship",`})}, "fulfill.command")
	if !strings.Contains(ce.Msg, "FULFILLD_FULFILL_COMMAND") {
		t.Errorf("error does not say which variable is bad: %v", ce)
	}
}

func TestOverrides(t *testing.T) {
	c := mustLoad(t, Source{LookupEnv: noEnv, Overrides: map[string]any{
		"Events.Lookback":   time.Hour, // keys are case-insensitive, like viper's
		"fulfill.timeout":   "2m",
		"stripe.rate_limit": 7,
		"http.listen":       "8080",
	}})
	if c.Events.Lookback != time.Hour || c.Fulfill.Timeout != 2*time.Minute || c.Stripe.RateLimit != 7 || c.HTTP.Listen != "127.0.0.1:8080" {
		t.Errorf("overrides not applied: %+v", c)
	}
	if c.Stripe.MonthlyReadBudget != ReadBudgetAuto {
		t.Errorf("stripe.monthly_read_budget defaults to %d, want auto", c.Stripe.MonthlyReadBudget)
	}
	ce := loadErr(t, Source{LookupEnv: noEnv, Overrides: map[string]any{"store.pth": "x"}}, "store.pth")
	if !strings.Contains(ce.Msg, "store.path") {
		t.Errorf("error does not list the known keys: %v", ce)
	}
}

// TestBadFiles loads each file in testdata/bad and compares the error with
// its golden .err file (go test -run TestBadFiles -update rewrites them).
func TestBadFiles(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range files {
		if strings.HasSuffix(file, ".err") {
			continue
		}
		t.Run(filepath.Base(file), func(t *testing.T) {
			_, err := Load(Source{File: file, LookupEnv: noEnv})
			if err == nil {
				t.Fatal("Load succeeded")
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("%T is not a *config.Error", err)
			}
			assertNoSecret(t, err.Error())
			checkGolden(t, file+".err", err.Error()+"\n")
		})
	}
}

func checkGolden(t *testing.T, golden, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./config -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs:\n got %s\nwant %s", golden, got, want)
	}
}

// fixtureSecrets are the fake secrets used in tests; none may show up in an
// error or in printed configuration.
var fixtureSecrets = []string{"FIXTURE", "supersecret", "whsec_fulfill", "notifysecret", "hunter2"}

func assertNoSecret(t *testing.T, s string) {
	t.Helper()
	for _, secret := range fixtureSecrets {
		if strings.Contains(s, secret) {
			t.Errorf("output contains secret %q: %s", secret, s)
		}
	}
}

func TestUnknownKeyMessage(t *testing.T) {
	ce := loadErr(t, Source{File: "testdata/bad/unknown_key.yaml", LookupEnv: noEnv}, "fulfill.comand")
	for _, want := range []string{"unknown key", "testdata/bad/unknown_key.yaml", "command, url, secret, timeout, concurrency, max_attempts"} {
		if !strings.Contains(ce.Msg, want) {
			t.Errorf("message %q lacks %q", ce.Msg, want)
		}
	}
	// Empty sections are fine: the annotated example leaves some of them
	// with only comments.
	file := writeFile(t, "empty.yaml", "notify:\nhttp: {}\nstripe:\n  api_key:\n")
	mustLoad(t, Source{File: file, LookupEnv: noEnv})
}

func TestConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, file, want string
	}{
		{"missing", filepath.Join(dir, "nope.yaml"), "no such file"},
		{"directory", writeDir(t, dir, "dir.yaml"), "is a directory"},
		{"no extension", filepath.Join(dir, "fulfilld"), "unsupported file type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ce := loadErr(t, Source{File: tt.file, LookupEnv: noEnv}, "--config")
			if !strings.Contains(ce.Msg, tt.file) || !strings.Contains(ce.Msg, tt.want) {
				t.Errorf("message %q should name %s and say %q", ce.Msg, tt.file, tt.want)
			}
		})
	}
}

func writeDir(t *testing.T, parent, name string) string {
	t.Helper()
	p := filepath.Join(parent, name)
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMonthlyReadBudget: the read cap is read from the file, the environment
// and flags, later sources winning.
func TestMonthlyReadBudget(t *testing.T) {
	file := writeFile(t, "fulfilld.yaml", "stripe:\n  monthly_read_budget: 1000000\n")
	tests := []struct {
		name string
		src  Source
		want int
	}{
		{"file", Source{File: file, LookupEnv: noEnv}, 1_000_000},
		{"environment", Source{File: file, LookupEnv: env(map[string]string{"FULFILLD_STRIPE_MONTHLY_READ_BUDGET": "250000"})}, 250_000},
		{"flag", Source{File: file, LookupEnv: noEnv, Overrides: map[string]any{"stripe.monthly_read_budget": 42}}, 42},
		{"auto", Source{File: file, LookupEnv: env(map[string]string{"FULFILLD_STRIPE_MONTHLY_READ_BUDGET": "auto"})}, ReadBudgetAuto},
		{"no cap", Source{File: file, LookupEnv: noEnv, Overrides: map[string]any{"stripe.monthly_read_budget": "0"}}, 0},
		{"default", Source{LookupEnv: noEnv}, ReadBudgetAuto},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mustLoad(t, tt.src).Stripe.MonthlyReadBudget; got != tt.want {
				t.Errorf("monthly_read_budget %d, want %d", got, tt.want)
			}
		})
	}
}

// TestPaymentIntentsKey: fulfill.payment_intents is off unless set, reads
// true/false from a file and words from the environment, refuses anything
// else, and needs payment_intent.succeeded among the listed types.
func TestPaymentIntentsKey(t *testing.T) {
	if c := mustLoad(t, Source{LookupEnv: noEnv}); c.Fulfill.PaymentIntents {
		t.Error("fulfill.payment_intents is on by default")
	}
	file := writeFile(t, "f.yaml", "fulfill:\n  payment_intents: true\n")
	if c := mustLoad(t, Source{File: file, LookupEnv: noEnv}); !c.Fulfill.PaymentIntents {
		t.Error("payment_intents: true in a file was not read")
	}
	for _, word := range []string{"true", "1", "false", "0"} {
		c := mustLoad(t, Source{LookupEnv: env(map[string]string{"FULFILLD_FULFILL_PAYMENT_INTENTS": word})})
		if want := word == "true" || word == "1"; c.Fulfill.PaymentIntents != want {
			t.Errorf("FULFILLD_FULFILL_PAYMENT_INTENTS=%s: got %v", word, c.Fulfill.PaymentIntents)
		}
	}
	ce := loadErr(t, Source{LookupEnv: env(map[string]string{"FULFILLD_FULFILL_PAYMENT_INTENTS": "yes please"})}, "fulfill.payment_intents")
	if !strings.Contains(ce.Msg, "true or false") {
		t.Errorf("message does not say what is accepted: %v", ce)
	}
	loadErr(t, Source{LookupEnv: noEnv, Overrides: map[string]any{
		"fulfill.payment_intents": true,
		"fulfill.url":             "https://shop.example.com/fulfill",
		"events.types":            []string{"checkout.session.completed", "checkout.session.async_payment_succeeded"},
	}}, "events.types")
}

// TestRepairMode: forward.undelivered_only is off unless set, reads from a
// file and the environment, and is repair mode only beside forward.url and
// with no action of fulfilld's own — the refusals are in TestValidation.
func TestRepairMode(t *testing.T) {
	c := mustLoad(t, Source{LookupEnv: noEnv})
	if c.Forward.UndeliveredOnly || c.Repair() || c.Forward.Grace != 15*time.Minute {
		t.Errorf("defaults: undelivered_only %v, repair %v, grace %s; want off and 15m", c.Forward.UndeliveredOnly, c.Repair(), c.Forward.Grace)
	}
	file := writeFile(t, "f.yaml", "forward:\n  url: http://127.0.0.1:4242/webhook\n  undelivered_only: true\n  grace: 1h\n")
	c = mustLoad(t, Source{File: file, LookupEnv: noEnv})
	if !c.Repair() || c.Forward.Grace != time.Hour || c.RelayOnly() != true {
		t.Errorf("from a file: repair %v, grace %s, relay only %v; want repair, 1h, no action of its own", c.Repair(), c.Forward.Grace, c.RelayOnly())
	}
	if err := c.RequireAction(); err != nil {
		t.Errorf("repair mode is an action of its own for run and reconcile: %v", err)
	}
	c = mustLoad(t, Source{LookupEnv: env(map[string]string{
		"FULFILLD_FORWARD_URL": "http://127.0.0.1:4242/webhook", "FULFILLD_FORWARD_UNDELIVERED_ONLY": "true"})})
	if !c.Repair() {
		t.Error("FULFILLD_FORWARD_UNDELIVERED_ONLY=true was not read")
	}
}
