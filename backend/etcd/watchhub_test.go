package etcd_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/testserver"
)

// countingWatcher counts the etcd watches open through the real client's
// Watcher: a watch is open from Watch until its context ends.
type countingWatcher struct {
	clientv3.Watcher
	open, peak atomic.Int64
}

func (w *countingWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	n := w.open.Add(1)
	for p := w.peak.Load(); n > p && !w.peak.CompareAndSwap(p, n); p = w.peak.Load() {
	}
	go func() {
		<-ctx.Done()
		w.open.Add(-1)
	}()
	return w.Watcher.Watch(ctx, key, opts...)
}

// A Backend's waiters on one key share one etcd watch: 1,000 of them queued
// behind a holder through one Backend keep one watch open, not one each
// (each one's stream costs memory in lockd and in etcd). Every waiter
// still has its own queue entry, and all are granted in turn.
func TestWaitersShareOneWatchPerKey(t *testing.T) {
	const key, n = "one-watch", 1000
	e := testserver.EtcdCluster(t, 1)
	cli := client(t, e.Endpoints())
	cw := &countingWatcher{Watcher: cli.Watcher}
	cli.Watcher = cw
	b := etcdb.New(cli, etcdb.Options{})
	t.Cleanup(func() { b.Close() })
	ctx := t.Context()
	g, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: 2 * time.Minute})
	if err != nil {
		t.Fatalf("holder's acquire: %v", err)
	}
	var (
		wg      sync.WaitGroup
		granted atomic.Int64
		errs    = make(chan error, n)
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: time.Minute, Wait: 2 * time.Minute})
			if err != nil {
				errs <- err
				return
			}
			granted.Add(1)
			if err := b.Release(ctx, key, w.LeaseID); err != nil {
				errs <- err
			}
		}()
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		st, err := b.Inspect(ctx, key)
		if err == nil && st.Waiters == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %d waiters to queue (last: %+v, %v)", n, st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // let every waiter reach its wait
	if open, peak := cw.open.Load(), cw.peak.Load(); open != 1 || peak != 1 {
		t.Errorf("%d waiters on one key: %d etcd watches open (at most %d), want 1", n, open, peak)
	}
	if err := b.Release(ctx, key, g.LeaseID); err != nil {
		t.Fatalf("holder's release: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("waiter: %v", err)
	}
	if got := granted.Load(); got != n {
		t.Errorf("%d of %d waiters granted", got, n)
	}
	waitFor(t, func() bool { return cw.open.Load() == 0 }, "the shared watch to close with its last waiter")
}
