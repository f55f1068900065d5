package etcd_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/testserver"
)

// The queue is ordered by its keys: waiters arriving at once through two
// replicas get names whose key order is their create-revision order (the
// store's order, and so the order of their tokens), which is what lets a
// waiter find the head and its predecessor with limit-1 reads. They are
// then granted in that order.
func TestQueueKeyOrderIsCreateOrder(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	cli := client(t, e.Endpoints())
	replicas := []*etcdb.Backend{etcdb.New(client(t, e.Endpoints()), etcdb.Options{}), etcdb.New(client(t, e.Endpoints()), etcdb.Options{})}
	for _, r := range replicas {
		t.Cleanup(func() { r.Close() })
	}
	ctx := t.Context()
	const key, n = "queue-key-order", 40
	g, err := replicas[0].Acquire(ctx, backend.AcquireRequest{Key: key, TTL: time.Minute})
	if err != nil {
		t.Fatalf("holder's acquire: %v", err)
	}
	var (
		mu     sync.Mutex
		tokens []uint64
		wg     sync.WaitGroup
		errs   = make(chan error, n)
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := replicas[i%2]
			w, err := r.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: time.Minute, Wait: time.Minute})
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			tokens = append(tokens, w.Token)
			mu.Unlock()
			if err := r.Release(ctx, key, w.LeaseID); err != nil {
				errs <- err
			}
		}()
	}
	waitFor(t, func() bool {
		st, err := replicas[0].Inspect(ctx, key)
		return err == nil && st.Waiters == n
	}, "every waiter to queue")
	resp, err := cli.Get(ctx, "/lockd/q/"+key+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != n+1 {
		t.Fatalf("queue has %d entries, want %d", len(resp.Kvs), n+1)
	}
	for i := 1; i < len(resp.Kvs); i++ {
		if a, b := resp.Kvs[i-1], resp.Kvs[i]; a.CreateRevision >= b.CreateRevision {
			t.Errorf("entry %d %s created at %d sorts before entry %s created at %d: key order is not create order", i, a.Key, a.CreateRevision, b.Key, b.CreateRevision)
		}
	}
	if err := replicas[0].Release(ctx, key, g.LeaseID); err != nil {
		t.Fatalf("holder's release: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("waiter: %v", err)
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Errorf("grant %d has token %d after %d: not granted in queue order", i, tokens[i], tokens[i-1])
		}
	}
}

// A grant written under the queue's older names (q/<K>/<lease id>, before
// entries carried a sequence number) sorts ahead of every numbered entry:
// it still excludes a new waiter, and its release lets that waiter in.
func TestOldNamedGrantStillExcludes(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	cli := client(t, e.Endpoints())
	b := etcdb.New(client(t, e.Endpoints()), etcdb.Options{})
	t.Cleanup(func() { b.Close() })
	ctx := t.Context()
	const key, id = "old-named-grant", "zzOldStyleLeaseId0123"
	deadline := time.Now().Add(time.Minute).UnixMilli()
	if _, err := cli.Put(ctx, "/lockd/q/"+key+"/"+id, `{"o":"old","t":60000,"d":`+itoa(deadline)+`}`); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 800*time.Millisecond)
	defer cancel()
	if _, err := b.Acquire(wctx, backend.AcquireRequest{Key: key, TTL: time.Minute, Wait: 500 * time.Millisecond}); !errors.Is(err, backend.ErrHeld) {
		t.Fatalf("acquire while the old-named grant holds: %v, want ErrHeld", err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: time.Minute, Wait: 30 * time.Second})
		got <- err
	}()
	waitFor(t, func() bool {
		st, err := b.Inspect(ctx, key)
		return err == nil && st.Waiters == 1 && st.Holder != nil && st.Holder.Owner == "old"
	}, "the waiter to queue behind the old-named holder")
	if err := b.Release(ctx, key, id); err != nil {
		t.Fatalf("release of the old-named grant: %v", err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("waiter after the old-named grant's release: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the waiter was not granted after the old-named grant's release")
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
