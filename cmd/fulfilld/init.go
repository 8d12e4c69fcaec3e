package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// starterAction is the sample action init writes: it keeps what it received
// so a first run against a sandbox can be checked by looking, and it
// succeeds, so nothing is retried.
const starterAction = `#!/bin/sh
# fulfilld's sample action, written by ` + "`fulfilld init`" + `. fulfilld runs it once
# per paid Checkout Session with the session JSON (line items included) on
# stdin. Exit 0 means fulfilled. Replace it with your own; see README.md,
# "The action protocol".
set -eu
dir=RECEIVED
mkdir -p "$dir"
cat >"$dir/$FULFILLD_SESSION_ID.json"
echo "received $FULFILLD_SESSION_ID (attempt $FULFILLD_ATTEMPT, trigger $FULFILLD_TRIGGER, idempotency key $FULFILLD_IDEMPOTENCY_KEY)"
`

const starterConfig = `# fulfilld starter configuration, written by ` + "`fulfilld init`" + `.
# Every other key keeps its default; deploy/fulfilld.yaml lists them all.
# The key is not kept here: set STRIPE_API_KEY (a sandbox key, sk_test_… or
# rk_test_… with Events: read and Checkout Sessions: read), then
#   fulfilld run --once --since 1h --config CONFIG

store:
  # The cursor and the record of every fulfillment (bbolt, mode 0600).
  path: STORE

fulfill:
  # The sample action: it writes each paid session it receives to
  # RECEIVED/<session id>.json. Put your own program here.
  command: ["/bin/sh", ACTION]
`

func (a *app) initCommand() *cobra.Command {
	var dir string
	var force bool
	cmd := &cobra.Command{
		Use:   "init [--dir DIR]",
		Short: "Write a starter config and a sample action that runs as it is",
		Long: "init writes fulfilld.yaml and fulfilld-sample-action.sh into DIR (default: the current\n" +
			"directory). The config runs as written once STRIPE_API_KEY is set:\n" +
			"  fulfilld run --once --since 1h --config fulfilld.yaml\n" +
			"The sample action saves each paid session it receives under received/.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.init(dir, force)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", ".", "where to write the files")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite files that exist")
	return cmd
}

func (a *app) init(dir string, force bool) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return usagef("--dir: %v", err)
	}
	if info, err := os.Stat(abs); err != nil || !info.IsDir() {
		return usagef("--dir: %s is not a directory", dir)
	}
	cfgPath := filepath.Join(abs, "fulfilld.yaml")
	action := filepath.Join(abs, "fulfilld-sample-action.sh")
	received := filepath.Join(abs, "received")
	if !force {
		for _, p := range []string{cfgPath, action} {
			if _, err := os.Stat(p); err == nil {
				return usagef("init: %s exists; leave it, or pass --force to overwrite it", p)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	// Absolute paths, so the config works from any directory.
	cfg := strings.NewReplacer(
		"STORE", strconv.Quote(filepath.Join(abs, "fulfilld.db")),
		"ACTION", strconv.Quote(action),
		"RECEIVED", received,
		"CONFIG", cfgPath,
	).Replace(starterConfig)
	script := strings.ReplaceAll(starterAction, "RECEIVED", shellQuote(received))
	if err := os.WriteFile(action, []byte(script), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	wd, _ := os.Getwd()
	rel := func(p string) string {
		if r, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(r, "..") {
			return r
		}
		return p
	}
	fmt.Fprintf(a.stdout, "wrote %s and %s\n\nnext:\n"+
		"  export STRIPE_API_KEY=rk_test_...   # a sandbox key with Events: read and Checkout Sessions: read\n"+
		"  %s run --once --since 1h --config %s\n"+
		"  ls %s   # one JSON file per paid session the action received\n",
		rel(cfgPath), rel(action), selfName(), rel(cfgPath), rel(received))
	return nil
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// selfName is how to run this binary again, for hints meant to be pasted:
// the path it was started by (./fulfilld), or plain fulfilld when it was
// found on PATH or built by `go run`.
func selfName() string {
	name := os.Args[0]
	if !strings.Contains(name, "/") || strings.Contains(name, "go-build") {
		return "fulfilld"
	}
	return name
}
