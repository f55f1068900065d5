package redis

import (
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
	"github.com/lockd/lockd/internal/testserver"
)

// A lockd that queued a waiter and died never refreshes its heartbeat nor
// leaves the queue. Its slot lapses after HeartbeatTimeout, and the live
// waiter behind it gets the lock, instead of the queue stalling forever.
func TestDeadWaiterSlotLapses(t *testing.T) {
	srv := testserver.Redis(t, 1)
	const beat = 600 * time.Millisecond
	b := newFactory(srv.Addr(0), Options{HeartbeatTimeout: beat})(t)
	key := "dead-waiter"
	holder, err := b.Acquire(ctx(t), backend.AcquireRequest{Key: key, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	// The dead lockd's only act: one acquire script run that queued it.
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr(0)})
	t.Cleanup(func() { _ = raw.Close() })
	kb := b.(*Backend)
	if err := acquireScript.Run(ctx(t), raw, kb.keys(key), lease.NewID(), "dead", 60000, "dead-waiter-id", beat.Milliseconds()).Err(); err != nil {
		t.Fatalf("queue the dead waiter: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.Acquire(ctx(t), backend.AcquireRequest{Key: key, Owner: "live", TTL: time.Minute, Wait: 15 * time.Second})
		done <- err
	}()
	waitWaiters(t, b, key, 2)
	released := time.Now()
	if err := b.Release(ctx(t), key, holder.LeaseID); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("live waiter behind a dead one: %v", err)
	}
	// Bound: the dead slot lapses at most one heartbeat timeout after it was
	// written, and the live waiter notices at its next beat (a third of it).
	if took := time.Since(released); took > beat+beat/3+time.Second {
		t.Errorf("live waiter granted %v after the release, want within about %v", took, beat+beat/3)
	}
}

// The one pub/sub subscription of a Backend survives a Redis restart
// (go-redis resubscribes): a waiter queued before the restart is granted once
// the lock is free again, and a later release still wakes a waiter at once,
// not at its next heartbeat.
func TestWakeUpsSurviveRedisRestart(t *testing.T) {
	srv := testserver.Redis(t, 1)
	const beat = 30 * time.Second // heartbeats every 10 s: far slower than a wake-up
	f := newFactory(srv.Addr(0), Options{HeartbeatTimeout: beat})
	b := f(t)
	key := "restart-wake"
	if _, err := b.Acquire(ctx(t), backend.AcquireRequest{Key: key, TTL: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(0); err != nil {
		t.Fatal(err)
	}
	// Redis forgot everything: the first call on each pooled connection
	// may fail, so retry the setup's single try.
	var g backend.Grant
	var err error
	for i := 0; i < 20; i++ {
		if g, err = b.Acquire(ctx(t), backend.AcquireRequest{Key: key, Owner: "holder", TTL: time.Minute}); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("acquire after restart: %v", err)
	}
	waiter := f(t)
	done := make(chan error, 1)
	go func() {
		_, err := waiter.Acquire(ctx(t), backend.AcquireRequest{Key: key, TTL: time.Minute, Wait: 15 * time.Second})
		done <- err
	}()
	waitWaiters(t, b, key, 1)
	// b's subscription was cut by the restart; give go-redis a moment to
	// resubscribe, then check that b's release reaches the other replica.
	time.Sleep(300 * time.Millisecond)
	released := time.Now()
	if err := b.Release(ctx(t), key, g.LeaseID); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if took := time.Since(released); took > 2*time.Second {
		t.Errorf("waiter granted %v after the release: woken by its heartbeat, not by pub/sub", took)
	}

	// And a waiter on b itself, whose own subscription was cut.
	g2, err := waiter.Acquire(ctx(t), backend.AcquireRequest{Key: key + "2", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, err := b.Acquire(ctx(t), backend.AcquireRequest{Key: key + "2", TTL: time.Minute, Wait: 15 * time.Second})
		done <- err
	}()
	waitWaiters(t, b, key+"2", 1)
	released = time.Now()
	if err := waiter.Release(ctx(t), key+"2", g2.LeaseID); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("waiter on the restarted subscription: %v", err)
	}
	if took := time.Since(released); took > 2*time.Second {
		t.Errorf("waiter on the restarted subscription granted %v after the release, want a pub/sub wake-up", took)
	}
}

func waitWaiters(t *testing.T, b backend.Backend, key string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := b.Inspect(ctx(t), key)
		if err == nil && st.Waiters == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Inspect(%q) = %+v, %v; want %d waiters", key, st, err, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A holder that never releases wakes the waiter at its expiry through the
// timer set from the holder's deadline, not at the waiter's next heartbeat
// (here 10 s away).
func TestExpiryWakesWaiterByTimer(t *testing.T) {
	srv := testserver.Redis(t, 1)
	f := newFactory(srv.Addr(0), Options{HeartbeatTimeout: 30 * time.Second})
	key := "expiry-timer"
	g, err := f(t).Acquire(ctx(t), backend.AcquireRequest{Key: key, TTL: 700 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w, err := f(t).Acquire(ctx(t), backend.AcquireRequest{Key: key, TTL: time.Minute, Wait: 15 * time.Second})
	if err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if late := time.Since(g.ExpiresAt); late > time.Second {
		t.Errorf("waiter granted %v after the holder's expiry, want promptly (timer at the expiry)", late)
	}
	if w.Token <= g.Token {
		t.Errorf("waiter's token %d, want above %d", w.Token, g.Token)
	}
}
