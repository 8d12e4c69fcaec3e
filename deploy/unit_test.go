// Package deploy holds the systemd unit and the example config; its tests
// check that they say what README.md promises.
package deploy

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// unit reads fulfilld.service's [Service] section: every value of each
// directive, in order (a directive may be given more than once).
func unit(t *testing.T) map[string][]string {
	t.Helper()
	f, err := os.Open("fulfilld.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, _ := strings.Cut(line, "=")
			out[k] = append(out[k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestUnitKeepsWhatTheActionNeeds: the README promises that an action under
// the shipped unit can reach the network, run /bin/sh and curl, and write to
// the state directory. Each hardening directive that could take one of those
// away is checked here, so tightening the unit cannot silently break actions.
func TestUnitKeepsWhatTheActionNeeds(t *testing.T) {
	u := unit(t)
	one := func(k string) string {
		v := u[k]
		if len(v) == 0 {
			return ""
		}
		return v[len(v)-1] // the last assignment wins
	}
	t.Run("network", func(t *testing.T) {
		fams := strings.Fields(one("RestrictAddressFamilies"))
		for _, need := range []string{"AF_INET", "AF_INET6", "AF_UNIX"} {
			if !slices.Contains(fams, need) {
				t.Errorf("RestrictAddressFamilies=%s leaves out %s: Stripe, a fulfill.url or the action's curl needs it", one("RestrictAddressFamilies"), need)
			}
		}
		for _, k := range []string{"PrivateNetwork", "IPAddressDeny"} {
			if v := one(k); v != "" && v != "no" {
				t.Errorf("%s=%s cuts the service off the network", k, v)
			}
		}
	})
	t.Run("exec /bin/sh and /usr", func(t *testing.T) {
		for _, k := range []string{"NoExecPaths", "InaccessiblePaths", "TemporaryFileSystem"} {
			for _, v := range u[k] {
				for _, p := range strings.Fields(v) {
					p = strings.TrimLeft(p, "-+")
					if p == "/" || p == "/bin" || p == "/usr" || p == "/usr/bin" || p == "/etc" {
						t.Errorf("%s=%s takes %s from the action", k, v, p)
					}
				}
			}
		}
		// execve itself must pass the filter.
		for _, v := range u["SystemCallFilter"] {
			if strings.HasPrefix(v, "~") && strings.Contains(v, "execve") {
				t.Errorf("SystemCallFilter=%s forbids running the action", v)
			}
		}
		if one("ProtectSystem") != "strict" {
			t.Errorf("ProtectSystem=%q; the README promises a read-only system, writable only where ReadWritePaths says", one("ProtectSystem"))
		}
	})
	t.Run("writable state directory", func(t *testing.T) {
		var rw []string
		for _, v := range u["ReadWritePaths"] {
			rw = append(rw, strings.Fields(v)...)
		}
		if !slices.Contains(rw, "/var/lib/fulfilld") || !slices.Contains(u["StateDirectory"], "fulfilld") {
			t.Errorf("ReadWritePaths=%q StateDirectory=%q: /var/lib/fulfilld (the store, and the action's spool) must stay writable", rw, u["StateDirectory"])
		}
		if one("PrivateTmp") != "yes" {
			t.Errorf("PrivateTmp=%q: the README promises the action its own writable /tmp", one("PrivateTmp"))
		}
	})
	t.Run("the key reaches fulfilld", func(t *testing.T) {
		if !slices.Contains(u["Environment"], "FULFILLD_STRIPE_API_KEY_FILE=stripe_api_key") ||
			!slices.Contains(u["LoadCredential"], "stripe_api_key:/etc/fulfilld/stripe_api_key") {
			t.Errorf("the unit no longer hands the key in through LoadCredential and stripe.api_key_file")
		}
	})
}

// TestUnitSandboxRunsAnAction starts the unit's own sandbox with systemd-run
// and runs an action like the README's in it: /bin/sh, a TCP connection to
// a loopback server, a write into a ReadWritePaths directory, and a write
// outside it that must fail. It needs systemd as PID 1 and root, which a
// container CI rarely has; TestUnitKeepsWhatTheActionNeeds checks the same
// promises on the file there.
func TestUnitSandboxRunsAnAction(t *testing.T) {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		t.Skip("systemd is not PID 1 here (no /run/systemd/system), so systemd-run cannot start the unit's sandbox; " +
			"TestUnitKeepsWhatTheActionNeeds checks the unit file instead")
	}
	if os.Geteuid() != 0 {
		t.Skip("systemd-run --property needs root to start a system-level transient service")
	}
	sdrun, err := exec.LookPath("systemd-run")
	if err != nil {
		t.Skip("systemd-run is not installed")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	connected := make(chan bool, 1)
	go func() {
		c, err := ln.Accept()
		connected <- err == nil
		if err == nil {
			c.Close()
		}
	}()
	// Not under /tmp: the unit's PrivateTmp would hide it.
	spool, err := os.MkdirTemp("/var/lib", "fulfilld-sandbox-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(spool) })
	if err := os.Chmod(spool, 0o777); err != nil {
		t.Fatal(err)
	}
	args := []string{"--wait", "--pipe", "--quiet", "--collect", "--property=DynamicUser=yes"}
	for k, vs := range unit(t) {
		switch k {
		case "Type", "WatchdogSec", "User", "Group", "ExecStart", "WorkingDirectory", "StateDirectory",
			"StateDirectoryMode", "LoadCredential", "Environment", "Restart", "RestartSec", "TimeoutStopSec", "ReadWritePaths":
			continue // the service's own wiring, not its sandbox
		}
		for _, v := range vs {
			args = append(args, "--property="+k+"="+v)
		}
	}
	// bash for its /dev/tcp; the action protocol itself needs only exec.
	args = append(args, "--property=ReadWritePaths="+spool, "/bin/bash", "-c",
		`set -e
exec 3<>/dev/tcp/127.0.0.1/`+portOf(ln)+`
echo order > "$0/shipped"
if echo x > /etc/fulfilld-sandbox-test 2>/dev/null; then echo "wrote /etc"; exit 3; fi
echo done`, spool)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, sdrun, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("the action failed in the unit's sandbox: %v\n%s", err, out)
	}
	select {
	case ok := <-connected:
		if !ok {
			t.Error("the listener failed")
		}
	default:
		t.Error("the action could not open a TCP connection in the unit's sandbox")
	}
	if b, err := os.ReadFile(filepath.Join(spool, "shipped")); err != nil || string(b) != "order\n" {
		t.Errorf("the action could not write to a ReadWritePaths directory: %v %q", err, b)
	}
}

func portOf(ln net.Listener) string {
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	return p
}
