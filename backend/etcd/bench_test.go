package etcd_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/testserver"
)

// locker is one client of the handoff benchmark.
type locker interface {
	lock(ctx context.Context) error
	unlock(ctx context.Context) error
}

// benchHandoff has two clients alternate on one lock: each release has the
// other client queued, and the time from the release call to the other's
// grant is one handoff. A grant that goes back to the client that released
// last (a re-win) is not a handoff and is not timed.
func benchHandoff(b *testing.B, a, c locker) {
	hist := hdrhistogram.New(1, int64(10*time.Second/time.Microsecond), 3)
	var (
		mu       sync.Mutex
		released time.Time // the last release call; zero before the first
		releaser locker    // who made it
		left     atomic.Int64
		wg       sync.WaitGroup
	)
	left.Store(int64(b.N))
	ctx := b.Context()
	side := func(l locker) {
		defer wg.Done()
		for left.Load() > 0 {
			if err := l.lock(ctx); err != nil {
				b.Error(err)
				left.Store(0)
				return
			}
			mu.Lock()
			if !released.IsZero() && releaser != l {
				_ = hist.RecordValue(time.Since(released).Microseconds())
				left.Add(-1)
			}
			mu.Unlock()
			// Give the other client time to queue behind us.
			time.Sleep(2 * time.Millisecond)
			mu.Lock()
			released, releaser = time.Now(), l
			mu.Unlock()
			if err := l.unlock(ctx); err != nil {
				b.Error(err)
				left.Store(0)
				return
			}
		}
	}
	b.ResetTimer()
	wg.Add(2)
	go side(a)
	go side(c)
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(hist.ValueAtQuantile(50)), "p50-µs")
	b.ReportMetric(float64(hist.ValueAtQuantile(99)), "p99-µs")
	b.ReportMetric(float64(hist.Max()), "max-µs")
}

type lockdLocker struct {
	b   *etcdb.Backend
	key string
	g   backend.Grant
}

func (l *lockdLocker) lock(ctx context.Context) (err error) {
	l.g, err = l.b.Acquire(ctx, backend.AcquireRequest{Key: l.key, TTL: 10 * time.Second, Wait: time.Minute})
	return err
}

func (l *lockdLocker) unlock(ctx context.Context) error { return l.b.Release(ctx, l.key, l.g.LeaseID) }

type mutexLocker struct{ m *concurrency.Mutex }

func (l *mutexLocker) lock(ctx context.Context) error   { return l.m.Lock(ctx) }
func (l *mutexLocker) unlock(ctx context.Context) error { return l.m.Unlock(ctx) }

// BenchmarkHandoff compares lockd's etcd backend with etcd's own
// concurrency.Mutex on one embedded member, in one run.
func BenchmarkHandoff(b *testing.B) {
	e := testserver.EtcdCluster(b, 1)
	b.Run("lockd-etcd", func(b *testing.B) {
		mk := func() locker {
			be := etcdb.New(client(b, e.Endpoints()), etcdb.Options{})
			b.Cleanup(func() { be.Close() })
			return &lockdLocker{b: be, key: "bench-handoff"}
		}
		benchHandoff(b, mk(), mk())
	})
	b.Run("concurrency.Mutex", func(b *testing.B) {
		mk := func() locker {
			s, err := concurrency.NewSession(client(b, e.Endpoints()))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			return &mutexLocker{m: concurrency.NewMutex(s, "/bench-mutex/")}
		}
		benchHandoff(b, mk(), mk())
	})
}
