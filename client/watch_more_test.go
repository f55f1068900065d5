package client_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lockdtest"
)

func nextKeyEvent(t *testing.T, events <-chan client.WatchEvent) client.WatchEvent {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("the watch channel closed without a final event")
		}
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("no key event within 30 s")
	}
	return client.WatchEvent{}
}

// Watch gives a snapshot first, then each grant's acquired and its end
// (released, or expired when nobody renews), and a final event with ctx's
// error before the channel closes.
func TestWatchReleasedExpiredAndFinal(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	ctx := ctxFor(t, time.Minute)
	key := k(t, "c-watch")
	wctx, stop := context.WithCancel(ctx)
	events, err := c.Watch(wctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if ev := nextKeyEvent(t, events); ev.Kind != "snapshot" || ev.Held || ev.ID == "" {
		t.Fatalf("first event %+v, want a snapshot, not held, with an id", ev)
	}
	l, err := c.Acquire(ctx, key, client.AcquireOptions{TTL: 5 * time.Second, Owner: "w"})
	if err != nil {
		t.Fatal(err)
	}
	if ev := nextKeyEvent(t, events); ev.Kind != "acquired" || ev.Token != l.Token() || ev.Owner != "w" || ev.ExpiresAt.IsZero() {
		t.Fatalf("after the acquire: %+v, want acquired {token %d owner w expires_at}", ev, l.Token())
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := nextKeyEvent(t, events); ev.Kind != "released" || ev.Token != l.Token() {
		t.Fatalf("after the release: %+v, want released {token %d}", ev, l.Token())
	}
	g, err := c.AcquireLease(ctx, key, client.AcquireOptions{TTL: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if ev := nextKeyEvent(t, events); ev.Kind != "acquired" || ev.Token != g.Token {
		t.Fatalf("after the second acquire: %+v, want acquired {token %d}", ev, g.Token)
	}
	if ev := nextKeyEvent(t, events); ev.Kind != "expired" || ev.Token != g.Token {
		t.Fatalf("nobody renewing: %+v, want expired {token %d}", ev, g.Token)
	}
	stop()
	if ev := nextKeyEvent(t, events); !errors.Is(ev.Err, context.Canceled) {
		t.Fatalf("after ctx ended: %+v, want a final event with context.Canceled", ev)
	}
	if _, ok := <-events; ok {
		t.Fatal("an event after the final one")
	}
}

// A watch cut by the network resumes with Last-Event-ID: the grant made
// during the cut comes as acquired, with no new snapshot and no resync.
func TestWatchResumesAfterCut(t *testing.T) {
	srv := sharedServer(t)
	direct := newClient(t, srv.URL, nil)
	proxy := cutter(t, srv.Addr)
	c := newClient(t, "http://"+proxy.Listen, nil)
	ctx := ctxFor(t, time.Minute)
	key := k(t, "c-watch-cut")

	events, err := c.Watch(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if ev := nextKeyEvent(t, events); ev.Kind != "snapshot" || ev.Held {
		t.Fatalf("first event %+v, want a snapshot, not held", ev)
	}
	proxy.Stop()
	l, err := direct.Acquire(ctx, key, client.AcquireOptions{TTL: 10 * time.Second, Owner: "during-cut"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(context.Background())
	time.Sleep(300 * time.Millisecond)
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	if ev := nextKeyEvent(t, events); ev.Kind != "acquired" || ev.Token != l.Token() || ev.Owner != "during-cut" {
		t.Fatalf("after the cut: %+v, want the acquire made during it {token %d}, resumed without a gap", ev, l.Token())
	}
}

// A reconnect refused with 429 too_many_streams (the key's only stream slot
// taken during a cut) is retried after its Retry-After, not the end of the
// stream: once the slot is free, the watch goes on where it left off.
func TestWatchReconnectRetriesTooManyStreams(t *testing.T) {
	srv := lockdtest.Start(t, &lockdtest.Options{Args: []string{"--max-streams-per-key", "1"}})
	direct := newClient(t, srv.URL, nil)
	proxy := cutter(t, srv.Addr)
	c := newClient(t, "http://"+proxy.Listen, nil)
	ctx := ctxFor(t, time.Minute)
	key := k(t, "c-watch-429")

	events, err := c.Watch(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	nextKeyEvent(t, events) // the snapshot
	proxy.Stop()
	// Take the slot as soon as lockd has seen the cut stream go.
	octx, closeOther := context.WithCancel(ctx)
	defer closeOther()
	var other <-chan client.WatchEvent
	for deadline := time.Now().Add(20 * time.Second); other == nil; time.Sleep(50 * time.Millisecond) {
		if other, err = direct.Watch(octx, key); err != nil && time.Now().After(deadline) {
			t.Fatalf("the slot never came free: %v", err)
		}
	}
	nextKeyEvent(t, other)
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	l, err := direct.Acquire(ctx, key, client.AcquireOptions{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(context.Background())
	// Free the slot only once lockd has refused the cut watch's reconnect.
	refused := regexp.MustCompile(`lockd_limited_total\{limit="streams_per_key"\} [1-9]`)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if refused.Match(b) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lockd refused no reconnect with 429 streams_per_key within 30 s")
		}
	}
	closeOther()
	if ev := nextKeyEvent(t, events); ev.Err != nil || ev.Kind != "acquired" || ev.Token != l.Token() {
		t.Fatalf("after the slot came free: %+v, want acquired {token %d}", ev, l.Token())
	}
}
