package harness

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/lockd/lockd/backend"
)

// Percentiles of a latency distribution, in microseconds.
type Percentiles struct {
	N    int64   `json:"n"`
	P50  float64 `json:"p50_us"`
	P90  float64 `json:"p90_us"`
	P99  float64 `json:"p99_us"`
	P999 float64 `json:"p999_us"`
	Max  float64 `json:"max_us"`
}

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(10*time.Minute/time.Microsecond), 3)
}

func record(h *hdrhistogram.Histogram, d time.Duration) {
	us := d.Microseconds()
	if us < 1 {
		us = 1
	}
	_ = h.RecordValue(us)
}

func percentiles(h *hdrhistogram.Histogram) *Percentiles {
	if h.TotalCount() == 0 {
		return nil
	}
	return &Percentiles{N: h.TotalCount(),
		P50: float64(h.ValueAtQuantile(50)), P90: float64(h.ValueAtQuantile(90)),
		P99: float64(h.ValueAtQuantile(99)), P999: float64(h.ValueAtQuantile(99.9)), Max: float64(h.Max())}
}

// cdf samples the distribution at fixed quantiles for the charts: pairs of
// (latency µs, cumulative fraction).
func cdf(h *hdrhistogram.Histogram) [][2]float64 {
	if h.TotalCount() == 0 {
		return nil
	}
	var pts [][2]float64
	for _, q := range []float64{0, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97, 98, 99, 99.5, 99.9, 100} {
		pts = append(pts, [2]float64{float64(h.ValueAtQuantile(q)), q / 100})
	}
	return pts
}

// clientFactory makes one lock client, as one process of the application
// would hold one.
type clientFactory func() (Locker, error)

// measureLatency: one client, acquire (single try) + release on its own
// key, repeatedly: the uncontended cost of a lock.
func measureLatency(ctx context.Context, newClient clientFactory, d time.Duration, progress func(float64)) (*hdrhistogram.Histogram, error) {
	l, err := newClient()
	if err != nil {
		return nil, err
	}
	defer l.Close()
	h := newHist()
	key := fmt.Sprintf("compare-latency-%d", rand.Uint32())
	// Warm up connections and caches; not recorded.
	for i := 0; i < 20; i++ {
		if lease, err := l.Acquire(ctx, key, "latency", 10*time.Second, 0); err == nil {
			_ = l.Release(ctx, lease)
		}
	}
	start := time.Now()
	var failures int
	for time.Since(start) < d && ctx.Err() == nil {
		t0 := time.Now()
		lease, err := l.Acquire(ctx, key, "latency", 10*time.Second, 0)
		if err != nil {
			failures++
			if failures > 10 {
				return h, fmt.Errorf("acquire keeps failing: %w", err)
			}
			continue
		}
		if err := l.Release(ctx, lease); err != nil {
			return h, fmt.Errorf("release: %w", err)
		}
		record(h, time.Since(t0))
		progress(float64(time.Since(start)) / float64(d))
	}
	return h, ctx.Err()
}

// handoffResult of one contended run.
type handoffResult struct {
	Hist           *hdrhistogram.Histogram
	Handoffs       int64
	Grants         int64
	ReWins         int64 // grants that went back to the client that had just released
	EarlyGrants    int64 // grants that returned before the previous holder sent its release
	FIFOViolations int64
	LongestWait    time.Duration
	// Tokens are the grants' keys and tokens, for the store-order count.
	Tokens []tokenGrant
}

// grantEvent is one grant or release seen by a contending client.
type grantEvent struct {
	Client      int
	Called      time.Time // acquire sent
	Granted     time.Time // acquire returned
	ReleaseSent time.Time
	Key         string
	Token       uint64
}

// FIFOSlack: two acquires sent closer together than this have no arrival
// order a lock service could know of (one HTTP request may overtake another
// on loopback); they are not counted as FIFO violations.
const FIFOSlack = time.Millisecond

// measureHandoff: waiters+1 clients contend on one key; each releases at
// once after its grant. Handoff = the release by one client → the next grant
// to a different client.
func measureHandoff(ctx context.Context, newClient clientFactory, waiters int, d time.Duration, progress func(float64)) (handoffResult, error) {
	n := waiters + 1
	clients := make([]Locker, n)
	for i := range clients {
		c, err := newClient()
		if err != nil {
			for _, c := range clients[:i] {
				c.Close()
			}
			return handoffResult{}, err
		}
		clients[i] = c
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	key := fmt.Sprintf("compare-handoff-%d", rand.Uint32())
	runCtx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	var events []grantEvent
	var pending = map[int]time.Time{} // client → acquire sent, while waiting
	var fifo int64
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for i, c := range clients {
		wg.Add(1)
		go func(i int, c Locker) {
			defer wg.Done()
			for runCtx.Err() == nil {
				called := time.Now()
				mu.Lock()
				pending[i] = called
				mu.Unlock()
				lease, err := c.Acquire(runCtx, key, fmt.Sprint("waiter-", i), 30*time.Second, 30*time.Second)
				granted := time.Now()
				mu.Lock()
				delete(pending, i)
				if err == nil {
					for _, other := range pending {
						if other.Before(called.Add(-FIFOSlack)) {
							fifo++
							break
						}
					}
				}
				mu.Unlock()
				if err != nil {
					if runCtx.Err() == nil && !errors.Is(err, backend.ErrHeld) {
						mu.Lock()
						if firstErr == nil {
							firstErr = err
						}
						mu.Unlock()
						sleepCtx(runCtx, 10*time.Millisecond)
					}
					continue
				}
				rel := time.Now()
				rctx, rcancel := context.WithTimeout(context.WithoutCancel(runCtx), 10*time.Second)
				rerr := c.Release(rctx, lease)
				rcancel()
				mu.Lock()
				events = append(events, grantEvent{Client: i, Called: called, Granted: granted, ReleaseSent: rel, Key: key, Token: lease.Token})
				if rerr != nil && firstErr == nil {
					firstErr = fmt.Errorf("release: %w", rerr)
				}
				mu.Unlock()
				progress(float64(time.Since(start)) / float64(d))
			}
		}(i, c)
	}
	wg.Wait()
	res := handoffsOf(events)
	res.FIFOViolations = fifo
	for _, e := range events {
		res.Tokens = append(res.Tokens, tokenGrant{key: e.Key, token: e.Token, granted: e.Granted})
	}
	return res, firstErr
}

// handoffsOf reads the handoffs out of the grants of one contended run.
func handoffsOf(events []grantEvent) handoffResult {
	res := handoffResult{Hist: newHist()}
	sort.Slice(events, func(i, j int) bool { return events[i].Granted.Before(events[j].Granted) })
	res.Grants = int64(len(events))
	for i, e := range events {
		if w := e.Granted.Sub(e.Called); w > res.LongestWait {
			res.LongestWait = w
		}
		if i+1 == len(events) {
			break
		}
		// Only the very next grant can be a handoff from e: a grant after a
		// re-win is the re-winner's handoff, not e's.
		switch next := events[i+1]; {
		case next.Client == e.Client:
			res.ReWins++
		case next.Granted.Before(e.ReleaseSent):
			// Granted to another while e still held the lock.
			res.EarlyGrants++
		default:
			record(res.Hist, next.Granted.Sub(e.ReleaseSent))
			res.Handoffs++
		}
	}
	return res
}

// throughputResult of one closed-loop run.
type throughputResult struct {
	Grants     int64
	Errors     int64
	Elapsed    time.Duration
	CPUSeconds float64 // user+system CPU of this whole process during the run
	Tokens     []tokenGrant
}

// measureThroughput: clients loop acquire (waiting) → release on keys
// chosen at random among keys.
func measureThroughput(ctx context.Context, newClient clientFactory, clients, keys int, d time.Duration, progress func(float64)) (throughputResult, error) {
	cs := make([]Locker, clients)
	for i := range cs {
		c, err := newClient()
		if err != nil {
			for _, c := range cs[:i] {
				c.Close()
			}
			return throughputResult{}, err
		}
		cs[i] = c
	}
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	prefix := fmt.Sprintf("compare-tput-%d-", rand.Uint32())
	runCtx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var grants, errs atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	var tokMu sync.Mutex
	var tokens []tokenGrant
	cpu0 := cpuSeconds()
	start := time.Now()
	for i, c := range cs {
		wg.Add(1)
		go func(i int, c Locker) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for runCtx.Err() == nil {
				key := fmt.Sprint(prefix, rng.IntN(keys))
				lease, err := c.Acquire(runCtx, key, "tput", 30*time.Second, 5*time.Second)
				if err == nil {
					tg := tokenGrant{key: key, token: lease.Token, granted: time.Now()}
					tokMu.Lock()
					tokens = append(tokens, tg)
					tokMu.Unlock()
				}
				if err != nil {
					if runCtx.Err() == nil {
						errs.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
						sleepCtx(runCtx, 10*time.Millisecond)
					}
					continue
				}
				rctx, rcancel := context.WithTimeout(context.WithoutCancel(runCtx), 10*time.Second)
				if err := c.Release(rctx, lease); err != nil {
					errs.Add(1)
				}
				rcancel()
				grants.Add(1)
				if i == 0 {
					progress(float64(time.Since(start)) / float64(d))
				}
			}
		}(i, c)
	}
	wg.Wait()
	res := throughputResult{Grants: grants.Load(), Errors: errs.Load(), Elapsed: time.Since(start), CPUSeconds: cpuSeconds() - cpu0, Tokens: tokens}
	if res.Grants == 0 {
		if s, ok := firstErr.Load().(string); ok {
			return res, errors.New(s)
		}
		return res, errors.New("no grant in the whole run")
	}
	return res, nil
}

// cpuSeconds is this process's user+system CPU time so far (getrusage).
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}
