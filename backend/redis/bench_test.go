package redis

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/go-redsync/redsync/v4"
	rsredis "github.com/go-redsync/redsync/v4/redis"
	rsgoredis "github.com/go-redsync/redsync/v4/redis/goredis/v9"
	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/redis/redlock"
	"github.com/lockd/lockd/internal/testserver"
)

// locker is what the handoff benchmarks need of a lock: wait for it, then
// give it back. Each contender has its own.
type locker func(ctx context.Context) (release func() error, err error)

func backendLocker(b backend.Backend, key string) locker {
	return func(ctx context.Context) (func() error, error) {
		g, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: 30 * time.Second, Wait: time.Minute})
		if err != nil {
			return nil, err
		}
		return func() error { return b.Release(context.Background(), key, g.LeaseID) }, nil
	}
}

func redsyncLocker(rs *redsync.Redsync, key string) locker {
	return func(ctx context.Context) (func() error, error) {
		// redsync's defaults (8s expiry, 50–250 ms retry delay) with enough
		// tries to wait as long as the other lockers do.
		m := rs.NewMutex(key, redsync.WithTries(1000))
		if err := m.LockContext(ctx); err != nil {
			return nil, err
		}
		return func() error { _, err := m.UnlockContext(context.Background()); return err }, nil
	}
}

// handoffStats records, for each grant, whether it went to a different
// contender than the last one, and how long after the last release it came.
type handoffStats struct {
	mu          sync.Mutex
	grants      int
	passes      int
	last        int // contender that held last, -1 before the first grant
	releasedAt  time.Time
	latency     *hdrhistogram.Histogram // µs from a release to the next grant
	passLatency *hdrhistogram.Histogram // the same, only for passes
	wait        *hdrhistogram.Histogram // µs from asking for the lock to the grant
}

func newHandoffStats() *handoffStats {
	return &handoffStats{
		last:        -1,
		latency:     hdrhistogram.New(1, 60_000_000, 3),
		passLatency: hdrhistogram.New(1, 60_000_000, 3),
		wait:        hdrhistogram.New(1, 60_000_000, 3),
	}
}

// granted is called by contender c right after its grant; it reports whether
// the run has made n grants.
func (s *handoffStats) granted(c, n int, asked time.Time) bool {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.wait.RecordValue(now.Sub(asked).Microseconds())
	if s.last >= 0 {
		us := now.Sub(s.releasedAt).Microseconds()
		_ = s.latency.RecordValue(us)
		if c != s.last {
			s.passes++
			_ = s.passLatency.RecordValue(us)
		}
	}
	s.grants++
	s.last = c
	return s.grants >= n
}

func (s *handoffStats) releasing() {
	s.mu.Lock()
	s.releasedAt = time.Now()
	s.mu.Unlock()
}

func (s *handoffStats) report(b *testing.B) {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	b.ReportMetric(100*float64(s.passes)/float64(max(s.grants-1, 1)), "%passed")
	b.ReportMetric(ms(s.latency.ValueAtQuantile(50)), "p50-ms")
	b.ReportMetric(ms(s.latency.ValueAtQuantile(99)), "p99-ms")
	if s.passes > 0 {
		b.ReportMetric(ms(s.passLatency.ValueAtQuantile(50)), "pass-p50-ms")
	}
	b.ReportMetric(ms(s.wait.ValueAtQuantile(50)), "wait-p50-ms")
	b.ReportMetric(ms(s.wait.ValueAtQuantile(99)), "wait-p99-ms")
	b.ReportMetric(ms(s.wait.Max()), "wait-max-ms") // starvation shows here
}

// runContenders runs one goroutine per locker, each taking the lock, holding
// it for hold and giving it back, until b.N grants were made.
func runContenders(b *testing.B, lockers []locker, hold time.Duration) {
	s := newHandoffStats()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(lockers))
	b.ResetTimer()
	for c, lock := range lockers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				asked := time.Now()
				release, err := lock(ctx)
				if err != nil {
					if ctx.Err() == nil {
						errs <- fmt.Errorf("contender %d: %w", c, err)
						cancel()
					}
					return
				}
				done := s.granted(c, b.N, asked)
				time.Sleep(hold)
				s.releasing()
				if err := release(); err != nil {
					errs <- fmt.Errorf("contender %d: release: %w", c, err)
					cancel()
					return
				}
				if done {
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	s.report(b)
}

func benchRedisBackend(b *testing.B, addr string) backend.Backend {
	be, err := New(context.Background(), goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1, ContextTimeoutEnabled: true}), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = be.Close() })
	return be
}

func benchRedlock(b *testing.B, addrs []string) backend.Backend {
	var clients []goredis.UniversalClient
	for _, a := range addrs {
		clients = append(clients, goredis.NewClient(&goredis.Options{Addr: a, MaxRetries: -1, DialerRetries: 1, ContextTimeoutEnabled: true}))
	}
	be, err := redlock.New(clients, redlock.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = be.Close() })
	return be
}

func benchRedsync(b *testing.B, addrs []string) *redsync.Redsync {
	var pools []rsredis.Pool
	for _, a := range addrs {
		c := goredis.NewClient(&goredis.Options{Addr: a})
		b.Cleanup(func() { _ = c.Close() })
		pools = append(pools, rsgoredis.NewPool(c))
	}
	return redsync.New(pools...)
}

// BenchmarkAlternating: two clients (two lockd replicas) take turns wanting
// one key, holding it 100 µs each time. %passed is the share of grants that
// went to the client that was waiting rather than back to the one that had
// just released; p50/p99 are release→next grant; wait-p50/p99 are from
// asking for the lock to getting it (what a waiter pays). The redsync case is a plain
// redsync pair over the same five masters, for reference.
func BenchmarkAlternating(b *testing.B) {
	one := testserver.Redis(b, 1)
	five := testserver.Redis(b, 5)
	const hold = 100 * time.Microsecond
	b.Run("redis", func(b *testing.B) {
		key := fmt.Sprint("alt-", b.N)
		runContenders(b, []locker{
			backendLocker(benchRedisBackend(b, one.Addr(0)), key),
			backendLocker(benchRedisBackend(b, one.Addr(0)), key),
		}, hold)
	})
	b.Run("redlock", func(b *testing.B) {
		key := fmt.Sprint("alt-", b.N)
		runContenders(b, []locker{
			backendLocker(benchRedlock(b, five.Addrs()), key),
			backendLocker(benchRedlock(b, five.Addrs()), key),
		}, hold)
	})
	b.Run("redsync", func(b *testing.B) {
		key := fmt.Sprint("alt-rs-", b.N)
		runContenders(b, []locker{
			redsyncLocker(benchRedsync(b, five.Addrs()), key),
			redsyncLocker(benchRedsync(b, five.Addrs()), key),
		}, hold)
	})
}

// BenchmarkHandoff20Waiters: 20 contenders (over two lockd replicas) on one
// key; each grant is held 100 µs and released while the other 19 wait.
// p50/p99 are release→next grant latency.
func BenchmarkHandoff20Waiters(b *testing.B) {
	one := testserver.Redis(b, 1)
	five := testserver.Redis(b, 5)
	const hold, waiters = 100 * time.Microsecond, 20
	for _, tc := range []struct {
		name string
		make func(b *testing.B) backend.Backend
	}{
		{"redis", func(b *testing.B) backend.Backend { return benchRedisBackend(b, one.Addr(0)) }},
		{"redlock", func(b *testing.B) backend.Backend { return benchRedlock(b, five.Addrs()) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			key := fmt.Sprint("h20-", b.N)
			replicas := []backend.Backend{tc.make(b), tc.make(b)}
			var lockers []locker
			for i := 0; i < waiters; i++ {
				lockers = append(lockers, backendLocker(replicas[i%2], key))
			}
			runContenders(b, lockers, hold)
		})
	}
}

// BenchmarkIdleKeyWhileManyWait: N waiters (over two lockd replicas) wait
// on one held key while each iteration is a single try and a release on an
// idle key. It reports what the waiters cost: the scripts Redis runs per
// second for them (scripts/s, the tries' own taken out), the idle key's
// try+release p99 (idle-p99-µs), and this process's heap in use with them
// waiting (heap-MB).
func BenchmarkIdleKeyWhileManyWait(b *testing.B) {
	srv := testserver.Redis(b, 1)
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr(0)})
	b.Cleanup(func() { _ = raw.Close() })
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			replicas := []backend.Backend{benchRedisBackend(b, srv.Addr(0)), benchRedisBackend(b, srv.Addr(0))}
			key := fmt.Sprint("many-", n, "-", b.N)
			if _, err := replicas[0].Acquire(context.Background(), backend.AcquireRequest{Key: key, Owner: "holder", TTL: 10 * time.Minute}); err != nil {
				b.Fatal(err)
			}
			c, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			defer func() { cancel(); wg.Wait() }()
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, _ = replicas[i%2].Acquire(c, backend.AcquireRequest{Key: key, TTL: time.Minute, Wait: 10 * time.Minute})
				}()
			}
			for deadline := time.Now().Add(time.Minute); ; {
				st, err := replicas[0].Inspect(context.Background(), key)
				if err == nil && st.Waiters == n {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("Inspect = %+v, %v; want %d waiters", st, err, n)
				}
				time.Sleep(20 * time.Millisecond)
			}
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			hist := hdrhistogram.New(1, 60_000_000, 3)
			if err := raw.ConfigResetStat(context.Background()).Err(); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				k := fmt.Sprint("idle-", i%100)
				g, err := replicas[i%2].Acquire(context.Background(), backend.AcquireRequest{Key: k, TTL: time.Minute})
				if err != nil {
					b.Fatal(err)
				}
				if err := replicas[i%2].Release(context.Background(), k, g.LeaseID); err != nil {
					b.Fatal(err)
				}
				_ = hist.RecordValue(time.Since(t0).Microseconds())
			}
			b.StopTimer()
			took := time.Since(start)
			calls := scriptCalls(b, raw) - 2*b.N
			b.ReportMetric(float64(calls)/took.Seconds(), "scripts/s")
			b.ReportMetric(float64(hist.ValueAtQuantile(99)), "idle-p99-µs")
			b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MB")
		})
	}
}
