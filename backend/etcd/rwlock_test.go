package etcd_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/testserver"
)

// Waiting rwlock acquirers watch their nearest blocker and set a timer at
// its deadline; they do not poll (etcd#6408: the recipe's waiters spin).
// Ten waiters behind a writer that holds for a while send no request to
// etcd at all while nothing changes, and are all woken by its release.
func TestRWWaitersDoNotPoll(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	var calls atomic.Int64
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: e.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(
			func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				calls.Add(1)
				return invoker(ctx, method, req, reply, cc, opts...)
			})},
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	counted := etcdb.New(cli, etcdb.Options{})
	t.Cleanup(func() { counted.Close() })
	holderB := factory(e.Endpoints(), etcdb.Options{})(t)
	holder := holderB.(backend.RWLocker).RWLocks()
	waiters := counted.RWLocks()

	const key, n = "no-poll", 10
	w, err := holder.Acquire(t.Context(), backend.RWAcquireRequest{Mode: backend.ModeWrite, AcquireRequest: backend.AcquireRequest{Key: key, TTL: 60 * time.Second}})
	if err != nil {
		t.Fatalf("writer: %v", err)
	}
	waitFor := func(readers, writers int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			st, err := holder.Inspect(t.Context(), key)
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			if st.WaitingReaders == readers && st.WaitingWriters == writers {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("waiting r%d w%d, want r%d w%d", st.WaitingReaders, st.WaitingWriters, readers, writers)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	done := make(chan error, n)
	start := func(mode string, i int) {
		go func() {
			_, err := waiters.Acquire(t.Context(), backend.RWAcquireRequest{Mode: mode,
				AcquireRequest: backend.AcquireRequest{Key: key, Owner: fmt.Sprint(mode, i), TTL: 60 * time.Second, Wait: 60 * time.Second}})
			done <- err
		}()
	}
	for i := 0; i < n-1; i++ {
		start(backend.ModeRead, i)
	}
	waitFor(n-1, 0)
	start(backend.ModeWrite, n-1) // behind the readers: it waits for them
	waitFor(n-1, 1)
	time.Sleep(300 * time.Millisecond) // every waiter's watch is open
	before := calls.Load()
	const quiet = 2 * time.Second
	time.Sleep(quiet)
	if got := calls.Load() - before; got > 2 {
		t.Errorf("%d waiters sent %d requests to etcd in %v while nothing changed, want none (a waiter polls)", n, got, quiet)
	}
	if err := holder.Release(t.Context(), key, w.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	for i := 0; i < n-1; i++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("reader: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d readers granted within 10 s of the writer's release", i, n-1)
		}
	}
}
