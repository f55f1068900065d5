package redlock

import (
	"fmt"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/testserver"
)

// With one of three masters answering 300 ms late (a latency toxic on its
// replies), an acquire and a renew take at least that long, and what they
// report is the validity: TTL − elapsed − drift, counted from when the
// first master was asked. The masters themselves keep the TTL asked for, so
// their deadline (shown by Inspect) is later than the grant's by at least
// the delay plus the drift, and a renew without a TTL keeps the lease's
// length rather than shrinking it by the validity's margin each time.
func TestGrantAndRenewReportValidity(t *testing.T) {
	srv := testserver.Redis(t, 3)
	proxy := toxiproxy.NewProxy(toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop()), "slow-master", "127.0.0.1:0", srv.Addr(0))
	if err := proxy.Start(); err != nil {
		t.Fatalf("proxy: %v", err)
	}
	t.Cleanup(proxy.Stop)
	b := newFactory([]string{proxy.Listen, srv.Addr(1), srv.Addr(2)}, Options{NodeTimeout: 10 * time.Second})(t)
	if err := b.Ping(ctxT(t, 30*time.Second)); err != nil { // dial before the toxic
		t.Fatalf("Ping: %v", err)
	}
	const slow, ttl = 300 * time.Millisecond, 10 * time.Second
	if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(`{"name":"slow","type":"latency","stream":"downstream","toxicity":1,"attributes":{"latency":300}}`)); err != nil {
		t.Fatalf("toxic: %v", err)
	}
	drift := b.(*Backend).drift(ttl)

	check := func(what string, g backend.Grant, before, after time.Time) {
		t.Helper()
		if most := ttl - slow - drift; g.TTL > most {
			t.Errorf("%s TTL = %v, want the validity: at most %v (TTL %v − the slow master's %v − drift %v)", what, g.TTL, most, ttl, slow, drift)
		}
		if g.TTL <= 0 {
			t.Fatalf("%s TTL = %v, want positive", what, g.TTL)
		}
		// ExpiresAt is the start (inside the call) plus the reported TTL.
		if lo, hi := before.Add(g.TTL).Add(-time.Millisecond), after.Add(g.TTL); g.ExpiresAt.Before(lo) || g.ExpiresAt.After(hi) {
			t.Errorf("%s expires_at = %v, want start + its TTL %v: within [%v, %v]", what, g.ExpiresAt, g.TTL, lo, hi)
		}
		st, err := b.Inspect(ctxT(t, 30*time.Second), g.Key)
		if err != nil || !st.Held {
			t.Fatalf("Inspect after %s = %+v, %v; want held", what, st, err)
		}
		// Both deadlines count from the same start, truncated to the ms.
		if gap, least := st.Holder.ExpiresAt.Sub(g.ExpiresAt), slow+drift-2*time.Millisecond; gap < least {
			t.Errorf("%s: the masters' deadline %v is only %v after the grant's %v, want at least %v (the slow master's delay + drift)",
				what, st.Holder.ExpiresAt, gap, g.ExpiresAt, least)
		}
	}

	before := time.Now()
	g, err := b.Acquire(ctxT(t, 30*time.Second), backend.AcquireRequest{Key: "validity", Owner: "v", TTL: ttl})
	after := time.Now()
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if took := after.Sub(before); took < slow {
		t.Fatalf("Acquire took %v, less than the toxic's %v: the master is not slowed, the test proves nothing", took, slow)
	}
	check("grant", g, before, after)

	for i := 0; i < 3; i++ {
		before = time.Now()
		r, err := b.Renew(ctxT(t, 30*time.Second), g.Key, g.LeaseID, 0)
		after = time.Now()
		if err != nil {
			t.Fatalf("Renew %d: %v", i, err)
		}
		check("renew", r, before, after)
	}
	// Three renews later every master still stores the TTL asked for.
	for i := 1; i < 3; i++ {
		got, err := directClient(t, srv.Addr(i)).HGet(t.Context(), "lockd:rl:{validity}:lock", "ttl").Result()
		if err != nil || got != "10000" {
			t.Errorf("master %d: stored ttl = %q (%v), want 10000: renewing without a TTL shortened the lease", i, got, err)
		}
	}
	// A client that sends back the ttl_ms it was given asks for that: the
	// lease is shortened by the margin, once per such renew.
	if _, err := b.Renew(ctxT(t, 30*time.Second), g.Key, g.LeaseID, g.TTL); err != nil {
		t.Fatalf("Renew with the reported TTL: %v", err)
	}
	want := fmt.Sprint(g.TTL.Milliseconds())
	for i := 1; i < 3; i++ {
		got, err := directClient(t, srv.Addr(i)).HGet(t.Context(), "lockd:rl:{validity}:lock", "ttl").Result()
		if err != nil || got != want {
			t.Errorf("master %d: stored ttl = %q (%v) after a renew with ttl %v, want %s", i, got, err, g.TTL, want)
		}
	}
}
