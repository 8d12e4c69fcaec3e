package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/fulfilld/fulfilld/internal/fixtures"
)

// TestFixturesAreGenerated: testdata/ holds exactly what the generator
// derives from stripe-mock — nothing edited by hand, nothing stale, nothing
// left over. It needs stripe-mock in the module cache (CI installs it for
// the conformance test) and skips, without touching the network, when it
// is not there.
func TestFixturesAreGenerated(t *testing.T) {
	cmd := exec.Command("go", "list", "-m", "-json", StripeMock)
	cmd.Env = append(os.Environ(), "GOPROXY=off", "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	var m struct{ Dir string }
	if err != nil || json.Unmarshal(out, &m) != nil || m.Dir == "" {
		t.Skipf("%s is not in the module cache; go mod download %s to run this", StripeMock, StripeMock)
	}
	src, err := loadSource(filepath.Join(m.Dir, "embedded", "openapi"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := Generate(src)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, dir := range []string{"events/*/*.json", "checkout_sessions/*.json", "payment_intents/*.json"} {
		got = append(got, fixtures.Glob(t, dir)...)
	}
	for _, name := range got {
		w, ok := want[name]
		switch {
		case !ok:
			t.Errorf("testdata/%s is not generated: remove it or add it to internal/fixturegen", name)
		case !bytes.Equal(fixtures.Load(t, name), w):
			t.Errorf("testdata/%s differs from what the generator derives: run go generate ./internal/fixtures", name)
		}
	}
	for name := range want {
		if !slices.Contains(got, name) {
			t.Errorf("testdata/%s is missing: run go generate ./internal/fixtures", name)
		}
	}
}

// TestEveryHandledTypeInBothVersions: each type SPEC.md says fulfilld
// handles has an event fixture in the pinned and the older API version.
func TestEveryHandledTypeInBothVersions(t *testing.T) {
	handled := []string{
		"checkout.session.completed", "checkout.session.async_payment_succeeded",
		"checkout.session.async_payment_failed", "checkout.session.expired",
		"payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.processing",
		"payment_intent.amount_capturable_updated", "payment_intent.canceled",
	}
	for _, version := range []string{PinnedVersion, OlderVersion} {
		for _, typ := range handled {
			var ev struct {
				Type       string `json:"type"`
				APIVersion string `json:"api_version"`
			}
			name := "events/" + version + "/" + typ + ".json"
			if err := json.Unmarshal(fixtures.Load(t, name), &ev); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if ev.Type != typ || ev.APIVersion != version {
				t.Errorf("%s: type %q, api_version %q", name, ev.Type, ev.APIVersion)
			}
		}
	}
}
