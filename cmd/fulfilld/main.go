// Command fulfilld makes sure every paid Stripe Checkout Session is
// fulfilled exactly once. This file and its siblings are wiring only:
// configuration, logger, store, Stripe client, poller, fulfiller, schedule
// and signals. main is the only place that exits.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/internal/daemon"
)

// Exit codes (SPEC.md).
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	// The first SIGTERM or SIGINT stops scheduling and lets running actions
	// finish; a second one exits at once (attempts cut off are repeated on
	// the next start, with the same idempotency keys).
	ctx, cancel := context.WithCancel(context.Background())
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-signals
		cancel()
		<-signals
		fmt.Fprintln(os.Stderr, "fulfilld: second signal: exiting now; attempts in flight are repeated on the next start")
		os.Exit(exitFailure)
	}()
	os.Exit(Main(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// Main runs one command line and returns its exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr, lookupEnv: os.LookupEnv, environ: os.Environ}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if a.line != nil {
		a.line.Clear() // the last words go on a line of their own
	}
	if err == nil {
		return exitOK
	}
	code := exitCode(err)
	msg := err.Error()
	if a.redact != nil {
		msg = a.redact(msg)
	}
	if !errors.Is(err, errSilent) {
		fmt.Fprintf(stderr, "fulfilld: %s\n", msg)
	}
	return code
}

// errSilent marks an exit whose reason was already printed.
var errSilent = errors.New("")

// usageError is bad usage or a bad setting: exit code 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// exitError carries an exit code for an error already explained.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ue *usageError
	var ce *config.Error
	var ee *exitError
	var de *daemon.UsageError
	var re *daemon.RemoteError
	switch {
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &re):
		return re.Code
	case errors.As(err, &ue), errors.As(err, &ce), errors.As(err, &de):
		return exitUsage
	case isCobraUsage(err):
		return exitUsage
	}
	return exitFailure
}

// isCobraUsage recognises cobra's own argument and flag errors.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, s := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "flag needs an argument",
		"invalid argument", "accepts ", "requires at least", "requires at most", "received "} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
