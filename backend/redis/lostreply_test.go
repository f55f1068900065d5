package redis_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/lockd/lockd/backend"
	redisb "github.com/lockd/lockd/backend/redis"
	"github.com/lockd/lockd/backend/redis/internal/store"
	"github.com/lockd/lockd/internal/testserver"
)

// An acquire whose reply Redis sent but lockd never got must not be re-sent
// by the client library: the script already granted, and a re-sent acquire
// met its own grant as "held" (409) and left it orphaned for a full TTL.
// The backend client is built exactly as lockd builds it, and talks to a
// real redis-server through a TCP proxy that drops replies.
func TestRedisLostReplyIsNotResent(t *testing.T) {
	srv := testserver.Redis(t, 1)
	proxy := toxiproxy.NewProxy(toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop()), "redis", "127.0.0.1:0", srv.Addr(0))
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Stop)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	b, err := redisb.New(ctx, store.Client([]string{proxy.Listen}, store.Creds{}), redisb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	direct := goredis.NewClient(&goredis.Options{Addr: srv.Addr(0)})
	t.Cleanup(func() { _ = direct.Close() })

	// Load the scripts first, so that the acquire below is one EVALSHA
	// that runs (not a NOSCRIPT answer followed by EVAL).
	g, err := b.Acquire(ctx, backend.AcquireRequest{Key: "warm-up", TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx, "warm-up", g.LeaseID); err != nil {
		t.Fatal(err)
	}

	const key = "lostreply"
	lockKey, fenceKey := "lockd:{"+key+"}:lock", "lockd:{"+key+"}:fence"
	// A timeout toxic with a long timeout drops every reply on the floor
	// (nothing is delivered late when it is removed) and keeps the
	// connection open.
	if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(`{"name":"drop","type":"timeout","stream":"downstream","attributes":{"timeout":60000}}`)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: "lost", TTL: 30 * time.Second})
		done <- err
	}()
	// The script ran (the grant is in Redis) and its reply was dropped;
	// from now on replies get through again.
	for {
		n, err := direct.Exists(ctx, lockKey).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("acquire returned %v before its grant reached Redis", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err := proxy.Toxics.RemoveToxic(ctx, "drop"); err != nil {
		t.Fatal(err)
	}
	err = <-done
	if errors.Is(err, backend.ErrHeld) {
		t.Fatalf("acquire with its reply lost: %v; the client re-sent it and it met its own grant", err)
	}
	if !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("acquire with its reply lost: %v, want ErrUnavailable", err)
	}
	// The backend undid the grant the lost reply carried: the key is free
	// now, not for a TTL.
	if n, err := direct.Exists(ctx, lockKey).Result(); err != nil || n != 0 {
		t.Fatalf("lock key exists = %d (%v) after the failed acquire, want 0: an orphan blocks the key", n, err)
	}
	if got, err := direct.Get(ctx, fenceKey).Int(); err != nil || got != 1 {
		t.Errorf("fencing counter = %d (%v), want 1: the acquire script ran more than once", got, err)
	}
}

// With an idempotency key the same lost reply costs nothing: the backend
// keeps the grant the lost reply carried (and reports ErrUnavailable), and
// the retry with the key gets exactly that grant.
func TestRedisLostReplyKeyedRetryGetsGrant(t *testing.T) {
	srv := testserver.Redis(t, 1)
	proxy := toxiproxy.NewProxy(toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop()), "redis", "127.0.0.1:0", srv.Addr(0))
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Stop)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	b, err := redisb.New(ctx, store.Client([]string{proxy.Listen}, store.Creds{}), redisb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	direct := goredis.NewClient(&goredis.Options{Addr: srv.Addr(0)})
	t.Cleanup(func() { _ = direct.Close() })
	g, err := b.Acquire(ctx, backend.AcquireRequest{Key: "warm-up", TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx, "warm-up", g.LeaseID); err != nil {
		t.Fatal(err)
	}

	const key = "lostreply-keyed"
	req := backend.AcquireRequest{Key: key, Owner: "keyed", TTL: 30 * time.Second,
		Idempotency: backend.Idempotency{Key: "scoped-record", Fingerprint: "fp"}}
	if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(`{"name":"drop","type":"timeout","stream":"downstream","attributes":{"timeout":60000}}`)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.Acquire(ctx, req)
		done <- err
	}()
	for {
		n, err := direct.Exists(ctx, "lockd:{"+key+"}:lock").Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("acquire returned %v before its grant reached Redis", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err := proxy.Toxics.RemoveToxic(ctx, "drop"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("keyed acquire with its reply lost: %v, want ErrUnavailable", err)
	}
	again, err := b.Acquire(ctx, req)
	if err != nil {
		t.Fatalf("retry with the same idempotency key: %v, want the grant the lost reply carried", err)
	}
	if again.Token != 1 || !again.Replayed {
		t.Fatalf("retry got token %d (replayed %v), want the first grant (token 1), replayed", again.Token, again.Replayed)
	}
	if err := b.Release(ctx, key, again.LeaseID); err != nil {
		t.Fatalf("release of the retried grant: %v", err)
	}
}
