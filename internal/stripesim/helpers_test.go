package stripesim

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
)

// t0 is the simulation epoch of every test.
var t0 = time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)

type fixture struct {
	srv   *Server
	clock *Clock
	api   *client.API
}

// newFixture starts a server whose clock reads t0+1h unless opts.Now is set,
// and a stripe-go client for it that never retries.
func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	clock := NewClock(t0.Add(time.Hour))
	if opts.Now == nil {
		opts.Now = clock.Now
	}
	srv := New(opts)
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, clock: clock, api: newClient(srv.URL(), DefaultAPIKey)}
}

func newClient(url, key string) *client.API {
	b := stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL:               stripe.String(url),
		MaxNetworkRetries: stripe.Int64(0),
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
	})
	return client.New(key, &stripe.Backends{API: b, Connect: b, Uploads: b})
}

// listEventIDs auto-pages through the event list the way the daemon would.
func listEventIDs(t *testing.T, api *client.API, p *stripe.EventListParams) ([]string, error) {
	t.Helper()
	var ids []string
	it := api.Events.List(p)
	for it.Next() {
		ids = append(ids, it.Event().ID)
	}
	return ids, it.Err()
}

func mustListEventIDs(t *testing.T, api *client.API, p *stripe.EventListParams) []string {
	t.Helper()
	ids, err := listEventIDs(t, api, p)
	if err != nil {
		t.Fatalf("list events: %v", err)
	}
	return ids
}

// wantStripeError checks that err is the Stripe error a client would see.
type wantStripeError struct {
	status  int
	typ     stripe.ErrorType
	code    stripe.ErrorCode
	param   string
	message string // substring
}

func checkStripeError(t *testing.T, err error, want wantStripeError) *stripe.Error {
	t.Helper()
	var se *stripe.Error
	if !errors.As(err, &se) {
		t.Fatalf("error = %v (%T), want *stripe.Error", err, err)
	}
	if se.HTTPStatusCode != want.status {
		t.Errorf("status = %d, want %d (%s)", se.HTTPStatusCode, want.status, se.Msg)
	}
	typ := want.typ
	if typ == "" {
		typ = stripe.ErrorTypeInvalidRequest
	}
	if se.Type != typ {
		t.Errorf("type = %q, want %q", se.Type, typ)
	}
	if se.Code != want.code {
		t.Errorf("code = %q, want %q", se.Code, want.code)
	}
	if se.Param != want.param {
		t.Errorf("param = %q, want %q", se.Param, want.param)
	}
	if !strings.Contains(se.Msg, want.message) {
		t.Errorf("message = %q, want it to contain %q", se.Msg, want.message)
	}
	if !strings.HasPrefix(se.RequestID, "req_") {
		t.Errorf("request id = %q, want req_…", se.RequestID)
	}
	return se
}

// rawGet sends an authenticated GET and decodes the JSON answer.
func rawGet(t *testing.T, srv *Server, pathAndQuery, key string) (*http.Response, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL()+pathAndQuery, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", pathAndQuery, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("GET %s: body is not a JSON object: %v\n%s", pathAndQuery, err, body)
	}
	return resp, m
}

func errorField(t *testing.T, body map[string]any, field string) string {
	t.Helper()
	e, ok := body["error"].(map[string]any)
	if !ok {
		t.Fatalf("body has no error object: %v", body)
	}
	s, _ := e[field].(string)
	return s
}

func equalIDs(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s: got %d ids, want %d\n got: %v\nwant: %v", what, len(got), len(want), got, want)
	}
}

func reversed(s []string) []string {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}
