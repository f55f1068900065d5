package zk

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
)

// heapPeak samples the heap in use until stopped and returns the highest
// value seen.
func heapPeak() (stop func() uint64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var ms runtime.MemStats
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 { close(done); <-finished; return peak.Load() }
}

func totalAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

// BenchmarkManyWaitersOneKey parks many waiters on one held key through one
// backend (one lockd), as the compare suite's long-poll scale test does (200
// arrivals per 20 ms, TTL 1 min, wait 4 min), then cancels them all at once.
// It reports the bytes allocated per waiter and the peak heap in each phase.
// LOCKD_ZK_WAITERS sets the number of waiters (default 2000). Run with
// -benchtime=1x.
func BenchmarkManyWaitersOneKey(b *testing.B) {
	n := 2000
	if s := os.Getenv("LOCKD_ZK_WAITERS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			b.Fatalf("LOCKD_ZK_WAITERS=%q: %v", s, err)
		}
	}
	z := sharedZK(b, 1)
	be := newBackend(b, z.Addrs(), Options{Root: "/lockd-waiters"})
	for i := 0; i < b.N; i++ {
		key := uniqueKey(b)
		h, err := be.Acquire(ctxFor(b, 10*time.Second), backend.AcquireRequest{Key: key, Owner: "holder", TTL: 10 * time.Minute})
		if err != nil {
			b.Fatalf("holder: %v", err)
		}
		runtime.GC()
		alloc0 := totalAlloc()
		stopPeak := heapPeak()
		start := time.Now()
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var unexpected atomic.Int64
		for w := 0; w < n; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := be.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: "poller", TTL: time.Minute, Wait: 4 * time.Minute})
				if ctx.Err() == nil {
					unexpected.Add(1)
					b.Errorf("waiter returned before the cancel: %v", err)
				}
			}()
			if w%200 == 199 {
				time.Sleep(20 * time.Millisecond)
			}
		}
		for {
			st, err := be.Inspect(ctxFor(b, 30*time.Second), key)
			if err == nil && st.Waiters == n {
				break
			}
			if time.Since(start) > 5*time.Minute {
				b.Fatalf("only %d of %d waiters queued after 5 minutes (%v)", st.Waiters, n, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		queued := time.Since(start)
		queuedAlloc := totalAlloc() - alloc0
		queuedPeak := stopPeak()

		runtime.GC()
		alloc1 := totalAlloc()
		stopPeak = heapPeak()
		start = time.Now()
		cancel()
		wg.Wait()
		for {
			st, err := be.Inspect(ctxFor(b, 30*time.Second), key)
			if err == nil && st.Waiters == 0 {
				break
			}
			if time.Since(start) > 5*time.Minute {
				b.Fatalf("%d waiters still queued 5 minutes after the cancel (%v)", st.Waiters, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		left := time.Since(start)
		leftAlloc := totalAlloc() - alloc1
		leftPeak := stopPeak()
		if err := be.Release(ctxFor(b, 10*time.Second), key, h.LeaseID); err != nil {
			b.Fatalf("Release: %v", err)
		}
		b.ReportMetric(float64(queuedAlloc)/float64(n)/1024, "queue-KiB/waiter")
		b.ReportMetric(float64(queuedPeak)/(1<<20), "queue-peak-heap-MiB")
		b.ReportMetric(queued.Seconds(), "queue-s")
		b.ReportMetric(float64(leftAlloc)/float64(n)/1024, "cancel-KiB/waiter")
		b.ReportMetric(float64(leftPeak)/(1<<20), "cancel-peak-heap-MiB")
		b.ReportMetric(left.Seconds(), "cancel-s")
	}
}

// Callers that ask while a listing is on its way share the next one, which
// is sent only after that: none gets a listing sent before it asked.
func TestListingsJoinOnlyUnsent(t *testing.T) {
	var l listings
	var calls atomic.Int32
	release := make(chan struct{})
	list := func(string) ([]child, error) {
		n := calls.Add(1)
		if n == 1 {
			<-release // the first listing is on its way
		}
		return []child{{seq: int64(n)}}, nil
	}
	first := l.join("/k", list)
	for calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	second, third := l.join("/k", list), l.join("/k", list)
	if second == first || third != second {
		t.Fatalf("callers after the send joined %p and %p, want one listing other than the first %p", second, third, first)
	}
	other := l.join("/other", list)
	<-other.done
	close(release)
	for _, f := range []*listing{first, second, third} {
		<-f.done
	}
	if first.q[0].seq != 1 || second.q[0].seq == 1 {
		t.Errorf("first saw listing %d, the later callers %d; want 1 and a later one", first.q[0].seq, second.q[0].seq)
	}
	if got := calls.Load(); got != 3 {
		t.Errorf("%d listings for four callers on two keys, want 3", got)
	}
	fourth := l.join("/k", list)
	<-fourth.done
	if fourth.q[0].seq != 4 {
		t.Errorf("a caller after every listing ended saw listing %d, want a new one (4)", fourth.q[0].seq)
	}
	// The runner forgets the key just after closing done.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		l.mu.Lock()
		n := len(l.m)
		l.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d keys still tracked after every listing ended", n)
		}
	}
}
