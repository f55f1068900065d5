package backendtest

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
)

// watchTests are the subtests of backend.Watcher.
func (s *suite) watchTests() []struct {
	name string
	fn   func(t *testing.T)
} {
	return []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"WatchSeesAcquireReleaseExpireInOrder", s.watchInOrder},
		{"WatchResumeNoGap", s.watchResumeNoGap},
		{"WatchResyncWhenCursorGone", s.watchResyncCursorGone},
		{"WatchExpiredWhenKeyUntouched", s.watchExpiredUntouched},
	}
}

// watcher returns a new replica as a Watcher, or skips with the reason the
// backend declared. The replica itself comes second, to Close it.
func (s *suite) watcher(t *testing.T) (backend.Watcher, backend.Backend) {
	t.Helper()
	b := s.newBackend(t)
	w, ok := b.(backend.Watcher)
	if !ok {
		if s.opts.NoWatch != "" {
			t.Skip(s.opts.NoWatch)
		}
		t.Fatal("the backend does not implement backend.Watcher, and Options.NoWatch gives no reason")
	}
	return w, b
}

// watchStream is one Watch, read by the test.
type watchStream struct {
	t      *testing.T
	events <-chan backend.KeyEvent
	cancel context.CancelFunc
	last   string // the last event's cursor
}

var cursorChars = regexp.MustCompile(`^[A-Za-z0-9._~:-]{1,128}$`)

func watch(t *testing.T, w backend.Watcher, key, after string) *watchStream {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	events, err := w.Watch(ctx, key, after)
	if err != nil {
		t.Fatalf("Watch(%q, after %q): %v", key, after, err)
	}
	return &watchStream{t: t, events: events, cancel: cancel}
}

// next reads the next event, failing after within.
func (ws *watchStream) next(within time.Duration) backend.KeyEvent {
	ws.t.Helper()
	select {
	case ev, ok := <-ws.events:
		if !ok {
			ws.t.Fatal("the watch channel closed without an error event")
		}
		if ev.Err != nil {
			ws.t.Fatalf("watch ended: %v", ev.Err)
		}
		if !cursorChars.MatchString(ev.Cursor) {
			ws.t.Fatalf("event %+v: cursor %q, want 1..128 of [A-Za-z0-9._~:-]", ev, ev.Cursor)
		}
		ws.last = ev.Cursor
		return ev
	case <-time.After(within):
		ws.t.Fatalf("no event within %v", within)
	}
	return backend.KeyEvent{}
}

// want reads the next event and checks its kind and token (and, for
// acquired, the owner).
func (ws *watchStream) want(kind string, g backend.Grant) backend.KeyEvent {
	ws.t.Helper()
	ev := ws.next(10 * time.Second)
	if ev.Kind != kind || ev.Token != g.Token {
		ws.t.Fatalf("event {%s token %d}, want {%s token %d}", ev.Kind, ev.Token, kind, g.Token)
	}
	if kind == backend.KeyAcquired && (ev.Owner != g.Owner || !ev.ExpiresAt.Equal(g.ExpiresAt)) {
		ws.t.Errorf("acquired {owner %q expires %v}, want {owner %q expires %v}", ev.Owner, ev.ExpiresAt, g.Owner, g.ExpiresAt)
	}
	return ev
}

// stop cancels the stream and waits for its last event, which carries Err.
func (ws *watchStream) stop() {
	ws.t.Helper()
	ws.cancel()
	for deadline := time.After(10 * time.Second); ; {
		select {
		case ev, ok := <-ws.events:
			if !ok {
				ws.t.Fatal("the watch channel closed without an error event")
			}
			if ev.Err != nil {
				return
			}
		case <-deadline:
			ws.t.Fatal("a cancelled watch sent no error event within 10s")
		}
	}
}

func wantSnapshot(t *testing.T, ev backend.KeyEvent, resync bool, holder *backend.Grant) {
	t.Helper()
	if ev.Kind != backend.KeySnapshot || ev.Resync != resync {
		t.Fatalf("event {%s resync %v}, want {snapshot resync %v}", ev.Kind, ev.Resync, resync)
	}
	switch {
	case holder == nil && (ev.Held || ev.Token != 0):
		t.Fatalf("snapshot {held %v token %d}, want free", ev.Held, ev.Token)
	case holder != nil && (!ev.Held || ev.Token != holder.Token || ev.Owner != holder.Owner || !ev.ExpiresAt.Equal(holder.ExpiresAt)):
		t.Fatalf("snapshot {held %v token %d owner %q expires %v}, want held {token %d owner %q expires %v}",
			ev.Held, ev.Token, ev.Owner, ev.ExpiresAt, holder.Token, holder.Owner, holder.ExpiresAt)
	}
}

// From a free key: a grant, a release handing over to a waiter on another
// replica, a release, and a short grant left to expire — each event once,
// in token order, the expiry not before the deadline.
func (s *suite) watchInOrder(t *testing.T) {
	w, wb := s.watcher(t)
	a := s.newBackend(t)
	key := s.key(t)
	ws := watch(t, w, key, "")
	wantSnapshot(t, ws.next(10*time.Second), false, nil)

	g1 := acquire(t, a, backend.AcquireRequest{Key: key, Owner: "one", TTL: 20 * time.Second})
	ws.want(backend.KeyAcquired, g1)
	waiter := make(chan backend.Grant, 1)
	go func() {
		g, err := wb.Acquire(ctxTimeout(t, 40*time.Second), backend.AcquireRequest{Key: key, Owner: "two", TTL: 20 * time.Second, Wait: 30 * time.Second})
		if err != nil {
			t.Errorf("the waiter: %v", err)
		}
		waiter <- g
	}()
	s.waitForWaiters(t, a, key, 1)
	if err := a.Release(ctxTimeout(t, 10*time.Second), key, g1.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	g2 := <-waiter
	if g2.LeaseID == "" {
		t.FailNow() // the waiter said why
	}
	ws.want(backend.KeyReleased, g1)
	ws.want(backend.KeyAcquired, g2)
	if err := a.Release(ctxTimeout(t, 10*time.Second), key, g2.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	ws.want(backend.KeyReleased, g2)

	const ttl = 800 * time.Millisecond
	g3 := acquire(t, a, backend.AcquireRequest{Key: key, Owner: "three", TTL: ttl})
	ws.want(backend.KeyAcquired, g3)
	ev := ws.want(backend.KeyExpired, g3)
	if time.Now().Before(g3.ExpiresAt) {
		t.Errorf("expired %+v at %v, before the deadline %v", ev, time.Now(), g3.ExpiresAt)
	}
	if !(g1.Token < g2.Token && g2.Token < g3.Token) {
		t.Errorf("tokens %d, %d, %d, want increasing", g1.Token, g2.Token, g3.Token)
	}
}

// A stream resumed from its last cursor while nothing happened goes on
// with no snapshot and no gap; with Replay, the events missed while away
// come first, in order.
func (s *suite) watchResumeNoGap(t *testing.T) {
	w, _ := s.watcher(t)
	a := s.newBackend(t)
	key := s.key(t)
	ctx := ctxTimeout(t, 60*time.Second)
	g1 := acquire(t, a, backend.AcquireRequest{Key: key, Owner: "one", TTL: 30 * time.Second})
	ws := watch(t, w, key, "")
	wantSnapshot(t, ws.next(10*time.Second), false, &g1)
	ws.stop()

	// Nothing happened: the resumed stream is silent until the release.
	ws = watch(t, w, key, ws.last)
	if err := a.Release(ctx, key, g1.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	ws.want(backend.KeyReleased, g1)
	ws.stop()

	if s.opts.NoEventReplay != "" {
		t.Logf("no replay of missed events: %s", s.opts.NoEventReplay)
		return
	}
	// Missed while away: a whole grant, and the start of another.
	g2 := acquire(t, a, backend.AcquireRequest{Key: key, Owner: "two", TTL: 30 * time.Second})
	if err := a.Release(ctx, key, g2.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	g3 := acquire(t, a, backend.AcquireRequest{Key: key, Owner: "three", TTL: 30 * time.Second})
	ws = watch(t, w, key, ws.last)
	ws.want(backend.KeyAcquired, g2)
	ws.want(backend.KeyReleased, g2)
	ws.want(backend.KeyAcquired, g3)
}

// A cursor the backend cannot resume from — not a cursor at all, another
// key's, or (without Replay) one whose state changed meanwhile — gives a
// snapshot with Resync of the key as it is now, never an error.
func (s *suite) watchResyncCursorGone(t *testing.T) {
	w, _ := s.watcher(t)
	a := s.newBackend(t)
	key, other := s.key(t), s.key(t, "-other")
	g := acquire(t, a, backend.AcquireRequest{Key: key, Owner: "me", TTL: 30 * time.Second})

	ws := watch(t, w, key, "not a cursor\n")
	wantSnapshot(t, ws.next(10*time.Second), true, &g)
	ws.stop()

	// Another key, free: its cursor says nothing of this one.
	ws = watch(t, w, other, "")
	wantSnapshot(t, ws.next(10*time.Second), false, nil)
	ws.stop()
	ws = watch(t, w, key, ws.last)
	wantSnapshot(t, ws.next(10*time.Second), true, &g)
	held := ws.last
	ws.stop()

	if s.opts.NoEventReplay == "" {
		return // a change while away is replayed: WatchResumeNoGap
	}
	if err := a.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	ws = watch(t, w, key, held)
	wantSnapshot(t, ws.next(10*time.Second), true, nil)
}

// A holder whose replica is gone and whose key nobody touches is seen to
// expire at its deadline (plus the declared skew), never before.
func (s *suite) watchExpiredUntouched(t *testing.T) {
	w, _ := s.watcher(t)
	granter := s.newBackend(t)
	key := s.key(t)
	const ttl = 800 * time.Millisecond
	start := time.Now()
	g := acquire(t, granter, backend.AcquireRequest{Key: key, Owner: "gone", TTL: ttl})
	ws := watch(t, w, key, "")
	if err := granter.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
	first := ws.next(10 * time.Second)
	if first.Kind != backend.KeySnapshot {
		t.Fatalf("first event %s, want snapshot", first.Kind)
	}
	if !first.Held {
		if time.Now().Before(g.ExpiresAt) {
			t.Fatalf("snapshot free at %v, before the holder's deadline %v", time.Now(), g.ExpiresAt)
		}
		t.Skip("the machine was too slow: the grant expired before the watch began")
	}
	wantSnapshot(t, first, false, &g)
	ws.want(backend.KeyExpired, g)
	took := time.Since(start)
	if time.Now().Before(g.ExpiresAt) {
		t.Errorf("expired at %v, before the deadline %v", time.Now(), g.ExpiresAt)
	}
	if limit := ttl + time.Second + schedSlack; took > limit {
		t.Errorf("expired %v after the grant, want within %v (a timer at the deadline, not the store's clean-up)", took, limit)
	}
}
