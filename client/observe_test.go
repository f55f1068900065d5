package client_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lockdtest"
)

// cutter is a real TCP proxy to addr that the test can cut (Stop closes
// every connection and refuses new ones) and restore (Start).
func cutter(t *testing.T, addr string) *toxiproxy.Proxy {
	t.Helper()
	proxy := toxiproxy.NewProxy(toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop()), "lockd-cut", "127.0.0.1:0", addr)
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Stop)
	return proxy
}

// next is the next event of an observe stream, within a generous bound.
func next(t *testing.T, events <-chan client.ObserveEvent) client.ObserveEvent {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("the observe channel closed without a final event")
		}
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("no observe event within 30 s")
	}
	return client.ObserveEvent{}
}

// Observe gives the current state first, then every change in order
// (a new term, a proclaim in the same term, a resignation, the next term),
// and ends with a last event carrying ctx's error before the channel closes.
func TestObserveFollowsElection(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	ctx := ctxFor(t, time.Minute)
	name := k(t, "c-observe")

	octx, stop := context.WithCancel(ctx)
	events, err := c.Observe(octx, name)
	if err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events); ev.Type != "no_leader" || ev.ID == "" {
		t.Fatalf("first event %+v, want no_leader with an id", ev)
	}
	a, err := c.Campaign(ctx, name, client.CampaignOptions{TTL: 5 * time.Second, Owner: "a", Value: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events); ev.Type != "leader" || ev.Leader == nil || ev.Leader.Term != a.Term() || ev.Leader.Owner != "a" || ev.Leader.Value != "v1" {
		t.Fatalf("after the campaign: %+v, want leader {term %d owner a value v1}", ev, a.Term())
	}
	if err := a.Proclaim(ctx, "v2"); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events); ev.Type != "leader" || ev.Leader.Term != a.Term() || ev.Leader.Value != "v2" {
		t.Fatalf("after the proclaim: %+v, want leader {term %d value v2}", ev, a.Term())
	}
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events); ev.Type != "no_leader" || ev.LastTerm != a.Term() || ev.Reason != "resigned" {
		t.Fatalf("after the resignation: %+v, want no_leader {last_term %d reason resigned}", ev, a.Term())
	}
	b, err := c.Campaign(ctx, name, client.CampaignOptions{TTL: 5 * time.Second, Owner: "b"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Resign(context.Background())
	if ev := next(t, events); ev.Type != "leader" || ev.Leader.Term != b.Term() || b.Term() <= a.Term() {
		t.Fatalf("after the next campaign: %+v, want leader {term %d > %d}", ev, b.Term(), a.Term())
	}

	stop()
	ev := next(t, events)
	if !errors.Is(ev.Err, context.Canceled) || ev.Type != "" {
		t.Fatalf("after ctx ended: %+v, want a final event with context.Canceled", ev)
	}
	select {
	case ev, ok := <-events:
		if ok {
			t.Fatalf("event %+v after the final one", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the channel stayed open after the final event")
	}
}

// A stream cut by the network is resumed with Last-Event-ID: lockd answers
// resync and the current state, so the changes made during the cut show as
// a resync followed by the new leader, not as silence.
func TestObserveReconnectsAfterCut(t *testing.T) {
	srv := sharedServer(t)
	direct := newClient(t, srv.URL, nil)
	proxy := cutter(t, srv.Addr)
	c := newClient(t, "http://"+proxy.Listen, nil)
	ctx := ctxFor(t, time.Minute)
	name := k(t, "c-observe-cut")

	a, err := direct.Campaign(ctx, name, client.CampaignOptions{TTL: 5 * time.Second, Owner: "a"})
	if err != nil {
		t.Fatal(err)
	}
	events, err := c.Observe(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if ev := next(t, events); ev.Type != "leader" || ev.Leader.Term != a.Term() {
		t.Fatalf("first event %+v, want leader term %d", ev, a.Term())
	}

	proxy.Stop()
	if err := a.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := direct.Campaign(ctx, name, client.CampaignOptions{TTL: 5 * time.Second, Owner: "b"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Resign(context.Background())
	time.Sleep(500 * time.Millisecond) // the client tries, and fails, to reconnect
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}

	if ev := next(t, events); ev.Type != "resync" || ev.Reason == "" {
		t.Fatalf("after the cut: %+v, want resync with a reason", ev)
	}
	if ev := next(t, events); ev.Type != "leader" || ev.Leader.Term != b.Term() || ev.Leader.Owner != "b" {
		t.Fatalf("after the resync: %+v, want the current leader {term %d owner b}", ev, b.Term())
	}
}

// A stream the server refuses is Observe's error, with the problem's code.
func TestObserveRefused(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	_, err := c.Observe(ctxFor(t, time.Minute), "")
	var e *client.Error
	if !errors.As(err, &e) || e.Status/100 != 4 {
		t.Fatalf("Observe of an empty name: %v, want a 4xx *client.Error", err)
	}
}

// A reconnect the server refuses for good (here 401: the token was revoked
// during a cut) ends the stream with a final event carrying the refusal,
// even for a reader that comes to the channel late.
func TestObserveRefusalOnReconnectIsFinalEvent(t *testing.T) {
	authFile := filepath.Join(t.TempDir(), "tokens.json")
	const secret = "observer-secret-0123456789"
	tokens := func(names ...string) {
		t.Helper()
		var list []string
		for _, n := range names {
			list = append(list, `{"name":"`+n+`","token":"`+n+`-secret-0123456789","prefixes":[""],"rights":["lock","read"]}`)
		}
		if err := os.WriteFile(authFile, []byte(`{"tokens":[`+strings.Join(list, ",")+`]}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tokens("observer", "admin")
	srv := lockdtest.Start(t, &lockdtest.Options{Args: []string{"--auth-file", authFile}})
	proxy := cutter(t, srv.Addr)
	c := newClient(t, "http://"+proxy.Listen, &client.Options{BearerToken: secret})
	ctx := ctxFor(t, time.Minute)

	events, err := c.Observe(ctx, "revoked")
	if err != nil {
		t.Fatal(err)
	}
	next(t, events) // the current state
	proxy.Stop()
	tokens("admin")
	if err := syscall.Kill(srv.Pid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // lockd rereads its tokens file
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // a slow reader: the refusal waits for it
	ev := next(t, events)
	var e *client.Error
	if !errors.As(ev.Err, &e) || e.Status != 401 {
		t.Fatalf("after the token was revoked: %+v, want a final event with the 401", ev)
	}
	if _, ok := <-events; ok {
		t.Fatal("an event after the final one")
	}
}
