package backendtest

import (
	"errors"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// sessionTests are the subtests of backend.Sessions.
func (s *suite) sessionTests() []struct {
	name string
	fn   func(t *testing.T)
} {
	return []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"SessionGrantsShareDeadline", s.sessionGrantsShareDeadline},
		{"SessionRenewExtendsAll", s.sessionRenewExtendsAll},
		{"SessionExpiryFreesAllWithGranterGone", s.sessionExpiryWithoutGranter},
		{"SessionCloseReleasesWithoutDelay", s.sessionCloseReleases},
		{"SessionWaiterEndsWhenSessionExpires", s.sessionWaiterEnds},
		{"SessionStaleGrantReleaseRefused", s.sessionStaleRelease},
		{"SessionNeverResurrects", s.sessionNeverResurrects},
		{"SessionBoundRenewRefused", s.sessionBoundRenew},
		{"SessionCampaign", s.sessionCampaign},
	}
}

// sessions returns a new replica and its sessions, or skips with the reason
// the backend declared.
func (s *suite) sessions(t *testing.T) (backend.Sessions, backend.Backend) {
	t.Helper()
	b := s.newBackend(t)
	ss, ok := b.(backend.Sessioner)
	if !ok {
		if s.opts.NoSessions != "" {
			t.Skip(s.opts.NoSessions)
		}
		t.Fatal("the backend does not implement backend.Sessioner, and Options.NoSessions gives no reason")
	}
	return ss.Sessions(), b
}

// openSession opens a session and checks its shape.
func openSession(t *testing.T, ss backend.Sessions, owner string, ttl time.Duration) backend.Session {
	t.Helper()
	before := time.Now()
	sess, err := ss.Open(ctxTimeout(t, 20*time.Second), owner, ttl)
	if err != nil {
		t.Fatalf("Open(%q, %v): %v", owner, ttl, err)
	}
	after := time.Now()
	if !lease.ValidID(sess.ID) || len(sess.ID) < 22 {
		t.Fatalf("session id %q: want a lease-id-shaped capability of at least 128 random bits", sess.ID)
	}
	if sess.Owner != owner || sess.TTL != ttl {
		t.Errorf("session = {owner %q ttl %v}, want {%q %v}", sess.Owner, sess.TTL, owner, ttl)
	}
	if lo, hi := before.Add(ttl).Add(-time.Millisecond), after.Add(ttl).Add(time.Millisecond); sess.ExpiresAt.Before(lo) || sess.ExpiresAt.After(hi) {
		t.Errorf("session ExpiresAt = %v, want within [%v, %v]", sess.ExpiresAt, lo, hi)
	}
	return sess
}

func sameMilli(a, b time.Time) bool { return a.UnixMilli() == b.UnixMilli() }

// wantSessionGrant checks that g lives in sess: it shows the session's TTL
// and deadline, and has a lease id and token of its own.
func wantSessionGrant(t *testing.T, g backend.Grant, sess backend.Session) {
	t.Helper()
	if !g.Session || g.TTL != sess.TTL || !sameMilli(g.ExpiresAt, sess.ExpiresAt) {
		t.Errorf("grant = {session %v ttl %v expires %v}, want {true %v %v} (the session's)", g.Session, g.TTL, g.ExpiresAt, sess.TTL, sess.ExpiresAt)
	}
	if g.LeaseID == "" || g.LeaseID == sess.ID || g.Token == 0 {
		t.Errorf("grant = {lease %q token %d}, want a lease id of its own (not the session's) and a token", g.LeaseID, g.Token)
	}
}

func wantSessionExpired(t *testing.T, err error, what string) {
	t.Helper()
	if !errors.Is(err, backend.ErrSessionExpired) {
		t.Fatalf("%s: got error %v, want ErrSessionExpired", what, err)
	}
}

// Grants of one session on several keys show the session's deadline, and so
// does the holder others see.
func (s *suite) sessionGrantsShareDeadline(t *testing.T) {
	ss, b := s.sessions(t)
	sess := openSession(t, ss, "sharer", 10*time.Second)
	k1, k2 := s.key(t, "-1"), s.key(t, "-2")
	g1 := acquire(t, b, backend.AcquireRequest{Key: k1, Owner: "one", Session: sess.ID})
	g2 := acquire(t, b, backend.AcquireRequest{Key: k2, Owner: "two", Session: sess.ID})
	wantSessionGrant(t, g1, sess)
	wantSessionGrant(t, g2, sess)
	if g1.LeaseID == g2.LeaseID {
		t.Errorf("two grants of one session share the lease id %q", g1.LeaseID)
	}
	other := s.newBackend(t)
	for _, g := range []backend.Grant{g1, g2} {
		st, err := other.Inspect(ctxTimeout(t, 10*time.Second), g.Key)
		if err != nil || !st.Held || st.Holder.Token != g.Token || !sameMilli(st.Holder.ExpiresAt, sess.ExpiresAt) {
			t.Errorf("Inspect(%q) = %+v (%v), want held by token %d until the session's %v", g.Key, st.Holder, err, g.Token, sess.ExpiresAt)
		}
		_, err = s.tryAcquire(t, other, g.Key)
		wantHeld(t, err, &g)
	}
}

// One renew of the session extends every grant in it, past the deadline
// they were granted with.
func (s *suite) sessionRenewExtendsAll(t *testing.T) {
	ss, b := s.sessions(t)
	other := s.newBackend(t)
	const ttl = 1500 * time.Millisecond
	sess := openSession(t, ss, "renewer", ttl)
	var grants []backend.Grant
	for _, sfx := range []string{"-1", "-2", "-3"} {
		grants = append(grants, acquire(t, b, backend.AcquireRequest{Key: s.key(t, sfx), Session: sess.ID}))
	}
	r, err := ss.Renew(ctxTimeout(t, 10*time.Second), sess.ID, 20*time.Second)
	if err != nil {
		t.Fatalf("Renew(session): %v", err)
	}
	if r.ID != sess.ID || r.Owner != sess.Owner || r.TTL != 20*time.Second || !r.ExpiresAt.After(sess.ExpiresAt) {
		t.Errorf("renewed = %+v, want the same id and owner, TTL 20s and a later deadline than %v", r, sess.ExpiresAt)
	}
	// Past the first deadline by more than any skew the suite's backends
	// declare: still held, with the renewed deadline.
	time.Sleep(time.Until(sess.ExpiresAt.Add(time.Second + schedSlack)))
	for _, g := range grants {
		_, err := s.tryAcquire(t, other, g.Key)
		wantHeld(t, err, &g)
		st, err := other.Inspect(ctxTimeout(t, 10*time.Second), g.Key)
		if err != nil || !st.Held || !sameMilli(st.Holder.ExpiresAt, r.ExpiresAt) {
			t.Errorf("Inspect(%q) = %+v (%v), want held until the renewed %v", g.Key, st.Holder, err, r.ExpiresAt)
		}
	}
	// ttl 0 keeps the session's TTL.
	r2, err := ss.Renew(ctxTimeout(t, 10*time.Second), sess.ID, 0)
	if err != nil || r2.TTL != 20*time.Second {
		t.Errorf("Renew(session, 0) = TTL %v (%v), want the kept 20s", r2.TTL, err)
	}
}

// A session whose lockd is gone expires in the store: every grant in it is
// freed for another replica, which cannot renew the session either.
func (s *suite) sessionExpiryWithoutGranter(t *testing.T) {
	ss, granter := s.sessions(t)
	otherSS, other := s.sessions(t)
	const ttl = 2 * time.Second // room for two grants on a loaded machine
	start := time.Now()
	sess := openSession(t, ss, "gone", ttl)
	k1, k2 := s.key(t, "-1"), s.key(t, "-2")
	g1 := acquire(t, granter, backend.AcquireRequest{Key: k1, Session: sess.ID})
	g2 := acquire(t, granter, backend.AcquireRequest{Key: k2, Session: sess.ID})
	if err := granter.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
	for _, g := range []backend.Grant{g1, g2} {
		n := acquire(t, other, backend.AcquireRequest{Key: g.Key, TTL: 10 * time.Second, Wait: 20 * time.Second})
		// Generous: a grant the expiry did not free would hold for good
		// (nobody renews it, but nothing else ends it either).
		if late, limit := time.Since(sess.ExpiresAt), 5*time.Second; late > limit {
			t.Errorf("%q freed %v after the session's deadline (opened %v before it) with its granter gone, want within %v", g.Key, late, sess.ExpiresAt.Sub(start), limit)
		}
		if n.Token <= g.Token {
			t.Errorf("token %d after %d, want strictly greater", n.Token, g.Token)
		}
	}
	_, err := otherSS.Renew(ctxTimeout(t, 10*time.Second), sess.ID, 10*time.Second)
	wantSessionExpired(t, err, "Renew of the expired session on another replica")
}

// Close frees every grant of the session at once (a waiter on another
// replica gets the key long before the session's deadline) and ends the
// session's own waits, which leave their queues.
func (s *suite) sessionCloseReleases(t *testing.T) {
	ss, b := s.sessions(t)
	other := s.newBackend(t)
	held, wanted := s.key(t, "-held"), s.key(t, "-wanted")
	sess := openSession(t, ss, "closer", 60*time.Second)
	g := acquire(t, b, backend.AcquireRequest{Key: held, Session: sess.ID})
	blocker := acquire(t, other, backend.AcquireRequest{Key: wanted, Owner: "blocker", TTL: 60 * time.Second})

	waiter := make(chan error, 1) // another replica's waiter on the session's key
	go func() {
		w, err := other.Acquire(ctxTimeout(t, 40*time.Second), backend.AcquireRequest{Key: held, Owner: "next", TTL: 10 * time.Second, Wait: 30 * time.Second})
		if err == nil && w.Token <= g.Token {
			err = errors.New("granted with a token not above the session's grant")
		}
		waiter <- err
	}()
	mine := make(chan error, 1) // the session's own waiter
	go func() {
		_, err := b.Acquire(ctxTimeout(t, 40*time.Second), backend.AcquireRequest{Key: wanted, Session: sess.ID, Wait: 30 * time.Second})
		mine <- err
	}()
	s.waitForWaiters(t, other, held, 1)
	s.waitForWaiters(t, other, wanted, 1)

	closed := time.Now()
	if err := ss.Close(ctxTimeout(t, 10*time.Second), sess.ID); err != nil {
		t.Fatalf("Close(session): %v", err)
	}
	for what, ch := range map[string]chan error{"the waiter on the session's key": waiter, "the session's own waiter": mine} {
		select {
		case err := <-ch:
			if ch == waiter && err != nil {
				t.Errorf("%s: %v, want the key", what, err)
			}
			if ch == mine && !errors.Is(err, backend.ErrSessionExpired) {
				t.Errorf("%s: got %v, want ErrSessionExpired", what, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s still waiting %v after Close", what, time.Since(closed))
		}
	}
	s.waitForWaiters(t, other, wanted, 0)
	st, err := other.Inspect(ctxTimeout(t, 10*time.Second), wanted)
	if err != nil || !st.Held || st.Holder.Token != blocker.Token {
		t.Errorf("Inspect(%q) = %+v (%v), want still the blocker's", wanted, st.Holder, err)
	}
	wantLeaseExpired(t, b.Release(ctxTimeout(t, 10*time.Second), held, g.LeaseID), "Release of a grant of a closed session")
	_, err = ss.Renew(ctxTimeout(t, 10*time.Second), sess.ID, 0)
	wantSessionExpired(t, err, "Renew of a closed session")
	wantSessionExpired(t, ss.Close(ctxTimeout(t, 10*time.Second), sess.ID), "a second Close")
}

// An acquire waiting in a session ends with ErrSessionExpired when the
// session runs out, long before its own wait (30 s), and leaves the queue.
func (s *suite) sessionWaiterEnds(t *testing.T) {
	ss, b := s.sessions(t)
	key := s.key(t)
	holder := acquire(t, b, backend.AcquireRequest{Key: key, Owner: "holder", TTL: 60 * time.Second})
	const ttl = time.Second
	sess := openSession(t, ss, "waiter", ttl)
	_, err := b.Acquire(ctxTimeout(t, 40*time.Second), backend.AcquireRequest{Key: key, Session: sess.ID, Wait: 30 * time.Second})
	wantSessionExpired(t, err, "a wait outliving its session")
	if late, limit := time.Since(sess.ExpiresAt), 3*time.Second; late > limit {
		t.Errorf("the wait ended %v after the session's deadline, want within %v", late, limit)
	}
	s.waitForWaiters(t, b, key, 0)
	st, err := b.Inspect(ctxTimeout(t, 10*time.Second), key)
	if err != nil || !st.Held || st.Holder.Token != holder.Token {
		t.Errorf("Inspect = %+v (%v), want still the holder's", st.Holder, err)
	}
}

// A release with the lease id of an earlier grant of the same session and
// key never frees the later grant.
func (s *suite) sessionStaleRelease(t *testing.T) {
	ss, b := s.sessions(t)
	key := s.key(t)
	sess := openSession(t, ss, "twice", 30*time.Second)
	g1 := acquire(t, b, backend.AcquireRequest{Key: key, Session: sess.ID})
	if err := b.Release(ctxTimeout(t, 10*time.Second), key, g1.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	g2 := acquire(t, b, backend.AcquireRequest{Key: key, Session: sess.ID})
	if g2.LeaseID == g1.LeaseID || g2.Token <= g1.Token {
		t.Fatalf("second grant = {lease %q token %d}, want a new lease id and a token above %d", g2.LeaseID, g2.Token, g1.Token)
	}
	wantLeaseExpired(t, b.Release(ctxTimeout(t, 10*time.Second), key, g1.LeaseID), "Release with the first grant's lease")
	st, err := b.Inspect(ctxTimeout(t, 10*time.Second), key)
	if err != nil || !st.Held || st.Holder.Token != g2.Token {
		t.Fatalf("Inspect = %+v (%v), want held by the second grant (token %d)", st.Holder, err, g2.Token)
	}
	if err := b.Release(ctxTimeout(t, 10*time.Second), key, g2.LeaseID); err != nil {
		t.Fatalf("Release of the second grant: %v", err)
	}
}

// An expired session stays expired: no renew, no new grant in it, its old
// grant neither releases nor blocks; an unknown session is expired too.
func (s *suite) sessionNeverResurrects(t *testing.T) {
	ss, b := s.sessions(t)
	key := s.key(t)
	sess := openSession(t, ss, "mortal", 1500*time.Millisecond)
	g := acquire(t, b, backend.AcquireRequest{Key: key, Session: sess.ID})
	time.Sleep(time.Until(sess.ExpiresAt.Add(100 * time.Millisecond)))
	_, err := ss.Renew(ctxTimeout(t, 10*time.Second), sess.ID, 30*time.Second)
	wantSessionExpired(t, err, "Renew after the deadline")
	_, err = b.Acquire(ctxTimeout(t, 10*time.Second), backend.AcquireRequest{Key: s.key(t, "-new"), Session: sess.ID})
	wantSessionExpired(t, err, "Acquire in an expired session")
	n := acquire(t, s.newBackend(t), backend.AcquireRequest{Key: key, TTL: 10 * time.Second, Wait: 10 * time.Second})
	if n.Token <= g.Token {
		t.Errorf("token %d after %d, want strictly greater", n.Token, g.Token)
	}
	wantLeaseExpired(t, b.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID), "Release of the expired session's grant")
	_, err = ss.Renew(ctxTimeout(t, 10*time.Second), sess.ID, 30*time.Second)
	wantSessionExpired(t, err, "Renew after the key went to another")
	_, err = b.Acquire(ctxTimeout(t, 10*time.Second), backend.AcquireRequest{Key: s.key(t, "-unknown"), Session: "no-such-session-0123456789abcdef"})
	wantSessionExpired(t, err, "Acquire in an unknown session")
}

// A grant in a session is renewed only through the session.
func (s *suite) sessionBoundRenew(t *testing.T) {
	ss, b := s.sessions(t)
	key := s.key(t)
	sess := openSession(t, ss, "bound", 30*time.Second)
	g := acquire(t, b, backend.AcquireRequest{Key: key, Session: sess.ID})
	_, err := b.Renew(ctxTimeout(t, 10*time.Second), key, g.LeaseID, 60*time.Second)
	if !errors.Is(err, backend.ErrSessionBound) {
		t.Fatalf("Renew of a session's grant: got %v, want ErrSessionBound", err)
	}
	st, err := b.Inspect(ctxTimeout(t, 10*time.Second), key)
	if err != nil || !st.Held || st.Holder.Token != g.Token || !sameMilli(st.Holder.ExpiresAt, sess.ExpiresAt) {
		t.Errorf("Inspect = %+v (%v), want unchanged: token %d until %v", st.Holder, err, g.Token, sess.ExpiresAt)
	}
}

// A campaign in a session leads as long as the session lives; closing the
// session hands the election to the next candidate at once.
func (s *suite) sessionCampaign(t *testing.T) {
	ss, b := s.sessions(t)
	el, ok := b.(backend.Elector)
	if !ok {
		t.Skip("no elections: " + s.opts.NoElections)
	}
	name := s.key(t)
	sess := openSession(t, ss, "candidate", 60*time.Second)
	l := campaign(t, el.Elections(), backend.CampaignRequest{Name: name, Owner: "candidate", Value: "v1", Session: sess.ID})
	if l.TTL != sess.TTL || !sameMilli(l.ExpiresAt, sess.ExpiresAt) {
		t.Errorf("leadership = {ttl %v expires %v}, want the session's {%v %v}", l.TTL, l.ExpiresAt, sess.TTL, sess.ExpiresAt)
	}
	_, err := el.Elections().Renew(ctxTimeout(t, 10*time.Second), name, l.LeaseID, time.Minute)
	if !errors.Is(err, backend.ErrSessionBound) {
		t.Errorf("Renew of a session's leadership: got %v, want ErrSessionBound", err)
	}
	otherEl, _ := s.elections(t)
	next := make(chan error, 1)
	go func() {
		n, err := otherEl.Campaign(ctxTimeout(t, 40*time.Second), backend.CampaignRequest{Name: name, Owner: "next", TTL: 10 * time.Second, Wait: 30 * time.Second})
		if err == nil && n.Term <= l.Term {
			err = errors.New("a term not above the session leader's")
		}
		next <- err
	}()
	waitCandidates(t, otherEl, name, 1)
	if err := ss.Close(ctxTimeout(t, 10*time.Second), sess.ID); err != nil {
		t.Fatalf("Close(session): %v", err)
	}
	select {
	case err := <-next:
		if err != nil {
			t.Fatalf("next candidate: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the next candidate is not leader 10s after the session leader's session closed")
	}
}
