package fulfill

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/stripe/stripe-go/v76/webhook"
)

// ErrTimeout is wrapped by Deliver when an attempt ran past its Timeout. It is
// distinct from a cancelled ctx (daemon shutdown), which Deliver reports by
// wrapping ctx.Err(): a timed-out attempt counts against max_attempts, an
// interrupted one does not have to.
var ErrTimeout = errors.New("action timed out")

const (
	// DefaultMaxOutput is how much of an attempt's output is kept when
	// MaxOutput is not set.
	DefaultMaxOutput = 64 << 10

	// waitDelay bounds how long Wait keeps reading the output pipe after the
	// action exited or was killed. It only matters when something outside the
	// process group (a setsid'd daemon) still holds the pipe open.
	waitDelay = 2 * time.Second

	// drainLimit is how much of an unread response body is discarded so a
	// caller-supplied client can reuse the connection; past that, closing is
	// cheaper than reading.
	drainLimit = 256 << 10
)

// Delivery is what one attempt hands to the operator's action.
type Delivery struct {
	Body           []byte   // JSON: stdin for a command, request body for a URL
	Env            []string // "KEY=value" pairs added to the command's environment (FULFILLD_SESSION_ID, …); ignored by URL
	IdempotencyKey string   // Idempotency-Key header for URL deliveries
}

// Outcome is what one attempt produced, kept (bounded) with the record.
type Outcome struct {
	Output   string        // combined stdout+stderr (command) or response status line + body (URL), bounded
	Duration time.Duration // wall time of the attempt
	ExitCode int           // command exit code (-1 when killed/timed out); 0 for URL
	Status   int           // HTTP status for URL; 0 for command
}

// Action delivers one attempt. A nil error means the attempt succeeded (exit 0
// / any 2xx).
type Action interface {
	Deliver(ctx context.Context, d Delivery) (Outcome, error)
}

// Command runs the operator's program once per attempt, without a shell, in a
// process group of its own so that a timeout kills everything it started.
type Command struct {
	Argv      []string      // no shell
	Timeout   time.Duration // zero: bounded only by ctx
	MaxOutput int           // bytes kept of the output; default 64 KiB
	BaseEnv   []string      // environment the command inherits (nil = os.Environ())
}

// Deliver runs the command with d.Body on stdin and d.Env added to its
// environment. Exit status 0 is success. Whatever the action left running in
// its process group is killed when the attempt ends — otherwise a background
// child of one attempt could still be fulfilling while the next one runs.
func (c *Command) Deliver(ctx context.Context, d Delivery) (Outcome, error) {
	out := Outcome{ExitCode: -1}
	if len(c.Argv) == 0 || c.Argv[0] == "" {
		return out, errors.New("action has no command to run (set fulfill.command)")
	}
	name := c.Argv[0]

	runCtx, cancel := withTimeout(ctx, c.Timeout)
	defer cancel()

	buf := newHeadTail(maxOutput(c.MaxOutput))
	cmd := exec.CommandContext(runCtx, name, c.Argv[1:]...)
	// Its own process group, so a timeout kills everything it started; and
	// killed with fulfilld, so that an attempt a crash cut off is not still
	// running when the restarted daemon repeats it. (Pdeathsig reaches the
	// action itself; what it started in the background is its own.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return killGroup(cmd.Process.Pid) }
	cmd.WaitDelay = waitDelay
	cmd.Stdin = bytes.NewReader(d.Body)
	// The same pointer for both makes exec share one pipe, so stdout and
	// stderr interleave in the order the action wrote them.
	cmd.Stdout = buf
	cmd.Stderr = buf
	base := c.BaseEnv
	if base == nil {
		base = os.Environ()
	}
	// exec keeps the last value of a duplicated key, so d.Env wins over BaseEnv.
	cmd.Env = append(append(make([]string, 0, len(base)+len(d.Env)), base...), d.Env...)

	start := time.Now()
	if err := cmd.Start(); err != nil {
		out.Duration = time.Since(start)
		if ctx.Err() != nil {
			return out, fmt.Errorf("action not started: %w", ctx.Err())
		}
		return out, fmt.Errorf("start action %s (check fulfill.command): %w", name, err)
	}
	waitErr := cmd.Wait()
	out.Duration = time.Since(start)
	// Sweep up whatever the action left behind in its group. The group is
	// normally empty by now and ESRCH is the expected answer.
	_ = killGroup(cmd.Process.Pid)

	if cmd.ProcessState != nil {
		out.ExitCode = cmd.ProcessState.ExitCode()
	}
	if errors.Is(waitErr, exec.ErrWaitDelay) && cmd.ProcessState != nil && cmd.ProcessState.Success() {
		// Exit 0 is the verdict; the pipe holder was killed above.
		buf.note("a background process kept the output open; it was killed")
		waitErr = nil
	}
	out.Output = buf.String()

	switch {
	case waitErr == nil:
		return out, nil
	case ctx.Err() != nil:
		out.ExitCode = -1
		return out, fmt.Errorf("action interrupted; killed its process group: %w", ctx.Err())
	case runCtx.Err() != nil:
		out.ExitCode = -1
		return out, fmt.Errorf("%w after %s; killed its process group", ErrTimeout, c.Timeout)
	}
	var exitErr *exec.ExitError
	if errors.As(waitErr, &exitErr) {
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return out, fmt.Errorf("action was stopped by a signal (%v)", ws.Signal())
		}
		return out, fmt.Errorf("action exited with status %d", exitErr.ExitCode())
	}
	return out, fmt.Errorf("wait for action %s: %w", name, waitErr)
}

// killGroup sends SIGKILL to the process group led by pid.
func killGroup(pid int) error {
	err := syscall.Kill(-pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return os.ErrProcessDone
	}
	return err
}

// URL POSTs each attempt to the operator's endpoint, signed the way Stripe
// signs webhooks so that existing verification code accepts it.
type URL struct {
	URL       string
	Secret    string        // signs with Stripe-Signature when non-empty
	Timeout   time.Duration // zero: bounded only by ctx and the client
	Client    *http.Client  // nil = a client with sane transport timeouts that does not follow redirects
	Now       func() time.Time
	MaxOutput int // bytes kept of the response body; default 64 KiB
	// ContentType is the request's Content-Type; default application/json.
	// Forwarding sends what Stripe sends: application/json; charset=utf-8.
	ContentType string
}

// Deliver POSTs d.Body. Any 2xx is success; the status decides even if the
// body cannot be read afterwards.
func (u *URL) Deliver(ctx context.Context, d Delivery) (Outcome, error) {
	var out Outcome
	where := redactURL(u.URL)

	runCtx, cancel := withTimeout(ctx, u.Timeout)
	defer cancel()

	req, err := http.NewRequestWithContext(runCtx, http.MethodPost, u.URL, bytes.NewReader(d.Body))
	if err != nil {
		// The parse error would quote the whole URL, which may carry a token.
		return out, fmt.Errorf("action url %s is not valid (check fulfill.url): %w", where, urlErrorCause(err))
	}
	contentType := u.ContentType
	if contentType == "" {
		contentType = "application/json"
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("User-Agent", "fulfilld")
	if d.IdempotencyKey != "" {
		req.Header.Set("Idempotency-Key", d.IdempotencyKey)
	}
	if u.Secret != "" {
		now := time.Now
		if u.Now != nil {
			now = u.Now
		}
		t := now()
		sig := webhook.ComputeSignature(t, d.Body, u.Secret)
		req.Header.Set("Stripe-Signature", fmt.Sprintf("t=%d,v1=%s", t.Unix(), hex.EncodeToString(sig)))
	}

	client := u.Client
	if client == nil {
		client = newHTTPClient()
		// A fresh transport per attempt: deliveries are rare, and this keeps
		// URL free of shared state without leaking idle connections.
		defer client.CloseIdleConnections()
	}

	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		out.Duration = time.Since(start)
		switch {
		case ctx.Err() != nil:
			return out, fmt.Errorf("post to %s interrupted: %w", where, ctx.Err())
		case runCtx.Err() != nil:
			return out, fmt.Errorf("%w after %s waiting for %s", ErrTimeout, u.Timeout, where)
		}
		return out, fmt.Errorf("post to %s: %w", where, urlErrorCause(err))
	}
	defer resp.Body.Close()
	out.Status = resp.StatusCode

	limit := maxOutput(u.MaxOutput)
	body, readErr := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s\n", resp.Proto, resp.Status)
	if len(body) > limit {
		b.Write(body[:limit])
		b.WriteString("\n…[response truncated]…\n")
		_, _ = io.CopyN(io.Discard, resp.Body, drainLimit)
	} else {
		b.Write(body)
	}
	ok := resp.StatusCode >= 200 && resp.StatusCode < 300
	if readErr != nil {
		if ok {
			fmt.Fprintf(&b, "\n…[reading response: %v]…\n", urlErrorCause(readErr))
		} else if ctx.Err() == nil && runCtx.Err() != nil {
			out.Duration = time.Since(start)
			out.Output = u.redact(b.String())
			return out, fmt.Errorf("%w after %s reading the response from %s", ErrTimeout, u.Timeout, where)
		}
	}
	out.Duration = time.Since(start)
	// An endpoint that echoes its configuration must not put the secret in
	// the record.
	out.Output = u.redact(b.String())
	if !ok {
		return out, fmt.Errorf("action url %s answered %s", where, resp.Status)
	}
	return out, nil
}

func (u *URL) redact(s string) string {
	if u.Secret == "" {
		return s
	}
	return strings.ReplaceAll(s, u.Secret, "[redacted]")
}

// newHTTPClient bounds every phase of a connection except waiting for the
// response, which the attempt's Timeout governs: fulfilling may be slow.
// Redirects are not followed: Go would replay a 301/302 as a body-less GET and
// forward the signature to wherever it points.
func newHTTPClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
			IdleConnTimeout:       30 * time.Second,
			MaxIdleConnsPerHost:   2,
			ForceAttemptHTTP2:     true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// redactURL names an endpoint in messages without its credentials or query.
func redactURL(raw string) string {
	p, err := url.Parse(raw)
	if err != nil || p.Host == "" {
		return "(fulfill.url)"
	}
	return p.Scheme + "://" + p.Host + p.EscapedPath()
}

// urlErrorCause drops *url.Error's wrapper, whose text quotes the full URL.
func urlErrorCause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d > 0 {
		return context.WithTimeout(ctx, d)
	}
	return context.WithCancel(ctx)
}

func maxOutput(n int) int {
	if n <= 0 {
		return DefaultMaxOutput
	}
	return n
}

// headTail keeps the first half and the last half of what is written to it,
// so an action printing hundreds of megabytes costs at most max bytes and the
// record still shows how it started and how it ended.
type headTail struct {
	mu      sync.Mutex
	headCap int
	tailCap int
	head    []byte
	tail    []byte // ring buffer once len(tail) == tailCap; start is its oldest byte
	start   int
	total   int64
	notes   []string
}

func newHeadTail(max int) *headTail {
	return &headTail{headCap: max / 2, tailCap: max - max/2}
}

func (b *headTail) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(p)
	b.total += int64(n)
	if room := b.headCap - len(b.head); room > 0 {
		k := min(room, len(p))
		b.head = append(b.head, p[:k]...)
		p = p[k:]
	}
	if len(p) == 0 || b.tailCap == 0 {
		return n, nil
	}
	if len(p) >= b.tailCap {
		b.tail = append(b.tail[:0], p[len(p)-b.tailCap:]...)
		b.start = 0
		return n, nil
	}
	if room := b.tailCap - len(b.tail); room > 0 {
		k := min(room, len(p))
		b.tail = append(b.tail, p[:k]...)
		p = p[k:]
	}
	for len(p) > 0 {
		k := copy(b.tail[b.start:], p)
		p = p[k:]
		b.start = (b.start + k) % b.tailCap
	}
	return n, nil
}

// note appends a remark of ours after the captured output.
func (b *headTail) note(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.notes = append(b.notes, s)
}

func (b *headTail) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	head := b.head
	tail := make([]byte, 0, len(b.tail))
	tail = append(tail, b.tail[b.start:]...)
	tail = append(tail, b.tail[:b.start]...)
	omitted := b.total - int64(len(head)) - int64(len(tail))

	var s strings.Builder
	if omitted == 0 {
		s.Write(head)
		s.Write(tail)
	} else {
		// Don't leave half a UTF-8 character on either side of the cut.
		h := trimPartialRuneEnd(head)
		t := trimPartialRuneStart(tail)
		omitted += int64(len(head)-len(h)) + int64(len(tail)-len(t))
		s.Write(h)
		fmt.Fprintf(&s, "\n…[%d bytes omitted]…\n", omitted)
		s.Write(t)
	}
	for _, n := range b.notes {
		fmt.Fprintf(&s, "\n…[%s]…\n", n)
	}
	return s.String()
}

func trimPartialRuneEnd(p []byte) []byte {
	for i := len(p) - 1; i >= 0 && i >= len(p)-utf8.UTFMax; i-- {
		if utf8.RuneStart(p[i]) {
			if !utf8.FullRune(p[i:]) {
				return p[:i]
			}
			break
		}
	}
	return p
}

func trimPartialRuneStart(p []byte) []byte {
	for i := 0; i < len(p) && i < utf8.UTFMax; i++ {
		if utf8.RuneStart(p[i]) {
			return p[i:]
		}
	}
	return p
}
