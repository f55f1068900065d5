package client_test

import (
	"errors"
	"testing"
	"time"

	"github.com/lockd/lockd/client"
)

// A session keeps its locks and its leadership past their TTL with its own
// renewals alone, and Close frees them all at once on the server; the locks
// and the leadership then report Lost.
func TestSessionKeepsGrantsAndCloseFreesThem(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	ctx := ctxFor(t, time.Minute)
	s, err := c.OpenSession(ctx, client.SessionOptions{TTL: 600 * time.Millisecond, Owner: "worker"})
	if err != nil {
		t.Fatal(err)
	}
	if s.ID() == "" || s.Owner() != "worker" || s.TTL() != 600*time.Millisecond {
		t.Fatalf("session {id %q owner %q ttl %v}, want an id, worker, 600ms", s.ID(), s.Owner(), s.TTL())
	}
	ka, kb, name := k(t, "s-a"), k(t, "s-b"), k(t, "s-e")
	a, err := c.Acquire(ctx, ka, client.AcquireOptions{Session: s})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Acquire(ctx, kb, client.AcquireOptions{Session: s})
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.Campaign(ctx, name, client.CampaignOptions{Session: s, Value: "v"})
	if err != nil {
		t.Fatal(err)
	}
	first := a.Deadline()
	time.Sleep(1500 * time.Millisecond) // past the TTL: only the session renews
	for _, lk := range []*client.Lock{a, b, l.Lock} {
		select {
		case <-lk.Lost():
			t.Fatalf("%s lost while its session renews: %v", lk.Key(), lk.Err())
		default:
		}
	}
	if !a.Deadline().After(first) {
		t.Errorf("lock deadline %v, want moved past %v by the session's renewals", a.Deadline(), first)
	}
	st, err := c.Inspect(ctx, ka)
	if err != nil || !st.Held || st.Holder.Token != a.Token() {
		t.Fatalf("Inspect = %+v (%v), want held by token %d", st, err, a.Token())
	}
	if _, err := c.RenewLease(ctx, ka, a.LeaseID(), 0); err == nil {
		t.Errorf("a direct renew of a session's lease succeeded, want 409 session_bound")
	}

	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !errors.Is(s.Err(), client.ErrReleased) {
		t.Errorf("after Close, session Err = %v, want ErrReleased", s.Err())
	}
	for _, key := range []string{ka, kb} {
		st, err := c.Inspect(ctx, key)
		if err != nil || st.Held {
			t.Errorf("Inspect(%q) after Close = %+v (%v), want free", key, st, err)
		}
	}
	for _, lk := range []*client.Lock{a, b, l.Lock} {
		select {
		case <-lk.Lost():
			if !errors.Is(lk.Err(), client.ErrLeaseExpired) {
				t.Errorf("%s Err = %v, want ErrLeaseExpired", lk.Key(), lk.Err())
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s not lost 10s after its session closed", lk.Key())
		}
	}
	if _, err := c.Acquire(ctx, k(t, "s-c"), client.AcquireOptions{Session: s}); !errors.Is(err, client.ErrSessionExpired) {
		t.Errorf("Acquire in a closed session: %v, want ErrSessionExpired", err)
	}
}
