package backendtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
)

// The lock-delay subtests (see backend.LockDelayer). Each expiring grant
// has a short TTL and a delay long enough to tell "granted at expiry" from
// "granted at the delay's end" on a busy machine.
const (
	delayTTL = 600 * time.Millisecond
	delayFor = 1500 * time.Millisecond
	// delayEarly is how much earlier than deadline + delay a grant or a
	// reported Until may come (the deadline a grant reports is rounded to
	// the millisecond, and read by another process's clock).
	delayEarly = 50 * time.Millisecond
	// delayLate bounds how long after deadline + delay the timer of a
	// waiter must have granted it.
	delayLate = time.Second + schedSlack
)

func (s *suite) lockDelayTests() []struct {
	name string
	fn   func(t *testing.T)
} {
	return []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"LockDelayDeclared", s.lockDelayDeclared},
		{"LockDelayAfterExpiry", s.lockDelayAfterExpiry},
		{"LockDelayNotAfterRelease", s.lockDelayNotAfterRelease},
		{"LockDelayWithGranterGone", s.lockDelayGranterGone},
		{"LockDelayAfterSessionExpiry", s.lockDelayAfterSessionExpiry},
		{"SemaphoreLockDelayHoldsTheSlot", s.semLockDelay},
		{"SemaphoreLockDelayNotAfterRelease", s.semLockDelayNotAfterRelease},
		{"RWLockDelayAfterExpiredWriter", s.rwLockDelayWriter},
		{"RWLockDelayAfterExpiredReader", s.rwLockDelayReader},
		{"ElectionLockDelayAfterExpiry", s.electionLockDelay},
	}
}

// noLockDelay is the reason the backend declared for not delaying
// primitive.
func (s *suite) noLockDelay(primitive string) string {
	return s.opts.NoLockDelay[primitive]
}

// delaying returns a new replica that delays primitive, or skips with the
// declared reason.
func (s *suite) delaying(t *testing.T, primitive string) backend.Backend {
	t.Helper()
	b := s.newBackend(t)
	if !backend.LockDelaysOf(b).Has(primitive) {
		if r := s.noLockDelay(primitive); r != "" {
			t.Skip(r)
		}
		t.Fatalf("the backend does not delay %s (backend.LockDelayer), and Options.NoLockDelay gives no reason", primitive)
	}
	return b
}

// What a backend delays and what it declares it cannot agree, and each
// primitive left out has its reason in the capabilities too.
func (s *suite) lockDelayDeclared(t *testing.T) {
	b := s.newBackend(t)
	f := backend.LockDelaysOf(b)
	var unsupported map[string]string
	if u, ok := b.(backend.Unsupported); ok {
		unsupported = u.Unsupported()
	}
	for _, p := range []string{backend.PrimitiveLocks, backend.PrimitiveSemaphores, backend.PrimitiveRWLocks, backend.PrimitiveElections} {
		reason := s.noLockDelay(p)
		switch {
		case f.Has(p) && reason != "":
			t.Errorf("the backend delays %s, yet Options.NoLockDelay says %q", p, reason)
		case !f.Has(p) && reason == "":
			t.Errorf("the backend does not delay %s, and Options.NoLockDelay gives no reason", p)
		case !f.Has(p) && unsupported[backend.LockDelayFeature(p)] == "":
			if _, ok := b.(backend.LockDelayer); ok {
				t.Errorf("the backend does not delay %s, and its Unsupported()[%q] gives no reason", p, backend.LockDelayFeature(p))
			}
		}
	}
}

// wantDelay checks a refusal's delay: the grant of token expired at
// deadline, and nothing comes before deadline + delayFor.
func wantDelay(t *testing.T, what string, d *backend.Delay, token uint64, deadline time.Time) {
	t.Helper()
	if d == nil {
		t.Fatalf("%s: refusal carries no lock-delay, want one after token %d expired", what, token)
	}
	if d.ExpiredToken != token {
		t.Errorf("%s: delay's expired token %d, want %d", what, d.ExpiredToken, token)
	}
	if lo, hi := deadline.Add(delayFor-delayEarly), deadline.Add(delayFor+delayLate); d.Until.Before(lo) || d.Until.After(hi) {
		t.Errorf("%s: delayed until %v, want deadline %v + %v", what, d.Until.Format(time.StampMilli), deadline.Format(time.StampMilli), delayFor)
	}
}

// wantGrantedAtDelayEnd checks that a waiter's grant came when the delay
// after deadline ended: not before it (the promise), and not long after (a
// timer, not a poll or the store's clean-up).
func wantGrantedAtDelayEnd(t *testing.T, what string, at, deadline time.Time) {
	t.Helper()
	if lo := deadline.Add(delayFor - delayEarly); at.Before(lo) {
		t.Errorf("%s granted at %v, %v after the expired grant's deadline: inside its %v lock-delay", what, at.Format(time.StampMilli), at.Sub(deadline), delayFor)
	}
	if hi := deadline.Add(delayFor + delayLate); at.After(hi) {
		t.Errorf("%s granted %v after the expired grant's deadline, want within %v of its %v lock-delay's end", what, at.Sub(deadline), delayLate, delayFor)
	}
}

// sleepUntil sleeps until at.
func sleepUntil(at time.Time) { time.Sleep(time.Until(at)) }

// A lock whose holder stops renewing stays closed for its lock-delay after
// its deadline: a single try is refused with the delay, inspection shows it,
// the holder's late release and renew are refused and do not lift it, and a
// waiter queued on another replica is granted when it ends.
func (s *suite) lockDelayAfterExpiry(t *testing.T) {
	a := s.delaying(t, backend.PrimitiveLocks)
	b := s.newBackend(t)
	key := s.key(t)
	g := acquire(t, a, backend.AcquireRequest{Key: key, Owner: "dies", TTL: delayTTL, LockDelay: delayFor})
	type result struct {
		g   backend.Grant
		at  time.Time
		err error
	}
	done := make(chan result, 1)
	go func() {
		w, err := b.Acquire(ctxTimeout(t, 30*time.Second), backend.AcquireRequest{Key: key, Owner: "next", TTL: 10 * time.Second, Wait: 15 * time.Second})
		done <- result{w, time.Now(), err}
	}()
	sleepUntil(g.ExpiresAt.Add(300 * time.Millisecond))
	if _, err := a.Renew(ctxTimeout(t, 10*time.Second), key, g.LeaseID, 0); !errors.Is(err, backend.ErrLeaseExpired) {
		t.Errorf("renew after expiry: %v, want ErrLeaseExpired", err)
	}
	if err := a.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID); !errors.Is(err, backend.ErrLeaseExpired) {
		t.Errorf("release after expiry: %v, want ErrLeaseExpired", err)
	}
	_, err := s.tryAcquire(t, s.newBackend(t), key)
	var he *backend.HeldError
	if !errors.As(err, &he) {
		t.Fatalf("single try inside the lock-delay: %v, want ErrHeld with the delay", err)
	}
	if he.Holder != nil {
		t.Errorf("refusal inside the lock-delay names holder %+v: an expired grant is not a holder", *he.Holder)
	}
	wantDelay(t, "single try", he.Delay, g.Token, g.ExpiresAt)
	st, err := b.Inspect(ctxTimeout(t, 10*time.Second), key)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if st.Held || st.DelayedUntil.IsZero() {
		t.Errorf("Inspect inside the lock-delay = %+v, want not held and DelayedUntil set", st)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("waiter: %v", r.err)
	}
	wantGrantedAtDelayEnd(t, "the waiter", r.at, g.ExpiresAt)
	if r.g.Token <= g.Token {
		t.Errorf("token %d after %d, want strictly greater", r.g.Token, g.Token)
	}
}

// A release lifts the lock-delay: the next single try is granted at once.
func (s *suite) lockDelayNotAfterRelease(t *testing.T) {
	a := s.delaying(t, backend.PrimitiveLocks)
	key := s.key(t)
	g := acquire(t, a, backend.AcquireRequest{Key: key, Owner: "leaves", TTL: 10 * time.Second, LockDelay: backend.MaxLockDelay})
	if err := a.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	g2, err := s.tryAcquire(t, s.newBackend(t), key)
	if err != nil {
		t.Fatalf("single try after a release: %v, want a grant (a release lifts the lock-delay)", err)
	}
	if g2.Token <= g.Token {
		t.Errorf("token %d after %d, want strictly greater", g2.Token, g.Token)
	}
}

// The lock-delay is state in the store: with the granting replica closed,
// another replica still refuses until it ends, and grants then.
func (s *suite) lockDelayGranterGone(t *testing.T) {
	granter := s.delaying(t, backend.PrimitiveLocks)
	other := s.newBackend(t)
	key := s.key(t)
	g := acquire(t, granter, backend.AcquireRequest{Key: key, Owner: "gone", TTL: delayTTL, LockDelay: delayFor})
	if err := granter.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
	sleepUntil(g.ExpiresAt.Add(200 * time.Millisecond))
	_, err := s.tryAcquire(t, other, key)
	var he *backend.HeldError
	if !errors.As(err, &he) {
		t.Fatalf("single try inside the lock-delay, granter gone: %v, want ErrHeld with the delay", err)
	}
	wantDelay(t, "single try, granter gone", he.Delay, g.Token, g.ExpiresAt)
	g2 := acquire(t, other, backend.AcquireRequest{Key: key, Owner: "next", TTL: 10 * time.Second, Wait: 15 * time.Second})
	wantGrantedAtDelayEnd(t, "the next acquire", time.Now(), g.ExpiresAt)
	if g2.Token <= g.Token {
		t.Errorf("token %d after %d, want strictly greater", g2.Token, g.Token)
	}
}

// semDelaying returns the semaphores of a replica that delays permits.
func (s *suite) semDelaying(t *testing.T) backend.Semaphores {
	t.Helper()
	sm, b := s.semaphores(t)
	if !backend.LockDelaysOf(b).Has(backend.PrimitiveSemaphores) {
		if r := s.noLockDelay(backend.PrimitiveSemaphores); r != "" {
			t.Skip(r)
		}
		t.Fatal("the backend does not delay semaphores, and Options.NoLockDelay gives no reason")
	}
	return sm
}

// An expired permit's lock-delay holds its slot and no other: with the other
// slot free a try gets that one, with both taken a try is refused with the
// delay, and a waiter gets the delayed slot when the delay ends.
func (s *suite) semLockDelay(t *testing.T) {
	sm := s.semDelaying(t)
	other, _ := s.semaphores(t)
	key := s.key(t)
	p0 := permit(t, sm, backend.SemaphoreRequest{Key: key, Permits: 2, Owner: "dies", TTL: delayTTL, LockDelay: delayFor})
	sleepUntil(p0.ExpiresAt.Add(300 * time.Millisecond))
	if err := sm.Release(ctxTimeout(t, 10*time.Second), key, p0.LeaseID); !errors.Is(err, backend.ErrLeaseExpired) {
		t.Errorf("release after expiry: %v, want ErrLeaseExpired", err)
	}
	p1 := permit(t, other, backend.SemaphoreRequest{Key: key, Permits: 2, Owner: "other slot", TTL: 20 * time.Second})
	if p1.Slot == p0.Slot {
		t.Fatalf("slot %d granted again inside its lock-delay", p1.Slot)
	}
	_, err := other.Acquire(ctxTimeout(t, 10*time.Second), backend.SemaphoreRequest{Key: key, Permits: 2, Owner: "probe", TTL: 10 * time.Second})
	var he *backend.SemaphoreHeldError
	if !errors.As(err, &he) {
		t.Fatalf("single try with one slot held and one delayed: %v, want ErrHeld with the delay", err)
	}
	wantDelay(t, "single try", he.Delay, p0.Token, p0.ExpiresAt)
	st := semInspect(t, other, key)
	if len(st.Delayed) != 1 || st.Delayed[0].Slot != p0.Slot || st.Delayed[0].ExpiredToken != p0.Token {
		t.Errorf("Inspect Delayed = %+v, want slot %d delayed after token %d", st.Delayed, p0.Slot, p0.Token)
	}
	if len(st.Holders) != 1 || st.Holders[0].Token != p1.Token {
		t.Errorf("Inspect Holders = %+v, want only token %d (an expired permit is not a holder)", st.Holders, p1.Token)
	}
	p2 := permit(t, other, backend.SemaphoreRequest{Key: key, Permits: 2, Owner: "next", TTL: 10 * time.Second, Wait: 15 * time.Second})
	wantGrantedAtDelayEnd(t, "the waiter", time.Now(), p0.ExpiresAt)
	if p2.Slot != p0.Slot || p2.Token <= p1.Token {
		t.Errorf("waiter got slot %d token %d, want the delayed slot %d and a token above %d", p2.Slot, p2.Token, p0.Slot, p1.Token)
	}
}

// A released permit's slot is free at once, whatever its lock-delay.
func (s *suite) semLockDelayNotAfterRelease(t *testing.T) {
	sm := s.semDelaying(t)
	key := s.key(t)
	p := permit(t, sm, backend.SemaphoreRequest{Key: key, Permits: 1, Owner: "leaves", TTL: 10 * time.Second, LockDelay: backend.MaxLockDelay})
	if err := sm.Release(ctxTimeout(t, 10*time.Second), key, p.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	other, _ := s.semaphores(t)
	if _, err := other.Acquire(ctxTimeout(t, 10*time.Second), backend.SemaphoreRequest{Key: key, Permits: 1, Owner: "next", TTL: 10 * time.Second}); err != nil {
		t.Fatalf("single try after a release: %v, want a grant (a release lifts the lock-delay)", err)
	}
}

// rwDelaying returns the read-write locks of a replica that delays them.
func (s *suite) rwDelaying(t *testing.T) backend.RWLocks {
	t.Helper()
	b := s.newBackend(t)
	rw := s.rwOf(t, b)
	if !backend.LockDelaysOf(b).Has(backend.PrimitiveRWLocks) {
		if r := s.noLockDelay(backend.PrimitiveRWLocks); r != "" {
			t.Skip(r)
		}
		t.Fatal("the backend does not delay rwlocks, and Options.NoLockDelay gives no reason")
	}
	return rw
}

func wantRWDelay(t *testing.T, what string, err error, token uint64, deadline time.Time) {
	t.Helper()
	var he *backend.RWHeldError
	if !errors.As(err, &he) {
		t.Fatalf("%s: %v, want ErrHeld with the delay", what, err)
	}
	wantDelay(t, what, he.Delay, token, deadline)
}

// An expired writer delays both modes; its release after expiry is refused
// and lifts nothing; a reader waiting is granted when the delay ends.
func (s *suite) rwLockDelayWriter(t *testing.T) {
	rw := s.rwDelaying(t)
	other := s.rwReplicas(t, 1)[0]
	key := s.key(t)
	w := rwAcquire(t, rw, backend.RWAcquireRequest{Mode: backend.ModeWrite, AcquireRequest: backend.AcquireRequest{Key: key, Owner: "dies", TTL: delayTTL, LockDelay: delayFor}})
	sleepUntil(w.ExpiresAt.Add(300 * time.Millisecond))
	if err := rw.Release(ctxTimeout(t, 10*time.Second), key, w.LeaseID); !errors.Is(err, backend.ErrLeaseExpired) {
		t.Errorf("release after expiry: %v, want ErrLeaseExpired", err)
	}
	for _, mode := range []string{backend.ModeRead, backend.ModeWrite} {
		_, err := other.Acquire(ctxTimeout(t, 10*time.Second), rwReq(key, mode, "probe", 10*time.Second, 0))
		wantRWDelay(t, mode+" single try after an expired writer", err, w.Token, w.ExpiresAt)
	}
	st, err := other.Inspect(ctxTimeout(t, 10*time.Second), key)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if len(st.Holders) != 0 || st.DelayedUntil.IsZero() {
		t.Errorf("Inspect inside the lock-delay = %+v, want no holder and DelayedUntil set", st)
	}
	r := rwAcquire(t, other, rwReq(key, backend.ModeRead, "next", 10*time.Second, 15*time.Second))
	wantGrantedAtDelayEnd(t, "the waiting reader", time.Now(), w.ExpiresAt)
	if r.Token <= w.Token {
		t.Errorf("read token %d after write token %d, want greater", r.Token, w.Token)
	}
}

// An expired reader delays writers only: readers go on being granted, a
// writer's try is refused with the delay, and a waiting writer is granted
// when it ends.
func (s *suite) rwLockDelayReader(t *testing.T) {
	rw := s.rwDelaying(t)
	other := s.rwReplicas(t, 1)[0]
	key := s.key(t)
	r0 := rwAcquire(t, rw, backend.RWAcquireRequest{Mode: backend.ModeRead, AcquireRequest: backend.AcquireRequest{Key: key, Owner: "dies", TTL: delayTTL, LockDelay: delayFor}})
	sleepUntil(r0.ExpiresAt.Add(300 * time.Millisecond))
	r1 := rwAcquire(t, other, rwReq(key, backend.ModeRead, "reader", 10*time.Second, 0))
	rwRelease(t, other, r1)
	_, err := other.Acquire(ctxTimeout(t, 10*time.Second), rwReq(key, backend.ModeWrite, "probe", 10*time.Second, 0))
	wantRWDelay(t, "writer single try after an expired reader", err, r0.Token, r0.ExpiresAt)
	w := rwAcquire(t, other, rwReq(key, backend.ModeWrite, "next", 10*time.Second, 15*time.Second))
	wantGrantedAtDelayEnd(t, "the waiting writer", time.Now(), r0.ExpiresAt)
	if w.Token <= r1.Token {
		t.Errorf("write token %d after read token %d, want greater", w.Token, r1.Token)
	}
}

// An expired leader's lock-delay keeps the election leaderless until it
// ends; a candidate in line is elected then.
func (s *suite) electionLockDelay(t *testing.T) {
	el, b := s.elections(t)
	if !backend.LockDelaysOf(b).Has(backend.PrimitiveElections) {
		if r := s.noLockDelay(backend.PrimitiveElections); r != "" {
			t.Skip(r)
		}
		t.Fatal("the backend does not delay elections, and Options.NoLockDelay gives no reason")
	}
	other, _ := s.elections(t)
	name := s.key(t)
	l := campaign(t, el, backend.CampaignRequest{Name: name, Owner: "dies", Value: "v1", TTL: delayTTL, LockDelay: delayFor})
	sleepUntil(l.ExpiresAt.Add(300 * time.Millisecond))
	_, err := other.Campaign(ctxTimeout(t, 10*time.Second), backend.CampaignRequest{Name: name, Owner: "probe", Value: "p", TTL: 10 * time.Second})
	var ne *backend.NotLeaderError
	if !errors.As(err, &ne) {
		t.Fatalf("campaign single try inside the lock-delay: %v, want ErrHeld with the delay", err)
	}
	if ne.Leader != nil {
		t.Errorf("refusal names leader %+v: an expired leader is not a leader", *ne.Leader)
	}
	wantDelay(t, "campaign single try", ne.Delay, l.Term, l.ExpiresAt)
	st, err := other.Leader(ctxTimeout(t, 10*time.Second), name)
	if err != nil {
		t.Fatalf("Leader: %v", err)
	}
	if st.Leader != nil || st.DelayedUntil.IsZero() {
		t.Errorf("Leader inside the lock-delay = %+v, want no leader and DelayedUntil set", st)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	n, err := other.Campaign(ctx, backend.CampaignRequest{Name: name, Owner: "next", Value: "v2", TTL: 10 * time.Second, Wait: 15 * time.Second})
	if err != nil {
		t.Fatalf("waiting candidate: %v", err)
	}
	wantGrantedAtDelayEnd(t, "the waiting candidate", time.Now(), l.ExpiresAt)
	if n.Term <= l.Term {
		t.Errorf("term %d after %d, want greater", n.Term, l.Term)
	}
}

// sessionDelay is long enough to outlast what a store keeps of an expired
// session for its own upkeep (etcd's pooled leases outlive a deadline by up
// to 12 s): the delay must hold because the backend keeps it, not by luck.
const sessionDelay = 15 * time.Second

// A grant in a session that expires (nobody renewed it) is an expiry like
// any other: its lock-delay counts from the session's deadline, and holds
// past the time the store would have dropped the session's record.
func (s *suite) lockDelayAfterSessionExpiry(t *testing.T) {
	ss, b := s.sessions(t)
	if !backend.LockDelaysOf(b).Has(backend.PrimitiveLocks) {
		if r := s.noLockDelay(backend.PrimitiveLocks); r != "" {
			t.Skip(r)
		}
		t.Fatal("the backend does not delay locks, and Options.NoLockDelay gives no reason")
	}
	key := s.key(t)
	sess := openSession(t, ss, "dies", delayTTL)
	g := acquire(t, b, backend.AcquireRequest{Key: key, Owner: "in session", Session: sess.ID, LockDelay: sessionDelay})
	end := sess.ExpiresAt.Add(sessionDelay)
	sleepUntil(end.Add(-2 * time.Second))
	_, err := s.tryAcquire(t, s.newBackend(t), key)
	var he *backend.HeldError
	if !errors.As(err, &he) || he.Delay == nil {
		t.Fatalf("single try after the session expired, inside its grant's %v lock-delay (%v before its end): %v, want ErrHeld with the delay", sessionDelay, time.Until(end).Round(time.Millisecond), err)
	}
	if he.Delay.ExpiredToken != g.Token || he.Delay.Until.Before(end.Add(-delayEarly)) {
		t.Errorf("delay = %+v, want token %d delayed until the session's deadline + %v (%v)", *he.Delay, g.Token, sessionDelay, end.Format(time.StampMilli))
	}
	g2 := acquire(t, s.newBackend(t), backend.AcquireRequest{Key: key, Owner: "next", TTL: 10 * time.Second, Wait: 15 * time.Second})
	if at := time.Now(); at.Before(end.Add(-delayEarly)) || at.After(end.Add(delayLate)) {
		t.Errorf("granted %v after the session's deadline, want at the end of its grant's %v lock-delay (within %v)", at.Sub(sess.ExpiresAt), sessionDelay, delayLate)
	}
	if g2.Token <= g.Token {
		t.Errorf("token %d after %d, want strictly greater", g2.Token, g.Token)
	}
}
