package etcd_test

import (
	"context"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/backendtest"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/testserver"
)

// Over an etcd that requires client certificates and has authentication on,
// with lockd's user allowed readwrite on its prefix and nothing else. Its
// auth tokens lapse after a second unused, so replicas log in again all
// through the suite.
func TestTLSAndRBAC(t *testing.T) {
	ca := testserver.TestCA(t)
	e := testserver.EtcdClusterWith(t, 1, testserver.EtcdOptions{CA: ca, RootPassword: "root-secret", AuthTokenTTL: time.Second})
	const prefix = "/lockd-ct/"
	if err := e.AddUser("lockd", "lockd-secret", prefix); err != nil {
		t.Fatal(err)
	}
	cert := ca.MustIssue(t, "lockd-etcd-client", "lockd")
	replica := func(t *testing.T, opts etcdb.Options) backend.Backend {
		cli, err := e.Client("lockd", "lockd-secret", cert)
		if err != nil {
			t.Fatal(err)
		}
		opts.Prefix = prefix
		b := etcdb.New(cli, opts)
		t.Cleanup(func() { b.Close(); cli.Close() })
		return b
	}

	// Every promise of the contract holds: leases (grant, keep-alive,
	// revoke), transactions and watches all work under least privilege.
	t.Run("Conformance", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) backend.Backend { return replica(t, etcdb.Options{}) },
			backendtest.Options{Clocked: clocked(replica, etcdb.Options{})})
	})

	// Any change to etcd's users or roles makes every token issued before
	// it stale. A waiter's lease kept alive on a stream opened with a stale
	// token must not lapse, and calls must log in again by themselves.
	t.Run("WaiterOutlivesAuthChange", func(t *testing.T) {
		holder := replica(t, etcdb.Options{})
		waiter := replica(t, etcdb.Options{WaiterLeaseTTL: 2 * time.Second})
		const key = "auth-change"
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		g, err := holder.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan error, 1)
		go func() {
			_, err := waiter.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: 5 * time.Second, Wait: 25 * time.Second})
			got <- err
		}()
		for {
			st, err := holder.Inspect(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if st.Waiters == 1 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err := e.AddUser("bystander", "bystander-secret", "/bystander/"); err != nil {
			t.Fatal(err)
		}
		// Two waiter-lease TTLs: a keep-alive refused since the change
		// would have let the lease, and the waiter's entry, go.
		time.Sleep(4 * time.Second)
		select {
		case err := <-got:
			t.Fatalf("waiter ended before the release: %v", err)
		default:
		}
		if err := holder.Release(ctx, key, g.LeaseID); err != nil {
			t.Fatalf("release after the auth change: %v", err)
		}
		select {
		case err := <-got:
			if err != nil {
				t.Fatalf("waiter after the auth change: %v, want the lock", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("waiter not granted 10 s after the release")
		}
	})
}
