package client_test

import (
	"errors"
	"testing"
	"time"

	"github.com/lockd/lockd/client"
)

// Permits are Locks: they renew past their TTL, have distinct slots and
// increasing tokens; a full semaphore refuses with ErrHeld, another size
// with permits_mismatch, and a waiter gets the slot a Release frees.
func TestAcquireSemaphore(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	ctx := ctxFor(t, time.Minute)
	key := k(t, "c-sem")
	a, err := c.AcquireSemaphore(ctx, key, client.SemaphoreOptions{Permits: 2, TTL: 600 * time.Millisecond, Owner: "a"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.AcquireSemaphore(ctx, key, client.SemaphoreOptions{Permits: 2, TTL: 10 * time.Second, Owner: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if a.Slot() == b.Slot() || a.Slot() < 0 || a.Slot() > 1 || b.Slot() < 0 || b.Slot() > 1 || b.Token() <= a.Token() || a.Permits() != 2 {
		t.Fatalf("permits {slot %d token %d} and {slot %d token %d} of 2, want two slots in 0..1 and increasing tokens", a.Slot(), a.Token(), b.Slot(), b.Token())
	}
	time.Sleep(1500 * time.Millisecond) // past a's TTL: the renewals hold it
	select {
	case <-a.Lost():
		t.Fatalf("lost while renewing: %v", a.Err())
	default:
	}
	if _, err := c.AcquireSemaphore(ctx, key, client.SemaphoreOptions{Permits: 2}); !errors.Is(err, client.ErrHeld) {
		t.Fatalf("a third permit of 2: %v, want ErrHeld", err)
	}
	var e *client.Error
	if _, err := c.AcquireSemaphore(ctx, key, client.SemaphoreOptions{Permits: 3}); !errors.As(err, &e) || e.Code != "permits_mismatch" {
		t.Fatalf("a permit of 3 while 2 is live: %v, want permits_mismatch", err)
	}
	next := make(chan *client.Lock, 1)
	go func() {
		w, err := c.AcquireSemaphore(ctx, key, client.SemaphoreOptions{Permits: 2, TTL: 10 * time.Second, Owner: "w", Wait: 30 * time.Second})
		if err != nil {
			t.Errorf("waiting permit: %v", err)
		}
		next <- w
	}()
	time.Sleep(300 * time.Millisecond) // w is in line
	if err := a.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if !errors.Is(a.Err(), client.ErrReleased) {
		t.Errorf("after Release, Err = %v, want ErrReleased", a.Err())
	}
	w := <-next
	if w == nil {
		t.FailNow()
	}
	if w.Slot() != a.Slot() || w.Token() <= b.Token() {
		t.Errorf("waiter {slot %d token %d}, want a's freed slot %d and a token above %d", w.Slot(), w.Token(), a.Slot(), b.Token())
	}
	for _, l := range []*client.Lock{b, w} {
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
}
