package client_test

import (
	"errors"
	"testing"
	"time"

	"github.com/lockd/lockd/client"
)

// A Leadership renews itself past its TTL, proclaims in the same term, and
// hands over on Resign to the candidate waiting, whose term is higher; the
// refused candidate is told who leads.
func TestCampaignProclaimResign(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	ctx := ctxFor(t, time.Minute)
	name := k(t, "c-elect")

	before := time.Now()
	a, err := c.Campaign(ctx, name, client.CampaignOptions{TTL: 600 * time.Millisecond, Owner: "a", Value: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	if a.Term() == 0 || a.Name() != name || a.Value() != "v1" || a.Deadline().Before(before.Add(600*time.Millisecond)) {
		t.Fatalf("leadership {term %d name %q value %q deadline %v}, want a term, the name, v1, a deadline from the send", a.Term(), a.Name(), a.Value(), a.Deadline())
	}
	time.Sleep(1500 * time.Millisecond) // past the TTL: the renewals hold it
	select {
	case <-a.Lost():
		t.Fatalf("lost while renewing: %v", a.Err())
	default:
	}
	if err := a.Proclaim(ctx, "v2"); err != nil {
		t.Fatalf("Proclaim: %v", err)
	}
	_, err = c.Campaign(ctx, name, client.CampaignOptions{Owner: "b"})
	var e *client.Error
	if !errors.Is(err, client.ErrHeld) || !errors.As(err, &e) || e.Leader == nil || e.Leader.Term != a.Term() || e.Leader.Value != "v2" {
		t.Fatalf("a second campaign: %v, want ErrHeld naming the leader {term %d value v2}", err, a.Term())
	}

	next := make(chan *client.Leadership, 1)
	go func() {
		b, err := c.Campaign(ctx, name, client.CampaignOptions{TTL: 10 * time.Second, Owner: "b", Wait: 30 * time.Second})
		if err != nil {
			t.Errorf("waiting candidate: %v", err)
		}
		next <- b
	}()
	time.Sleep(300 * time.Millisecond) // b is in line
	if err := a.Resign(ctx); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	if !errors.Is(a.Err(), client.ErrReleased) {
		t.Errorf("after Resign, Err = %v, want ErrReleased", a.Err())
	}
	b := <-next
	if b == nil {
		t.FailNow()
	}
	if b.Term() <= a.Term() {
		t.Errorf("next term %d after %d, want greater", b.Term(), a.Term())
	}
	if err := a.Proclaim(ctx, "stale"); err == nil {
		t.Errorf("a resigned leader proclaimed")
	}
	if err := b.Resign(ctx); err != nil {
		t.Fatalf("Resign: %v", err)
	}
}
