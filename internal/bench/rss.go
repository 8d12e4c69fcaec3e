package bench

import (
	"bufio"
	"bytes"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Memory is what the process held at its peak during one phase.
type Memory struct {
	// Peak is the resident set's high-water mark (VmHWM), reset at the
	// start of the phase where the kernel allows it.
	Peak int64
	// PeakAnon is the largest anonymous resident memory (heap, stacks)
	// sampled during the phase; the rest of Peak is file-backed, mostly
	// the bbolt store's memory map, which the kernel can drop at will.
	PeakAnon int64
	// PeakFile is the largest file-backed resident memory sampled during
	// the phase: pages of the store's memory map (and of the binary) that
	// the kernel can drop and read again at will.
	PeakFile int64
	// Reset tells whether VmHWM could be reset for the phase; if not, Peak
	// covers the whole process so far.
	Reset bool
}

// memWatch samples the resident set while a phase runs.
type memWatch struct {
	reset bool
	stop  chan struct{}
	done  sync.WaitGroup
	mu    sync.Mutex
	anon  int64
	file  int64
	// heap, when profiling, is the heap profile taken when anonymous
	// memory last grew past its peak by profileStep.
	profile bool
	heap    []byte
	heapAt  int64
}

// profileStep is how much anonymous memory must grow past the last
// profiled peak before another heap profile is taken.
const profileStep = 4 << 20

// watchMemory resets the high-water mark and starts sampling; with
// profile, it also keeps a heap profile taken near the anonymous peak.
func watchMemory(profile bool) *memWatch {
	w := &memWatch{stop: make(chan struct{}), profile: profile}
	// "5" resets VmHWM to the current RSS (Linux ≥ 4.0).
	w.reset = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			st := procStatus()
			w.mu.Lock()
			w.anon = max(w.anon, st["RssAnon"])
			w.file = max(w.file, st["RssFile"])
			grew := w.profile && w.anon >= w.heapAt+profileStep
			w.mu.Unlock()
			if grew {
				var b bytes.Buffer
				if pprof.Lookup("heap").WriteTo(&b, 0) == nil {
					w.mu.Lock()
					w.heap, w.heapAt = b.Bytes(), w.anon
					w.mu.Unlock()
				}
			}
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// done stops sampling and reports the phase's peak.
func (w *memWatch) finish() Memory {
	close(w.stop)
	w.done.Wait()
	st := procStatus()
	m := Memory{Peak: st["VmHWM"], PeakAnon: max(w.anon, st["RssAnon"]), PeakFile: max(w.file, st["RssFile"]), Reset: w.reset}
	if m.Peak == 0 {
		var ru syscall.Rusage
		if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
			m.Peak = ru.Maxrss * 1024
		}
	}
	return m
}

// procStatus reads the kB fields of /proc/self/status, in bytes.
func procStatus() map[string]int64 {
	out := map[string]int64{}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return out
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		name, rest, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 2 && fields[1] == "kB" {
			if v, err := strconv.ParseInt(fields[0], 10, 64); err == nil {
				out[name] = v * 1024
			}
		}
	}
	return out
}

// cpuTime is the processor time the process has used so far, user and
// system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
