package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/fulfilld/fulfilld/internal/bench"
	"github.com/fulfilld/fulfilld/internal/status"
)

// benchCommand is `fulfilld bench`: a backfill against the simulated Stripe
// with real latency and limits, timed against the floor those limits set
// and against the docs-literal loop. It needs no key and no config.
func (a *app) benchCommand() *cobra.Command {
	cfg := bench.Config{Docs: true, Ceiling: true}
	pace := true
	cmd := &cobra.Command{
		Use:   "bench [--events N] [--sessions N] [--latency D] [--global-limit R] ...",
		Short: "Time a backfill against simulated Stripe: wall vs the rate-limit floor, 429s, memory, the docs loop",
		Long: "bench generates a backfill in a simulated Stripe (run in a child process, on loopback), runs the real\n" +
			"daemon path against it — poller and fulfiller with an in-process no-op action, through stripe-go and the\n" +
			"pacing transport — and prints the wall time, the floor Stripe's limits allow, requests by endpoint, 429s\n" +
			"and peak RSS. On the same data it also times the docs-literal loop and the local ceiling.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find own executable for the simulator process: %w", err)
			}
			cfg.SimCommand = func(ctx context.Context, args []string) *exec.Cmd {
				c := exec.CommandContext(ctx, exe, append([]string{"bench", "sim"}, args...)...)
				c.Stderr = a.stderr
				return c
			}
			cfg.Progress = a.stderr
			cfg.Logger = slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			rep, err := bench.Run(cmd.Context(), cfg)
			if errors.Is(err, context.Canceled) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			if pace {
				for _, pc := range []bench.PaceConfig{
					{Name: "quiet account", Days: 30},
					{Name: "busy account", Days: 1, OrdersPerDay: 1000, History: true},
				} {
					cfg.Progress.Write([]byte(fmt.Sprintf("poll pacing: %s, %d simulated days\n", pc.Name, pc.Days)))
					pr, err := bench.RunPace(cmd.Context(), pc)
					if err != nil {
						return fmt.Errorf("bench: poll pacing, %s: %w", pc.Name, err)
					}
					rep.Pace = append(rep.Pace, *pr)
				}
			}
			bench.Print(a.stdout, rep)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Events, "events", 20000, "events in the backfill (of the types fulfilld lists)")
	f.BoolVar(&pace, "pace", true, "also simulate 30 quiet days and a busy day of polling under the default read budget")
	f.IntVar(&cfg.Sessions, "sessions", 2000, "paid Checkout Sessions among them")
	f.DurationVar(&cfg.Latency, "latency", 250*time.Millisecond, "mean latency of each simulated request")
	f.DurationVar(&cfg.Jitter, "jitter", 100*time.Millisecond, "latency spreads uniformly over latency±jitter")
	f.Float64Var(&cfg.GlobalLimit, "global-limit", 25, "the simulated Stripe's global limit, requests/s (0 = none)")
	f.Float64Var(&cfg.EndpointLimit, "endpoint-limit", 25, "the simulated Stripe's per-endpoint limit, requests/s (0 = none)")
	f.Float64Var(&cfg.RateLimit, "rate-limit", 0, "fulfilld's stripe.rate_limit (0 = the simulated global limit)")
	f.IntVar(&cfg.Concurrency, "concurrency", 4, "fulfill.concurrency")
	f.StringVar(&cfg.Store, "store", "", "directory for the bbolt files (default: a temporary one, removed after)")
	f.StringVar(&cfg.Postgres, "postgres", "", "also run on PostgreSQL, one instance and two on one database: a server DSN whose role may CREATE DATABASE "+
		"(each phase gets a database of its own, dropped after; a password is best left to PGPASSWORD or PGPASSFILE)")
	f.BoolVar(&cfg.Docs, "docs-loop", true, "also time the docs-literal loop on the same data (in parallel, on its own simulator)")
	f.BoolVar(&cfg.Ceiling, "ceiling", true, "also measure the local ceiling: a poll with no latency and no limits")
	f.StringVar(&cfg.CPUProfile, "cpuprofile", "", "write the daemon path's CPU profile to this file (the local ceiling's to FILE.ceiling)")
	f.StringVar(&cfg.HeapProfile, "heapprofile", "", "write a heap profile taken at the daemon path's anonymous-memory peak to this file (the ceiling's to FILE.ceiling)")
	cmd.AddCommand(a.benchSimCommand(), a.benchStoreCommand())
	return cmd
}

// benchStoreCommand is `fulfilld bench store`: a simulated year written
// through the real store code, with the file size, the read latencies and
// the longest write stall beside issue 9's targets.
func (a *app) benchStoreCommand() *cobra.Command {
	cfg := bench.StoreConfig{Retention: 90 * 24 * time.Hour}
	var retention, cpuProfile string
	cmd := &cobra.Command{
		Use:   "store [--days N] [--orders-per-day N] [--retention D] [--output-bytes N]",
		Short: "Write a simulated year through the store code; print file size, bytes per order, scrape and status latency, write stalls",
		Long: "bench store writes simulated days of orders — each a paid Checkout Session fulfilled through the real\n" +
			"fulfiller, an abandoned session expiring with a notification, and a PaymentIntent status — committing\n" +
			"events page by page as the poller does, on a simulated clock, with retention pruning hourly. Meanwhile a\n" +
			"reader scrapes /metrics and reads status (the same read as `fulfilld status`) over and over. At the end it\n" +
			"compacts the file and prints the sizes, bytes per order, read latencies and the longest write, beside the\n" +
			"targets. Writes skip fsync. A quick run: --days 30 --orders-per-day 1000.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := parseRetention(retention)
			if err != nil || d <= 0 {
				return usagef("bench store: --retention %q: want a positive duration such as 90d or 720h", retention)
			}
			cfg.Retention = d
			cfg.Progress = a.stderr
			cfg.Status = func(db status.Store, now time.Time) (map[string]int, error) {
				st, err := status.Read(db, now)
				if err != nil {
					return nil, err
				}
				return st.Fulfillments, nil
			}
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return fmt.Errorf("bench store: --cpuprofile: %w", err)
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return fmt.Errorf("bench store: --cpuprofile: %w", err)
				}
				defer pprof.StopCPUProfile()
			}
			// The heap is small (the store is a file map) and the run
			// allocates fast: collect less often, so the figures are the
			// store's rather than the collector's.
			defer debug.SetGCPercent(debug.SetGCPercent(400))
			rep, err := bench.RunStore(cmd.Context(), cfg)
			if errors.Is(err, context.Canceled) {
				return nil
			}
			if err != nil {
				return err
			}
			bench.PrintStore(a.stdout, rep)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Days, "days", 365, "simulated days")
	f.IntVar(&cfg.OrdersPerDay, "orders-per-day", 5000, "paid orders a day (each also brings an abandoned session and a PaymentIntent)")
	f.StringVar(&retention, "retention", "90d", "store.retention: settled records keep full detail this long")
	f.IntVar(&cfg.OutputBytes, "output-bytes", 2048, "bytes of output the fulfillment action prints (kept until retention)")
	f.StringVar(&cfg.Path, "path", "", "bbolt file to write, kept after (default: a temporary one, removed after)")
	f.BoolVar(&cfg.TxPerWrite, "tx-per-write", false, "one transaction per ledger write, as the daemon (slower); default: the fulfiller's and notifier's writes batched")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the run to this file")
	return cmd
}

// benchSimCommand is the simulator child of `bench`; not for people.
func (a *app) benchSimCommand() *cobra.Command {
	var sc bench.SimConfig
	var anchor int64
	cmd := &cobra.Command{
		Use:    "sim",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sc.Anchor = time.Unix(anchor, 0)
			return bench.ServeSim(cmd.Context(), sc, os.Stdin, a.stdout)
		},
	}
	f := cmd.Flags()
	f.IntVar(&sc.Events, "events", 0, "")
	f.IntVar(&sc.Sessions, "sessions", 0, "")
	f.Int64Var(&anchor, "anchor", 0, "")
	f.DurationVar(&sc.Span, "span", 6*time.Hour, "")
	f.DurationVar(&sc.Latency, "latency", 0, "")
	f.DurationVar(&sc.Jitter, "jitter", 0, "")
	f.Float64Var(&sc.GlobalLimit, "global-limit", 0, "")
	f.Float64Var(&sc.EndpointLimit, "endpoint-limit", 0, "")
	return cmd
}

// parseRetention reads a duration with an optional whole-days form ("90d"),
// as store.retention is written.
func parseRetention(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		return time.Duration(days) * 24 * time.Hour, err
	}
	return time.ParseDuration(s)
}
