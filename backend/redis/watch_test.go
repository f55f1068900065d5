package redis

import (
	"context"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/testserver"
)

// readEvents reads n events of a Watch (failing on an error or a silent
// close) and cancels it.
func readEvents(t *testing.T, b *Backend, key, after string, n int) []backend.KeyEvent {
	t.Helper()
	c, cancel := context.WithCancel(t.Context())
	defer cancel()
	events, err := b.Watch(c, key, after)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	var got []backend.KeyEvent
	for len(got) < n {
		select {
		case ev, ok := <-events:
			if !ok || ev.Err != nil {
				t.Fatalf("watch ended (%v) after %+v", ev.Err, got)
			}
			got = append(got, ev)
		case <-time.After(10 * time.Second):
			t.Fatalf("events %+v, want %d", got, n)
		}
	}
	return got
}

// A grant that expired while nobody watched is logged as expired by the
// next acquire, before that acquire's own grant: a resumed watch replays
// acquired, expired, acquired, in token order.
func TestExpiryLoggedBeforeNextGrant(t *testing.T) {
	srv := testserver.Redis(t, 1)
	b := newFactory(srv.Addr(0), Options{})(t).(*Backend)
	key := "unseen-expiry"
	snap := readEvents(t, b, key, "", 1)[0]
	g1, err := b.Acquire(ctx(t), backend.AcquireRequest{Key: key, Owner: "one", TTL: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	g2, err := b.Acquire(ctx(t), backend.AcquireRequest{Key: key, Owner: "two", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	got := readEvents(t, b, key, snap.Cursor, 3)
	want := []struct {
		kind  string
		token uint64
	}{{backend.KeyAcquired, g1.Token}, {backend.KeyExpired, g1.Token}, {backend.KeyAcquired, g2.Token}}
	for i, w := range want {
		if got[i].Kind != w.kind || got[i].Token != w.token || got[i].Resync {
			t.Fatalf("replayed %+v, want %+v", got, want)
		}
	}
}

// A cursor whose log entries were trimmed away (more than ~1000 changes
// since) resumes with a resync snapshot, not a replay with a gap.
func TestWatchResyncWhenTrimmedPastCursor(t *testing.T) {
	srv := testserver.Redis(t, 1)
	b := newFactory(srv.Addr(0), Options{})(t).(*Backend)
	key := "trimmed"
	snap := readEvents(t, b, key, "", 1)[0]
	for range 800 { // two entries each
		g, err := b.Acquire(ctx(t), backend.AcquireRequest{Key: key, TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Release(ctx(t), key, g.LeaseID); err != nil {
			t.Fatal(err)
		}
	}
	ev := readEvents(t, b, key, snap.Cursor, 1)[0]
	if ev.Kind != backend.KeySnapshot || !ev.Resync || ev.Held {
		t.Fatalf("resumed from a trimmed cursor: first event %+v, want a free snapshot with resync", ev)
	}
}
