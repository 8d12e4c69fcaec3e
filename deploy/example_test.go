package deploy

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/fulfill"
)

func noEnv(string) (string, bool) { return "", false }

// fulfilld.yaml says it sets every key to its default: loading it must give
// exactly what no file gives.
func TestExampleConfigIsTheDefaults(t *testing.T) {
	got, err := config.Load(config.Source{File: "fulfilld.yaml", LookupEnv: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	want, err := config.Load(config.Source{LookupEnv: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	// An empty list in the file and none at all mean the same.
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Errorf("fulfilld.yaml does not hold the defaults:\n file %+v\n code %+v", got, want)
	}
	data, err := os.ReadFile("fulfilld.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range config.Keys() {
		leaf := k[strings.LastIndex(k, ".")+1:]
		if !regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(leaf) + `:`).Match(data) {
			t.Errorf("fulfilld.yaml does not list %s", k)
		}
	}
}

// The numbers in fulfilld.yaml's comments are the code's: each range is
// tried at both ends and just outside them, and the backoff is measured.
func TestExampleConfigCommentsMatchTheCode(t *testing.T) {
	data, err := os.ReadFile("fulfilld.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	find := func(re string) []string {
		t.Helper()
		m := regexp.MustCompile(re).FindStringSubmatch(text)
		if m == nil {
			t.Fatalf("fulfilld.yaml no longer says %s; update this test with it", re)
		}
		return m
	}
	accepts := func(key string, v any) bool {
		_, err := config.Load(config.Source{LookupEnv: noEnv, Overrides: map[string]any{key: v}})
		return err == nil
	}
	ranges := []struct {
		key, re string
	}{
		{"fulfill.concurrency", `may run at the same time \((\d+)-(\d+)\)`},
		{"fulfill.max_attempts", "`fulfilld retry` \\((\\d+)-(\\d+)\\)"},
	}
	for _, r := range ranges {
		m := find(r.re)
		var lo, hi int
		fmt.Sscan(m[1], &lo)
		fmt.Sscan(m[2], &hi)
		if !accepts(r.key, lo) || !accepts(r.key, hi) || accepts(r.key, lo-1) || accepts(r.key, hi+1) {
			t.Errorf("%s: the comment says %d-%d; the code accepts something else", r.key, lo, hi)
		}
	}

	m := find(`Between (\w+) and (\w+)\. The cursor`)
	lo, _ := time.ParseDuration(m[1])
	hi, _ := time.ParseDuration(m[2])
	if !accepts("events.lookback", lo) || !accepts("events.lookback", hi) ||
		accepts("events.lookback", lo-time.Second) || accepts("events.lookback", hi+time.Second) {
		t.Errorf("events.lookback: the comment says %s to %s; the code accepts something else", lo, hi)
	}

	m = find(`Event types to list, at most (\d+)\. Empty means these (\w+):`)
	var most int
	fmt.Sscan(m[1], &most)
	types := make([]string, most+1)
	types[0], types[1] = "checkout.session.completed", "checkout.session.async_payment_succeeded"
	for i := 2; i < len(types); i++ {
		types[i] = fmt.Sprintf("type.%d", i)
	}
	if !accepts("events.types", types[:most]) || accepts("events.types", types) {
		t.Errorf("events.types: the comment says at most %d; the code accepts something else", most)
	}
	for _, typ := range config.DefaultEventTypes {
		if !strings.Contains(text, typ) {
			t.Errorf("the comment on events.types does not list the default %s", typ)
		}
	}

	m = find(`double from (\w+),\s*#?\s*capped at (\w+)`)
	first, _ := time.ParseDuration(m[1])
	capped, _ := time.ParseDuration(strings.Replace(m[2], "1h", "60m", 1))
	for range 50 { // the jitter takes up to a quarter off
		if b := fulfill.DefaultBackoff(1); b > first || b < first*3/4 {
			t.Fatalf("the comment says retries start at %s; the first wait is %s", first, b)
		}
		if b := fulfill.DefaultBackoff(20); b > capped || b < capped*3/4 {
			t.Fatalf("the comment says waits are capped at %s; a late wait is %s", capped, b)
		}
	}
}
