package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/fulfilld/fulfilld/config"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/daemon"
	"github.com/fulfilld/fulfilld/internal/metrics"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/store/boltstore"
	"github.com/fulfilld/fulfilld/internal/storehealth"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/internal/stripesim"
	"github.com/fulfilld/fulfilld/poller"
)

// PaceConfig is a simulated stretch of `run` with the default settings
// (schedule @every 30s, reconcile hourly, monthly_read_budget auto), on a
// simulated clock: what the read budget makes of the poll interval.
type PaceConfig struct {
	Name         string
	Days         int
	OrdersPerDay int
	// History seeds the 30 days before the stretch with OrdersPerDay
	// payments each, as an account that has been selling that long has:
	// the auto budget has grown with them.
	History bool
	// Dir holds the store; "" = a temporary directory.
	Dir string
}

// PaceReport is what the stretch cost.
type PaceReport struct {
	Config PaceConfig
	Reads  int64 // requests sent
	// Projected is Reads scaled to 30 days.
	Projected int64
	Budget    int64 // the auto budget at the end
	Polls     int
	Ticks     int
	// AtSchedule is the polls that came one schedule period after the
	// previous one; Longest the longest gap between polls.
	AtSchedule int
	Longest    time.Duration
}

const paceSchedule = 30 * time.Second

// RunPace drives the daemon's scheduled poll job and hourly sweep tick by
// tick on a simulated clock against the simulated Stripe.
func RunPace(ctx context.Context, cfg PaceConfig) (*PaceReport, error) {
	dir := cfg.Dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "fulfilld-bench-pace-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	clock := stripesim.NewClock(benchEpoch)
	sim := stripesim.New(stripesim.Options{Now: clock.Now})
	defer sim.Close()
	db, err := boltstore.Open(filepath.Join(dir, cfg.Name+".db"), false, time.Second)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	c := &config.Config{
		Schedule:  "@every 30s",
		Stripe:    config.Stripe{MonthlyReadBudget: config.ReadBudgetAuto},
		Events:    config.Events{Types: config.DefaultEventTypes, Lookback: 10 * time.Minute},
		Store:     config.Store{Path: filepath.Join(dir, cfg.Name+".db"), Retention: 90 * 24 * time.Hour},
		Fulfill:   config.Fulfill{Timeout: 30 * time.Second, Concurrency: 4, MaxAttempts: 8},
		Reconcile: config.Reconcile{Schedule: "@every 1h", Window: 72 * time.Hour},
	}
	client := stripeapi.New(stripeapi.Config{APIKey: stripesim.DefaultAPIKey, APIBase: sim.URL(),
		Limits: stripeapi.Limits{Global: 1000, Endpoint: 1000}, Now: clock.Now})
	health := storehealth.NewHealth(nil)
	stream := storehealth.New(store.As[poller.Tx](db), health)
	d := daemon.New(&daemon.Daemon{
		Config: c, DB: db, Health: health, Client: client, Now: clock.Now,
		Poller: &poller.Poller{DB: stream, Events: client, Types: c.Events.Types, Lookback: c.Events.Lookback,
			Clock: poller.ClientClock{Client: client}, Now: clock.Now},
		Fulfiller: &fulfill.Fulfiller{DB: storehealth.New(store.As[fulfill.Tx](db), health), Sessions: client,
			Action: &noop{runs: map[string]int{}}, MaxAttempts: 8, Concurrency: 4, Now: clock.Now},
		Reconciler: &poller.Reconciler{DB: stream, Sessions: client, Events: client, Types: c.Events.Types,
			Clock: poller.ClientClock{Client: client}, Now: clock.Now},
		Metrics: metrics.New(db, clock.Now),
		Socket:  c.Store.Path + ".sock",
	}, nil)
	if cfg.History {
		err := db.Update(func(tx store.Tx) error {
			for day := 1; day <= 30; day++ {
				if err := tx.AddPayments(benchEpoch.AddDate(0, 0, -day), int64(cfg.OrdersPerDay)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if _, err := d.Poller.Start(ctx, time.Time{}); err != nil {
		return nil, err
	}
	rep := &PaceReport{Config: cfg}
	last := clock.Now()
	end := last.Add(time.Duration(cfg.Days) * 24 * time.Hour)
	var orderEvery time.Duration
	nextOrder := end
	if cfg.OrdersPerDay > 0 {
		orderEvery = 24 * time.Hour / time.Duration(cfg.OrdersPerDay)
		nextOrder = last
	}
	nextSweep := last.Add(time.Hour)
	for {
		now := clock.Advance(paceSchedule)
		if !now.Before(end) {
			break
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		for ; !nextOrder.After(now); nextOrder = nextOrder.Add(orderEvery) {
			id := sim.CreateSession(stripesim.SessionParams{Created: nextOrder})
			sim.CompleteSession(id, "paid", nextOrder)
		}
		rep.Ticks++
		ran, _, err := d.ScheduledPoll(ctx)
		if err != nil {
			return nil, fmt.Errorf("poll at %s: %w", now.Format(time.RFC3339), err)
		}
		if ran {
			rep.Polls++
			gap := now.Sub(last)
			if gap <= paceSchedule {
				rep.AtSchedule++
			}
			rep.Longest = max(rep.Longest, gap)
			last = now
		}
		if !nextSweep.After(now) {
			nextSweep = nextSweep.Add(time.Hour)
			if _, err := d.Reconciler.Sweep(ctx, client.Clock.Now().Add(-c.Reconcile.Window)); err != nil {
				return nil, fmt.Errorf("sweep at %s: %w", now.Format(time.RFC3339), err)
			}
			d.SaveUsage()
		}
	}
	rep.Reads = client.Transport.Sent()
	rep.Projected = rep.Reads * 30 / int64(max(cfg.Days, 1))
	var payments int64
	if err := db.View(func(tx store.Tx) error {
		r, err := stripeapi.LoadUsage(tx, clock.Now())
		payments = r.Last30Days.Payments
		return err
	}); err != nil {
		return nil, err
	}
	rep.Budget = stripeapi.ReadBudgetInForce(config.ReadBudgetAuto, payments)
	return rep, nil
}

// PrintPace writes the simulated stretches for a person.
func PrintPace(w io.Writer, reps []PaceReport) {
	fmt.Fprintf(w, "\npoll pacing (simulated clock; schedule @every 30s, reconcile hourly, monthly_read_budget auto):\n")
	for _, r := range reps {
		fmt.Fprintf(w, "  %-28s %d days, %d orders/day: %d reads (%d projected per 30 days; budget %d), %d polls in %d ticks, %d at schedule, longest gap %s\n",
			r.Config.Name, r.Config.Days, r.Config.OrdersPerDay, r.Reads, r.Projected, r.Budget, r.Polls, r.Ticks, r.AtSchedule, r.Longest)
	}
}
