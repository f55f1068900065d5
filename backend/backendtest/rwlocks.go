package backendtest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
)

// rwTests are the subtests of backend.RWLocks, one per promise.
func (s *suite) rwTests() []struct {
	name string
	fn   func(t *testing.T)
} {
	return []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"RWReadersShare", s.rwReadersShare},
		{"RWWriterExcludesAll", s.rwWriterExcludesAll},
		{"RWWriterNotStarved", s.rwWriterNotStarved},
		{"RWReaderBatchFIFO", s.rwReaderBatchFIFO},
		{"RWTokensMonotoneByMode", s.rwTokensMonotone},
		{"RWReaderLeasesIndependent", s.rwReaderLeasesIndependent},
		{"RWExpiredWriterFrees", s.rwExpiredWriterFrees},
		{"RWCancelledWriterWakesReaders", s.rwCancelledWriterWakesReaders},
		{"RWReleaseAfterExpiryRefused", s.rwReleaseAfterExpiryRefused},
		{"RWSessionGrant", s.rwSessionGrant},
	}
}

// rwOf returns b's read-write locks, or skips with the reason the backend
// declared.
func (s *suite) rwOf(t *testing.T, b backend.Backend) backend.RWLocks {
	t.Helper()
	rw, ok := b.(backend.RWLocker)
	if !ok {
		if s.opts.NoRWLocks != "" {
			t.Skip(s.opts.NoRWLocks)
		}
		t.Fatal("the backend does not implement backend.RWLocker, and Options.NoRWLocks gives no reason")
	}
	return rw.RWLocks()
}

// rwReplicas returns the read-write locks of n new replicas of one store.
func (s *suite) rwReplicas(t *testing.T, n int) []backend.RWLocks {
	t.Helper()
	var rws []backend.RWLocks
	for i := 0; i < n; i++ {
		rws = append(rws, s.rwOf(t, s.newBackend(t)))
	}
	return rws
}

func rwReq(key, mode, owner string, ttl, wait time.Duration) backend.RWAcquireRequest {
	return backend.RWAcquireRequest{Mode: mode, AcquireRequest: backend.AcquireRequest{Key: key, Owner: owner, TTL: ttl, Wait: wait}}
}

// rwAcquire acquires and checks the grant's shape.
func rwAcquire(t *testing.T, rw backend.RWLocks, req backend.RWAcquireRequest) backend.RWGrant {
	t.Helper()
	g, err := rw.Acquire(ctxTimeout(t, req.Wait+20*time.Second), req)
	if err != nil {
		t.Fatalf("RW Acquire(%q, %s, owner %q, wait %v): %v", req.Key, req.Mode, req.Owner, req.Wait, err)
	}
	if g.Key != req.Key || g.Mode != req.Mode || g.Owner != req.Owner || g.Token == 0 || g.LeaseID == "" {
		t.Fatalf("RW Acquire = %+v, want key %q mode %s owner %q, a token and a lease id", g, req.Key, req.Mode, req.Owner)
	}
	return g
}

// rwRelease releases and fails the test if that fails.
func rwRelease(t *testing.T, rw backend.RWLocks, g backend.RWGrant) {
	t.Helper()
	if err := rw.Release(ctxTimeout(t, 10*time.Second), g.Key, g.LeaseID); err != nil {
		t.Fatalf("RW Release(%s %q token %d): %v", g.Mode, g.Owner, g.Token, err)
	}
}

// wantRWHeld checks that err is ErrHeld, and that the holders it names (when
// it names them, and want is given) are want's tokens, in any order.
func wantRWHeld(t *testing.T, err error, what string, want ...backend.RWGrant) {
	t.Helper()
	if !errors.Is(err, backend.ErrHeld) {
		t.Fatalf("%s: got error %v, want ErrHeld", what, err)
	}
	var he *backend.RWHeldError
	if len(want) == 0 || !errors.As(err, &he) || len(he.Holders) == 0 {
		return // the holders are reported "when they could be read"
	}
	if got := holderTokens(he.Holders); !sameTokens(got, grantTokens(want)) {
		t.Errorf("%s: RWHeldError holders %v, want %v", what, got, grantTokens(want))
	}
}

func holderTokens(hs []backend.RWHolder) map[uint64]string {
	m := map[uint64]string{}
	for _, h := range hs {
		m[h.Token] = h.Mode
	}
	return m
}

func grantTokens(gs []backend.RWGrant) map[uint64]string {
	m := map[uint64]string{}
	for _, g := range gs {
		m[g.Token] = g.Mode
	}
	return m
}

func sameTokens(a, b map[uint64]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// wantRWState checks Inspect: mode, holders' tokens, waiter counts.
func wantRWState(t *testing.T, rw backend.RWLocks, key, mode string, readers, writers int, holders ...backend.RWGrant) {
	t.Helper()
	st, err := rw.Inspect(ctxTimeout(t, 10*time.Second), key)
	if err != nil {
		t.Fatalf("RW Inspect(%q): %v", key, err)
	}
	if st.Key != key || st.Mode != mode || !sameTokens(holderTokens(st.Holders), grantTokens(holders)) ||
		st.WaitingReaders != readers || st.WaitingWriters != writers {
		t.Errorf("RW Inspect = {key %q mode %q holders %v waiting r%d w%d}, want {%q %q %v r%d w%d}",
			st.Key, st.Mode, holderTokens(st.Holders), st.WaitingReaders, st.WaitingWriters,
			key, mode, grantTokens(holders), readers, writers)
	}
}

// waitRWWaiters waits until Inspect counts readers and writers waiting.
func waitRWWaiters(t *testing.T, rw backend.RWLocks, key string, readers, writers int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := rw.Inspect(ctxTimeout(t, 10*time.Second), key)
		if err != nil {
			t.Fatalf("RW Inspect: %v", err)
		}
		if st.WaitingReaders == readers && st.WaitingWriters == writers {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("RW Inspect(%q) waiting = r%d w%d, want r%d w%d", key, st.WaitingReaders, st.WaitingWriters, readers, writers)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pending is an acquire running in the background.
type pending struct {
	t      *testing.T
	what   string
	cancel context.CancelFunc
	done   chan struct{}
	g      backend.RWGrant
	err    error
}

// rwAsync starts an acquire in the background; its ctx ends with the test.
func rwAsync(t *testing.T, rw backend.RWLocks, req backend.RWAcquireRequest) *pending {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), req.Wait+20*time.Second)
	p := &pending{t: t, what: fmt.Sprintf("%s %q", req.Mode, req.Owner), cancel: cancel, done: make(chan struct{})}
	t.Cleanup(func() {
		cancel()
		<-p.done
	})
	go func() {
		defer close(p.done)
		p.g, p.err = rw.Acquire(ctx, req)
	}()
	return p
}

// granted waits up to within for the grant and fails the test without it.
func (p *pending) granted(within time.Duration) backend.RWGrant {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		p.t.Fatalf("%s not granted within %v", p.what, within)
	}
	if p.err != nil {
		p.t.Fatalf("%s: %v", p.what, p.err)
	}
	return p.g
}

// stillWaiting checks that the acquire has not returned.
func (p *pending) stillWaiting() {
	p.t.Helper()
	select {
	case <-p.done:
		p.t.Fatalf("%s returned (grant token %d, err %v) while it should still wait", p.what, p.g.Token, p.err)
	default:
	}
}

// Readers on two replicas hold the key together; a writer is refused while
// they hold, and is told who holds.
func (s *suite) rwReadersShare(t *testing.T) {
	rws := s.rwReplicas(t, 2)
	key := s.key(t)
	var readers []backend.RWGrant
	for i := 0; i < 3; i++ {
		readers = append(readers, rwAcquire(t, rws[i%2], rwReq(key, backend.ModeRead, fmt.Sprint("reader-", i), 30*time.Second, 0)))
	}
	wantRWState(t, rws[1], key, backend.ModeRead, 0, 0, readers...)
	_, err := rws[1].Acquire(ctxTimeout(t, 20*time.Second), rwReq(key, backend.ModeWrite, "writer", 30*time.Second, 0))
	wantRWHeld(t, err, "writer single try among readers", readers...)
	wantRWState(t, rws[0], key, backend.ModeRead, 0, 0, readers...)
}

// A writer excludes readers and writers; its release lets them in.
func (s *suite) rwWriterExcludesAll(t *testing.T) {
	rws := s.rwReplicas(t, 2)
	key := s.key(t)
	w := rwAcquire(t, rws[0], rwReq(key, backend.ModeWrite, "writer", 30*time.Second, 0))
	wantRWState(t, rws[1], key, backend.ModeWrite, 0, 0, w)
	for _, mode := range []string{backend.ModeRead, backend.ModeWrite} {
		_, err := rws[1].Acquire(ctxTimeout(t, 20*time.Second), rwReq(key, mode, "other", 30*time.Second, 0))
		wantRWHeld(t, err, mode+" single try while a writer holds", w)
		_, err = rws[1].Acquire(ctxTimeout(t, 20*time.Second), rwReq(key, mode, "other", 30*time.Second, 300*time.Millisecond))
		wantRWHeld(t, err, mode+" short wait while a writer holds", w)
	}
	wantRWState(t, rws[1], key, backend.ModeWrite, 0, 0, w)
	rwRelease(t, rws[0], w)
	r := rwAcquire(t, rws[1], rwReq(key, backend.ModeRead, "reader", 30*time.Second, 0))
	if r.Token <= w.Token {
		t.Errorf("read token %d after write token %d, want greater", r.Token, w.Token)
	}
}

// Readers, then a writer, then readers: the later readers wait behind the
// writer, even though only readers hold, until the writer has had its turn.
func (s *suite) rwWriterNotStarved(t *testing.T) {
	rws := s.rwReplicas(t, 2)
	key := s.key(t)
	r1 := rwAcquire(t, rws[0], rwReq(key, backend.ModeRead, "early-1", 30*time.Second, 0))
	r2 := rwAcquire(t, rws[1], rwReq(key, backend.ModeRead, "early-2", 30*time.Second, 0))
	w := rwAsync(t, rws[1], rwReq(key, backend.ModeWrite, "writer", 30*time.Second, 30*time.Second))
	waitRWWaiters(t, rws[0], key, 0, 1)

	_, err := rws[0].Acquire(ctxTimeout(t, 20*time.Second), rwReq(key, backend.ModeRead, "late-try", 30*time.Second, 0))
	wantRWHeld(t, err, "reader single try behind a queued writer", r1, r2)
	late := rwAsync(t, rws[0], rwReq(key, backend.ModeRead, "late", 30*time.Second, 30*time.Second))
	waitRWWaiters(t, rws[1], key, 1, 1)
	wantRWState(t, rws[1], key, backend.ModeRead, 1, 1, r1, r2)

	rwRelease(t, rws[0], r1)
	time.Sleep(200 * time.Millisecond)
	w.stillWaiting()
	late.stillWaiting()
	rwRelease(t, rws[1], r2)
	wg := w.granted(10 * time.Second)
	late.stillWaiting()
	wantRWState(t, rws[0], key, backend.ModeWrite, 1, 0, wg)
	rwRelease(t, rws[1], wg)
	lg := late.granted(10 * time.Second)
	if wg.Token <= r2.Token || wg.Token <= r1.Token || lg.Token <= wg.Token {
		t.Errorf("tokens readers %d,%d writer %d late reader %d: want the writer above the readers before it, the late reader above the writer",
			r1.Token, r2.Token, wg.Token, lg.Token)
	}
}

// Waiters are served in one FIFO queue: with a writer holding, readers r1 and
// r2, writer w2 and reader r3 queue in that order. The release grants r1 and
// r2 together, not r3 (w2 is ahead of it); w2 comes once both readers left,
// then r3.
func (s *suite) rwReaderBatchFIFO(t *testing.T) {
	rws := s.rwReplicas(t, 2)
	key := s.key(t)
	w1 := rwAcquire(t, rws[0], rwReq(key, backend.ModeWrite, "w1", 30*time.Second, 0))
	const wait = 30 * time.Second
	r1 := rwAsync(t, rws[0], rwReq(key, backend.ModeRead, "r1", 30*time.Second, wait))
	waitRWWaiters(t, rws[0], key, 1, 0)
	r2 := rwAsync(t, rws[1], rwReq(key, backend.ModeRead, "r2", 30*time.Second, wait))
	waitRWWaiters(t, rws[0], key, 2, 0)
	w2 := rwAsync(t, rws[0], rwReq(key, backend.ModeWrite, "w2", 30*time.Second, wait))
	waitRWWaiters(t, rws[0], key, 2, 1)
	r3 := rwAsync(t, rws[1], rwReq(key, backend.ModeRead, "r3", 30*time.Second, wait))
	waitRWWaiters(t, rws[0], key, 3, 1)

	rwRelease(t, rws[0], w1)
	g1, g2 := r1.granted(10*time.Second), r2.granted(10*time.Second)
	time.Sleep(200 * time.Millisecond)
	w2.stillWaiting()
	r3.stillWaiting()
	wantRWState(t, rws[1], key, backend.ModeRead, 1, 1, g1, g2)

	rwRelease(t, rws[0], g1)
	rwRelease(t, rws[1], g2)
	gw2 := w2.granted(10 * time.Second)
	r3.stillWaiting()
	rwRelease(t, rws[0], gw2)
	g3 := r3.granted(10 * time.Second)
	rwRelease(t, rws[1], g3)
	wantRWState(t, rws[1], key, "", 0, 0)
}

// Over a mix of grants, every write token is above every token before it,
// and every read token above every earlier writer's.
func (s *suite) rwTokensMonotone(t *testing.T) {
	rws := s.rwReplicas(t, 2)
	key := s.key(t)
	var maxAll, maxWrite uint64
	check := func(g backend.RWGrant) {
		t.Helper()
		if g.Mode == backend.ModeWrite && g.Token <= maxAll {
			t.Errorf("write token %d, want above every earlier token (the highest %d)", g.Token, maxAll)
		}
		if g.Mode == backend.ModeRead && g.Token <= maxWrite {
			t.Errorf("read token %d, want above every earlier writer's (the highest %d)", g.Token, maxWrite)
		}
	}
	note := func(gs ...backend.RWGrant) {
		for _, g := range gs {
			maxAll = max(maxAll, g.Token)
			if g.Mode == backend.ModeWrite {
				maxWrite = max(maxWrite, g.Token)
			}
		}
	}
	for round := 0; round < 3; round++ {
		var batch []backend.RWGrant
		for i := 0; i < 3; i++ {
			g := rwAcquire(t, rws[i%2], rwReq(key, backend.ModeRead, fmt.Sprint("r", round, i), 30*time.Second, 10*time.Second))
			check(g)
			batch = append(batch, g)
		}
		note(batch...)
		w := rwAsync(t, rws[round%2], rwReq(key, backend.ModeWrite, fmt.Sprint("w", round), 30*time.Second, 30*time.Second))
		waitRWWaiters(t, rws[0], key, 0, 1)
		for i, g := range batch {
			rwRelease(t, rws[i%2], g)
		}
		wg := w.granted(10 * time.Second)
		check(wg)
		note(wg)
		rwRelease(t, rws[round%2], wg)
	}
}

// Each reader has its own lease: one that expires or is released leaves the
// others' leases as they were, and they still keep writers out.
func (s *suite) rwReaderLeasesIndependent(t *testing.T) {
	rws := s.rwReplicas(t, 2)
	key := s.key(t)
	const short = 800 * time.Millisecond
	brief := rwAcquire(t, rws[0], rwReq(key, backend.ModeRead, "brief", short, 0))
	long := rwAcquire(t, rws[1], rwReq(key, backend.ModeRead, "long", 30*time.Second, 0))
	third := rwAcquire(t, rws[0], rwReq(key, backend.ModeRead, "third", 30*time.Second, 0))
	if brief.LeaseID == long.LeaseID || long.LeaseID == third.LeaseID {
		t.Fatalf("readers share a lease id: %q %q %q", brief.LeaseID, long.LeaseID, third.LeaseID)
	}
	rwRelease(t, rws[0], third)
	r, err := rws[1].Renew(ctxTimeout(t, 10*time.Second), key, long.LeaseID, 40*time.Second)
	if err != nil || r.Token != long.Token || r.Mode != backend.ModeRead {
		t.Fatalf("Renew of a reader after another's release = {token %d mode %q} (%v), want token %d read", r.Token, r.Mode, err, long.Token)
	}
	time.Sleep(short + 300*time.Millisecond)
	_, err = rws[0].Renew(ctxTimeout(t, 10*time.Second), key, brief.LeaseID, 0)
	wantLeaseExpired(t, err, "renew of the expired reader")
	wantLeaseExpired(t, rws[0].Release(ctxTimeout(t, 10*time.Second), key, brief.LeaseID), "release of the expired reader")
	if _, err := rws[1].Renew(ctxTimeout(t, 10*time.Second), key, long.LeaseID, 0); err != nil {
		t.Fatalf("Renew of a reader after another's expiry: %v", err)
	}
	_, err = rws[0].Acquire(ctxTimeout(t, 20*time.Second), rwReq(key, backend.ModeWrite, "writer", 30*time.Second, 0))
	wantRWHeld(t, err, "writer while one reader of three is left")
	// The brief reader's expiry is seen by everyone well after its deadline
	// plus any skew; then only the long reader holds.
	time.Sleep(2 * time.Second)
	wantRWState(t, rws[0], key, backend.ModeRead, 0, 0, r)
}

// A writer whose granting replica is gone expires in the store: a reader
// waiting on another replica is granted within the TTL (plus slack).
func (s *suite) rwExpiredWriterFrees(t *testing.T) {
	granterB, otherB := s.newBackend(t), s.newBackend(t)
	granter, other := s.rwOf(t, granterB), s.rwOf(t, otherB)
	key := s.key(t)
	const ttl = 800 * time.Millisecond
	start := time.Now()
	w := rwAcquire(t, granter, rwReq(key, backend.ModeWrite, "gone", ttl, 0))
	if err := granterB.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
	r := rwAcquire(t, other, rwReq(key, backend.ModeRead, "reader", 10*time.Second, 10*time.Second))
	if took, limit := time.Since(start), ttl+time.Second+schedSlack; took > limit {
		t.Errorf("rwlock freed %v after the write grant with its granter gone, want within %v", took, limit)
	}
	if r.Token <= w.Token {
		t.Errorf("read token %d after the expired writer's %d, want greater", r.Token, w.Token)
	}
	w2 := rwAsync(t, other, rwReq(key, backend.ModeWrite, "next", 10*time.Second, 10*time.Second))
	waitRWWaiters(t, other, key, 0, 1)
	rwRelease(t, other, r)
	if g := w2.granted(10 * time.Second); g.Token <= r.Token {
		t.Errorf("write token %d after read token %d, want greater", g.Token, r.Token)
	}
}

// A queued writer blocks the readers behind it; when it gives up (its ctx
// ends), they are granted at once, while the earlier reader still holds.
func (s *suite) rwCancelledWriterWakesReaders(t *testing.T) {
	rws := s.rwReplicas(t, 2)
	key := s.key(t)
	holder := rwAcquire(t, rws[0], rwReq(key, backend.ModeRead, "holder", 30*time.Second, 0))
	w := rwAsync(t, rws[0], rwReq(key, backend.ModeWrite, "quitter", 30*time.Second, 30*time.Second))
	waitRWWaiters(t, rws[1], key, 0, 1)
	behind := []*pending{
		rwAsync(t, rws[1], rwReq(key, backend.ModeRead, "behind-1", 30*time.Second, 30*time.Second)),
		rwAsync(t, rws[0], rwReq(key, backend.ModeRead, "behind-2", 30*time.Second, 30*time.Second)),
	}
	waitRWWaiters(t, rws[1], key, 2, 1)
	time.Sleep(200 * time.Millisecond)
	for _, p := range behind {
		p.stillWaiting()
	}
	w.cancel()
	<-w.done
	if !errors.Is(w.err, context.Canceled) {
		t.Fatalf("cancelled writer got %v, want context.Canceled", w.err)
	}
	var got []backend.RWGrant
	for _, p := range behind {
		got = append(got, p.granted(5*time.Second))
	}
	wantRWState(t, rws[1], key, backend.ModeRead, 0, 0, append(got, holder)...)
}

// Once a grant's lease ran out, its release and renew are refused and change
// nothing, in either mode, even after someone else took the key.
func (s *suite) rwReleaseAfterExpiryRefused(t *testing.T) {
	rws := s.rwReplicas(t, 2)
	for _, mode := range []string{backend.ModeWrite, backend.ModeRead} {
		key := s.key(t, "-"+mode)
		const ttl = 500 * time.Millisecond
		g := rwAcquire(t, rws[0], rwReq(key, mode, "stale", ttl, 0))
		time.Sleep(ttl + 200*time.Millisecond)
		wantLeaseExpired(t, rws[0].Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID), mode+" release after expiry")
		_, err := rws[0].Renew(ctxTimeout(t, 10*time.Second), key, g.LeaseID, 30*time.Second)
		wantLeaseExpired(t, err, mode+" renew after expiry")
		next := rwAcquire(t, rws[1], rwReq(key, backend.ModeWrite, "next", 30*time.Second, 10*time.Second))
		wantLeaseExpired(t, rws[0].Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID), mode+" release after expiry, with a new writer")
		wantRWState(t, rws[1], key, backend.ModeWrite, 0, 0, next)
	}
}

// A grant may live in a session: it shows the session's deadline, is renewed
// only through the session, and ends when the session is closed, letting the
// writer behind it in.
func (s *suite) rwSessionGrant(t *testing.T) {
	b := s.newBackend(t)
	rw := s.rwOf(t, b)
	sr, ok := b.(backend.Sessioner)
	if !ok || sr.Sessions() == nil {
		t.Skip("the backend keeps no sessions")
	}
	if s.opts.NoRWSessions != "" {
		if rw.Features().Sessions {
			t.Fatalf("Options.NoRWSessions says %q, yet RWFeatures.Sessions is true", s.opts.NoRWSessions)
		}
		t.Skip(s.opts.NoRWSessions)
	}
	if !rw.Features().Sessions {
		t.Fatal("RWFeatures.Sessions is false, and Options.NoRWSessions gives no reason")
	}
	ss := sr.Sessions()
	key := s.key(t)
	sess := openSession(t, ss, "rw-session", 30*time.Second)
	req := rwReq(key, backend.ModeRead, "in-session", 0, 0)
	req.Session = sess.ID
	g := rwAcquire(t, rw, req)
	if !g.Session || !sameMilli(g.ExpiresAt, sess.ExpiresAt) {
		t.Errorf("grant in a session = {session %v expires %v}, want the session's deadline %v", g.Session, g.ExpiresAt, sess.ExpiresAt)
	}
	_, err := rw.Renew(ctxTimeout(t, 10*time.Second), key, g.LeaseID, time.Minute)
	if !errors.Is(err, backend.ErrSessionBound) {
		t.Errorf("Renew of a session's read grant: got %v, want ErrSessionBound", err)
	}
	other := s.rwOf(t, s.newBackend(t))
	w := rwAsync(t, other, rwReq(key, backend.ModeWrite, "writer", 30*time.Second, 30*time.Second))
	waitRWWaiters(t, other, key, 0, 1)
	if err := ss.Close(ctxTimeout(t, 10*time.Second), sess.ID); err != nil {
		t.Fatalf("session Close: %v", err)
	}
	if wg := w.granted(5 * time.Second); wg.Token <= g.Token {
		t.Errorf("write token %d after the session reader's %d, want greater", wg.Token, g.Token)
	}
	_, err = rw.Acquire(ctxTimeout(t, 20*time.Second), req)
	wantSessionExpired(t, err, "acquire in the closed session")
}
