package zk

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/testserver"
)

// step is one observed election event, reduced to what the tests compare.
type step struct {
	term   uint64
	value  string // leader
	reason string // no_leader
}

func (s step) String() string {
	if s.reason != "" {
		return fmt.Sprintf("no_leader(%d,%s)", s.term, s.reason)
	}
	return fmt.Sprintf("leader(%d,%q)", s.term, s.value)
}

func stepOf(t *testing.T, ev backend.ElectionEvent) step {
	t.Helper()
	switch {
	case ev.Leader != nil:
		return step{term: ev.Leader.Term, value: ev.Leader.Value}
	case ev.NoLeader != nil:
		return step{term: ev.NoLeader.LastTerm, reason: ev.NoLeader.Reason}
	}
	t.Fatalf("observe ended: %v", ev.Err)
	return step{}
}

// observeUntil reads events until the last of want came (or a while
// passed), failing on an error event, and compares them with want.
func observeUntil(t *testing.T, events <-chan backend.ElectionEvent, want []step, within time.Duration) {
	t.Helper()
	var got []step
	timeout := time.After(within)
	for len(got) < len(want) && (len(got) == 0 || got[len(got)-1] != want[len(want)-1]) {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("the observe channel closed without an error event after %v", got)
			}
			got = append(got, stepOf(t, ev))
		case <-timeout:
			t.Fatalf("events %v within %v, want %v", got, within, want)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

func campaignZK(t *testing.T, el backend.Elections, req backend.CampaignRequest) backend.Leadership {
	t.Helper()
	l, err := el.Campaign(ctxFor(t, req.Wait+20*time.Second), req)
	if err != nil {
		t.Fatalf("Campaign(%s): %v", req.Owner, err)
	}
	return l
}

// A term that begins and ends between a watch's event and the read it
// triggers is still delivered, from the term log: the observer's link is
// slow (200 ms each way), the candidates' is not, so the second term is over
// before the observer reads the queue again. One-shot watches alone would
// show the first term, then the third.
func TestObserveTermBetweenTwoReads(t *testing.T) {
	z := sharedZK(t, 1)
	proxy := zkProxy(t, z.Addr(0))
	slowLink(t, proxy, 200)
	watcher := newBackend(t, []string{proxy.Listen}, Options{}).Elections()
	el := newBackend(t, z.Addrs(), Options{}).Elections()
	name := uniqueKey(t)
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancel()

	one := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: "one", Value: "1", TTL: 20 * time.Second})
	events, err := watcher.Observe(ctx, name)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	observeUntil(t, events, []step{{one.Term, "1", ""}}, 10*time.Second)
	twoDone := make(chan backend.Leadership, 1)
	go func() {
		l, err := el.Campaign(ctx, backend.CampaignRequest{Name: name, Owner: "two", Value: "2", TTL: 20 * time.Second, Wait: 30 * time.Second})
		if err != nil {
			t.Errorf("the second candidate: %v", err)
		}
		twoDone <- l
	}()
	waitFor(t, func() bool {
		st, err := el.Leader(ctxFor(t, 10*time.Second), name)
		return err == nil && st.Candidates == 1
	}, "the second candidate to queue")
	time.Sleep(time.Second) // the observer has read the queue with it
	if err := el.Resign(ctx, name, one.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	two := <-twoDone
	if err := el.Resign(ctx, name, two.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	three := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: "three", Value: "3", TTL: 20 * time.Second})
	observeUntil(t, events, []step{
		{one.Term, "", backend.ReasonResigned},
		{two.Term, "2", ""}, {two.Term, "", backend.ReasonResigned},
		{three.Term, "3", ""},
	}, 20*time.Second)
}

// A proclaim and the resign right after it, both between a watch's event
// and the read it triggers, still deliver the proclaimed value before the
// end of the term: the term log holds the value the term ended with.
// (Proclaims may coalesce, but the last value of a term is never lost.)
func TestObserveProclaimThenResignBetweenTwoReads(t *testing.T) {
	z := sharedZK(t, 1)
	proxy := zkProxy(t, z.Addr(0))
	slowLink(t, proxy, 200)
	watcher := newBackend(t, []string{proxy.Listen}, Options{}).Elections()
	el := newBackend(t, z.Addrs(), Options{}).Elections()
	name := uniqueKey(t)
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancel()

	one := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: "one", Value: "1a", TTL: 20 * time.Second})
	events, err := watcher.Observe(ctx, name)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	observeUntil(t, events, []step{{one.Term, "1a", ""}}, 10*time.Second)
	time.Sleep(time.Second) // the observer's watches are set
	if _, err := el.Proclaim(ctx, name, one.LeaseID, "1b"); err != nil {
		t.Fatalf("Proclaim: %v", err)
	}
	if err := el.Resign(ctx, name, one.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	observeUntil(t, events, []step{{one.Term, "1b", ""}, {one.Term, "", backend.ReasonResigned}}, 20*time.Second)
}

// An observer goes on through a ZooKeeper restart (SIGKILL, then the same
// data): no error event, and the changes made once the server is back reach
// it in order.
func TestObserveThroughServerRestart(t *testing.T) {
	requireZK(t)
	z := testserver.ZooKeeper(t, 1)
	watcher := newBackend(t, z.Addrs(), Options{}).Elections()
	el := newBackend(t, z.Addrs(), Options{}).Elections()
	name := uniqueKey(t)
	ctx, cancel := context.WithCancel(ctxFor(t, 90*time.Second))
	defer cancel()
	one := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: "one", Value: "1", TTL: 40 * time.Second})
	events, err := watcher.Observe(ctx, name)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	observeUntil(t, events, []step{{one.Term, "1", ""}}, 10*time.Second)

	if err := z.Kill(0); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	select {
	case ev := <-events:
		t.Fatalf("event %+v while the server was down", ev)
	case <-time.After(time.Second):
	}
	if err := z.Restart(0); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		err := el.Resign(ctxFor(t, 10*time.Second), name, one.LeaseID)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Resign after the restart: %v", err)
		}
	}
	two := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: "two", Value: "2", TTL: 40 * time.Second})
	observeUntil(t, events, []step{{one.Term, "", backend.ReasonResigned}, {two.Term, "2", ""}}, 30*time.Second)
}

// An observer whose session expires (its link cut for three session
// timeouts) gets a new session, sets its watches again and goes on: the
// term that ended and the one that began meanwhile come in order, with no
// error event.
func TestObserveThroughSessionExpiry(t *testing.T) {
	z := sharedZK(t, 1)
	proxy := zkProxy(t, z.Addr(0))
	var expired atomic.Bool
	conn, err := dialSession(ctxFor(t, 30*time.Second), []string{proxy.Listen}, time.Second, zk.WithEventCallback(func(ev zk.Event) {
		if ev.State == zk.StateExpired {
			expired.Store(true)
		}
	}))
	if err != nil {
		t.Fatalf("dial through the proxy: %v", err)
	}
	wb := New(conn, Options{})
	t.Cleanup(func() { wb.Close() })
	watcher := wb.Elections()
	el := newBackend(t, z.Addrs(), Options{}).Elections()
	name := uniqueKey(t)
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancel()
	one := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: "one", Value: "1", TTL: 30 * time.Second})
	events, err := watcher.Observe(ctx, name)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	observeUntil(t, events, []step{{one.Term, "1", ""}}, 10*time.Second)

	proxy.Stop()
	time.Sleep(3 * time.Second) // three session timeouts: ZooKeeper expires it
	if err := el.Resign(ctx, name, one.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	two := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: "two", Value: "2", TTL: 30 * time.Second})
	if err := proxy.Start(); err != nil {
		t.Fatalf("proxy restart: %v", err)
	}
	observeUntil(t, events, []step{{one.Term, "", backend.ReasonResigned}, {two.Term, "2", ""}}, 20*time.Second)
	if !expired.Load() {
		t.Errorf("the client never saw its session expire: the test did not test expiry")
	}
	// And it still follows: a proclaim after the new session.
	if _, err := el.Proclaim(ctx, name, two.LeaseID, "2b"); err != nil {
		t.Fatalf("Proclaim: %v", err)
	}
	observeUntil(t, events, []step{{two.Term, "2b", ""}}, 10*time.Second)
}

// An election and a lock of one name never meet, and a candidate's value
// survives the handoff that promotes it and its renewals.
func TestElectionOwnNamespaceKeepsValue(t *testing.T) {
	z := sharedZK(t, 1)
	b := newBackend(t, z.Addrs(), Options{})
	el := b.Elections()
	name := uniqueKey(t)
	ctx := ctxFor(t, 30*time.Second)
	g, err := b.Acquire(ctx, backend.AcquireRequest{Key: name, TTL: 20 * time.Second})
	if err != nil {
		t.Fatalf("Acquire the lock %q: %v", name, err)
	}
	one := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: "one", Value: "v1", TTL: 20 * time.Second})
	if st, err := b.Inspect(ctx, name); err != nil || !st.Held || st.Holder.Token != g.Token || st.Waiters != 0 {
		t.Fatalf("the lock after a campaign of the same name: %+v (%v), want held by token %d, no waiter", st, err, g.Token)
	}
	twoDone := make(chan backend.Leadership, 1)
	go func() {
		l, err := el.Campaign(ctx, backend.CampaignRequest{Name: name, Owner: "two", Value: strings.Repeat("w", backend.MaxElectionValue), TTL: 20 * time.Second, Wait: 20 * time.Second})
		if err != nil {
			t.Errorf("the second candidate: %v", err)
		}
		twoDone <- l
	}()
	waitFor(t, func() bool {
		st, err := el.Leader(ctxFor(t, 10*time.Second), name)
		return err == nil && st.Candidates == 1
	}, "the second candidate to queue")
	if err := el.Resign(ctx, name, one.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	two := <-twoDone
	if _, err := el.Renew(ctx, name, two.LeaseID, 30*time.Second); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	st, err := el.Leader(ctx, name)
	if err != nil || st.Leader == nil || st.Leader.Owner != "two" || st.Leader.Value != strings.Repeat("w", backend.MaxElectionValue) {
		t.Fatalf("Leader after the handoff and a renew = %+v (%v), want two with its 4 KiB value", st.Leader, err)
	}
	if err := b.Release(ctx, name, g.LeaseID); err != nil {
		t.Fatalf("Release the lock: %v", err)
	}
	if st, err := el.Leader(ctx, name); err != nil || st.Leader == nil || st.Leader.Term != two.Term {
		t.Fatalf("Leader after the lock's release = %+v (%v), want term %d untouched", st.Leader, err, two.Term)
	}
}

// nextErr waits for the stream's error event, skipping others.
func nextErr(t *testing.T, events <-chan backend.ElectionEvent, within time.Duration) error {
	t.Helper()
	timeout := time.After(within)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("the observe channel closed without an error event")
			}
			if ev.Err != nil {
				if _, open := <-events; open {
					t.Error("an event after the error event")
				}
				return ev.Err
			}
		case <-timeout:
			t.Fatalf("no error event within %v", within)
		}
	}
}

// An observer that falls more terms behind than the term log keeps ends its
// stream with ErrUnavailable (the HTTP layer then sends resync and the state
// afresh), never skipping terms silently.
func TestObserveTooFarBehindEnds(t *testing.T) {
	z := sharedZK(t, 1)
	proxy := zkProxy(t, z.Addr(0))
	watcher := newBackend(t, []string{proxy.Listen}, Options{}).Elections()
	el := newBackend(t, z.Addrs(), Options{}).Elections()
	name := uniqueKey(t)
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancel()
	one := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: "one", TTL: 20 * time.Second})
	events, err := watcher.Observe(ctx, name)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	observeUntil(t, events, []step{{one.Term, "", ""}}, 10*time.Second)
	slowLink(t, proxy, 1000)
	if err := el.Resign(ctx, name, one.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	for i := range logKeep + 2 {
		l := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: fmt.Sprint(i), TTL: 20 * time.Second})
		if err := el.Resign(ctx, name, l.LeaseID); err != nil {
			t.Fatalf("Resign: %v", err)
		}
	}
	if err := nextErr(t, events, 20*time.Second); !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("the stream ended with %v, want ErrUnavailable", err)
	}
}

// An observer cut off from ZooKeeper for longer than its outage bound ends
// its stream with ErrUnavailable rather than go silent.
func TestObserveOutageEnds(t *testing.T) {
	z := sharedZK(t, 1)
	proxy := zkProxy(t, z.Addr(0))
	wb := newBackend(t, []string{proxy.Listen}, Options{})
	wb.elect.outage = time.Second
	el := newBackend(t, z.Addrs(), Options{}).Elections()
	name := uniqueKey(t)
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancel()
	one := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: "one", TTL: 2 * time.Second})
	events, err := wb.Elections().Observe(ctx, name)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	observeUntil(t, events, []step{{one.Term, "", ""}}, 10*time.Second)
	proxy.Stop()
	// The leader's deadline passes unseen: the timer's read cannot be made.
	if err := nextErr(t, events, 30*time.Second); !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("the stream ended with %v, want ErrUnavailable", err)
	}
}

// ZooKeeper reaps an election's znode, and its term log, once nothing is
// left in it: an observer's own ephemeral node keeps it, but not while the
// observer's session is lost. An observer whose session expired while the
// znode was reaped, with terms come and gone, ends its stream with
// ErrUnavailable instead of missing them silently.
func TestObserveReapedElectionEnds(t *testing.T) {
	z := sharedZK(t, 1)
	proxy := zkProxy(t, z.Addr(0))
	conn, err := dialSession(ctxFor(t, 30*time.Second), []string{proxy.Listen}, time.Second)
	if err != nil {
		t.Fatalf("dial through the proxy: %v", err)
	}
	wb := New(conn, Options{})
	t.Cleanup(func() { wb.Close() })
	el := newBackend(t, z.Addrs(), Options{}).Elections()
	name := uniqueKey(t)
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancel()
	one := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: "one", TTL: 20 * time.Second})
	events, err := wb.Elections().Observe(ctx, name)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	observeUntil(t, events, []step{{one.Term, "", ""}}, 10*time.Second)
	proxy.Stop()
	time.Sleep(2 * time.Second) // two session timeouts: ZooKeeper expires it, and its node
	if err := el.Resign(ctx, name, one.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	time.Sleep(2 * time.Second) // the test server reaps empty containers every second
	two := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: "two", TTL: 20 * time.Second})
	if err := el.Resign(ctx, name, two.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	if err := proxy.Start(); err != nil {
		t.Fatalf("proxy restart: %v", err)
	}
	if err := nextErr(t, events, 30*time.Second); !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("the stream ended with %v, want ErrUnavailable", err)
	}
}

// An observer's node keeps the election's znode from being reaped between
// terms, so a slow observer (its link 1.5 s each way, the test server
// reaping every second) still gets every term from the log.
func TestObserveKeepsElectionFromReaping(t *testing.T) {
	z := sharedZK(t, 1)
	proxy := zkProxy(t, z.Addr(0))
	watcher := newBackend(t, []string{proxy.Listen}, Options{}).Elections()
	el := newBackend(t, z.Addrs(), Options{}).Elections()
	name := uniqueKey(t)
	ctx, cancel := context.WithCancel(ctxFor(t, 60*time.Second))
	defer cancel()
	one := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: "one", TTL: 20 * time.Second})
	events, err := watcher.Observe(ctx, name)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	observeUntil(t, events, []step{{one.Term, "", ""}}, 10*time.Second)
	slowLink(t, proxy, 1500)
	if err := el.Resign(ctx, name, one.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	time.Sleep(1500 * time.Millisecond)
	two := campaignZK(t, el, backend.CampaignRequest{Name: name, Owner: "two", Value: "2", TTL: 20 * time.Second})
	if err := el.Resign(ctx, name, two.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	observeUntil(t, events, []step{{one.Term, "", backend.ReasonResigned}, {two.Term, "2", ""}, {two.Term, "", backend.ReasonResigned}}, 40*time.Second)
}
