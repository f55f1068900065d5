package client_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/httpapi"
	"github.com/lockd/lockd/internal/testserver"
)

// halfMade wraps a real backend whose first acquire is granted by the store
// and then reported as ErrUnavailable, as the contract allows ("a half-made
// grant, if any, expires or is removed by the backend").
type halfMade struct {
	backend.Backend
	acquires atomic.Int32
}

func (b *halfMade) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	g, err := b.Backend.Acquire(ctx, req)
	if b.acquires.Add(1) == 1 && err == nil {
		return backend.Grant{}, backend.ErrUnavailable
	}
	return g, err
}

// inProcessServer is lockd's HTTP API over a wrapper around the real etcd
// backend on an embedded etcd.
func inProcessServer(t *testing.T, wrap func(backend.Backend) backend.Backend) (url string, real backend.Backend) {
	t.Helper()
	e := testserver.EtcdCluster(t, 1)
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	b := etcdb.New(cli, etcdb.Options{OpTimeout: 2 * time.Second})
	t.Cleanup(func() { b.Close() })
	ts := httptest.NewServer(httpapi.New(wrap(b), httpapi.Options{Backend: "etcd"}))
	t.Cleanup(ts.Close)
	return ts.URL, b
}

// A 503 on acquire may come with a grant the client never saw: a blind
// retry then meets that grant (409, or a queue behind it for a TTL). Here
// the backend cannot keep idempotency records (the server answers a keyed
// acquire with 501), so the client falls back to unkeyed acquires and does
// not retry after the 503.
func TestAcquireNotRetriedBlindlyAfter503(t *testing.T) {
	hm := &halfMade{}
	url, _ := inProcessServer(t, func(b backend.Backend) backend.Backend { hm.Backend = b; return hm })
	c := newClient(t, url, &client.Options{RetryBackoff: 10 * time.Millisecond})
	_, err := c.AcquireLease(ctxFor(t, time.Minute), "halfmade", client.AcquireOptions{TTL: 30 * time.Second})
	if errors.Is(err, client.ErrHeld) {
		t.Fatalf("acquire after a 503: %v; the client retried blindly and met its own half-made grant", err)
	}
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("acquire after a 503: %v, want ErrUnavailable", err)
	}
	if n := hm.acquires.Load(); n != 1 {
		t.Errorf("the server saw %d acquires, want 1 (no blind retry)", n)
	}
}

// idemHalfMade is halfMade over a backend that keeps idempotency records.
type idemHalfMade struct{ *halfMade }

func (idemHalfMade) IdempotentAcquire() {}

// With an Idempotency-Key the retry after a 503 is safe: it gets the grant
// the first attempt half-made, not a 409 against it.
func TestAcquireRetriedSafelyAfter503(t *testing.T) {
	hm := &halfMade{}
	url, real := inProcessServer(t, func(b backend.Backend) backend.Backend { hm.Backend = b; return idemHalfMade{hm} })
	c := newClient(t, url, &client.Options{RetryBackoff: 10 * time.Millisecond})
	ctx := ctxFor(t, time.Minute)
	g, err := c.AcquireLease(ctx, "halfmade-idem", client.AcquireOptions{TTL: 30 * time.Second})
	if err != nil {
		t.Fatalf("acquire retried after a 503: %v, want the half-made grant", err)
	}
	if n := hm.acquires.Load(); n != 2 {
		t.Errorf("the server saw %d acquires, want 2 (one retry)", n)
	}
	st, err := real.Inspect(ctx, "halfmade-idem")
	if err != nil {
		t.Fatal(err)
	}
	if !st.Held || st.Holder.Token != g.Token {
		t.Fatalf("inspect %+v: want held by the returned grant (token %d)", st, g.Token)
	}
	if err := c.ReleaseLease(ctx, "halfmade-idem", g.LeaseID); err != nil {
		t.Fatalf("release of the returned grant: %v", err)
	}
}
