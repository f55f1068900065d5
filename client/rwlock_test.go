package client_test

import (
	"errors"
	"testing"
	"time"

	"github.com/lockd/lockd/client"
)

// Readers share and renew themselves past their TTL; a writer is refused
// while they hold, waits, and gets the lock with a higher token once they
// release; Mode tells the two apart, and a plain lock has none.
func TestAcquireReadWrite(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	ctx := ctxFor(t, time.Minute)
	key := k(t, "c-rw")

	r1, err := c.AcquireRead(ctx, key, client.AcquireOptions{TTL: 600 * time.Millisecond, Owner: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := c.AcquireRead(ctx, key, client.AcquireOptions{TTL: 10 * time.Second, Owner: "r2"})
	if err != nil {
		t.Fatalf("second reader: %v", err)
	}
	if r1.Mode() != client.ModeRead || r2.Mode() != client.ModeRead || r1.Token() == 0 || r1.LeaseID() == r2.LeaseID() {
		t.Fatalf("readers = {mode %q token %d}, {mode %q}: want two read grants with their own leases", r1.Mode(), r1.Token(), r2.Mode())
	}
	if _, err := c.AcquireWrite(ctx, key, client.AcquireOptions{Owner: "w"}); !errors.Is(err, client.ErrHeld) {
		t.Fatalf("writer among readers: %v, want ErrHeld", err)
	}
	time.Sleep(1500 * time.Millisecond) // past r1's TTL: its renewals hold it
	select {
	case <-r1.Lost():
		t.Fatalf("reader lost while renewing: %v", r1.Err())
	default:
	}

	got := make(chan *client.Lock, 1)
	go func() {
		w, err := c.AcquireWrite(ctx, key, client.AcquireOptions{TTL: 10 * time.Second, Owner: "w", Wait: 30 * time.Second})
		if err != nil {
			t.Errorf("waiting writer: %v", err)
		}
		got <- w
	}()
	time.Sleep(300 * time.Millisecond) // the writer is in line
	for _, r := range []*client.Lock{r1, r2} {
		if err := r.Release(ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	w := <-got
	if w == nil {
		t.FailNow()
	}
	if w.Mode() != client.ModeWrite || w.Token() <= r1.Token() || w.Token() <= r2.Token() {
		t.Errorf("writer = {mode %q token %d}, want write above the readers' %d, %d", w.Mode(), w.Token(), r1.Token(), r2.Token())
	}
	if err := w.Release(ctx); err != nil {
		t.Fatalf("writer Release: %v", err)
	}
	l, err := c.Acquire(ctx, key, client.AcquireOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx)
	if l.Mode() != "" {
		t.Errorf("a lock's Mode = %q, want empty", l.Mode())
	}
}
