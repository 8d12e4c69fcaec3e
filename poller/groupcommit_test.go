package poller

import (
	"errors"
	"runtime"
	"sync"
	"testing"
)

// TestGroupCommitSharesOneWrite: pages that arrive while a commit is being
// written are written together by one of them, each page exactly once, and
// each learns the outcome of the write that held it.
func TestGroupCommitSharesOneWrite(t *testing.T) {
	var g groupCommit
	release := make(chan struct{})
	var mu sync.Mutex
	var batches [][]string
	failSecond := errors.New("disk full")
	write := func(cs []*pageCommit) error {
		mu.Lock()
		n := len(batches)
		var names []string
		for _, c := range cs {
			names = append(names, c.phase)
		}
		batches = append(batches, names)
		mu.Unlock()
		if n == 0 {
			<-release
			return nil
		}
		return failSecond
	}
	errs := make(map[string]error)
	var errMu sync.Mutex
	var wg sync.WaitGroup
	commit := func(name string) {
		defer wg.Done()
		err := g.do(&pageCommit{phase: name}, write)
		errMu.Lock()
		errs[name] = err
		errMu.Unlock()
	}
	wg.Add(1)
	go commit("a")
	// a is writing; b, c and d gather behind it.
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(batches) == 1 })
	for _, name := range []string{"b", "c", "d"} {
		wg.Add(1)
		go commit(name)
	}
	waitFor(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return len(g.queue) == 3 })
	close(release)
	wg.Wait()

	if len(batches) != 2 || len(batches[0]) != 1 || len(batches[1]) != 3 {
		t.Fatalf("writes %v, want [a] then the three that gathered", batches)
	}
	if errs["a"] != nil {
		t.Errorf("a: %v, want its write's success", errs["a"])
	}
	for _, name := range []string{"b", "c", "d"} {
		if !errors.Is(errs[name], failSecond) {
			t.Errorf("%s: %v, want the failure of the write that held it", name, errs[name])
		}
	}
	if g.leading || len(g.queue) != 0 {
		t.Errorf("after the writes: leading %v, %d waiting", g.leading, len(g.queue))
	}
}

// waitFor yields until cond holds.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for !cond() {
		runtime.Gosched()
	}
}
