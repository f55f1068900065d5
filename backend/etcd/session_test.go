package etcd_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/testserver"
)

// A retried acquire (same idempotency key) of a grant in a session gets the
// grant back after the deadline it was granted with, while the session was
// renewed: the grant lives by the session's deadline, not by the one in its
// record.
func TestSessionIdempotentRetryAfterRenew(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	b := factory(e.Endpoints(), etcdb.Options{})(t).(*etcdb.Backend)
	ss := b.Sessions()
	ctx := t.Context()
	sess, err := ss.Open(ctx, "retrier", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	req := backend.AcquireRequest{Key: "idem-session", Session: sess.ID,
		Idempotency: backend.Idempotency{Key: "idem-session-key", Fingerprint: "fp"}}
	g, err := b.Acquire(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ss.Renew(ctx, sess.ID, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(g.ExpiresAt.Add(500 * time.Millisecond)))
	r, err := b.Acquire(ctx, req)
	if err != nil {
		t.Fatalf("retry after the session was renewed: %v, want the same grant", err)
	}
	if r.LeaseID != g.LeaseID || r.Token != g.Token || !r.Replayed || !r.ExpiresAt.After(g.ExpiresAt) {
		t.Errorf("retry = %+v, want lease %q token %d, replayed, with the session's later deadline", r, g.LeaseID, g.Token)
	}
}

// Renewing a session is one write to etcd whatever the number of its
// grants: the store's revision moves by exactly one.
func TestSessionRenewIsOneWrite(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	cli := client(t, e.Endpoints())
	b := etcdb.New(cli, etcdb.Options{})
	t.Cleanup(func() { b.Close() })
	ss := b.Sessions()
	ctx := t.Context()
	sess, err := ss.Open(ctx, "many", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	for i := range n {
		if _, err := b.Acquire(ctx, backend.AcquireRequest{Key: fmt.Sprint("one-write-", i), Session: sess.ID}); err != nil {
			t.Fatal(err)
		}
	}
	rev := func() int64 {
		r, err := cli.Get(ctx, "rev-probe")
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	before := rev()
	if _, err := ss.Renew(ctx, sess.ID, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := rev() - before; got != 1 {
		t.Errorf("renewing a session with %d grants moved etcd's revision by %d, want 1 (one write)", n, got)
	}
}
