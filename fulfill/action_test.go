package fulfill

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stripe/stripe-go/v76/webhook"
)

// markerRoom is generous room for the "…[N bytes omitted]…" marker.
const markerRoom = 64

// prompt is how long an attempt may take to come back after it should have
// stopped; the actions under test would otherwise run for a minute.
const prompt = 10 * time.Second

// script writes a shell script into a fresh temp dir and returns the argv
// running it. sh reads the file rather than exec'ing it, which avoids ETXTBSY
// when another test forks while this one still has the file open for writing.
func script(t *testing.T, body string, args ...string) []string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "action.sh")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return append([]string{"/bin/sh", path}, args...)
}

func TestCommandDeliver(t *testing.T) {
	megabyte := bytes.Repeat([]byte("{}"), 1<<19)
	tests := []struct {
		name       string
		argv       []string
		baseEnv    []string
		maxOutput  int
		delivery   Delivery
		wantErr    string // substring; empty means success
		wantExit   int
		wantOutput []string
		check      func(t *testing.T, out Outcome)
	}{
		{
			name: "stdin and environment reach the action",
			argv: script(t, `printf 'stdin=%s\n' "$(cat)"
printf 'session=%s attempt=%s base=%s\n' "$FULFILLD_SESSION_ID" "$FULFILLD_ATTEMPT" "$BASE_VAR"
`),
			baseEnv: []string{"PATH=" + os.Getenv("PATH"), "BASE_VAR=kept", "FULFILLD_ATTEMPT=0"},
			delivery: Delivery{
				Body: []byte(`{"id":"cs_test_1"}`),
				Env:  []string{"FULFILLD_SESSION_ID=cs_test_1", "FULFILLD_ATTEMPT=2"},
			},
			wantOutput: []string{`stdin={"id":"cs_test_1"}`, "session=cs_test_1 attempt=2 base=kept"},
		},
		{
			name:       "exit 0 is success",
			argv:       script(t, "echo fulfilled\n"),
			wantOutput: []string{"fulfilled"},
		},
		{
			name:       "non-zero exit fails with its status and keeps stderr",
			argv:       script(t, "echo 'no stock' >&2\nexit 3\n"),
			wantErr:    "action exited with status 3",
			wantExit:   3,
			wantOutput: []string{"no stock"},
		},
		{
			name:       "action that never reads a 1 MB stdin",
			argv:       script(t, "echo ignored stdin\n"),
			delivery:   Delivery{Body: megabyte},
			wantOutput: []string{"ignored stdin"},
		},
		{
			name:     "action that never reads a 1 MB stdin and fails",
			argv:     script(t, "exit 4\n"),
			delivery: Delivery{Body: megabyte},
			wantErr:  "action exited with status 4",
			wantExit: 4,
		},
		{
			name:      "50 MB of output keeps its beginning and its end",
			argv:      script(t, "echo BEGIN\nhead -c 52428800 /dev/zero | tr '\\0' x\necho\necho END\n"),
			maxOutput: 4096,
			check: func(t *testing.T, out Outcome) {
				if len(out.Output) > 4096+markerRoom {
					t.Errorf("output is %d bytes, want at most %d", len(out.Output), 4096+markerRoom)
				}
				if !strings.HasPrefix(out.Output, "BEGIN\nxxx") || !strings.HasSuffix(out.Output, "xxx\nEND\n") {
					t.Errorf("output lost its beginning or end: %q … %q", out.Output[:16], out.Output[len(out.Output)-16:])
				}
				if !strings.Contains(out.Output, "bytes omitted]") {
					t.Errorf("output has no omission marker")
				}
			},
		},
		{
			name: "default MaxOutput bounds output too",
			argv: script(t, "head -c 1048576 /dev/zero | tr '\\0' y\n"),
			check: func(t *testing.T, out Outcome) {
				if len(out.Output) > DefaultMaxOutput+markerRoom {
					t.Errorf("output is %d bytes, want at most %d", len(out.Output), DefaultMaxOutput+markerRoom)
				}
			},
		},
		{
			name:     "action killed by a signal",
			argv:     script(t, "kill -9 $$\n"),
			wantErr:  "stopped by a signal",
			wantExit: -1,
		},
		{
			name:     "missing binary names argv[0]",
			argv:     []string{"/nonexistent/fulfilld-action", "--flag"},
			wantErr:  "start action /nonexistent/fulfilld-action",
			wantExit: -1,
		},
		{
			name:     "binary not on PATH names argv[0]",
			argv:     []string{"fulfilld-no-such-action"},
			wantErr:  "start action fulfilld-no-such-action",
			wantExit: -1,
		},
		{
			name:     "no command configured",
			argv:     nil,
			wantErr:  "set fulfill.command",
			wantExit: -1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := &Command{Argv: tt.argv, Timeout: time.Minute, MaxOutput: tt.maxOutput, BaseEnv: tt.baseEnv}
			out, err := c.Deliver(context.Background(), tt.delivery)
			t.Logf("error: %v", err)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Deliver: %v\noutput: %s", err, out.Output)
				}
			} else if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Deliver error = %v, want one containing %q", err, tt.wantErr)
			}
			if err != nil && errors.Is(err, ErrTimeout) {
				t.Errorf("error %v wraps ErrTimeout, but nothing timed out", err)
			}
			if out.ExitCode != tt.wantExit {
				t.Errorf("ExitCode = %d, want %d", out.ExitCode, tt.wantExit)
			}
			if out.Status != 0 {
				t.Errorf("Status = %d, want 0 for a command", out.Status)
			}
			for _, want := range tt.wantOutput {
				if !strings.Contains(out.Output, want) {
					t.Errorf("output %q does not contain %q", out.Output, want)
				}
			}
			if tt.check != nil {
				tt.check(t, out)
			}
		})
	}
}

// TestCommandKillsItsProcessGroup checks that nothing an attempt started
// outlives it: a grandchild still running could fulfil concurrently with the
// next attempt.
func TestCommandKillsItsProcessGroup(t *testing.T) {
	tests := []struct {
		name       string
		script     string
		timeout    time.Duration
		wantErr    error
		wantOutput string
	}{
		{
			name:    "hanging action is killed at its timeout with its grandchild",
			script:  "sleep 60 &\necho $! > \"$1\"\nsleep 60\n",
			timeout: time.Second,
			wantErr: ErrTimeout,
		},
		{
			name:       "background child holding the output does not hold up a successful attempt",
			script:     "sleep 60 &\necho $! > \"$1\"\nexit 0\n",
			timeout:    time.Minute,
			wantOutput: "a background process kept the output open; it was killed",
		},
		{
			name:    "detached background child is killed after a successful attempt",
			script:  "sleep 60 >/dev/null 2>&1 &\necho $! > \"$1\"\nexit 0\n",
			timeout: time.Minute,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pidFile := filepath.Join(t.TempDir(), "grandchild.pid")
			c := &Command{Argv: script(t, tt.script, pidFile), Timeout: tt.timeout}

			start := time.Now()
			out, err := c.Deliver(context.Background(), Delivery{})
			elapsed := time.Since(start)

			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Deliver error = %v, want %v", err, tt.wantErr)
			}
			if elapsed > tt.timeout+prompt {
				t.Errorf("Deliver took %s, want it back promptly after %s", elapsed, tt.timeout)
			}
			if !strings.Contains(out.Output, tt.wantOutput) {
				t.Errorf("output %q does not contain %q", out.Output, tt.wantOutput)
			}
			if tt.wantErr != nil {
				if out.ExitCode != -1 {
					t.Errorf("ExitCode = %d, want -1 for a killed action", out.ExitCode)
				}
				want := fmt.Sprintf("action timed out after %s; killed its process group", tt.timeout)
				if err.Error() != want {
					t.Errorf("error = %q, want %q", err, want)
				}
			}
			raw, readErr := os.ReadFile(pidFile)
			if readErr != nil {
				t.Fatalf("the action did not record its grandchild's pid: %v", readErr)
			}
			pid, convErr := strconv.Atoi(strings.TrimSpace(string(raw)))
			if convErr != nil {
				t.Fatalf("grandchild pid %q: %v", raw, convErr)
			}
			waitGone(t, pid)
		})
	}
}

// waitGone waits until pid no longer runs. SIGKILL is delivered
// asynchronously, and an orphan stays a zombie until some reaper collects it
// (which, as PID 1 in a container, may never happen), so a zombie counts as
// gone.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(prompt)
	for {
		if processGone(pid) {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("grandchild %d still running after the attempt ended", pid)
		}
	}
}

func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return os.IsNotExist(err)
	}
	// The state follows the last ')' (the command name may contain one).
	rest := stat[bytes.LastIndexByte(stat, ')')+1:]
	state := strings.Fields(string(rest))
	return len(state) > 0 && (state[0] == "Z" || state[0] == "X")
}

// TestCommandShutdown checks that a cancelled ctx (daemon shutdown) is told
// apart from a timed-out attempt and still kills the action.
func TestCommandShutdown(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "ready")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// O_RDWR opens a FIFO without waiting for a writer, and Close then
	// unblocks the reader below whatever the action did.
	ready, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := bufio.NewReader(ready).ReadString('\n'); err == nil {
			cancel()
		}
	}()
	defer func() {
		ready.Close()
		<-done
	}()

	c := &Command{Argv: script(t, "echo ready > \"$1\"\nsleep 60\n", fifo), Timeout: time.Minute}
	start := time.Now()
	out, err := c.Deliver(ctx, Delivery{})
	if elapsed := time.Since(start); elapsed > prompt {
		t.Errorf("Deliver took %s after shutdown", elapsed)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Deliver error = %v, want context.Canceled", err)
	}
	if errors.Is(err, ErrTimeout) {
		t.Errorf("shutdown reported as a timeout: %v", err)
	}
	if out.ExitCode != -1 {
		t.Errorf("ExitCode = %d, want -1", out.ExitCode)
	}
}

func TestHeadTail(t *testing.T) {
	tests := []struct {
		name   string
		max    int
		total  int
		chunks int // size of each write; 0 writes everything at once
	}{
		{name: "fits", max: 10, total: 10},
		{name: "empty", max: 10, total: 0},
		{name: "one byte over", max: 10, total: 11},
		{name: "single large write", max: 10, total: 1000},
		{name: "byte by byte", max: 10, total: 1000, chunks: 1},
		{name: "chunks that wrap the ring", max: 16, total: 1000, chunks: 7},
		{name: "chunks larger than the tail", max: 16, total: 1000, chunks: 9},
		{name: "odd max", max: 7, total: 100, chunks: 3},
		{name: "max of one", max: 1, total: 100, chunks: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := make([]byte, tt.total)
			for i := range data {
				data[i] = byte('a' + i%26)
			}
			b := newHeadTail(tt.max)
			chunk := tt.chunks
			if chunk == 0 {
				chunk = max(len(data), 1)
			}
			for p := data; len(p) > 0; {
				k := min(chunk, len(p))
				if n, err := b.Write(p[:k]); n != k || err != nil {
					t.Fatalf("Write = %d, %v; want %d, nil", n, err, k)
				}
				p = p[k:]
			}
			want := string(data)
			if len(data) > tt.max {
				h, tl := tt.max/2, tt.max-tt.max/2
				want = fmt.Sprintf("%s\n…[%d bytes omitted]…\n%s", data[:h], len(data)-tt.max, data[len(data)-tl:])
			}
			if got := b.String(); got != want {
				t.Errorf("String() = %q, want %q", got, want)
			}
		})
	}
}

func TestHeadTailKeepsUTF8Whole(t *testing.T) {
	// A head of 5 bytes ends in half an "é" and a tail of 6 starts with one
	// after the leading "x": 1 + 1 trimmed bytes join the 2001-11 omitted.
	b := newHeadTail(11)
	io.WriteString(b, strings.Repeat("é", 1000)+"x")
	got := b.String()
	if !utf8.ValidString(got) {
		t.Errorf("String() = %q is not valid UTF-8", got)
	}
	if !strings.Contains(got, fmt.Sprintf("[%d bytes omitted]", 2001-11+2)) {
		t.Errorf("String() = %q, want the trimmed halves counted as omitted", got)
	}
}

const testSecret = "whsec_test_do_not_leak_4f2a"

func TestURLDeliver(t *testing.T) {
	fixed := time.Now().Truncate(time.Second)
	type request struct {
		body   []byte
		header http.Header
	}
	tests := []struct {
		name       string
		secret     string
		maxOutput  int
		handler    http.HandlerFunc
		wantErr    string // substring; empty means success
		wantStatus int
		wantOutput []string
		check      func(t *testing.T, req request, out Outcome)
	}{
		{
			name:   "2xx is success and the signature verifies",
			secret: testSecret,
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusCreated)
				io.WriteString(w, `{"ok":true}`)
			},
			wantStatus: http.StatusCreated,
			wantOutput: []string{"201 Created", `{"ok":true}`},
			check: func(t *testing.T, req request, out Outcome) {
				sig := req.header.Get("Stripe-Signature")
				if err := webhook.ValidatePayload(req.body, sig, testSecret); err != nil {
					t.Errorf("signature %q does not verify: %v", sig, err)
				}
				if want := fmt.Sprintf("t=%d,", fixed.Unix()); !strings.HasPrefix(sig, want) {
					t.Errorf("Stripe-Signature = %q, want it to start with %q (the injected clock)", sig, want)
				}
			},
		},
		{
			name: "no secret, no signature",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusNoContent)
			},
			wantStatus: http.StatusNoContent,
			check: func(t *testing.T, req request, out Outcome) {
				if sig := req.header.Get("Stripe-Signature"); sig != "" {
					t.Errorf("Stripe-Signature = %q, want none without a secret", sig)
				}
			},
		},
		{
			name:   "non-2xx is an error naming the status",
			secret: testSecret,
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusServiceUnavailable)
				io.WriteString(w, "warehouse offline")
			},
			wantErr:    "503 Service Unavailable",
			wantStatus: http.StatusServiceUnavailable,
			wantOutput: []string{"503 Service Unavailable", "warehouse offline"},
		},
		{
			name:   "redirect is not followed",
			secret: testSecret,
			handler: func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/hook" {
					w.WriteHeader(http.StatusOK) // must never be reached
					return
				}
				http.Redirect(w, r, "/elsewhere", http.StatusFound)
			},
			wantErr:    "302 Found",
			wantStatus: http.StatusFound,
		},
		{
			name:      "large response body is bounded",
			maxOutput: 1024,
			handler: func(w http.ResponseWriter, r *http.Request) {
				io.Copy(w, io.LimitReader(zeros{}, 10<<20))
			},
			wantStatus: http.StatusOK,
			check: func(t *testing.T, req request, out Outcome) {
				if len(out.Output) > 1024+markerRoom {
					t.Errorf("output is %d bytes, want at most %d", len(out.Output), 1024+markerRoom)
				}
			},
		},
		{
			name:   "an endpoint echoing the secret does not put it in the record",
			secret: testSecret,
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusBadRequest)
				r.Header.Write(w)
				io.WriteString(w, "configured secret: "+testSecret)
			},
			wantErr:    "400 Bad Request",
			wantStatus: http.StatusBadRequest,
			wantOutput: []string{"Idempotency-Key: idem_cs_test_1", "[redacted]"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := make(chan request, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				select {
				case got <- request{body: body, header: r.Header.Clone()}:
				default:
				}
				tt.handler(w, r)
			}))
			defer srv.Close()

			u := &URL{
				URL:       srv.URL + "/hook",
				Secret:    tt.secret,
				Timeout:   time.Minute,
				Now:       func() time.Time { return fixed },
				MaxOutput: tt.maxOutput,
			}
			d := Delivery{
				Body:           []byte(`{"id":"cs_test_1","object":"checkout.session"}`),
				Env:            []string{"FULFILLD_SESSION_ID=cs_test_1"},
				IdempotencyKey: "idem_cs_test_1",
			}
			out, err := u.Deliver(context.Background(), d)
			t.Logf("error: %v", err)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Deliver: %v\noutput: %s", err, out.Output)
				}
			} else if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Deliver error = %v, want one containing %q", err, tt.wantErr)
			}
			assertNoSecret(t, out, err)
			if out.Status != tt.wantStatus {
				t.Errorf("Status = %d, want %d", out.Status, tt.wantStatus)
			}
			if out.ExitCode != 0 {
				t.Errorf("ExitCode = %d, want 0 for a URL", out.ExitCode)
			}
			for _, want := range tt.wantOutput {
				if !strings.Contains(out.Output, want) {
					t.Errorf("output %q does not contain %q", out.Output, want)
				}
			}

			req := <-got
			if !bytes.Equal(req.body, d.Body) {
				t.Errorf("server received body %q, want %q", req.body, d.Body)
			}
			for key, want := range map[string]string{
				"Content-Type":    "application/json",
				"Idempotency-Key": "idem_cs_test_1",
				"User-Agent":      "fulfilld",
			} {
				if v := req.header.Get(key); v != want {
					t.Errorf("%s = %q, want %q", key, v, want)
				}
			}
			if tt.check != nil {
				tt.check(t, req, out)
			}
		})
	}
}

// TestURLStops covers attempts that do not get an answer: a slow endpoint, a
// shutdown, and an endpoint that is not there.
func TestURLStops(t *testing.T) {
	tests := []struct {
		name     string
		timeout  time.Duration
		shutdown bool // cancel ctx once the request has arrived
		closed   bool // no server listening
		wantErr  error
		wantText string
	}{
		{name: "slow endpoint times out", timeout: 200 * time.Millisecond, wantErr: ErrTimeout, wantText: "action timed out after 200ms"},
		{name: "shutdown is not a timeout", timeout: time.Minute, shutdown: true, wantErr: context.Canceled},
		{name: "unreachable endpoint", timeout: time.Minute, closed: true, wantText: "post to http://127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			release := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.shutdown {
					cancel()
				}
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}))
			// Runs before srv.Close, which waits for the handler.
			defer srv.Close()
			defer close(release)
			if tt.closed {
				srv.Close()
			}

			// Credentials in the URL must not reach the error either.
			target := strings.Replace(srv.URL, "http://", "http://user:"+testSecret+"@", 1) + "/hook?token=" + testSecret
			u := &URL{URL: target, Secret: testSecret, Timeout: tt.timeout}
			start := time.Now()
			out, err := u.Deliver(ctx, Delivery{Body: []byte(`{}`), IdempotencyKey: "k"})
			t.Logf("error: %v", err)
			if elapsed := time.Since(start); elapsed > tt.timeout+prompt {
				t.Errorf("Deliver took %s", elapsed)
			}
			if err == nil {
				t.Fatal("Deliver succeeded without an answer")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Deliver error = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != ErrTimeout && errors.Is(err, ErrTimeout) {
				t.Errorf("Deliver error = %v wraps ErrTimeout", err)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("Deliver error = %q, want it to contain %q", err, tt.wantText)
			}
			assertNoSecret(t, out, err)
		})
	}
}

func TestURLInvalid(t *testing.T) {
	u := &URL{URL: "http://user:" + testSecret + "@bad host/", Secret: testSecret}
	out, err := u.Deliver(context.Background(), Delivery{Body: []byte(`{}`)})
	if err == nil || !strings.Contains(err.Error(), "check fulfill.url") {
		t.Fatalf("Deliver error = %v, want one pointing at fulfill.url", err)
	}
	assertNoSecret(t, out, err)
}

func assertNoSecret(t *testing.T, out Outcome, err error) {
	t.Helper()
	if strings.Contains(out.Output, testSecret) {
		t.Errorf("output contains the secret: %q", out.Output)
	}
	if err != nil && strings.Contains(err.Error(), testSecret) {
		t.Errorf("error contains the secret: %q", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
