package client_test

import (
	"errors"
	"testing"
	"time"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lockdtest"
)

// A 429 the server will lift (rate_limited) is retried after its
// Retry-After; without retries it surfaces as ErrLimited with the delay. A
// lease limit is not retried: waiting does not release a lease.
func TestLimitedRequests(t *testing.T) {
	srv := lockdtest.Start(t, &lockdtest.Options{Args: []string{"--rate-per-principal", "1", "--max-leases-per-principal", "1"}})
	ctx := ctxFor(t, time.Minute)

	once := newClient(t, srv.URL, &client.Options{MaxRetries: -1})
	if _, err := once.Inspect(ctx, k(t, "l-a")); err != nil {
		t.Fatal(err)
	}
	_, err := once.Inspect(ctx, k(t, "l-a"))
	var e *client.Error
	if !errors.Is(err, client.ErrLimited) || !errors.As(err, &e) || e.Code != "rate_limited" || e.RetryAfter < time.Second {
		t.Fatalf("second request within the second: %v, want ErrLimited rate_limited with RetryAfter ≥ 1s", err)
	}

	c := newClient(t, srv.URL, &client.Options{RetryBackoff: 10 * time.Millisecond})
	start := time.Now()
	g, err := c.AcquireLease(ctx, k(t, "l-b"), client.AcquireOptions{TTL: 30 * time.Second})
	if err != nil {
		t.Fatalf("acquire while over the rate: %v, want it retried after Retry-After and granted", err)
	}
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("acquire answered after %v: it did not wait for Retry-After", took)
	}
	_, err = c.AcquireLease(ctx, k(t, "l-c"), client.AcquireOptions{TTL: 30 * time.Second})
	if !errors.Is(err, client.ErrLimited) || !errors.As(err, &e) || e.Code != "too_many_leases" {
		t.Fatalf("second lease: %v, want ErrLimited too_many_leases", err)
	}
	if err := c.ReleaseLease(ctx, k(t, "l-b"), g.LeaseID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AcquireLease(ctx, k(t, "l-c"), client.AcquireOptions{TTL: 30 * time.Second}); err != nil {
		t.Fatalf("after the release: %v", err)
	}
}
