package etcd_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	clientv3 "go.etcd.io/etcd/client/v3"
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

// BenchmarkWaiters has N acquirers arrive at once on one held key (all
// through one Backend, as behind one lockd) and reports how long until all
// of them are queued, then releases the lock down the line: each grant
// releases at once, and the time from a release call to the next grant is
// one handoff.
func BenchmarkWaiters(b *testing.B) {
	e := testserver.EtcdCluster(b, 1)
	for _, n := range []int{100, 1000, 3000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				benchWaiters(b, e.Endpoints(), fmt.Sprintf("bench-waiters-%d-%d", n, i), n)
			}
		})
	}
}

func benchWaiters(b *testing.B, endpoints []string, key string, n int) {
	be := etcdb.New(client(b, endpoints), etcdb.Options{})
	defer be.Close()
	ctx := b.Context()
	g, err := be.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: 5 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	hist := hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)
	var (
		mu       sync.Mutex
		released time.Time
		failed   atomic.Int64
		wg       sync.WaitGroup
	)
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := be.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: time.Minute, Wait: 5 * time.Minute})
			if err != nil {
				failed.Add(1)
				return
			}
			mu.Lock()
			_ = hist.RecordValue(time.Since(released).Microseconds())
			released = time.Now()
			mu.Unlock()
			if err := be.Release(ctx, key, w.LeaseID); err != nil {
				failed.Add(1)
			}
		}()
	}
	for {
		st, err := be.Inspect(ctx, key)
		if err != nil {
			b.Fatal(err)
		}
		if st.Waiters >= n {
			break
		}
		if time.Since(start) > 5*time.Minute {
			b.Fatalf("after %s only %d of %d waiters queued", time.Since(start), st.Waiters, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	queued := time.Since(start)
	mu.Lock()
	released = time.Now()
	mu.Unlock()
	if err := be.Release(ctx, key, g.LeaseID); err != nil {
		b.Fatal(err)
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d waiters failed", f, n)
	}
	b.ReportMetric(queued.Seconds(), "queued-s")
	b.ReportMetric(float64(hist.ValueAtQuantile(50)), "handoff-p50-µs")
	b.ReportMetric(float64(hist.ValueAtQuantile(99)), "handoff-p99-µs")
}

// BenchmarkQueueLook is etcd's own cost of one waiter's look at a queue of
// N entries, asked the two ways: by create revision (the head by
// WithFirstCreate, the predecessor by WithLastCreate+WithMaxCreateRev: etcd
// reads every key of the queue to answer) and by key order (limit-1 reads:
// the head is the queue's first key, the predecessor the entry one
// sequence number below). The waiter is the last entry.
func BenchmarkQueueLook(b *testing.B) {
	e := testserver.EtcdCluster(b, 1)
	cli := client(b, e.Endpoints())
	ctx := b.Context()
	for _, n := range []int{100, 1000, 3000} {
		q := fmt.Sprintf("/bench-look/%d/", n)
		var last *clientv3.PutResponse
		key := func(i int) string { return fmt.Sprintf("%s%020d.%s", q, i, "x") }
		for i := 1; i <= n; i++ {
			r, err := cli.Put(ctx, key(i), `{"t":60000}`)
			if err != nil {
				b.Fatal(err)
			}
			last = r
		}
		myRev, mine := last.Header.Revision, key(n)
		b.Run(fmt.Sprintf("create-order/n=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := cli.Txn(ctx).Then(
					clientv3.OpGet(q, append(clientv3.WithFirstCreate(), clientv3.WithKeysOnly())...),
					clientv3.OpGet(mine, clientv3.WithKeysOnly()),
					clientv3.OpGet(q, append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(myRev-1), clientv3.WithKeysOnly())...),
				).Commit(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("key-order/n=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := cli.Txn(ctx).Then(
					clientv3.OpGet(q, clientv3.WithRange(clientv3.GetPrefixRangeEnd(q)), clientv3.WithLimit(1)),
					clientv3.OpGet(mine, clientv3.WithKeysOnly()),
					clientv3.OpGet(fmt.Sprintf("%s%020d.", q, n-1), clientv3.WithPrefix(), clientv3.WithLimit(1), clientv3.WithKeysOnly()),
				).Commit(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
