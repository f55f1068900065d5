package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/testserver"
)

// A waiter that gives up while the store is out of reach must not leave
// its queue entry behind: the entry hangs on its lockd's waiters' lease,
// which that lockd keeps alive, so it would block the key for as long as
// that lockd lives (the soak's minutes-long etcd outages). The network
// between the waiter's lockd and etcd is cut (a real proxy) for longer
// than its round-trip timeout, so the delete of its give-up fails, and
// healed well within the waiters' lease, so the lease lives on.
func TestWaiterGivingUpDuringCutLeavesNoEntry(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	px := toxiproxy.NewProxy(toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop()), "etcd", "127.0.0.1:0", strings.TrimPrefix(e.Endpoint(0), "http://"))
	if err := px.Start(); err != nil {
		t.Fatalf("proxy: %v", err)
	}
	t.Cleanup(px.Stop)

	direct := etcdb.New(client(t, e.Endpoints()), etcdb.Options{})
	t.Cleanup(func() { direct.Close() })
	cut := etcdb.New(client(t, []string{"http://" + px.Listen}), etcdb.Options{OpTimeout: 300 * time.Millisecond})
	t.Cleanup(func() { cut.Close() })

	ctx := t.Context()
	const key = "giveup-during-cut"
	g, err := direct.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: 30 * time.Second})
	if err != nil {
		t.Fatalf("holder's acquire: %v", err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	waited := make(chan error, 1)
	go func() {
		_, err := cut.Acquire(wctx, backend.AcquireRequest{Key: key, TTL: 30 * time.Second, Wait: 30 * time.Second})
		waited <- err
	}()
	waitFor(t, func() bool {
		st, err := direct.Inspect(ctx, key)
		return err == nil && st.Waiters == 1
	}, "the waiter to queue")

	for _, stream := range []string{"upstream", "downstream"} {
		js := fmt.Sprintf(`{"name":"cut_%s","type":"timeout","stream":%q,"toxicity":1,"attributes":{"timeout":0}}`, stream, stream)
		if _, err := px.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			t.Fatalf("cut: %v", err)
		}
	}
	wcancel()
	select {
	case err := <-waited:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled wait returned %v, want context.Canceled", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the cancelled wait did not return")
	}
	for _, stream := range []string{"upstream", "downstream"} {
		_ = px.Toxics.RemoveToxic(context.Background(), "cut_"+stream)
	}

	if err := direct.Release(ctx, key, g.LeaseID); err != nil {
		t.Fatalf("release: %v", err)
	}
	// The waiters' lease (5 s) lives on, kept alive by cut: only its own
	// clean-up can take the entry away. Well before that lease could run
	// out of its own, the key is free again.
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	defer acancel()
	start := time.Now()
	if _, err := direct.Acquire(actx, backend.AcquireRequest{Key: key, TTL: 30 * time.Second, Wait: 3 * time.Second}); err != nil {
		st, _ := direct.Inspect(ctx, key)
		t.Fatalf("acquire after the holder released (waited %s): %v (queue %+v); want a grant: the given-up waiter's entry is still ahead", time.Since(start).Round(time.Millisecond), err, st)
	}
}

func waitFor(t *testing.T, ok func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
