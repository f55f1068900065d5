package zk

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
)

// A grant that begins and ends between a key watcher's two reads is still
// delivered: the watcher's node makes every replica log the key's removals
// (the watcher's link is slow, 200 ms each way; the lock's users' is not).
// A key nobody watches logs nothing: its znode's data stays empty.
func TestWatchGrantBetweenTwoReads(t *testing.T) {
	z := sharedZK(t, 1)
	proxy := zkProxy(t, z.Addr(0))
	slowLink(t, proxy, 200)
	wb := newBackend(t, []string{proxy.Listen}, Options{})
	b := newBackend(t, z.Addrs(), Options{})
	key, unwatched := uniqueKey(t), uniqueKey(t)
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancel()

	g1, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: "one", TTL: 20 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	events, err := wb.Watch(ctx, key, "")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	type ev struct {
		kind  string
		token uint64
	}
	next := func() ev {
		t.Helper()
		select {
		case e := <-events:
			if e.Err != nil {
				t.Fatalf("watch ended: %v", e.Err)
			}
			return ev{e.Kind, e.Token}
		case <-time.After(20 * time.Second):
			t.Fatal("no event within 20s")
		}
		return ev{}
	}
	if got := next(); got != (ev{backend.KeySnapshot, g1.Token}) {
		t.Fatalf("first event %+v, want a snapshot held by %d", got, g1.Token)
	}
	waiter := make(chan backend.Grant, 1)
	go func() {
		g, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: "two", TTL: 20 * time.Second, Wait: 30 * time.Second})
		if err != nil {
			t.Errorf("the waiter: %v", err)
		}
		waiter <- g
	}()
	waitFor(t, func() bool {
		st, err := b.Inspect(ctxFor(t, 10*time.Second), key)
		return err == nil && st.Waiters == 1
	}, "the waiter to queue")
	time.Sleep(time.Second) // the watcher has read the queue with it
	if err := b.Release(ctx, key, g1.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	g2 := <-waiter
	if err := b.Release(ctx, key, g2.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	g3, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: "three", TTL: 20 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	want := []ev{{backend.KeyReleased, g1.Token}, {backend.KeyAcquired, g2.Token}, {backend.KeyReleased, g2.Token}, {backend.KeyAcquired, g3.Token}}
	var got []ev
	for len(got) < len(want) {
		got = append(got, next())
		if got[len(got)-1] == want[len(want)-1] {
			break
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %+v, want %+v", got, want)
	}

	g, err := b.Acquire(ctx, backend.AcquireRequest{Key: unwatched, TTL: 20 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if err := b.Release(ctx, unwatched, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if raw, _, err := b.conn.Get(b.keyPath(unwatched)); err == nil && len(raw) > 0 {
		t.Errorf("the unwatched key's znode holds %q, want nothing logged", raw)
	}
}

// BenchmarkWatchedRelease measures an uncontended acquire + release on a key
// nobody watches and on one a watcher follows (each release then also logs
// the ended grant: two reads at once and one more op in the multi-op).
func BenchmarkWatchedRelease(b *testing.B) {
	z := sharedZK(b, 1)
	be := newBackend(b, z.Addrs(), Options{})
	wb := newBackend(b, z.Addrs(), Options{})
	ctx := context.Background()
	run := func(b *testing.B, watched bool) {
		key := uniqueKey(b)
		if watched {
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			events, err := wb.Watch(wctx, key, "")
			if err != nil {
				b.Fatal(err)
			}
			go func() {
				for range events {
				}
			}()
			// The acquirer's first listing shows the watcher's node.
			for !be.watchers.has(be.keyPath(key)) {
				if _, err := be.Inspect(ctx, key); err != nil {
					b.Fatal(err)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		for b.Loop() {
			g, err := be.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: time.Minute})
			if err != nil {
				b.Fatal(err)
			}
			if err := be.Release(ctx, key, g.LeaseID); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("unwatched", func(b *testing.B) { run(b, false) })
	b.Run("watched", func(b *testing.B) { run(b, true) })
}

// A key watcher whose session expires loses its node, and with it the
// logging of the key's removals: its stream ends with ErrUnavailable (the
// caller watches again from its last cursor) rather than go on blind. A
// foreign node keeps ZooKeeper from reaping the key's znode meanwhile (which
// ends the stream too, TestObserveReapedElectionEnds).
func TestWatchSessionExpiryEnds(t *testing.T) {
	z := sharedZK(t, 1)
	proxy := zkProxy(t, z.Addr(0))
	conn, err := dialSession(ctxFor(t, 30*time.Second), []string{proxy.Listen}, time.Second)
	if err != nil {
		t.Fatalf("dial through the proxy: %v", err)
	}
	wb := New(conn, Options{})
	t.Cleanup(func() { wb.Close() })
	b := newBackend(t, z.Addrs(), Options{})
	key := uniqueKey(t)
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancel()
	events, err := wb.Watch(ctx, key, "")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if ev := <-events; ev.Kind != backend.KeySnapshot {
		t.Fatalf("first event %+v, want a snapshot", ev)
	}
	pin := b.keyPath(key) + "/pin"
	if _, err := b.conn.Create(pin, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatalf("create a foreign node: %v", err)
	}
	t.Cleanup(func() { b.conn.Delete(pin, -1) })
	proxy.Stop()
	time.Sleep(3 * time.Second) // three session timeouts: ZooKeeper expires it
	g, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: 20 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if err := b.Release(ctx, key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := proxy.Start(); err != nil {
		t.Fatalf("proxy restart: %v", err)
	}
	for timeout := time.After(20 * time.Second); ; {
		select {
		case ev := <-events:
			if ev.Err != nil {
				t.Logf("the stream ended: %v", ev.Err)
				if !errors.Is(ev.Err, backend.ErrUnavailable) {
					t.Fatalf("the stream ended with %v, want ErrUnavailable", ev.Err)
				}
				return
			}
			t.Fatalf("event %+v after the session expired, want the stream's end", ev)
		case <-timeout:
			t.Fatal("no error event within 20s of the new session")
		}
	}
}
