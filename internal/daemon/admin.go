package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/fulfilld/fulfilld/fulfill"
	"github.com/fulfilld/fulfilld/internal/status"
	"github.com/fulfilld/fulfilld/internal/store"
	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// While `run` holds the store (bbolt lets one process open it), the other
// commands reach it through a unix socket beside the store: HTTP with JSON
// bodies, answered by the same code that answers against a stopped store.

// listenAdmin opens the socket, mode 0600. Only the process holding the
// store's lock calls it, so a socket file already there is a stale one.
func listenAdmin(path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale admin socket %s: %w", path, err)
	}
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return l, nil
}

// adminError is an answer that failed; code is the CLI exit code.
type adminError struct {
	Error string `json:"error"`
	Code  int    `json:"code"`
}

// errStopping answers what would start new work while the daemon stops.
var errStopping = errors.New("the daemon is stopping; try again when it has started again (status works meanwhile)")

// errOncePass answers the commands that change things while a `run --once`
// pass holds the store: it has no scheduler to hand the work to.
var errOncePass = errors.New("a `fulfilld run --once` pass holds the store; try again when it ends (status works meanwhile)")

// adminHandler serves the socket for a running daemon. A `--once` pass
// serves what reads (status) and refuses what would change things.
func (d *Daemon) adminHandler(work context.Context, once bool) http.Handler {
	mux := http.NewServeMux()
	// Work asked for once the daemon is stopping would be cut off at the
	// end of the grace and repeated on the next start: refuse it instead.
	refuseWhileStopping := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if d.stopping.Load() {
				d.adminFail(w, errStopping)
				return
			}
			h(w, r)
		}
	}
	if once {
		refuse := func(w http.ResponseWriter, _ *http.Request) { d.adminFail(w, errOncePass) }
		mux.HandleFunc("POST /fulfill/{id}", refuse)
		mux.HandleFunc("POST /retry", refuse)
		mux.HandleFunc("POST /reconcile", refuse)
	}
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st, err := status.Read(d.DB, d.now())
		if err != nil {
			d.adminFail(w, err)
			return
		}
		st.Store = d.Config.Store.Path
		st.SetReadBudget(d.Config.Stripe.MonthlyReadBudget)
		writeAdmin(w, st)
	})
	mux.HandleFunc("GET /session/{id}", func(w http.ResponseWriter, r *http.Request) {
		rec, err := status.Record(d.DB, r.PathValue("id"))
		if errors.Is(err, fulfill.ErrUnknownSession) {
			err = &UsageError{err}
		}
		if err != nil {
			d.adminFail(w, err)
			return
		}
		writeAdmin(w, rec)
	})
	if once {
		return mux
	}
	mux.HandleFunc("POST /fulfill/{id}", refuseWhileStopping(func(w http.ResponseWriter, r *http.Request) {
		// On the daemon's context: the operator's Ctrl-C does not cut the
		// action off half-way.
		id := r.PathValue("id")
		d.PollNow("fulfill command")
		rec, err := d.Fulfiller.Fulfill(work, id, fulfill.TriggerManual, "")
		d.SaveUsage()
		if err != nil && rec.SessionID == "" {
			d.adminFail(w, FulfillError(id, err))
			return
		}
		writeAdmin(w, FulfillAnswer{Record: rec, Error: errString(err)})
	}))
	mux.HandleFunc("POST /retry", refuseWhileStopping(func(w http.ResponseWriter, r *http.Request) {
		var req RetryRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			d.adminFail(w, &UsageError{err})
			return
		}
		ids, err := Retry(d.DB, d.now(), req)
		if err != nil {
			d.adminFail(w, err)
			return
		}
		d.wake()
		writeAdmin(w, ids)
	}))
	mux.HandleFunc("POST /reconcile", refuseWhileStopping(func(w http.ResponseWriter, r *http.Request) {
		var since time.Time
		if err := json.NewDecoder(r.Body).Decode(&since); err != nil {
			d.adminFail(w, &UsageError{err})
			return
		}
		d.PollNow("reconcile command")
		sw, err := d.Reconciler.Sweep(work, since)
		d.SaveUsage()
		if err != nil {
			d.adminFail(w, err)
			return
		}
		writeAdmin(w, sw)
	}))
	return mux
}

// FulfillAnswer is the socket's answer to POST /fulfill/{id}.
type FulfillAnswer struct {
	Record fulfill.Record `json:"record"`
	Error  string         `json:"error,omitempty"`
}

// RetryRequest is what POST /retry asks for.
type RetryRequest struct {
	Sessions []string `json:"sessions"`
	Events   []string `json:"events"`
	All      bool     `json:"all"`
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func writeAdmin(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func (d *Daemon) adminFail(w http.ResponseWriter, err error) {
	code := 1
	if d.ExitCode != nil {
		code = d.ExitCode(err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnprocessableEntity)
	_ = json.NewEncoder(w).Encode(adminError{Error: err.Error(), Code: code})
}

// Admin is a client of a running daemon's socket.
type Admin struct {
	client *http.Client
}

// RemoteError is a request the running daemon refused or failed, with the
// exit code the command should end with.
type RemoteError struct {
	Msg  string
	Code int
}

func (e *RemoteError) Error() string { return e.Msg }

// Dial returns a client when a daemon answers on the socket at path, nil
// when none runs (no socket, or a stale one left by a crash).
func Dial(path string) *Admin {
	if _, err := os.Stat(path); err != nil {
		return nil
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return nil
	}
	conn.Close()
	return &Admin{client: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// Call sends one request and decodes the answer into out.
func (c *Admin) Call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://fulfilld"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return fmt.Errorf("ask the running daemon: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var ae adminError
		if err := json.NewDecoder(resp.Body).Decode(&ae); err != nil {
			return fmt.Errorf("the running daemon answered %s", resp.Status)
		}
		return &RemoteError{Msg: ae.Error, Code: max(ae.Code, 1)}
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Retry requeues dead letters in the store: the same for the CLI against
// a stopped store and for the socket.
func Retry(db store.Store, now time.Time, req RetryRequest) ([]string, error) {
	var ids []string
	err := db.Update(func(tx store.Tx) error {
		if req.All || len(req.Sessions) > 0 {
			done, err := fulfill.Retry(tx, now, req.Sessions...)
			ids = append(ids, done...)
			if err != nil {
				return err
			}
		}
		if req.All || len(req.Events) > 0 {
			done, err := fulfill.RetryDeliveries(tx, now, req.Events...)
			ids = append(ids, done...)
			return err
		}
		return nil
	})
	if err != nil {
		// A wrong id, or one that is not dead-lettered: usage.
		return nil, &UsageError{err}
	}
	return ids, nil
}

// FulfillError explains a fulfill that left no record: a wrong id is usage;
// a rejected key or Stripe being down is a runtime failure.
func FulfillError(id string, err error) error {
	switch {
	case errors.Is(err, stripeapi.ErrNotFound) && fulfill.IsPaymentIntentID(id):
		return &UsageError{fmt.Errorf("fulfill: Stripe has no payment intent %s (check the id and the key's account or mode)", id)}
	case errors.Is(err, stripeapi.ErrNotFound):
		return &UsageError{fmt.Errorf("fulfill: Stripe has no checkout session %s (check the id and the key's account or mode)", id)}
	case errors.Is(err, fulfill.ErrIntentsOff):
		return &UsageError{fmt.Errorf("fulfill %s: %w", id, err)}
	}
	return err
}
