// Package status is the one model of fulfilld's state that an operator
// sees: `fulfilld status` (text and --json), the admin socket's answer,
// /metrics and /healthz all read it, so they never disagree. It reads kept
// counters and bounded lists only, so its cost does not grow with history.
package status

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fulfilld/fulfilld/cursor"
	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/cluster"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
	"github.com/fulfilld/fulfilld/poller"
)

// Record reads one session's record, read-only; an unknown id is
// fulfill.ErrUnknownSession.
// Store is what the status model reads.
type Store interface {
	View(fn func(store.Tx) error) error
}

func Record(db Store, id string) (fulfill.Record, error) {
	var rec fulfill.Record
	var ok bool
	err := db.View(func(tx store.Tx) (err error) { rec, ok, err = fulfill.Get(tx, id); return err })
	if err == nil && !ok {
		err = fmt.Errorf("status: %s: %w", id, fulfill.ErrUnknownSession)
	}
	return rec, err
}

// PrintRecord shows one session's record, the kept output included.
func PrintRecord(w io.Writer, rec fulfill.Record, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rec)
	}
	if rec.State == fulfill.StateOwned {
		fmt.Fprintf(w, "%s: owned by %s, a Checkout Session: fulfilled as that session, never on its own (`fulfilld status %s`)\n",
			rec.SessionID, rec.Owner, rec.Owner)
		return nil
	}
	fmt.Fprintf(w, "%s: %s (attempts %d, trigger %s", rec.SessionID, rec.State, rec.Attempts, rec.Trigger)
	if rec.EventID != "" {
		fmt.Fprintf(w, ", event %s", rec.EventID)
	}
	fmt.Fprintln(w, ")")
	if !rec.FulfilledAt.IsZero() {
		fmt.Fprintf(w, "fulfilled at %s\n", rec.FulfilledAt.UTC().Format(time.RFC3339))
	}
	if !rec.NextAttempt.IsZero() && rec.State == fulfill.StatePending {
		fmt.Fprintf(w, "next attempt %s\n", rec.NextAttempt.UTC().Format(time.RFC3339))
	}
	if rec.LastError != "" {
		fmt.Fprintf(w, "last error: %s\n", rec.LastError)
	}
	if rec.Output != "" {
		fmt.Fprintf(w, "output of the last attempt:\n%s\n", rec.Output)
	}
	return nil
}

// Report is what `fulfilld status` shows.
type Report struct {
	Store    string       `json:"store"`
	Cursor   cursorStatus `json:"cursor"`
	LastPoll *pollStatus  `json:"last_poll"`
	// ClockSkew is Stripe's clock minus this host's, in seconds, as the
	// last poll saw it; null before a poll observed it.
	ClockSkew      *float64       `json:"clock_skew_seconds"`
	Fulfillments   map[string]int `json:"fulfillments"`
	Recovered      int            `json:"recovered"`
	InFlight       int            `json:"in_flight"`
	Queued         int            `json:"queued"`
	PaymentIntents map[string]int `json:"payment_intents"`
	// IntentFulfillments counts PaymentIntents fulfilled on their own
	// (fulfill.payment_intents) by state, owned (by a Checkout Session,
	// never run) included; absent while there are none.
	IntentFulfillments map[string]int      `json:"payment_intent_fulfillments,omitempty"`
	Events             []cursor.EventCount `json:"events"`
	BadEvents          badEventsStatus     `json:"bad_events"`
	Failures           []failureStatus     `json:"failures"`
	API                API                 `json:"api"`
	// Deliveries counts event deliveries by destination (forward,
	// repair, notify) and state; Notifications is its notify part, as
	// before. Under repair: sent is repaired, pending waiting, failed
	// dead-lettered.
	Deliveries       map[string]map[string]int `json:"deliveries"`
	Notifications    map[string]int            `json:"notifications"`
	DeliveryFailures []fulfill.EventDelivery   `json:"delivery_failures"`
	LastSweep        *poller.Sweep             `json:"last_reconcile"`
	WebhookMisses    *poller.WebhookMisses     `json:"webhook_misses"`
	// Cluster is the instances sharing the store and which one lists
	// (store.postgres only).
	Cluster *cluster.View `json:"cluster,omitempty"`
}

type cursorStatus struct {
	Started       bool    `json:"started"`
	CompleteUntil string  `json:"complete_until,omitempty"`
	Tip           string  `json:"tip,omitempty"`
	LagSeconds    float64 `json:"lag_seconds"`
	// HorizonSeconds is how long until complete_until falls out of Stripe's
	// 30-day event retention.
	HorizonSeconds float64       `json:"horizon_seconds"`
	Rescan         *cursor.Slice `json:"rescan,omitempty"` // the oldest slice in progress
	RescanSlices   int           `json:"rescan_slices_in_progress"`
	SeenEvents     int           `json:"seen_events"`
	// HostSince is a `run --since` start counted on the clock of the host
	// that ran it, which no answer from Stripe has judged yet
	// (cursor.Position.HostSince): complete_until moves back by that
	// host's lead if it was ahead. Shown only while it is not after
	// complete_until: a later start has moved nothing.
	HostSince string `json:"host_since,omitempty"`
}

type pollStatus struct {
	Time         string  `json:"time"`
	Outcome      string  `json:"outcome"`
	Error        string  `json:"error,omitempty"`
	DurationSecs float64 `json:"duration_seconds"`
	Listed       int     `json:"events_listed"`
	New          int     `json:"events_new"`
	// LastSuccess is when the most recent successful poll started (on
	// Stripe's clock), and LastSuccessAge how long ago that was.
	LastSuccess    time.Time `json:"last_success,omitzero"`
	LastSuccessAge float64   `json:"last_success_age_seconds,omitempty"`
}

type badEventsStatus struct {
	Count  int               `json:"count"`
	Recent []cursor.BadEvent `json:"recent"`
}

type failureStatus struct {
	SessionID string `json:"session_id"`
	Attempts  int    `json:"attempts"`
	LastError string `json:"last_error"`
	Updated   string `json:"updated"`
}

// API is Stripe usage: requests over all time and the last 30 days, and,
// once SetReadBudget was told the configuration, the read budget.
type API struct {
	stripeapi.UsageReport
	ReadBudget *ReadBudget `json:"read_budget,omitempty"`
}

// ReadBudget is stripe.monthly_read_budget as it stands.
type ReadBudget struct {
	// Budget is the cap in force (0: none); Mode says where it comes from:
	// "auto" (from the payments of the last 30 days), "fixed" or "none".
	Budget int64  `json:"budget"`
	Mode   string `json:"mode"`
	// ReadsLast30Days is what the rolling 30 days hold; Projected30Days
	// what they would hold at the pace of the last 7 days.
	ReadsLast30Days int64 `json:"reads_last_30_days"`
	Projected30Days int64 `json:"projected_30_days"`
}

// SetReadBudget fills in the read budget from the configured
// stripe.monthly_read_budget (config.ReadBudgetAuto, 0 or a number).
func (st *Report) SetReadBudget(configured int) {
	mode := "fixed"
	switch {
	case configured < 0:
		mode = "auto"
	case configured == 0:
		mode = "none"
	}
	st.API.ReadBudget = &ReadBudget{
		Budget: stripeapi.ReadBudgetInForce(configured, st.API.Last30Days.Payments), Mode: mode,
		ReadsLast30Days: st.API.Last30Days.Total(), Projected30Days: st.API.Projected30Days(),
	}
}

// Read reads the report from the store, with now on the host's clock.
func Read(db Store, now time.Time) (*Report, error) {
	st := &Report{Fulfillments: map[string]int{}, PaymentIntents: map[string]int{}}
	err := db.View(func(tx store.Tx) error {
		poll, err := cursor.LoadPoll(tx)
		if err != nil {
			return err
		}
		if st.ClockSkew = poll.ClockSkew; st.ClockSkew != nil {
			// complete_until is on Stripe's clock: lag and horizon too.
			now = now.Add(time.Duration(*st.ClockSkew * float64(time.Second)))
		}
		if !poll.At.IsZero() {
			st.LastPoll = &pollStatus{Time: poll.At.UTC().Format(time.RFC3339), Outcome: poll.Outcome, Error: poll.Error,
				DurationSecs: poll.Duration.Seconds(), Listed: poll.Listed, New: poll.New}
			if !poll.LastSuccess.IsZero() {
				st.LastPoll.LastSuccess = poll.LastSuccess.UTC()
				st.LastPoll.LastSuccessAge = now.Sub(poll.LastSuccess).Seconds()
			}
		}
		pos, err := cursor.Load(tx)
		if err != nil {
			return err
		}
		if !pos.IsZero() {
			st.Cursor = cursorStatus{
				Started:        true,
				CompleteUntil:  pos.Settled.UTC().Format(time.RFC3339),
				LagSeconds:     now.Sub(pos.Settled).Seconds(),
				HorizonSeconds: pos.Settled.Add(poller.Retention).Sub(now).Seconds(),
				Rescan:         pos.Scan,
				RescanSlices:   len(pos.Scans),
			}
			if !pos.Tip.IsZero() {
				st.Cursor.Tip = pos.Tip.UTC().Format(time.RFC3339)
			}
			if pos.HostSince != nil && !pos.HostSince.After(pos.Settled) {
				st.Cursor.HostSince = pos.HostSince.UTC().Format(time.RFC3339)
			}
		}
		if st.Cursor.SeenEvents, err = cursor.SeenCount(tx); err != nil {
			return err
		}
		sum, err := fulfill.Summarize(tx)
		if err != nil {
			return err
		}
		for s, n := range sum.Sessions {
			st.Fulfillments[string(s)] = n
		}
		st.Recovered, st.InFlight, st.PaymentIntents = sum.Recovered, sum.InFlight, sum.PaymentIntents
		if slices.ContainsFunc(slices.Collect(maps.Values(sum.Intents)), func(n int) bool { return n > 0 }) {
			st.IntentFulfillments = map[string]int{}
			for s, n := range sum.Intents {
				st.IntentFulfillments[string(s)] = n
			}
		}
		if st.Queued, err = fulfill.QueueLen(tx); err != nil {
			return err
		}
		if st.Events, err = cursor.Counts(tx); err != nil {
			return err
		}
		if st.BadEvents.Recent, st.BadEvents.Count, err = cursor.BadEvents(tx, 10); err != nil {
			return err
		}
		failed, err := fulfill.Failed(tx, 20)
		if err != nil {
			return err
		}
		for _, r := range failed {
			st.Failures = append(st.Failures, failureStatus{SessionID: r.SessionID, Attempts: r.Attempts,
				LastError: r.LastError, Updated: r.Updated.UTC().Format(time.RFC3339)})
		}
		if st.Deliveries, st.DeliveryFailures, err = fulfill.DeliverySummary(tx, 20); err != nil {
			return err
		}
		st.Notifications = st.Deliveries[fulfill.DestNotify]
		if st.LastSweep, st.WebhookMisses, err = poller.LastSweep(tx); err != nil {
			return err
		}
		if st.LastSweep != nil {
			st.LastSweep.Misses = nil // shown once, as webhook_misses
		}
		repairStates(tx, st.WebhookMisses)
		if v, shared, err := cluster.ReadView(tx); err != nil {
			return err
		} else if shared {
			st.Cluster = &v
		}
		st.API.UsageReport, err = stripeapi.LoadUsage(tx, now)
		return err
	})
	if st.Events == nil {
		st.Events = []cursor.EventCount{}
	}
	if st.BadEvents.Recent == nil {
		st.BadEvents.Recent = []cursor.BadEvent{}
	}
	if st.Failures == nil {
		st.Failures = []failureStatus{}
	}
	if st.DeliveryFailures == nil {
		st.DeliveryFailures = []fulfill.EventDelivery{}
	}
	return st, err
}

// repairStates brings the repair state of the listed misses up to date:
// the report was written when the sweep queued them. It reads at most the
// hundred records the report keeps.
func repairStates(tx store.Tx, m *poller.WebhookMisses) {
	if m == nil {
		return
	}
	for i, e := range m.Recent {
		if e.Repair == "" || e.Repair == "forwarded" {
			continue
		}
		// A record that cannot be read keeps the state the sweep saw:
		// status must answer all the same.
		if d, ok, err := fulfill.GetDelivery(tx, fulfill.DestRepair, e.EventID); err == nil && ok {
			m.Recent[i].Repair = d.State
		}
	}
}

// WriteText renders the status for a person.
func (st *Report) WriteText(w io.Writer) {
	// The summary is a table; the lists of ids come after it, so a
	// 66-character session id does not widen every row.
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "store\t%s\n", st.Store)
	if st.Cursor.Started {
		fmt.Fprintf(tw, "complete until\t%s (lag %s; falls out of Stripe's retention in %s)\n", st.Cursor.CompleteUntil,
			roundDur(st.Cursor.LagSeconds), roundDur(st.Cursor.HorizonSeconds))
		if r := st.Cursor.Rescan; r != nil {
			fmt.Fprintf(tw, "re-scan in progress\t%d slice(s); the oldest %s → %s (%d pages done)\n", st.Cursor.RescanSlices,
				r.From.UTC().Format(time.RFC3339), r.To.UTC().Format(time.RFC3339), r.Pages)
		}
		if st.Cursor.HostSince != "" {
			fmt.Fprintf(tw, "backfill start\t%s, counted on the clock of the host that ran `run --since` and not yet checked "+
				"against Stripe's: if that host was more than 2 s ahead, complete until moves back by as much at the first answer from Stripe\n",
				st.Cursor.HostSince)
		}
	} else {
		fmt.Fprintf(tw, "cursor\tnot started (run `fulfilld run`)\n")
	}
	if c := st.Cluster; c != nil {
		lister := c.Lister
		if lister == "" {
			lister = "none right now (a standby takes the role within a minute)"
		}
		fmt.Fprintf(tw, "lister\t%s\n", lister)
		fmt.Fprintln(tw, "instances\t")
		for _, in := range c.Instances {
			state := "gone"
			switch {
			case in.Lister:
				state = "lists events"
			case in.Alive:
				state = "works the queues"
			}
			fmt.Fprintf(tw, "  %s\t%s pid %d, %s, last seen %s (%s)\n", in.ID, in.Host, in.PID, in.Version,
				in.Seen.UTC().Format(time.RFC3339), state)
		}
	}
	if p := st.LastPoll; p != nil {
		line := fmt.Sprintf("%s %s, %d events listed, %d new, took %.1fs", p.Time, p.Outcome, p.Listed, p.New, p.DurationSecs)
		if p.Error != "" {
			line += ": " + oneLine(p.Error, 200)
		}
		fmt.Fprintf(tw, "last poll\t%s\n", line)
	}
	if s := st.ClockSkew; s != nil {
		fmt.Fprintf(tw, "clock skew\t%s (Stripe's clock minus this host's, at the last poll)\n", skewText(*s))
	}
	fmt.Fprintln(tw, "fulfillments\t")
	for _, s := range fulfill.States {
		fmt.Fprintf(tw, "  %s\t%d\n", s, st.Fulfillments[string(s)])
	}
	fmt.Fprintf(tw, "  queued\t%d (in flight %d)\n", st.Queued, st.InFlight)
	fmt.Fprintf(tw, "  recovered by reconciliation\t%d\n", st.Recovered)
	if st.IntentFulfillments != nil {
		fmt.Fprintln(tw, "payment intent fulfillments\t")
		for _, s := range fulfill.IntentStates {
			fmt.Fprintf(tw, "  %s\t%d\n", s, st.IntentFulfillments[string(s)])
		}
	}
	if len(st.PaymentIntents) > 0 {
		fmt.Fprintln(tw, "payment intents\t")
		for _, k := range sortedKeys(st.PaymentIntents) {
			fmt.Fprintf(tw, "  %s\t%d\n", k, st.PaymentIntents[k])
		}
	}
	if len(st.Events) > 0 {
		fmt.Fprintln(tw, "events\t")
		for _, e := range st.Events {
			fmt.Fprintf(tw, "  %s %s\t%d\n", e.Type, e.Outcome, e.Count)
		}
	}
	for _, dest := range fulfill.Destinations {
		n := st.Deliveries[dest]
		if n[fulfill.DeliveryPending]+n[fulfill.DeliverySent]+n[fulfill.DeliveryFailed] == 0 {
			continue
		}
		if dest == fulfill.DestRepair {
			fmt.Fprintf(tw, "repaired webhooks\t%d delivered, %d waiting, %d dead-lettered (events Stripe could not deliver, re-delivered to forward.url)\n",
				n[fulfill.DeliverySent], n[fulfill.DeliveryPending], n[fulfill.DeliveryFailed])
			continue
		}
		name := map[string]string{fulfill.DestNotify: "notifications", fulfill.DestForward: "forwarded events"}[dest]
		fmt.Fprintf(tw, "%s\t%d sent, %d pending, %d failed\n", name, n[fulfill.DeliverySent], n[fulfill.DeliveryPending], n[fulfill.DeliveryFailed])
	}
	if sw := st.LastSweep; sw != nil && sw.Repair != nil {
		r := sw.Repair
		fmt.Fprintf(tw, "last reconcile\t%s %s, %d undelivered events created %s to %s, %d queued for repair, %d queued before\n",
			sw.At.UTC().Format(time.RFC3339), sw.Outcome, r.Listed, r.Since.UTC().Format(time.RFC3339),
			r.Until.UTC().Format(time.RFC3339), r.Queued, r.Before)
	} else if sw != nil {
		fmt.Fprintf(tw, "last reconcile\t%s %s, %d sessions swept since %s, recovered %d never seen + %d not fulfilled, %d fulfilled ahead of the stream\n",
			sw.At.UTC().Format(time.RFC3339), sw.Outcome, sw.Listed, sw.Since.UTC().Format(time.RFC3339),
			sw.Recovered[poller.ReasonNeverSeen], sw.Recovered[poller.ReasonNotFulfilled], sw.Early)
	}
	fmt.Fprintf(tw, "api requests\t%d in all, %d in the last 30 days, %d answered 429\n",
		st.API.Total.Total(), st.API.Last30Days.Total(), st.API.Total.RateLimited)
	if b := st.API.ReadBudget; b != nil {
		limit := "no cap"
		if b.Budget > 0 {
			limit = fmt.Sprintf("%d (%s)", b.Budget, b.Mode)
		}
		fmt.Fprintf(tw, "read budget\t%s; %d read in the last 30 days, %d projected at the last 7 days' pace\n",
			limit, b.ReadsLast30Days, b.Projected30Days)
	}
	for _, k := range sortedKeys(st.API.Total.Requests) {
		fmt.Fprintf(tw, "  %s\t%d\n", k, st.API.Total.Requests[k])
	}
	tw.Flush()

	if len(st.Failures) > 0 {
		fmt.Fprintf(w, "\nfailed (dead letter): %d; `fulfilld retry --failed` requeues them\n",
			st.Fulfillments[string(fulfill.StateFailed)]+st.IntentFulfillments[string(fulfill.StateFailed)])
		for _, f := range st.Failures {
			fmt.Fprintf(w, "  %s  %d attempts  %s\n", f.SessionID, f.Attempts, oneLine(f.LastError, 160))
		}
	}
	if len(st.DeliveryFailures) > 0 {
		fmt.Fprintf(w, "\nevent deliveries failed (dead letter); `fulfilld retry evt_…` or --failed requeues them\n")
		for _, f := range st.DeliveryFailures {
			fmt.Fprintf(w, "  %s  %s  %s  %s\n", f.EventID, f.Destination, f.EventType, oneLine(f.LastError, 160))
		}
	}
	if st.BadEvents.Count > 0 {
		fmt.Fprintf(w, "\nmalformed events: %d (recorded and skipped)\n", st.BadEvents.Count)
		for _, e := range st.BadEvents.Recent {
			fmt.Fprintf(w, "  %s  %s  %s\n", e.ID, e.Type, oneLine(e.Error, 160))
		}
	}
	if m := st.WebhookMisses; m != nil && m.Count > 0 {
		fmt.Fprintf(w, "\nwebhook misses: %d events Stripe could not deliver to a webhook endpoint, %d not handled by fulfilld\n", m.Count, m.Unhandled)
		for i, e := range m.Recent {
			if i == 10 {
				break
			}
			state := e.State
			switch {
			case e.Repair != "":
				state = "repair " + e.Repair
			case state == "":
				state = "not handled"
			}
			fmt.Fprintf(w, "  %s  %s  %s  %s\n", e.EventID, e.Type, e.Object, state)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// skewText says which clock is ahead, to the second.
func skewText(secs float64) string {
	d := time.Duration(math.Round(secs)) * time.Second
	switch {
	case d > 0:
		return fmt.Sprintf("%.0fs: Stripe is %s ahead", secs, d)
	case d < 0:
		return fmt.Sprintf("%.0fs: Stripe is %s behind", secs, -d)
	}
	return "0s: in step"
}

func roundDur(secs float64) string {
	d := time.Duration(secs * float64(time.Second))
	switch {
	case d < 0:
		return "-" + (-d).Round(time.Second).String()
	case d < time.Minute:
		return d.Round(time.Second).String()
	}
	return d.Round(time.Minute).String()
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
