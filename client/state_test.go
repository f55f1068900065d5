package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lockdtest"
)

// wantState waits for the next state on states, within a generous bound.
func wantState(t *testing.T, states <-chan client.LeaseState, want client.LeaseState) {
	t.Helper()
	select {
	case got, ok := <-states:
		if !ok {
			t.Fatalf("states closed, want %v", want)
		}
		if got != want {
			t.Fatalf("state %v, want %v", got, want)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no state within 20 s, want %v", want)
	}
}

func wantClosed(t *testing.T, states <-chan client.LeaseState) {
	t.Helper()
	select {
	case s, ok := <-states:
		if ok {
			t.Fatalf("state %v after lost, want the channel closed", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("states still open after lost")
	}
}

// Renewals that fail because the network between the client and lockd is
// cut put the lock in jeopardy while its lease is still valid; the first
// renew after the network is back makes it held again; Release makes it
// lost, and the channel closes.
func TestLeaseStatesJeopardyOnCutThenHeld(t *testing.T) {
	proxy := cutter(t, sharedServer(t).Addr)
	c := newClient(t, "http://"+proxy.Listen, &client.Options{MaxRetries: -1})
	ctx := ctxFor(t, time.Minute)

	l, err := c.Acquire(ctx, k(t, "c-jeopardy"), client.AcquireOptions{TTL: 10 * time.Second, RenewEvery: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	states := l.States()
	wantState(t, states, client.StateHeld)

	proxy.Stop()
	wantState(t, states, client.StateJeopardy)
	if l.State() != client.StateJeopardy || l.Err() != nil || !time.Now().Before(l.Deadline()) {
		t.Fatalf("in jeopardy: state %v err %v deadline %v, want a lease still valid", l.State(), l.Err(), l.Deadline())
	}
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	wantState(t, states, client.StateHeld)

	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	wantState(t, states, client.StateLost)
	wantClosed(t, states)
	// A reader that comes late gets the final state and a closed channel.
	late := l.States()
	wantState(t, late, client.StateLost)
	wantClosed(t, late)
}

// A renew that hangs (lockd stopped with SIGSTOP: the connection stays open
// and nothing answers) puts a Leadership in jeopardy two renew periods after
// the last successful send, long before its deadline; once lockd runs again
// the renew succeeds and the leadership is held again.
func TestLeaseStatesJeopardyWhenLockdPausedThenHeld(t *testing.T) {
	srv := lockdtest.Start(t, nil)
	c := newClient(t, srv.URL, nil)
	ctx := ctxFor(t, time.Minute)

	l, err := c.Campaign(ctx, k(t, "c-jeopardy-elect"), client.CampaignOptions{TTL: 12 * time.Second, RenewEvery: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	states := l.States()
	wantState(t, states, client.StateHeld)

	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	paused := true
	t.Cleanup(func() {
		if paused {
			srv.Resume()
		}
	})
	wantState(t, states, client.StateJeopardy)
	if l.Err() != nil {
		t.Fatalf("in jeopardy: %v, want the leadership not lost", l.Err())
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	paused = false
	wantState(t, states, client.StateHeld)
	if err := l.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	wantState(t, states, client.StateLost)
	wantClosed(t, states)
}

// A lease the server refuses to renew goes straight to lost.
func TestLeaseStatesLostOnRefusal(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	ctx := ctxFor(t, time.Minute)
	key := k(t, "c-state-refused")
	l, err := c.Acquire(ctx, key, client.AcquireOptions{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	states := l.States()
	wantState(t, states, client.StateHeld)
	// Someone releases the lease behind the lock's back.
	if err := c.ReleaseLease(ctx, key, l.LeaseID()); err != nil {
		t.Fatal(err)
	}
	if err := l.Renew(ctx); err == nil {
		t.Fatal("renew of a released lease succeeded")
	}
	wantState(t, states, client.StateLost)
	wantClosed(t, states)
	_ = l.Release(context.Background())
}
