package stripesim

import (
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"
)

// loadEvents adds n checkout.session.completed events, one session per 20
// events, 5% of them out of time order.
func loadEvents(b *testing.B, srv *Server, n int) {
	b.Helper()
	rng := rand.New(rand.NewPCG(5, 6))
	var cs string
	for i := range n {
		at := t0.Add(time.Duration(i) * time.Second)
		if rng.IntN(20) == 0 {
			at = at.Add(-time.Duration(rng.IntN(600)) * time.Second)
		}
		if i%20 == 0 {
			cs = srv.CreateSession(SessionParams{Created: at})
			srv.CompleteSession(cs, "paid", at)
			continue
		}
		srv.AddEvent("", "payment_intent.succeeded", at, json.RawMessage(`{"id":"pi_x","object":"payment_intent"}`))
	}
}

// BenchmarkListEvents1M lists pages of 100 from a store of a million events
// and reports the heap the store takes.
func BenchmarkListEvents1M(b *testing.B) {
	const n = 1_000_000
	clock := NewClock(t0.Add(n * time.Second))
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	srv := NewHandler(Options{Now: clock.Now})
	loadEvents(b, srv, n)
	srv.mu.Lock()
	srv.events.flush()
	srv.mu.Unlock()
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	heapMB := float64(after.HeapAlloc-before.HeapAlloc) / (1 << 20)

	var cursor string
	b.ResetTimer()
	for b.Loop() {
		path := "/v1/events?limit=100&types[0]=checkout.session.completed&types[1]=payment_intent.succeeded"
		if cursor != "" {
			path += "&starting_after=" + cursor
		}
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.Header.Set("Authorization", "Bearer "+DefaultAPIKey)
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		var page struct {
			HasMore bool `json:"has_more"`
			Data    []struct {
				ID string `json:"id"`
			} `json:"data"`
		}
		if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &page) != nil {
			b.Fatalf("status %d: %s", rec.Code, rec.Body.Bytes())
		}
		cursor = ""
		if page.HasMore {
			cursor = page.Data[len(page.Data)-1].ID
		}
	}
	b.ReportMetric(heapMB, "MB-heap")
}
