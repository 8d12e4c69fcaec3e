package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/fulfilld/fulfilld/internal/stripesim"
)

// SimConfig is one simulated Stripe with a generated backfill. The benchmark
// runs each in a process of its own, so that the simulator's memory (it
// keeps every event) is not counted as the daemon's.
type SimConfig struct {
	Events, Sessions int
	// Anchor is "now" for the data: events are created in
	// [Anchor-Span, Anchor-15m], oldest first.
	Anchor time.Time
	Span   time.Duration
	// Latency is the mean delay of each request; Jitter spreads it
	// uniformly over Latency±Jitter.
	Latency, Jitter time.Duration
	// GlobalLimit and EndpointLimit are the simulator's limits in
	// requests/second; 0 = none.
	GlobalLimit, EndpointLimit float64
}

// args renders c as the flags of the hidden `bench sim` command.
func (c SimConfig) args() []string {
	return []string{
		"--events", strconv.Itoa(c.Events), "--sessions", strconv.Itoa(c.Sessions),
		"--anchor", strconv.FormatInt(c.Anchor.Unix(), 10), "--span", c.Span.String(),
		"--latency", c.Latency.String(), "--jitter", c.Jitter.String(),
		"--global-limit", strconv.FormatFloat(c.GlobalLimit, 'f', -1, 64),
		"--endpoint-limit", strconv.FormatFloat(c.EndpointLimit, 'f', -1, 64),
	}
}

// statsPath answers the simulator's request counters as JSON.
const statsPath = "/_bench/stats"

// Generate fills sim with cfg's backfill: Sessions paid Checkout Sessions
// (a checkout.session.completed event each) spread evenly among
// Events-Sessions payment_intent.succeeded events for other payments, each
// its own PaymentIntent. It returns the paid session ids.
func Generate(sim *stripesim.Server, cfg SimConfig) []string {
	first := cfg.Anchor.Add(-cfg.Span)
	last := cfg.Anchor.Add(-15 * time.Minute)
	step := last.Sub(first) / time.Duration(max(cfg.Events, 1))
	every := cfg.Events / max(cfg.Sessions, 1)
	ids := make([]string, 0, cfg.Sessions)
	for i := range cfg.Events {
		at := first.Add(time.Duration(i) * step)
		if len(ids) < cfg.Sessions && (i%max(every, 1) == 0 || cfg.Events-i <= cfg.Sessions-len(ids)) {
			id := sim.CreateSession(stripesim.SessionParams{Created: at.Add(-time.Minute), LineItems: 1 + i%3})
			sim.CompleteSession(id, "paid", at)
			ids = append(ids, id)
			continue
		}
		sim.PaymentIntentEvent("payment_intent.succeeded", fmt.Sprintf("pi_bench%09d", i), at, "")
	}
	return ids
}

// ServeSim is the hidden `bench sim` command: it generates the data, serves
// it on a loopback port, prints "URL <base>" on out and serves until in is
// closed (the parent went away) or ctx ends.
func ServeSim(ctx context.Context, cfg SimConfig, in io.Reader, out io.Writer) error {
	opts := stripesim.Options{GlobalLimit: cfg.GlobalLimit, EndpointLimit: cfg.EndpointLimit}
	if cfg.Latency > 0 {
		lo, spread := cfg.Latency-cfg.Jitter, 2*cfg.Jitter
		opts.Latency = func() time.Duration {
			if spread <= 0 {
				return lo
			}
			return lo + rand.N(spread+1)
		}
	}
	sim := stripesim.NewHandler(opts)
	defer sim.Close()
	Generate(sim, cfg)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc(statsPath, func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(sim.Stats())
	})
	mux.Handle("/", sim)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()
	fmt.Fprintf(out, "URL http://%s\n", l.Addr())
	gone := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, in)
		close(gone)
	}()
	select {
	case <-gone:
	case <-ctx.Done():
	}
	return nil
}

// simProcess is a running `bench sim` child.
type simProcess struct {
	URL   string
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startSim starts a child serving cfg and waits until it listens.
func startSim(ctx context.Context, command func(ctx context.Context, args []string) *exec.Cmd, cfg SimConfig) (*simProcess, error) {
	cmd := command(ctx, cfg.args())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start simulated stripe: %w", err)
	}
	p := &simProcess{cmd: cmd, stdin: stdin}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	url, ok := strings.CutPrefix(strings.TrimSpace(line), "URL ")
	if err != nil || !ok {
		p.stop()
		return nil, fmt.Errorf("simulated stripe did not start (%q): %w", line, errors.Join(err, ctx.Err()))
	}
	p.URL = url
	return p, nil
}

// stats reads the child's request counters.
func (p *simProcess) stats(ctx context.Context) (stripesim.Stats, error) {
	var st stripesim.Stats
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+statsPath, nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func (p *simProcess) stop() {
	p.stdin.Close()
	_ = p.cmd.Wait()
}
