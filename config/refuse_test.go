package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A misspelt variable or --set key must stop fulfilld, naming the key it
// probably meant, instead of silently running on the default.
func TestUnknownNamesSuggest(t *testing.T) {
	tests := []struct {
		name    string
		src     Source
		key     string
		suggest string
	}{
		{
			name:    "misspelt variable",
			src:     Source{LookupEnv: noEnv, Environ: environ("PATH=/bin", "FULFILLD_FULFILL_CONCURENCY=3")},
			key:     "FULFILLD_FULFILL_CONCURENCY",
			suggest: "did you mean FULFILLD_FULFILL_CONCURRENCY?",
		},
		{
			name:    "variable far from any key",
			src:     Source{LookupEnv: noEnv, Environ: environ("FULFILLD_COLOUR=blue")},
			key:     "FULFILLD_COLOUR",
			suggest: "FULFILLD_FULFILL_MAX_ATTEMPTS", // the list of what is accepted
		},
		{
			name:    "misspelt --set key",
			src:     Source{LookupEnv: noEnv, Overrides: map[string]any{"fulfill.timout": "1m"}},
			key:     "fulfill.timout",
			suggest: "did you mean fulfill.timeout?",
		},
		{
			name:    "--set key in the wrong section",
			src:     Source{LookupEnv: noEnv, Overrides: map[string]any{"stripe.apikey": "x"}},
			key:     "stripe.apikey",
			suggest: "did you mean stripe.api_key?",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ce := loadErr(t, tt.src, tt.key)
			if !strings.Contains(ce.Msg, tt.suggest) {
				t.Errorf("message %q does not say %q", ce.Msg, tt.suggest)
			}
		})
	}
}

// Variables fulfilld does read, the action protocol's own (an action may run
// fulfilld), the test suite's, and empty ones are no typos.
func TestKnownVariablesAccepted(t *testing.T) {
	c := mustLoad(t, Source{
		LookupEnv: env(map[string]string{"FULFILLD_FULFILL_CONCURRENCY": "3"}),
		Environ: environ("FULFILLD_FULFILL_CONCURRENCY=3", "FULFILLD_SESSION_ID=cs_test_1",
			"FULFILLD_ATTEMPT=2", "FULFILLD_TRIGGER=event", "FULFILLD_EVENT_TYPE=checkout.session.expired",
			"FULFILLD_IDEMPOTENCY_KEY=fulfilld-cs_test_1", "FULFILLD_PAYMENT_INTENT_ID=", "FULFILLD_TYPO=", "HOME=/root",
			"FULFILLD_TEST_POSTGRES=postgres://u:p@127.0.0.1:55432/postgres"),
	})
	if c.Fulfill.Concurrency != 3 {
		t.Errorf("fulfill.concurrency = %d, want 3 from the environment", c.Fulfill.Concurrency)
	}
}

// The process environment is checked when no LookupEnv is given, as in
// production.
func TestUnknownVariableInProcessEnvironment(t *testing.T) {
	t.Setenv("FULFILLD_FULFILL_MAX_ATEMPTS", "3")
	loadErr(t, Source{}, "FULFILLD_FULFILL_MAX_ATEMPTS")
}

func environ(kv ...string) func() []string { return func() []string { return kv } }

// An events.types that leaves out what an action needs would run, look
// healthy and never fulfil: it is refused, naming every missing type.
func TestEventTypesCoverActions(t *testing.T) {
	const (
		completed = "checkout.session.completed"
		succeeded = "checkout.session.async_payment_succeeded"
		failed    = "checkout.session.async_payment_failed"
		expired   = "checkout.session.expired"
		piFailed  = "payment_intent.payment_failed"
	)
	ship := []string{"/usr/local/bin/ship"}
	tests := []struct {
		name    string
		over    map[string]any
		missing []string // nil: accepted
	}{
		{name: "default types with both actions", over: map[string]any{"fulfill.command": ship, "notify.command": ship}},
		{name: "no action needs nothing", over: map[string]any{"events.types": []string{expired}}},
		{name: "fulfil with exactly its two", over: map[string]any{"fulfill.url": "https://x.example", "events.types": []string{succeeded, completed}}},
		{name: "fulfil without the async success", over: map[string]any{"fulfill.command": ship, "events.types": []string{completed, expired}},
			missing: []string{succeeded}},
		{name: "fulfil with only payment intents", over: map[string]any{"fulfill.command": ship, "events.types": []string{"payment_intent.succeeded"}},
			missing: []string{completed, succeeded}},
		{name: "notify without its types", over: map[string]any{"fulfill.command": ship, "notify.url": "https://x.example", "events.types": []string{completed, succeeded, expired}},
			missing: []string{failed, piFailed}},
		{name: "notify alone", over: map[string]any{"notify.command": ship, "events.types": []string{failed, expired}},
			missing: []string{piFailed}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := Source{LookupEnv: noEnv, Overrides: tt.over}
			if tt.missing == nil {
				mustLoad(t, src)
				return
			}
			ce := loadErr(t, src, "events.types")
			for _, m := range tt.missing {
				if !strings.Contains(ce.Msg, m) {
					t.Errorf("message %q does not name the missing %s", ce.Msg, m)
				}
			}
			for _, typ := range tt.over["events.types"].([]string) {
				if strings.Contains(ce.Msg, typ+" (") {
					t.Errorf("message %q names %s, which is listed", ce.Msg, typ)
				}
			}
		})
	}
}

// An action whose program cannot start is refused when the daemon starts,
// not found out by an hour of failed attempts.
func TestRequireActionProgram(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "ship")
	plain := filepath.Join(dir, "ship.txt")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(plain, []byte("#!/bin/sh\nexit 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+"/usr/bin"+string(os.PathListSeparator)+"/bin")
	tests := []struct {
		name    string
		fulfill []string
		notify  []string
		key     string // "" accepted
		says    string
	}{
		{name: "absolute executable", fulfill: []string{script, "--fast"}},
		{name: "bare name found in PATH", fulfill: []string{"ship"}},
		{name: "interpreter and a script", fulfill: []string{"sh", plain}},
		{name: "missing absolute", fulfill: []string{filepath.Join(dir, "nope")}, key: "fulfill.command", says: "does not exist"},
		{name: "not executable", fulfill: []string{plain}, key: "fulfill.command", says: "not executable"},
		{name: "a directory", fulfill: []string{dir}, key: "fulfill.command", says: "directory"},
		{name: "bare name not in PATH", fulfill: []string{"ship-order-nowhere"}, key: "fulfill.command", says: "not found in PATH"},
		{name: "notify missing", fulfill: []string{script}, notify: []string{"/nonexistent/tell"}, key: "notify.command", says: "does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustLoad(t, Source{LookupEnv: noEnv, Overrides: map[string]any{"fulfill.command": tt.fulfill, "notify.command": tt.notify}})
			err := c.RequireAction()
			if tt.key == "" {
				if err != nil {
					t.Fatalf("refused a runnable program: %v", err)
				}
				return
			}
			ce, ok := err.(*Error)
			if !ok || ce.Key != tt.key || !strings.Contains(ce.Msg, tt.says) {
				t.Fatalf("got %v, want an error for %s saying %q", err, tt.key, tt.says)
			}
		})
	}
}
