package httpapi_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/httpapi"
	"github.com/lockd/lockd/internal/testserver"
)

// lateGrant wraps a real backend: its acquire is granted by the real store,
// and the grant is handed back only once the caller has given up — the
// race between a grant and a client that leaves, made certain.
type lateGrant struct {
	backend.Backend
	granted  chan backend.Grant // the grant the store made, once
	releases atomic.Int32
	released chan struct{} // closed at the first release
}

func (b *lateGrant) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	g, err := b.Backend.Acquire(context.WithoutCancel(ctx), req)
	if err != nil {
		return g, err
	}
	b.granted <- g
	<-ctx.Done()
	return g, nil
}

func (b *lateGrant) Release(ctx context.Context, key, leaseID string) error {
	err := b.Backend.Release(ctx, key, leaseID)
	if b.releases.Add(1) == 1 {
		close(b.released)
	}
	return err
}

// etcdBackend is the real etcd backend on an embedded etcd.
func etcdBackend(t *testing.T) *etcdb.Backend {
	t.Helper()
	return etcdOn(t, testserver.EtcdCluster(t, 1).Endpoints(), etcdb.Options{OpTimeout: 2 * time.Second})
}

// A grant that arrives after its client left is released at once, once, by
// the HTTP layer: nobody will renew it, and it would block the key for its
// whole TTL.
func TestGrantToDepartedClientIsReleased(t *testing.T) {
	real := etcdBackend(t)
	late := &lateGrant{Backend: real, granted: make(chan backend.Grant, 1), released: make(chan struct{})}
	ts := httptest.NewServer(httpapi.New(late, httpapi.Options{Backend: "etcd"}))
	t.Cleanup(ts.Close)

	const key = "departed"
	ctx, cancel := context.WithCancel(t.Context())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/v1/locks/"+key+"/acquire", strings.NewReader(`{"ttl_ms":60000}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	var g backend.Grant
	select {
	case g = <-late.granted:
	case err := <-done:
		t.Fatalf("the request ended (%v) before the store granted", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no grant within 30s")
	}
	cancel() // the client leaves exactly as the store granted
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("the cancelled request returned %v, want context.Canceled", err)
	}
	select {
	case <-late.released:
	case <-time.After(20 * time.Second):
		t.Fatalf("the grant (token %d, TTL 60s) was not released after its client left", g.Token)
	}
	st, err := real.Inspect(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	if st.Held {
		t.Fatalf("the key is still held by token %d after its client left", st.Holder.Token)
	}
	// Nothing else releases it a second time (give a stray release a
	// moment to show up).
	time.Sleep(200 * time.Millisecond)
	if n := late.releases.Load(); n != 1 {
		t.Errorf("release called %d times, want once", n)
	}
}
