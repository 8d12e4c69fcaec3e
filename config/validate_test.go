package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestValidation checks every refusal: the key it names, and that it never
// echoes a secret. All messages are collected in testdata/validation.golden
// so the wording users see can be reviewed in one place.
func TestValidation(t *testing.T) {
	tooMany := make([]string, 21)
	for i := range tooMany {
		tooMany[i] = "type.number" + string(rune('a'+i))
	}
	tests := []struct {
		name string
		env  map[string]string
		over map[string]any
		key  string
	}{
		{name: "publishable key", env: map[string]string{"STRIPE_API_KEY": "pk_live_supersecret"}, key: "stripe.api_key"},
		{name: "webhook secret as key", over: map[string]any{"stripe.api_key": "whsec_supersecret"}, key: "stripe.api_key"},
		{name: "not a key", over: map[string]any{"stripe.api_key": "supersecret"}, key: "stripe.api_key"},
		{name: "key with a space inside", over: map[string]any{"stripe.api_key": "sk_test_super secret"}, key: "stripe.api_key"},
		{name: "key of the wrong type", over: map[string]any{"stripe.api_key": 12345}, key: "stripe.api_key"},
		{name: "api_base not a URL", over: map[string]any{"stripe.api_base": "api.stripe.com"}, key: "stripe.api_base"},
		{name: "api_base ftp", over: map[string]any{"stripe.api_base": "ftp://api.stripe.com"}, key: "stripe.api_base"},
		{name: "api_base with /v1", over: map[string]any{"stripe.api_base": "https://api.stripe.com/v1/"}, key: "stripe.api_base"},
		{name: "api_base with query", over: map[string]any{"stripe.api_base": "https://api.stripe.com?x=1"}, key: "stripe.api_base"},
		{name: "account", over: map[string]any{"stripe.account": "1234"}, key: "stripe.account"},
		{name: "negative rate limit", env: map[string]string{"FULFILLD_STRIPE_RATE_LIMIT": "-1"}, key: "stripe.rate_limit"},
		{name: "rate limit word", env: map[string]string{"FULFILLD_STRIPE_RATE_LIMIT": "fast"}, key: "stripe.rate_limit"},
		{name: "negative read budget", env: map[string]string{"FULFILLD_STRIPE_MONTHLY_READ_BUDGET": "-5"}, key: "stripe.monthly_read_budget"},
		{name: "fractional read budget", over: map[string]any{"stripe.monthly_read_budget": "1.5"}, key: "stripe.monthly_read_budget"},
		{name: "too many types", over: map[string]any{"events.types": tooMany}, key: "events.types"},
		{name: "empty type", over: map[string]any{"events.types": []string{"checkout.session.completed", ""}}, key: "events.types"},
		{name: "type with space", over: map[string]any{"events.types": []string{"checkout.session.completed payment_intent.succeeded"}}, key: "events.types"},
		{name: "duplicate type", env: map[string]string{"FULFILLD_EVENTS_TYPES": "checkout.session.completed,checkout.session.completed"}, key: "events.types"},
		{name: "lookback too short", over: map[string]any{"events.lookback": "30s"}, key: "events.lookback"},
		{name: "lookback too long", over: map[string]any{"events.lookback": 25 * time.Hour}, key: "events.lookback"},
		{name: "lookback not a duration", env: map[string]string{"FULFILLD_EVENTS_LOOKBACK": "ten minutes"}, key: "events.lookback"},
		{name: "bad schedule", over: map[string]any{"schedule": "every 30s"}, key: "schedule"},
		{name: "schedule below a second", over: map[string]any{"schedule": "@every 0s"}, key: "schedule"},
		{name: "empty schedule", over: map[string]any{"schedule": ""}, key: "schedule"},
		{name: "empty store path", over: map[string]any{"store.path": ""}, key: "store.path"},
		{name: "command and url", over: map[string]any{"fulfill.command": []string{"/bin/true"}, "fulfill.url": "https://x.example"}, key: "fulfill"},
		{name: "empty program", over: map[string]any{"fulfill.command": []string{"", "--fast"}}, key: "fulfill.command"},
		{name: "fulfill url relative", over: map[string]any{"fulfill.url": "/fulfill"}, key: "fulfill.url"},
		{name: "fulfill url with credentials", over: map[string]any{"fulfill.url": "mailto://user:hunter2@x"}, key: "fulfill.url"},
		{name: "zero timeout", over: map[string]any{"fulfill.timeout": "0s"}, key: "fulfill.timeout"},
		{name: "timeout without unit", over: map[string]any{"fulfill.timeout": 30}, key: "fulfill.timeout"},
		{name: "zero concurrency", env: map[string]string{"FULFILLD_FULFILL_CONCURRENCY": "0"}, key: "fulfill.concurrency"},
		{name: "concurrency too high", over: map[string]any{"fulfill.concurrency": 65}, key: "fulfill.concurrency"},
		{name: "zero attempts", over: map[string]any{"fulfill.max_attempts": 0}, key: "fulfill.max_attempts"},
		{name: "too many attempts", over: map[string]any{"fulfill.max_attempts": "101"}, key: "fulfill.max_attempts"},
		{name: "notify command and url", over: map[string]any{"notify.command": "/bin/true", "notify.url": "https://x.example", "notify.secret": "notifysecret_0123456789"}, key: "notify"},
		{name: "short fulfill secret", over: map[string]any{"fulfill.url": "https://x.example", "fulfill.secret": "hunter2"}, key: "fulfill.secret"},
		{name: "short notify secret", over: map[string]any{"notify.url": "https://x.example", "notify.secret": "hunter2"}, key: "notify.secret"},
		{name: "notify url", over: map[string]any{"notify.url": "x.example/hook"}, key: "notify.url"},
		{name: "forward url", over: map[string]any{"forward.url": "127.0.0.1:4242/webhook"}, key: "forward.url"},
		{name: "short forward secret", over: map[string]any{"forward.url": "http://127.0.0.1:4242/webhook", "forward.secret": "whsec_short"}, key: "forward.secret"},
		{name: "forward secret without url", over: map[string]any{"forward.secret": "whsec_0123456789abcdef"}, key: "forward.secret"},
		{name: "forward type not listed", over: map[string]any{"forward.url": "http://127.0.0.1:4242/webhook", "events.types": []string{"checkout.session.completed", "checkout.session.async_payment_succeeded"}, "forward.types": []string{"charge.refunded"}}, key: "forward.types"},
		{name: "grace too short", over: map[string]any{"forward.grace": "30s"}, key: "forward.grace"},
		{name: "grace past Stripe's retention", over: map[string]any{"forward.grace": "30d"}, key: "forward.grace"},
		{name: "repair without forward url", over: map[string]any{"forward.undelivered_only": true}, key: "forward.undelivered_only"},
		{name: "repair beside fulfill.command", over: map[string]any{"forward.url": "http://127.0.0.1:4242/webhook", "forward.undelivered_only": "true",
			"fulfill.command": []string{"/usr/local/bin/ship"}}, key: "forward.undelivered_only"},
		{name: "repair beside fulfill.url", over: map[string]any{"forward.url": "http://127.0.0.1:4242/webhook", "forward.undelivered_only": true,
			"fulfill.url": "https://shop.example.com/fulfill"}, key: "forward.undelivered_only"},
		{name: "grace not shorter than the sweep's window", over: map[string]any{"forward.url": "http://127.0.0.1:4242/webhook",
			"forward.undelivered_only": true, "forward.grace": "72h"}, key: "forward.grace"},
		{name: "bad reconcile schedule", over: map[string]any{"reconcile.schedule": "61 * * * *"}, key: "reconcile.schedule"},
		{name: "zero window", over: map[string]any{"reconcile.window": "0h"}, key: "reconcile.window"},
		{name: "negative window", over: map[string]any{"reconcile.window": -time.Hour}, key: "reconcile.window"},
		{name: "listen port out of range", over: map[string]any{"http.listen": "99999"}, key: "http.listen"},
		{name: "listen port zero", over: map[string]any{"http.listen": ":0"}, key: "http.listen"},
		{name: "listen port name", over: map[string]any{"http.listen": "localhost:http"}, key: "http.listen"},
		{name: "listen host only", over: map[string]any{"http.listen": "localhost"}, key: "http.listen"},
		{name: "listen as URL", over: map[string]any{"http.listen": "http://127.0.0.1:9464"}, key: "http.listen"},
	}
	var golden strings.Builder
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Every case carries signing secrets too, so a message that
			// dumped the configuration would be caught.
			over := map[string]any{"fulfill.secret": "whsec_fulfill_0123456789"}
			for k, v := range tt.over {
				over[k] = v
			}
			ce := loadErr(t, Source{LookupEnv: env(tt.env), Overrides: over}, tt.key)
			assertNoSecret(t, ce.Error())
			golden.WriteString(tt.name + " → " + ce.Error() + "\n")
		})
	}
	checkGolden(t, "testdata/validation.golden", golden.String())
}

func TestListen(t *testing.T) {
	for in, want := range map[string]string{
		"":              "",
		"9464":          "127.0.0.1:9464",
		":9464":         "127.0.0.1:9464",
		"0.0.0.0:9464":  "0.0.0.0:9464",
		"[::1]:9464":    "[::1]:9464",
		"localhost:80":  "localhost:80",
		" 9464 ":        "127.0.0.1:9464",
		"[::]:9464":     "[::]:9464",
		"10.0.0.1:9464": "10.0.0.1:9464",
	} {
		c := mustLoad(t, Source{LookupEnv: noEnv, Overrides: map[string]any{"http.listen": in}})
		if c.HTTP.Listen != want {
			t.Errorf("http.listen %q → %q, want %q", in, c.HTTP.Listen, want)
		}
	}
}

func TestAPIKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("stripe_api_key", "  sk_test_FIXTURE1\n\n")
	write("publishable", "pk_live_FIXTURE2\n")
	write("empty", "\n")
	write("two_lines", "sk_test_FIXTURE3\nsk_test_FIXTURE4\n")
	write("big", strings.Repeat("sk_test_FIXTURE5", 1000))
	creds := map[string]string{"CREDENTIALS_DIRECTORY": dir}

	tests := []struct {
		name     string
		env      map[string]string
		over     map[string]any
		wantKey  string
		wantFile string
		errKey   string // "" = no error
		errSays  string
	}{
		{
			name:    "relative name found in CREDENTIALS_DIRECTORY, whitespace trimmed",
			env:     creds,
			over:    map[string]any{"stripe.api_key_file": "stripe_api_key"},
			wantKey: "sk_test_FIXTURE1", wantFile: filepath.Join(dir, "stripe_api_key"),
		},
		{
			name:    "absolute path ignores CREDENTIALS_DIRECTORY",
			env:     map[string]string{"CREDENTIALS_DIRECTORY": "/nonexistent"},
			over:    map[string]any{"stripe.api_key_file": filepath.Join(dir, "stripe_api_key")},
			wantKey: "sk_test_FIXTURE1", wantFile: filepath.Join(dir, "stripe_api_key"),
		},
		{
			name:    "api_key wins and the file is not read",
			over:    map[string]any{"stripe.api_key": "sk_test_direct", "stripe.api_key_file": "/nonexistent/key"},
			wantKey: "sk_test_direct", wantFile: "/nonexistent/key",
		},
		{
			name:   "missing file",
			env:    creds,
			over:   map[string]any{"stripe.api_key_file": "nope"},
			errKey: "stripe.api_key_file", errSays: "CREDENTIALS_DIRECTORY",
		},
		{name: "publishable key in file", over: map[string]any{"stripe.api_key_file": filepath.Join(dir, "publishable")}, errKey: "stripe.api_key_file", errSays: "publishable"},
		{name: "empty file", over: map[string]any{"stripe.api_key_file": filepath.Join(dir, "empty")}, errKey: "stripe.api_key_file", errSays: "empty"},
		{name: "two keys", over: map[string]any{"stripe.api_key_file": filepath.Join(dir, "two_lines")}, errKey: "stripe.api_key_file", errSays: "single key"},
		{name: "large file", over: map[string]any{"stripe.api_key_file": filepath.Join(dir, "big")}, errKey: "stripe.api_key_file", errSays: "4 KiB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := Source{LookupEnv: env(tt.env), Overrides: tt.over}
			if tt.errKey != "" {
				ce := loadErr(t, src, tt.errKey)
				assertNoSecret(t, ce.Error())
				if !strings.Contains(ce.Msg, tt.errSays) {
					t.Errorf("message %q should say %q", ce.Msg, tt.errSays)
				}
				return
			}
			c := mustLoad(t, src)
			if c.Stripe.APIKey != tt.wantKey || c.Stripe.APIKeyFile != tt.wantFile {
				t.Errorf("key from %q; want the expected key from %q", c.Stripe.APIKeyFile, tt.wantFile)
			}
		})
	}
}

func TestRequire(t *testing.T) {
	c := mustLoad(t, Source{LookupEnv: noEnv})
	for _, check := range []struct {
		err  error
		key  string
		says []string
	}{
		{c.RequireAPIKey(), "stripe.api_key", []string{"stripe.api_key", "STRIPE_API_KEY", "stripe.api_key_file"}},
		{c.RequireAction(), "fulfill", []string{"fulfill.command", "fulfill.url", "--dry-run"}},
	} {
		ce, ok := check.err.(*Error)
		if !ok || ce.Key != check.key {
			t.Errorf("got %v, want an *Error for %s", check.err, check.key)
			continue
		}
		for _, s := range check.says {
			if !strings.Contains(ce.Msg, s) {
				t.Errorf("%v: should mention %s", ce, s)
			}
		}
	}

	c = mustLoad(t, Source{LookupEnv: env(map[string]string{
		"STRIPE_API_KEY":           "rk_test_x",
		"FULFILLD_FULFILL_COMMAND": "/bin/true",
	})})
	if err := c.RequireAPIKey(); err != nil {
		t.Error(err)
	}
	if err := c.RequireAction(); err != nil {
		t.Error(err)
	}
	c.Fulfill.Command, c.Fulfill.URL = nil, "https://x.example"
	if err := c.RequireAction(); err != nil {
		t.Error(err)
	}
}

func TestLiveMode(t *testing.T) {
	// Live-mode fixtures are assembled here, so that nothing committed looks
	// like a live key to a secret scanner.
	const live = "_live_"
	for key, isLive := range map[string]bool{
		"":                 false,
		"sk_test_abc":      false,
		"rk_test_abc":      false,
		"sk" + live + "ab": true,
		"rk" + live + "ab": true,
	} {
		c := Config{Stripe: Stripe{APIKey: key}}
		if c.LiveMode() != isLive {
			t.Errorf("LiveMode for a %q… key = %v, want %v", key[:min(len(key), 8)], !isLive, isLive)
		}
	}
}
