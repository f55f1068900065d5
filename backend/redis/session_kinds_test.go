package redis

import (
	"errors"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/testserver"
)

// Permits and rwlock grants made in a session have the session's deadline,
// moved on by the session's renew, and end with it in Redis with their
// granting replica gone: another replica's waiters get the slot and the
// lock once the renewed deadline passed (in Redis's time: the new grants'
// start is their deadline minus their TTL), not before.
func TestSessionExpiryEndsPermitsAndRWGrants(t *testing.T) {
	srv := testserver.Redis(t, 1)
	newB := newFactory(srv.Addr(0), Options{})
	granter, other := newB(t).(*Backend), newB(t).(*Backend)
	sess := openSession(t, granter, "dies", time.Second)
	p, err := granter.Semaphores().Acquire(ctx(t), backend.SemaphoreRequest{Key: "sx", Permits: 1, Owner: "in-session", Session: sess.ID})
	if err != nil {
		t.Fatalf("permit in a session: %v", err)
	}
	r, err := granter.RWLocks().Acquire(ctx(t), backend.RWAcquireRequest{Mode: backend.ModeRead, AcquireRequest: backend.AcquireRequest{Key: "rx", Owner: "in-session", Session: sess.ID}})
	if err != nil {
		t.Fatalf("read grant in a session: %v", err)
	}
	renewed, err := granter.Sessions().Renew(ctx(t), sess.ID, 1500*time.Millisecond)
	if err != nil {
		t.Fatalf("session renew: %v", err)
	}
	if st, err := other.Semaphores().Inspect(ctx(t), "sx"); err != nil || len(st.Holders) != 1 || !sameMs(st.Holders[0].ExpiresAt, renewed.ExpiresAt) {
		t.Errorf("Inspect(sx) = %+v (%v), want permit %d until the renewed session's %v", st, err, p.Token, renewed.ExpiresAt)
	}
	if st, err := other.RWLocks().Inspect(ctx(t), "rx"); err != nil || len(st.Holders) != 1 || !sameMs(st.Holders[0].ExpiresAt, renewed.ExpiresAt) {
		t.Errorf("Inspect(rx) = %+v (%v), want reader %d until the renewed session's %v", st, err, r.Token, renewed.ExpiresAt)
	}
	if err := granter.Close(); err != nil {
		t.Fatal(err)
	}
	const wait = 10 * time.Second
	q, err := other.Semaphores().Acquire(ctx(t), backend.SemaphoreRequest{Key: "sx", Permits: 1, Owner: "next", TTL: 5 * time.Second, Wait: wait})
	if err != nil {
		t.Fatalf("waiter for the session's slot: %v", err)
	}
	w, err := other.RWLocks().Acquire(ctx(t), backend.RWAcquireRequest{Mode: backend.ModeWrite, AcquireRequest: backend.AcquireRequest{Key: "rx", Owner: "next", TTL: 5 * time.Second, Wait: wait}})
	if err != nil {
		t.Fatalf("writer behind the session's reader: %v", err)
	}
	for what, g := range map[string]backend.Grant{"permit": q.Grant, "writer": w.Grant} {
		if start := g.ExpiresAt.Add(-g.TTL); start.Before(renewed.ExpiresAt) {
			t.Errorf("%s granted at %v (Redis time), before the renewed session's deadline %v", what, start, renewed.ExpiresAt)
		}
		if g.Token <= max(p.Token, r.Token) {
			t.Errorf("%s token %d, want above the session grant's", what, g.Token)
		}
	}
}

// A session's renew that reaches its gc bound moves on the garbage expiry
// of the semaphore and rwlock keys holding its grants, as it does for
// locks (TestSessionRenewMovesGrantKeysExpiryOn), and an explicit release
// takes the grant out of the session's grant set.
func TestSessionRenewMovesPermitAndRWKeysExpiryOn(t *testing.T) {
	srv := testserver.Redis(t, 1)
	b := newFactory(srv.Addr(0), Options{})(t).(*Backend)
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr(0)})
	t.Cleanup(func() { _ = raw.Close() })
	sess := openSession(t, b, "long-lived", 10*time.Second)
	p, err := b.Semaphores().Acquire(ctx(t), backend.SemaphoreRequest{Key: "gs", Permits: 2, Session: sess.ID})
	if err != nil {
		t.Fatal(err)
	}
	g, err := b.RWLocks().Acquire(ctx(t), backend.RWAcquireRequest{Mode: backend.ModeWrite, AcquireRequest: backend.AcquireRequest{Key: "gr", Session: sess.ID}})
	if err != nil {
		t.Fatal(err)
	}
	hashes := map[string]string{"slots": b.semKeys("gs")[0], "holders": b.rwKeys("gr")[0]}
	for what, k := range hashes {
		if ttl := raw.PTTL(ctx(t), k).Val(); ttl < time.Hour {
			t.Errorf("the %s hash expires in %v, want at least an hour past the session's deadline", what, ttl)
		}
	}
	skey := b.sessionKeys(sess.ID)[0]
	now, err := raw.Time(ctx(t)).Result()
	if err != nil {
		t.Fatal(err)
	}
	const soon = 2 * time.Second
	raw.HSet(ctx(t), skey, "gc", now.Add(soon).UnixMilli())
	for _, k := range hashes {
		raw.PExpire(ctx(t), k, soon)
	}
	renewed, err := b.Sessions().Renew(ctx(t), sess.ID, 20*time.Second)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	for what, k := range hashes {
		if ttl := raw.PTTL(ctx(t), k).Val(); ttl < 20*time.Second+time.Hour-time.Minute {
			t.Errorf("after the renew, the %s hash expires in %v, want an hour past the session's new deadline (20s)", what, ttl)
		}
	}
	time.Sleep(soon + 500*time.Millisecond)
	if st, err := b.Semaphores().Inspect(ctx(t), "gs"); err != nil || len(st.Holders) != 1 || !sameMs(st.Holders[0].ExpiresAt, renewed.ExpiresAt) {
		t.Errorf("Inspect(gs) past the old bound = %+v (%v), want the permit until %v", st, err, renewed.ExpiresAt)
	}
	if st, err := b.RWLocks().Inspect(ctx(t), "gr"); err != nil || len(st.Holders) != 1 || !sameMs(st.Holders[0].ExpiresAt, renewed.ExpiresAt) {
		t.Errorf("Inspect(gr) past the old bound = %+v (%v), want the writer until %v", st, err, renewed.ExpiresAt)
	}
	set := b.sessionKeys(sess.ID)[1]
	if n := raw.SCard(ctx(t), set).Val(); n != 2 {
		t.Errorf("the session's grant set has %d members, want 2", n)
	}
	if err := b.Semaphores().Release(ctx(t), "gs", p.LeaseID); err != nil {
		t.Fatal(err)
	}
	if err := b.RWLocks().Release(ctx(t), "gr", g.LeaseID); err != nil {
		t.Fatal(err)
	}
	if m := raw.SMembers(ctx(t), set).Val(); len(m) != 0 {
		t.Errorf("after both releases the session's grant set holds %q, want nothing", m)
	}
}

// Closing a session releases its permits and rwlock grants as releases do:
// waiters on another replica, which run their script again only every 20 s
// and whose holders' deadline is a minute away, are granted at once (the
// close publishes them); and a permit or rwlock waiter in the closed
// session leaves its line with ErrSessionExpired.
func TestSessionCloseWakesPermitAndRWWaitersOnOtherReplica(t *testing.T) {
	srv := testserver.Redis(t, 1)
	waiterSide := newFactory(srv.Addr(0), Options{HeartbeatTimeout: time.Minute})(t).(*Backend)
	closer := newFactory(srv.Addr(0), Options{})(t).(*Backend)
	sess := openSession(t, closer, "closing", time.Minute)
	if _, err := closer.Semaphores().Acquire(ctx(t), backend.SemaphoreRequest{Key: "cs", Permits: 1, Session: sess.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := closer.RWLocks().Acquire(ctx(t), backend.RWAcquireRequest{Mode: backend.ModeRead, AcquireRequest: backend.AcquireRequest{Key: "cr", Session: sess.ID}}); err != nil {
		t.Fatal(err)
	}
	waiting := make(chan error, 4)
	wait := 30 * time.Second
	go func() {
		_, err := waiterSide.Semaphores().Acquire(ctx(t), backend.SemaphoreRequest{Key: "cs", Permits: 1, TTL: time.Minute, Wait: wait})
		waiting <- err
	}()
	go func() {
		_, err := waiterSide.RWLocks().Acquire(ctx(t), backend.RWAcquireRequest{Mode: backend.ModeWrite, AcquireRequest: backend.AcquireRequest{Key: "cr", TTL: time.Minute, Wait: wait}})
		waiting <- err
	}()
	// Two more in the session itself, behind them.
	inSession := make(chan error, 2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := closer.Semaphores().Inspect(ctx(t), "cs")
		rw, err2 := closer.RWLocks().Inspect(ctx(t), "cr")
		if err == nil && err2 == nil && st.Waiters == 1 && rw.WaitingWriters == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiters not queued: %+v %+v (%v %v)", st, rw, err, err2)
		}
		time.Sleep(10 * time.Millisecond)
	}
	go func() {
		_, err := waiterSide.Semaphores().Acquire(ctx(t), backend.SemaphoreRequest{Key: "cs", Permits: 1, Session: sess.ID, Wait: wait})
		inSession <- err
	}()
	go func() {
		_, err := waiterSide.RWLocks().Acquire(ctx(t), backend.RWAcquireRequest{Mode: backend.ModeRead, AcquireRequest: backend.AcquireRequest{Key: "cr", Session: sess.ID, Wait: wait}})
		inSession <- err
	}()
	for {
		st, err := closer.Semaphores().Inspect(ctx(t), "cs")
		rw, err2 := closer.RWLocks().Inspect(ctx(t), "cr")
		if err == nil && err2 == nil && st.Waiters == 2 && rw.WaitingReaders == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session waiters not queued: %+v %+v (%v %v)", st, rw, err, err2)
		}
		time.Sleep(10 * time.Millisecond)
	}
	closed := time.Now()
	if err := closer.Sessions().Close(ctx(t), sess.ID); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case err := <-waiting:
			if err != nil {
				t.Errorf("waiter behind the session's grant: %v, want granted", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("a waiter behind the session's grants still waits %v after Close (not woken by the close)", time.Since(closed))
		}
	}
	for range 2 {
		select {
		case err := <-inSession:
			if !errors.Is(err, backend.ErrSessionExpired) {
				t.Errorf("waiter in the closed session: %v, want ErrSessionExpired", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("a waiter in the closed session still waits %v after Close", time.Since(closed))
		}
	}
}

// A grant in a session that expires is delayed from the session's last
// deadline, with its granting replica gone: the session's record outlives
// its deadline by MaxLockDelay, so the scripts still know when the grant
// ended. The next grant starts (Redis time) at that deadline + the delay.
func TestLockDelayAfterSessionExpiry(t *testing.T) {
	srv := testserver.Redis(t, 1)
	newB := newFactory(srv.Addr(0), Options{})
	granter, other := newB(t).(*Backend), newB(t).(*Backend)
	sess := openSession(t, granter, "dies", 600*time.Millisecond)
	const delay = 1500 * time.Millisecond
	g, err := granter.Acquire(ctx(t), backend.AcquireRequest{Key: "sd", Owner: "in-session", Session: sess.ID, LockDelay: delay})
	if err != nil {
		t.Fatal(err)
	}
	if err := granter.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(sess.ExpiresAt.Add(300 * time.Millisecond)))
	_, err = other.Acquire(ctx(t), backend.AcquireRequest{Key: "sd", Owner: "probe", TTL: 5 * time.Second})
	var he *backend.HeldError
	if !errors.As(err, &he) || he.Delay == nil {
		t.Fatalf("single try after the session expired: %v, want ErrHeld with the lock-delay", err)
	}
	if want := sess.ExpiresAt.Add(delay); !sameMs(he.Delay.Until, want) || he.Delay.ExpiredToken != g.Token {
		t.Errorf("delay = %+v, want until the session's deadline + %v (%v) after token %d", *he.Delay, delay, want, g.Token)
	}
	n, err := other.Acquire(ctx(t), backend.AcquireRequest{Key: "sd", Owner: "next", TTL: 5 * time.Second, Wait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if start := n.ExpiresAt.Add(-n.TTL); start.Before(sess.ExpiresAt.Add(delay)) {
		t.Errorf("next grant at %v (Redis time), inside the delay that ends at %v", start, sess.ExpiresAt.Add(delay))
	}
}
