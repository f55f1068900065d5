package backendtest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
)

// electionTests are the subtests of backend.Elections.
func (s *suite) electionTests() []struct {
	name string
	fn   func(t *testing.T)
} {
	return []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"ElectionOneLeaderUnderContention", s.electionOneLeader},
		{"ElectionTermIncreases", s.electionTermIncreases},
		{"ElectionProclaimOnlyByLeader", s.electionProclaimOnlyByLeader},
		{"ElectionProclaimKeepsTerm", s.electionProclaimKeepsTerm},
		{"ElectionResignHandsOverFIFO", s.electionResignFIFO},
		{"ElectionObserveSeesNoLeader", s.electionObserveNoLeader},
		{"ElectionObserveOrderedTerms", s.electionObserveOrdered},
	}
}

// elections returns a new replica's elections, or skips with the reason the
// backend declared. The replica itself comes second, to Close it.
func (s *suite) elections(t *testing.T) (backend.Elections, backend.Backend) {
	t.Helper()
	b := s.newBackend(t)
	el, ok := b.(backend.Elector)
	if !ok {
		if s.opts.NoElections != "" {
			t.Skip(s.opts.NoElections)
		}
		t.Fatal("the backend does not implement backend.Elector, and Options.NoElections gives no reason")
	}
	return el.Elections(), b
}

func campaign(t *testing.T, el backend.Elections, req backend.CampaignRequest) backend.Leadership {
	t.Helper()
	l, err := el.Campaign(ctxTimeout(t, req.Wait+20*time.Second), req)
	if err != nil {
		t.Fatalf("Campaign(%q, owner %q): %v", req.Name, req.Owner, err)
	}
	if l.Name != req.Name || l.Owner != req.Owner || l.Value != req.Value || l.Term == 0 || l.LeaseID == "" {
		t.Fatalf("Campaign = %+v, want name %q owner %q value %q, a term and a lease id", l, req.Name, req.Owner, req.Value)
	}
	return l
}

// Many candidates on two replicas, none waiting: exactly one leads, and the
// others are told who.
func (s *suite) electionOneLeader(t *testing.T) {
	a, _ := s.elections(t)
	b, _ := s.elections(t)
	name := s.key(t)
	const n = 8
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners []backend.Leadership
		losers  []*backend.NotLeaderError
		others  []error
	)
	for i := range n {
		el := a
		if i%2 == 1 {
			el = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := el.Campaign(ctxTimeout(t, 20*time.Second), backend.CampaignRequest{Name: name, Owner: "c", Value: "v", TTL: 10 * time.Second})
			mu.Lock()
			defer mu.Unlock()
			var ne *backend.NotLeaderError
			switch {
			case err == nil:
				winners = append(winners, l)
			case errors.As(err, &ne) && errors.Is(err, backend.ErrHeld):
				losers = append(losers, ne)
			default:
				others = append(others, err)
			}
		}()
	}
	wg.Wait()
	if len(others) > 0 {
		t.Fatalf("campaign errors: %v", others)
	}
	if len(winners) != 1 {
		t.Fatalf("%d leaders among %d candidates, want exactly 1", len(winners), n)
	}
	for _, ne := range losers {
		if ne.Leader != nil && ne.Leader.Term != winners[0].Term {
			t.Errorf("a loser was told the leader has term %d, want %d", ne.Leader.Term, winners[0].Term)
		}
	}
	st, err := a.Leader(ctxTimeout(t, 10*time.Second), name)
	if err != nil || st.Leader == nil || st.Leader.Term != winners[0].Term {
		t.Fatalf("Leader = %+v (%v), want the winner's term %d", st, err, winners[0].Term)
	}
}

// Each new leader's term is above every earlier one: after a resign and
// after an expiry, on another replica.
func (s *suite) electionTermIncreases(t *testing.T) {
	a, _ := s.elections(t)
	b, _ := s.elections(t)
	name := s.key(t)
	ctx := ctxTimeout(t, 30*time.Second)
	l1 := campaign(t, a, backend.CampaignRequest{Name: name, Owner: "one", TTL: 10 * time.Second})
	if err := a.Resign(ctx, name, l1.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	l2 := campaign(t, b, backend.CampaignRequest{Name: name, Owner: "two", TTL: 300 * time.Millisecond})
	l3 := campaign(t, a, backend.CampaignRequest{Name: name, Owner: "three", TTL: 10 * time.Second, Wait: 10 * time.Second})
	if !(l1.Term < l2.Term && l2.Term < l3.Term) {
		t.Fatalf("terms %d, %d, %d (resign, then expiry in between), want strictly increasing", l1.Term, l2.Term, l3.Term)
	}
}

// Only the unexpired leader proclaims: not a resigned one, not an unknown
// lease, not the leader of another election.
func (s *suite) electionProclaimOnlyByLeader(t *testing.T) {
	el, _ := s.elections(t)
	name, other := s.key(t), s.key(t, "-other")
	ctx := ctxTimeout(t, 30*time.Second)
	old := campaign(t, el, backend.CampaignRequest{Name: name, Owner: "old", Value: "a", TTL: 10 * time.Second})
	if err := el.Resign(ctx, name, old.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	cur := campaign(t, el, backend.CampaignRequest{Name: name, Owner: "cur", Value: "b", TTL: 10 * time.Second})
	elsewhere := campaign(t, el, backend.CampaignRequest{Name: other, Owner: "elsewhere", TTL: 10 * time.Second})
	for what, id := range map[string]string{"a resigned leader's": old.LeaseID, "an unknown": "AAAAAAAAAAAAAAAAAAAAAA", "another election's": elsewhere.LeaseID} {
		if _, err := el.Proclaim(ctx, name, id, "stolen"); !errors.Is(err, backend.ErrLeaseExpired) {
			t.Errorf("Proclaim with %s lease: %v, want ErrLeaseExpired", what, err)
		}
	}
	if err := el.Resign(ctx, name, old.LeaseID); !errors.Is(err, backend.ErrLeaseExpired) {
		t.Errorf("a second Resign: %v, want ErrLeaseExpired", err)
	}
	st, err := el.Leader(ctx, name)
	if err != nil || st.Leader == nil || st.Leader.Term != cur.Term || st.Leader.Value != "b" || st.Leader.Owner != "cur" {
		t.Fatalf("Leader = %+v (%v), want the current leader {term %d owner cur value b} untouched", st.Leader, err, cur.Term)
	}
}

// Proclaim and renew keep the term; proclaim changes the value everyone
// sees, renew keeps it.
func (s *suite) electionProclaimKeepsTerm(t *testing.T) {
	a, _ := s.elections(t)
	b, _ := s.elections(t)
	name := s.key(t)
	ctx := ctxTimeout(t, 30*time.Second)
	l := campaign(t, a, backend.CampaignRequest{Name: name, Owner: "me", Value: "v1", TTL: 10 * time.Second})
	p, err := b.Proclaim(ctx, name, l.LeaseID, "v2")
	if err != nil {
		t.Fatalf("Proclaim through another replica: %v", err)
	}
	if p.Term != l.Term || p.Value != "v2" || p.LeaseID != l.LeaseID {
		t.Errorf("Proclaim = {term %d value %q}, want {term %d value v2} and the same lease", p.Term, p.Value, l.Term)
	}
	r, err := a.Renew(ctx, name, l.LeaseID, 20*time.Second)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if r.Term != l.Term || r.Value != "v2" || r.TTL != 20*time.Second {
		t.Errorf("Renew = {term %d value %q ttl %v}, want {term %d value v2 ttl 20s}", r.Term, r.Value, r.TTL, l.Term)
	}
	st, err := b.Leader(ctx, name)
	if err != nil || st.Leader == nil || st.Leader.Term != l.Term || st.Leader.Value != "v2" {
		t.Fatalf("Leader = %+v (%v), want term %d value v2", st.Leader, err, l.Term)
	}
}

// Resigning hands over to the candidates in the order they came.
func (s *suite) electionResignFIFO(t *testing.T) {
	if s.opts.NoFIFO != "" {
		t.Skip(s.opts.NoFIFO)
	}
	a, _ := s.elections(t)
	b, _ := s.elections(t)
	name := s.key(t)
	ctx := ctxTimeout(t, 60*time.Second)
	first := campaign(t, a, backend.CampaignRequest{Name: name, Owner: "first", TTL: 20 * time.Second})
	type result struct {
		l   backend.Leadership
		err error
	}
	results := map[string]chan result{}
	for i, owner := range []string{"second", "third"} {
		el := []backend.Elections{b, a}[i]
		ch := make(chan result, 1)
		results[owner] = ch
		go func() {
			l, err := el.Campaign(ctx, backend.CampaignRequest{Name: name, Owner: owner, Value: owner, TTL: 20 * time.Second, Wait: 40 * time.Second})
			ch <- result{l, err}
		}()
		waitCandidates(t, a, name, i+1)
	}
	if err := a.Resign(ctx, name, first.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	second := <-results["second"]
	if second.err != nil {
		t.Fatalf("the second candidate: %v", second.err)
	}
	select {
	case r := <-results["third"]:
		t.Fatalf("the third candidate led (%+v, %v) while the second did", r.l, r.err)
	default:
	}
	if err := b.Resign(ctx, name, second.l.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	third := <-results["third"]
	if third.err != nil {
		t.Fatalf("the third candidate: %v", third.err)
	}
	if !(first.Term < second.l.Term && second.l.Term < third.l.Term) {
		t.Errorf("terms %d, %d, %d, want increasing in campaign order", first.Term, second.l.Term, third.l.Term)
	}
}

// waitCandidates waits until name has n candidates behind its leader.
func waitCandidates(t *testing.T, el backend.Elections, name string, n int) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := el.Leader(ctxTimeout(t, 10*time.Second), name)
		if err == nil && st.Candidates == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Leader = %+v (%v), want %d candidates", st, err, n)
		}
	}
}

// next reads the next event, failing after a generous while.
func next(t *testing.T, events <-chan backend.ElectionEvent, within time.Duration) backend.ElectionEvent {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("the observe channel closed without an error event")
		}
		if ev.Err != nil {
			t.Fatalf("observe ended: %v", ev.Err)
		}
		return ev
	case <-time.After(within):
		t.Fatalf("no event within %v", within)
	}
	return backend.ElectionEvent{}
}

// A leader whose replica is gone and whom nobody touches any more is seen to
// end at its deadline (plus the declared skew): no_leader, reason expired,
// never before the deadline.
func (s *suite) electionObserveNoLeader(t *testing.T) {
	granter, gb := s.elections(t)
	watcher, _ := s.elections(t)
	name := s.key(t)
	const ttl = 800 * time.Millisecond
	start := time.Now()
	l := campaign(t, granter, backend.CampaignRequest{Name: name, Owner: "gone", Value: "x", TTL: ttl})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	events, err := watcher.Observe(ctx, name)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	if err := gb.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
	first := next(t, events, 10*time.Second)
	if first.NoLeader != nil && time.Since(start) < ttl {
		t.Fatalf("first event no_leader %+v before the leader's deadline", first.NoLeader)
	}
	if first.Leader != nil {
		if first.Leader.Term != l.Term || first.Leader.Value != "x" || first.Leader.Owner != "gone" {
			t.Fatalf("first event = %+v, want the leader {term %d owner gone value x}", first.Leader, l.Term)
		}
		ev := next(t, events, ttl+time.Second+schedSlack+5*time.Second)
		if ev.NoLeader == nil {
			t.Fatalf("after the leader, event %+v, want no_leader", ev.Leader)
		}
		first = ev
	}
	took := time.Since(start)
	if first.NoLeader.LastTerm != l.Term || first.NoLeader.Reason != backend.ReasonExpired {
		t.Errorf("no_leader = %+v, want {last term %d reason expired}", first.NoLeader, l.Term)
	}
	if time.Now().Before(l.ExpiresAt) {
		t.Errorf("no_leader at %v, before the leader's deadline %v", time.Now(), l.ExpiresAt)
	}
	if limit := ttl + time.Second + schedSlack; took > limit {
		t.Errorf("no_leader %v after the campaign, want within %v (a timer at the deadline, not the store's clean-up)", took, limit)
	}
}

// Along one stream: the current state first, then every term in order,
// each ended by a no_leader, proclaims in between, terms only increasing.
func (s *suite) electionObserveOrdered(t *testing.T) {
	a, _ := s.elections(t)
	b, _ := s.elections(t)
	name := s.key(t)
	ctx, cancel := context.WithCancel(ctxTimeout(t, 60*time.Second))
	defer cancel()
	events, err := b.Observe(ctx, name)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	if ev := next(t, events, 10*time.Second); ev.NoLeader == nil || ev.NoLeader.LastTerm != 0 {
		t.Fatalf("first event on a new election = %+v %+v, want no_leader with no last term", ev.Leader, ev.NoLeader)
	}
	one := campaign(t, a, backend.CampaignRequest{Name: name, Owner: "one", Value: "1a", TTL: 20 * time.Second})
	if _, err := a.Proclaim(ctx, name, one.LeaseID, "1b"); err != nil {
		t.Fatalf("Proclaim: %v", err)
	}
	twoDone := make(chan backend.Leadership, 1)
	go func() {
		l, err := b.Campaign(ctx, backend.CampaignRequest{Name: name, Owner: "two", Value: "2", TTL: 20 * time.Second, Wait: 30 * time.Second})
		if err != nil {
			t.Errorf("the second candidate: %v", err)
		}
		twoDone <- l
	}()
	waitCandidates(t, a, name, 1)
	if err := a.Resign(ctx, name, one.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	two := <-twoDone
	if err := b.Resign(ctx, name, two.LeaseID); err != nil {
		t.Fatalf("Resign: %v", err)
	}
	three := campaign(t, a, backend.CampaignRequest{Name: name, Owner: "three", Value: "3", TTL: 20 * time.Second})

	// Proclaims may coalesce (1a may be missed, never 1b); nothing else.
	type step struct {
		term   uint64
		value  string // leader
		reason string // no_leader
	}
	want := []step{{one.Term, "1a", ""}, {one.Term, "1b", ""}, {one.Term, "", backend.ReasonResigned},
		{two.Term, "2", ""}, {two.Term, "", backend.ReasonResigned}, {three.Term, "3", ""}}
	var got []step
	for len(got) == 0 || got[len(got)-1] != want[len(want)-1] {
		ev := next(t, events, 10*time.Second)
		switch {
		case ev.Leader != nil:
			got = append(got, step{ev.Leader.Term, ev.Leader.Value, ""})
		case ev.NoLeader != nil:
			got = append(got, step{ev.NoLeader.LastTerm, "", ev.NoLeader.Reason})
		}
		if len(got) > len(want) {
			break
		}
	}
	if len(got) == len(want)-1 && got[0] == want[1] {
		got = append([]step{want[0]}, got...) // the first proclaim coalesced
	}
	if len(got) != len(want) {
		t.Fatalf("events %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("events %+v, want %+v", got, want)
		}
	}
}
