package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lockdtest"
)

func nextWatch(t *testing.T, events <-chan client.WatchEvent, kind string, token uint64) client.WatchEvent {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("the watch channel closed")
		}
		if ev.Kind != kind || ev.Token != token {
			t.Fatalf("event %v (%+v), want %s token %d", ev, ev, kind, token)
		}
		return ev
	case <-time.After(30 * time.Second):
		t.Fatalf("no event within 30s, want %s token %d", kind, token)
	}
	return client.WatchEvent{}
}

// Watch sees the snapshot, a grant, its release and an unrenewed grant's
// expiry; when its lockd stops and comes back, it connects again with
// Last-Event-ID and goes on with no resync and no repeat; cancelling ends
// the channel with ctx's error.
func TestWatchFollowsKeyAcrossRestart(t *testing.T) {
	srv := lockdtest.Start(t, nil)
	c := newClient(t, srv.URL, &client.Options{RetryBackoff: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(ctxFor(t, 2*time.Minute))
	defer cancel()
	key := k(t, "c-watch")
	events, err := c.Watch(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if ev := nextWatch(t, events, client.WatchSnapshot, 0); ev.Held || ev.ID == "" {
		t.Fatalf("first event %+v, want a snapshot of a free key with an id", ev)
	}
	g, err := c.AcquireLease(ctx, key, client.AcquireOptions{TTL: 30 * time.Second, Owner: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if ev := nextWatch(t, events, client.WatchAcquired, g.Token); ev.Owner != "a" || ev.ExpiresAt.IsZero() {
		t.Errorf("acquired %+v, want owner a and a deadline", ev)
	}
	if err := c.ReleaseLease(ctx, key, g.LeaseID); err != nil {
		t.Fatal(err)
	}
	nextWatch(t, events, client.WatchReleased, g.Token)

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	short, err := c.AcquireLease(ctx, key, client.AcquireOptions{TTL: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	nextWatch(t, events, client.WatchAcquired, short.Token) // no resync, no snapshot, no repeat
	nextWatch(t, events, client.WatchExpired, short.Token)

	cancel()
	for ev := range events {
		if ev.Err != nil {
			if !errors.Is(ev.Err, context.Canceled) {
				t.Errorf("last event %v, want ctx's error", ev.Err)
			}
			return
		}
	}
	t.Fatal("the channel closed without an error event")
}

// A watch the server refuses fails at once with its problem.
func TestWatchRefused(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	_, err := c.Watch(ctxFor(t, 30*time.Second), "-bad")
	var e *client.Error
	if !errors.As(err, &e) || e.Status != 400 || e.Code != "invalid_key" {
		t.Fatalf("Watch(-bad): %v, want 400 invalid_key", err)
	}
}
