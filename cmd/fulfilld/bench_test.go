package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestBenchStore runs `bench store` at a tiny size: the status it reads is
// `fulfilld status`'s own, and its counts must equal the orders written.
func TestBenchStore(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"bench", "store", "--days", "2", "--orders-per-day", "24", "--retention", "1d"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	for _, want := range []string{"48 fulfilled (status says 48), none twice", "status read at the end", "file size after compact"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, stdout.String())
		}
	}
}

// TestBenchStoreBadRetention: a retention that is not a duration is a usage
// error naming the flag.
func TestBenchStoreBadRetention(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"bench", "store", "--retention", "soon"}, &stdout, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "--retention") {
		t.Fatalf("exit %d, stderr %q; want 2 and a message naming --retention", code, stderr.String())
	}
}
