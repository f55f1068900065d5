package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/backendtest"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/lease"
	"github.com/lockd/lockd/internal/testserver"
)

func client(tb testing.TB, endpoints []string) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		tb.Fatalf("etcd client: %v", err)
	}
	tb.Cleanup(func() { cli.Close() })
	return cli
}

func factory(endpoints []string, opts etcdb.Options) backendtest.Factory {
	return func(t *testing.T) backend.Backend {
		b := etcdb.New(client(t, endpoints), opts)
		t.Cleanup(func() { b.Close() })
		return b
	}
}

// clocked is the conformance suite's Clocked: a replica with opts and
// clock, heart-beating often so that the clock subtests settle quickly.
func clocked(replica func(*testing.T, etcdb.Options) backend.Backend, opts etcdb.Options) func(*testing.T, lease.Clock) backend.Backend {
	return func(t *testing.T, c lease.Clock) backend.Backend {
		o := opts
		o.Clock, o.ClockHeartbeat = c, 200*time.Millisecond
		return replica(t, o)
	}
}

func conformance(endpoints []string, opts etcdb.Options) backendtest.Options {
	return backendtest.Options{Clocked: clocked(func(t *testing.T, o etcdb.Options) backend.Backend { return factory(endpoints, o)(t) }, opts)}
}

func TestConformanceSingleMember(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	backendtest.Run(t, factory(e.Endpoints(), etcdb.Options{}), conformance(e.Endpoints(), etcdb.Options{}))
}

func TestConformanceThreeMembers(t *testing.T) {
	e := testserver.EtcdCluster(t, 3)
	backendtest.Run(t, factory(e.Endpoints(), etcdb.Options{}), conformance(e.Endpoints(), etcdb.Options{}))
}

// With one of three members stopped mid-run, the service goes on: grants,
// renewals, releases and handoffs work with two, and no lock is granted
// twice.
func TestOneOfThreeMembersStopped(t *testing.T) {
	e := testserver.EtcdCluster(t, 3)
	b1 := etcdb.New(client(t, e.Endpoints()), etcdb.Options{})
	b2 := etcdb.New(client(t, e.Endpoints()), etcdb.Options{})
	t.Cleanup(func() { b1.Close(); b2.Close() })
	const key = "member-stop"
	var (
		inside, grants atomic.Int32
		stop           = make(chan struct{})
		wg             sync.WaitGroup
		errs           = make(chan error, 16)
	)
	for w := 0; w < 4; w++ {
		b := []*etcdb.Backend{b1, b2}[w%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
				g, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: 5 * time.Second, Wait: 15 * time.Second})
				if err != nil {
					cancel()
					if errors.Is(err, backend.ErrUnavailable) {
						continue // while the cluster elects a leader
					}
					errs <- err
					return
				}
				if n := inside.Add(1); n != 1 {
					errs <- fmt.Errorf("%d holders at once", n)
				}
				grants.Add(1)
				time.Sleep(time.Millisecond)
				inside.Add(-1)
				// While the cluster elects a new leader a renew may time
				// out, and the lease may run out before the release.
				if _, err := b.Renew(ctx, key, g.LeaseID, 5*time.Second); err != nil && !errors.Is(err, backend.ErrUnavailable) {
					errs <- fmt.Errorf("renew: %w", err)
				}
				if err := b.Release(ctx, key, g.LeaseID); err != nil && !errors.Is(err, backend.ErrUnavailable) && !errors.Is(err, backend.ErrLeaseExpired) {
					errs <- fmt.Errorf("release: %w", err)
				}
				cancel()
			}
		}()
	}
	waitGrants := func(n int32) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for grants.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("only %d grants, want %d", grants.Load(), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitGrants(20)
	e.StopMember(0)
	before := grants.Load()
	waitGrants(before + 50)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A waiter's entry is keyed under its own lock: a key that is a prefix of
// another never sees the other's queue.
func TestPrefixKeysDoNotShareQueues(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	b := etcdb.New(client(t, e.Endpoints()), etcdb.Options{})
	defer b.Close()
	ctx := t.Context()
	if _, err := b.Acquire(ctx, backend.AcquireRequest{Key: "a.b", TTL: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, backend.AcquireRequest{Key: "a", TTL: 10 * time.Second}); err != nil {
		t.Fatalf("acquire a while a.b is held: %v", err)
	}
	st, err := b.Inspect(ctx, "a")
	if err != nil || st.Waiters != 0 {
		t.Fatalf("Inspect(a) = %+v, %v; want no waiters", st, err)
	}
}

// A holder that never releases is removed by the waiter behind it when its
// deadline passes, and the removal is reported with the grant's owner and token.
func TestExpiredHolderRemovedByWaiterTimer(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	expired := make(chan backend.Expiry, 4)
	b := etcdb.New(client(t, e.Endpoints()), etcdb.Options{Hooks: backend.Hooks{OnExpire: func(x backend.Expiry) { expired <- x }}})
	defer b.Close()
	ctx := t.Context()
	g, err := b.Acquire(ctx, backend.AcquireRequest{Key: "timer", Owner: "gone", TTL: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w, err := b.Acquire(ctx, backend.AcquireRequest{Key: "timer", TTL: time.Second, Wait: 10 * time.Second})
	if err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if late := time.Since(g.ExpiresAt); late > time.Second {
		t.Errorf("waiter granted %v after the holder's deadline, want promptly", late)
	}
	if w.Token <= g.Token {
		t.Errorf("token %d after %d", w.Token, g.Token)
	}
	close(expired)
	var got []backend.Expiry
	for x := range expired {
		got = append(got, x)
	}
	want := backend.Expiry{Key: "timer", Owner: "gone", Token: g.Token}
	if len(got) != 1 || got[0] != want {
		t.Errorf("OnExpire called with %+v, want once with %+v", got, want)
	}
}

// Waiter entries of a stopped Backend (a lockd that died) vanish with its
// waiter lease, so the queue moves on.
func TestDeadReplicaWaitersVanish(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	cli := client(t, e.Endpoints())
	holder := etcdb.New(cli, etcdb.Options{})
	defer holder.Close()
	dead := etcdb.New(client(t, e.Endpoints()), etcdb.Options{WaiterLeaseTTL: 2 * time.Second})
	g, err := holder.Acquire(t.Context(), backend.AcquireRequest{Key: "dead", TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	go dead.Acquire(ctx, backend.AcquireRequest{Key: "dead", TTL: 30 * time.Second, Wait: time.Minute})
	for st, _ := holder.Inspect(t.Context(), "dead"); st.Waiters != 1; st, _ = holder.Inspect(t.Context(), "dead") {
		time.Sleep(10 * time.Millisecond)
	}
	// Close stops the keep-alive; the entry stays until the lease runs out
	// (the cancel below comes too late to delete it: the client is gone).
	dead.Close()
	cancel()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := holder.Inspect(t.Context(), "dead")
		if err != nil {
			t.Fatal(err)
		}
		if st.Waiters == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead replica's waiter still queued")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := holder.Release(t.Context(), "dead", g.LeaseID); err != nil {
		t.Fatal(err)
	}
}
