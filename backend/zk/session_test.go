package zk

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// Renewing a session is one write: the session node's, whatever the number
// of its grants. No grant's node is written (same version, same mzxid).
func TestSessionRenewIsOneWrite(t *testing.T) {
	z := sharedZK(t, 1)
	b := newBackend(t, z.Addrs(), Options{})
	ss := b.Sessions()
	sess, err := ss.Open(ctxFor(t, 10*time.Second), "many", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	type node struct {
		p       string
		version int32
		mzxid   int64
	}
	var nodes []node
	for i := range n {
		key := fmt.Sprintf("%s-%d", uniqueKey(t), i)
		if _, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, Session: sess.ID}); err != nil {
			t.Fatal(err)
		}
		names, _, err := b.conn.Children(b.keyPath(key))
		if err != nil || len(names) != 1 {
			t.Fatalf("Children(%s) = %v (%v), want one node", key, names, err)
		}
		p := b.keyPath(key) + "/" + names[0]
		_, st, err := b.conn.Get(p)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, node{p, st.Version, st.Mzxid})
	}
	sp := b.sessionPath(sessionHash(sess.ID))
	_, before, err := b.conn.Get(sp)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ss.Renew(ctxFor(t, 10*time.Second), sess.ID, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	_, after, err := b.conn.Get(sp)
	if err != nil {
		t.Fatal(err)
	}
	if after.Version != before.Version+1 {
		t.Errorf("session node version %d -> %d after one renew, want +1", before.Version, after.Version)
	}
	for _, nd := range nodes {
		_, st, err := b.conn.Get(nd.p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Version != nd.version || st.Mzxid != nd.mzxid {
			t.Errorf("grant node %s written by the session's renew (version %d -> %d)", nd.p, nd.version, st.Version)
		}
	}
	// And yet every grant shows the renewed deadline.
	st, err := b.Inspect(ctxFor(t, 10*time.Second), strings.TrimPrefix(nodes[0].p[:strings.LastIndexByte(nodes[0].p, '/')], b.root+"/"))
	if err != nil || !st.Held || !st.Holder.ExpiresAt.Equal(time.UnixMilli(r.ExpiresAt.UnixMilli())) {
		t.Errorf("Inspect = %+v (%v), want held until the renewed %v", st.Holder, err, r.ExpiresAt)
	}
}

// A key watcher sees a session's grant as released when the session is
// closed, and as expired when the session runs out with nobody touching the
// key — not at the deadline it was granted with, when the session was
// renewed since.
func TestSessionGrantEventsOnWatch(t *testing.T) {
	z := sharedZK(t, 1)
	b := newBackend(t, z.Addrs(), Options{})
	watcher := newBackend(t, z.Addrs(), Options{})
	ss := b.Sessions()
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancel()
	closed, expiring := uniqueKey(t)+"-closed", uniqueKey(t)+"-expiring"

	s1, err := ss.Open(ctx, "closer", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 3 * time.Second // room for two grants and two watches on a loaded machine
	s2, err := ss.Open(ctx, "expirer", ttl)
	if err != nil {
		t.Fatal(err)
	}
	g1, err := b.Acquire(ctx, backend.AcquireRequest{Key: closed, Session: s1.ID})
	if err != nil {
		t.Fatal(err)
	}
	g2, err := b.Acquire(ctx, backend.AcquireRequest{Key: expiring, Session: s2.ID})
	if err != nil {
		t.Fatal(err)
	}
	w1, err := watcher.Watch(ctx, closed, "")
	if err != nil {
		t.Fatal(err)
	}
	w2, err := watcher.Watch(ctx, expiring, "")
	if err != nil {
		t.Fatal(err)
	}
	next := func(w <-chan backend.KeyEvent, within time.Duration) (backend.KeyEvent, bool) {
		t.Helper()
		select {
		case e := <-w:
			if e.Err != nil {
				t.Fatalf("watch ended: %v", e.Err)
			}
			return e, true
		case <-time.After(within):
			return backend.KeyEvent{}, false
		}
	}
	for i, w := range []<-chan backend.KeyEvent{w1, w2} {
		g := []backend.Grant{g1, g2}[i]
		if e, ok := next(w, 10*time.Second); !ok || e.Kind != backend.KeySnapshot || !e.Held || e.Token != g.Token || !sameMs(e.ExpiresAt, g.ExpiresAt) {
			t.Fatalf("first event %+v, want a snapshot held by %d until %v", e, g.Token, g.ExpiresAt)
		}
	}

	// Renewed before its first deadline: no event at that deadline.
	r2, err := ss.Renew(ctx, s2.ID, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := next(w2, time.Until(g2.ExpiresAt.Add(time.Second))); ok {
		t.Fatalf("event %+v at the deadline the grant was made with, want none: the session was renewed to %v", e, r2.ExpiresAt)
	}
	// Then nobody renews it, and the granter is gone: expired, not before
	// the renewed deadline.
	b.Close()
	e, ok := next(w2, 20*time.Second)
	if !ok || e.Kind != backend.KeyExpired || e.Token != g2.Token {
		t.Fatalf("event %+v (%v), want expired for token %d", e, ok, g2.Token)
	}
	if now := time.Now(); now.Before(r2.ExpiresAt) {
		t.Errorf("expired at %v, before the session's renewed deadline %v", now, r2.ExpiresAt)
	}

	// Closing the session (from another replica) releases its grant.
	if err := watcher.Sessions().Close(ctx, s1.ID); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if e, ok := next(w1, 10*time.Second); !ok || e.Kind != backend.KeyReleased || e.Token != g1.Token {
		t.Fatalf("event %+v (%v) after Close, want released for token %d", e, ok, g1.Token)
	}
}

func sameMs(a, b time.Time) bool { return a.UnixMilli() == b.UnixMilli() }

// The session's index (how Close finds its nodes) loses the entry of every
// node that leaves its queue: released grants and waiters that gave up. A
// long session of many short grants does not grow it.
func TestSessionIndexEmptiesAsNodesLeave(t *testing.T) {
	z := sharedZK(t, 1)
	b := newBackend(t, z.Addrs(), Options{})
	ss := b.Sessions()
	sess, err := ss.Open(ctxFor(t, 10*time.Second), "short", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	key, busy := uniqueKey(t), uniqueKey(t)+"-busy"
	for i := range 5 {
		g, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, Session: sess.ID})
		if err != nil {
			t.Fatalf("Acquire %d: %v", i, err)
		}
		if err := b.Release(ctxFor(t, 10*time.Second), key, g.LeaseID); err != nil {
			t.Fatalf("Release %d: %v", i, err)
		}
	}
	if _, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: busy, TTL: 30 * time.Second}); err != nil {
		t.Fatal(err)
	}
	_, err = b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: busy, Session: sess.ID, Wait: 300 * time.Millisecond})
	if !errors.Is(err, backend.ErrHeld) {
		t.Fatalf("Acquire of a held key: %v, want ErrHeld", err)
	}
	sp := b.sessionPath(sessionHash(sess.ID))
	waitFor(t, func() bool {
		names, _, err := b.conn.Children(sp)
		return err == nil && len(names) == 0
	}, "the session's index to empty")
}

// The sweep deletes the nodes of sessions that are over (expired past the
// skew, or closed), and leaves the others; a grant of a swept session holds
// nothing.
func TestSessionSweep(t *testing.T) {
	z := sharedZK(t, 1)
	b := newBackend(t, z.Addrs(), Options{Root: uniqueRoot(t)})
	b.sess.delayKeep = 0 // no lock-delay asked for: nothing to keep the node for (set before any sweep runs)
	ss := b.Sessions()
	live, err := ss.Open(ctxFor(t, 10*time.Second), "live", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	dying, err := ss.Open(ctxFor(t, 10*time.Second), "dying", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	key := uniqueKey(t)
	g, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, Session: dying.ID})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(dying.ExpiresAt.Add(100 * time.Millisecond)))
	n, err := b.sweepSessions(ctxFor(t, 20*time.Second))
	if err != nil || n != 1 {
		t.Fatalf("sweep = %d (%v), want 1 session deleted", n, err)
	}
	if ok, _, _ := b.conn.Exists(b.sessionPath(sessionHash(dying.ID))); ok {
		t.Errorf("the expired session's node is still there")
	}
	if _, err := ss.Get(ctxFor(t, 10*time.Second), live.ID); err != nil {
		t.Errorf("Get(live session) after the sweep: %v", err)
	}
	n2, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: 10 * time.Second})
	if err != nil {
		t.Fatalf("Acquire after the session was swept: %v", err)
	}
	if n2.Token <= g.Token {
		t.Errorf("token %d after %d, want greater", n2.Token, g.Token)
	}
	if _, err := ss.Renew(ctxFor(t, 10*time.Second), dying.ID, time.Minute); !errors.Is(err, backend.ErrSessionExpired) {
		t.Errorf("Renew of a swept session: %v, want ErrSessionExpired", err)
	}
}

// A session's queue node says so in its name, and an old node's name (no
// session) still reads as before.
func TestSessionNodeName(t *testing.T) {
	h := sessionHash(lease.NewID())
	secret := lease.NewID()
	name := nodeName(secret, 2*time.Second, time.UnixMilli(1_790_000_000_000), "s-owner", h) + "0000000007"
	c, ok := parseChild(name)
	if !ok || c.session != h || c.ttl != 2*time.Second || c.owner != "s-owner" || c.seq != 7 || c.secretHash() != nodeHash(secret) {
		t.Fatalf("parseChild(%q) = %+v, %v; want session %s, ttl 2s", name, c, ok, h)
	}
	old := protected(secret) + "2000-1790000000000-b3du-lock-0000000008"
	c, ok = parseChild(old)
	if !ok || c.session != "" || c.ttl != 2*time.Second || c.owner != "own" {
		t.Fatalf("parseChild(%q) = %+v, %v; want a lease of its own", old, c, ok)
	}
	for _, bad := range []string{"2000s", "2000sXYZ", "2000s" + strings.ToUpper(h), "s" + h} {
		n := protected(secret) + bad + "-1790000000000-b3du-lock-0000000009"
		if c, ok := parseChild(n); ok {
			t.Errorf("parseChild(%q) = %+v, want a foreign node", n, c)
		}
	}
}

// Closing a session on one replica ends, at once, an acquire waiting in it
// on another: the waiter watches the session's node, not only its own
// replica's doings. Its queue node goes, and the holder keeps the key.
func TestSessionCloseElsewhereEndsWaiter(t *testing.T) {
	z := sharedZK(t, 1)
	a := newBackend(t, z.Addrs(), Options{})
	b := newBackend(t, z.Addrs(), Options{})
	key := uniqueKey(t)
	holder, err := a.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, Owner: "holder", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := a.Sessions().Open(ctxFor(t, 10*time.Second), "waiter", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.Acquire(ctxFor(t, 60*time.Second), backend.AcquireRequest{Key: key, Session: sess.ID, Wait: 45 * time.Second})
		done <- err
	}()
	waitFor(t, func() bool {
		st, err := a.Inspect(ctxFor(t, 10*time.Second), key)
		return err == nil && st.Waiters == 1
	}, "the session's waiter to queue")
	if err := a.Sessions().Close(ctxFor(t, 10*time.Second), sess.ID); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, backend.ErrSessionExpired) {
			t.Fatalf("the waiter on the other replica: %v, want ErrSessionExpired", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter on the other replica still waits 10s after Close")
	}
	waitFor(t, func() bool {
		st, err := a.Inspect(ctxFor(t, 10*time.Second), key)
		return err == nil && st.Waiters == 0 && st.Held && st.Holder.Token == holder.Token
	}, "the waiter's node to go, the holder keeping the key")
}

// A grant in a session that expires keeps its lock-delay even when a sweep
// runs inside the delay: the session's node, whose deadline the delay runs
// from, is kept until MaxLockDelay has passed.
func TestSessionSweepKeepsLockDelay(t *testing.T) {
	z := sharedZK(t, 1)
	b := newBackend(t, z.Addrs(), Options{Root: uniqueRoot(t)})
	ss := b.Sessions()
	s, err := ss.Open(ctxFor(t, 10*time.Second), "dying", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	key := uniqueKey(t)
	g, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, Session: s.ID, LockDelay: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(s.ExpiresAt.Add(200 * time.Millisecond)))
	if n, err := b.sweepSessions(ctxFor(t, 20*time.Second)); err != nil || n != 0 {
		t.Fatalf("sweep inside the lock-delay = %d (%v), want the expired session kept", n, err)
	}
	_, err = b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: 10 * time.Second})
	var he *backend.HeldError
	if !errors.As(err, &he) || he.Delay == nil || he.Delay.ExpiredToken != g.Token {
		t.Fatalf("single try after the sweep: %v, want refused with the session grant's lock-delay", err)
	}
}
