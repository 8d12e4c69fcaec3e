package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
)

func secretConfig(t *testing.T) *Config {
	t.Helper()
	return mustLoad(t, Source{LookupEnv: env(map[string]string{
		"STRIPE_API_KEY":          "sk_test_FIXTUREKEY",
		"FULFILLD_FULFILL_URL":    "https://shop:hunter2@shop.example.com/fulfill",
		"FULFILLD_FULFILL_SECRET": "whsec_fulfillFIXTURE",
		"FULFILLD_NOTIFY_COMMAND": "/usr/local/bin/tell",
		"FULFILLD_NOTIFY_SECRET":  "notifysecret_0123456789",
	})})
}

func TestNoSecretsInOutput(t *testing.T) {
	c := secretConfig(t)
	var outputs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
		outputs = append(outputs, fmt.Sprintf(verb, c), fmt.Sprintf(verb, *c),
			fmt.Sprintf(verb, c.Stripe), fmt.Sprintf(verb, c.Fulfill), fmt.Sprintf(verb, c.Notify))
	}
	outputs = append(outputs, fmt.Sprint(c), fmt.Sprintln(*c))

	for _, h := range []func(*bytes.Buffer) slog.Handler{
		func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) },
		func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) },
	} {
		var buf bytes.Buffer
		slog.New(h(&buf)).Info("loaded", "config", c, "stripe", c.Stripe, "fulfill", c.Fulfill, "notify", c.Notify)
		outputs = append(outputs, buf.String())
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	outputs = append(outputs, string(b))

	for _, out := range outputs {
		assertNoSecret(t, out)
		if strings.Contains(out, "sk_live") {
			t.Errorf("output shows part of the API key: %s", out)
		}
	}
	// The redacted output still says what is configured.
	for _, want := range []string{"APIKey:[redacted]", "Secret:[redacted]", "shop.example.com", "/usr/local/bin/tell"} {
		if !strings.Contains(fmt.Sprintf("%+v", c), want) {
			t.Errorf("%%+v output lacks %q: %+v", want, c)
		}
	}
	if got := fmt.Sprintf("%#v", c.Stripe); !strings.HasPrefix(got, "config.Stripe{") {
		t.Errorf("%%#v = %s, want it to start with config.Stripe{", got)
	}
}

func TestSecrets(t *testing.T) {
	c := secretConfig(t)
	want := []string{"sk_test_FIXTUREKEY", "whsec_fulfillFIXTURE", "notifysecret_0123456789", "hunter2"}
	if got := c.Secrets(); !slices.Equal(got, want) {
		t.Errorf("Secrets() has %d values, want %d in the order key, fulfill, notify, URL passwords", len(got), len(want))
	}
	if got := mustLoad(t, Source{LookupEnv: noEnv}).Secrets(); len(got) != 0 {
		t.Errorf("Secrets() of an empty config has %d values", len(got))
	}
}

// The database password is a secret wherever it is given: in the URL, in
// key=value pairs, or in libpq's PGPASSWORD.
func TestPostgresPasswordIsASecret(t *testing.T) {
	t.Setenv("PGPASSWORD", "env-pw-4242")
	for _, dsn := range []string{
		"postgres://fulfilld:s3cr%40t-url@db.internal:5432/fulfilld?sslmode=require",
		"host=db.internal user=fulfilld password='s3cr@t-url' dbname=fulfilld",
		"host=db.internal user=fulfilld password=s3cr@t-url dbname=fulfilld",
		"postgres://fulfilld@db.internal/fulfilld?password=s3cr%40t-url",
		"postgres://fulfilld:s3cr%40t-url@db.internal:5432,db2.internal:5432/fulfilld", // multi-host: Go's URL parser refuses it
	} {
		c := Config{Store: Store{Postgres: dsn}}
		secrets := strings.Join(c.Secrets(), "\n")
		if !strings.Contains(secrets, "s3cr@t-url") || !strings.Contains(secrets, "env-pw-4242") {
			t.Errorf("%s: secrets %q miss the password", dsn, secrets)
		}
		red := RedactDSN(dsn)
		if strings.Contains(red, "s3cr") || !strings.Contains(red, "db.internal") {
			t.Errorf("RedactDSN(%s) = %s", dsn, red)
		}
	}
}
