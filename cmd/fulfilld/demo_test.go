package main

import (
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/fulfilld/fulfilld/internal/logtest"
)

// The demo says up front what it shows and for how long, and ends with a
// verdict counted from the simulated Stripe's records against what the
// sample action received, then a hint that names commands that exist.
func TestDemoVerdict(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(binPath, "demo", "--duration", "25s")
	cmd.Dir = t.TempDir()
	var out, errb logtest.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("demo: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
	}
	got := out.String()
	first := strings.Join(strings.SplitN(got, "\n", 4)[:3], "\n")
	for _, want := range []string{"25s", "exactly once"} {
		if !strings.Contains(first, want) {
			t.Errorf("the first lines do not say %q:\n%s", want, first)
		}
	}
	if !strings.Contains(got, "on purpose") {
		t.Errorf("the demo does not explain its deliberate failures:\n%s", got)
	}
	m := regexp.MustCompile(`verdict: PASS: (\d+) of (\d+) paid sessions fulfilled exactly once \(0 missed, 0 more than once\); 0 of (\d+) unpaid or expired sessions fulfilled`).FindStringSubmatch(got)
	if m == nil {
		t.Fatalf("no passing verdict:\n%s\nstderr:\n%s", got, errb.String())
	}
	if m[1] != m[2] || m[1] == "0" {
		t.Errorf("verdict counts %s of %s", m[1], m[2])
	}
	if n, _ := strconv.Atoi(m[3]); n == 0 {
		t.Errorf("the demo made no unpaid or expired sessions to check")
	}
	for _, want := range []string{"fulfilld init", "run --once --since 1h --config fulfilld.yaml"} {
		if !strings.Contains(got, want) {
			t.Errorf("the closing hint lacks %q", want)
		}
	}
	if lines := strings.Count(errb.String(), "\n"); lines > 40 {
		t.Errorf("the demo logged %d lines at its default level; it should tell its own story", lines)
	}
}
