// Package backendtest is the conformance suite of the backend contract. Every
// backend's tests call Run against a real server; each subtest checks one
// promise written in backend/backend.go, on its own key, so that a failure
// names the promise that broke.
//
// The suite must never be weakened for one backend: a backend that cannot
// keep a promise declares it in Options with the reason, and the README says
// so.
package backendtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// Factory returns a new backend instance connected to the same store on every
// call: two calls are two lockd replicas. It registers the instance's Close
// with t.Cleanup. Tests may also Close an instance themselves (a lockd that
// stopped); a second Close must not fail the test.
type Factory func(t *testing.T) backend.Backend

// Options declares what a backend cannot promise. The zero value runs every
// subtest.
type Options struct {
	// NoFIFO, when set, is the reason the backend does not serve waiters in
	// arrival order; the FIFO subtests are skipped with it.
	NoFIFO string
	// NoWaiterCount, when set, is the reason Inspect cannot count waiters;
	// waiter counts are then not asserted.
	NoWaiterCount string
	// Clocked returns an instance like the Factory's (same store) whose
	// every deadline decision uses clock: the clock subtests stand replicas
	// with clocks off by a known amount with it.
	Clocked func(t *testing.T, clock lease.Clock) backend.Backend
	// StoreClock, when set, is the reason the backend's leases do not
	// depend on lockd replicas' clocks (they run on the store's own
	// clock); the clock subtests then skip with it. One of Clocked and
	// StoreClock is required.
	StoreClock string
	// ValidityBelowTTL, when set, is why the backend reports a grant's TTL
	// (and ExpiresAt) as less than what was asked: what the holder may count
	// on, such as Redlock's validity. The suite then wants the reported TTL
	// strictly below the request, the store's deadline (Inspect) no earlier
	// than the grant's.
	ValidityBelowTTL string
	// NoIdempotency, when set, is the reason the backend does not implement
	// backend.Idempotent; the Idempotent subtests are skipped with it.
	NoIdempotency string
	// NoElections, when set, is the reason the backend does not implement
	// backend.Elector; the Election subtests are skipped with it.
	NoElections string
	// NoSessions, when set, is the reason the backend does not implement
	// backend.Sessioner; the Session subtests are skipped with it.
	NoSessions string
	// NoWatch, when set, is the reason the backend does not implement
	// backend.Watcher; the Watch subtests are skipped with it.
	NoWatch string
	// NoEventReplay, when set, is the reason a resumed Watch cannot
	// replay the events it missed (WatchFeatures.Replay is false); the
	// Watch subtests then want a resync where a replay would come.
	NoEventReplay string
	// NoSemaphores, when set, is the reason the backend does not implement
	// backend.Semaphorer; the Semaphore subtests are skipped with it.
	NoSemaphores string
	// NoRWLocks, when set, is the reason the backend does not implement
	// backend.RWLocker; the RW subtests are skipped with it.
	NoRWLocks string
	// NoRWSessions, when set, is the reason the backend's RW locks do not
	// live in its sessions (RWFeatures.Sessions is false); RWSessionGrant
	// is skipped with it.
	NoRWSessions string
	// NoLockDelay is, for each primitive (backend.PrimitiveLocks, ...)
	// the backend does not delay (backend.LockDelayer), the reason; the
	// LockDelay subtests of that primitive are skipped with it.
	NoLockDelay map[string]string
}

// NoLockDelays is a NoLockDelay giving one reason for every primitive.
func NoLockDelays(reason string) map[string]string {
	return map[string]string{backend.PrimitiveLocks: reason, backend.PrimitiveSemaphores: reason, backend.PrimitiveRWLocks: reason, backend.PrimitiveElections: reason}
}

// schedSlack absorbs scheduling noise on shared two-core machines; it is added
// only to upper bounds the contract states (expiry within TTL + 1 s).
const schedSlack = 500 * time.Millisecond

// Run runs every conformance subtest against the backends newBackend makes.
func Run(t *testing.T, newBackend Factory, opts Options) {
	s := &suite{newBackend: newBackend, opts: opts, run: randomHex(4)}
	tests := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"GrantShape", s.grantShape},
		{"ExclusiveGrant", s.exclusiveGrant},
		{"ConcurrentAcquireOneWinner", s.concurrentOneWinner},
		{"MutualExclusionUnderContention", s.mutualExclusionUnderContention},
		{"FencingTokenStrictlyIncreases", s.fencingIncreases},
		{"ReleaseFrees", s.releaseFrees},
		{"RenewExtends", s.renewExtends},
		{"RenewNeverResurrects", s.renewNeverResurrects},
		{"ExpiryFreesLock", s.expiryFrees},
		{"ExpiryEnforcedWhenGrantingReplicaIsGone", s.expiryWithoutGranter},
		{"GrantSurvivesReplicaRestart", s.grantSurvivesRestart},
		{"StaleLeaseRefused", s.staleLeaseRefused},
		{"ForeignLeaseRefused", s.foreignLeaseRefused},
		{"KeysAreIndependent", s.keysIndependent},
		{"WaitTimesOutWithHolder", s.waitTimesOut},
		{"ReleaseWakesWaiter", s.releaseWakesWaiter},
		{"ReleaseWakesWaiterOnOtherReplica", s.releaseWakesRemoteWaiter},
		{"FIFOWaiters", s.fifo},
		{"WaiterOutwaitingItsTTLKeepsTurn", s.waiterOutwaitsTTL},
		{"CancelledWaiterLeavesNoTrace", s.cancelledWaiter},
		{"CancelledContextAcquiresNothing", s.cancelledBeforeStart},
		{"InspectShowsHolderAndWaiters", s.inspect},
		{"ListHeldLocks", s.list},
		{"Ping", s.ping},
		{"ClockSkewBelowBoundKeepsExclusion", s.skewBelowBound},
		{"ClockSkewAboveBoundDetected", s.skewAboveBound},
	}
	tests = append(tests, s.idempotencyTests()...)
	tests = append(tests, s.electionTests()...)
	tests = append(tests, s.sessionTests()...)
	tests = append(tests, s.watchTests()...)
	tests = append(tests, s.semaphoreTests()...)
	tests = append(tests, s.rwTests()...)
	tests = append(tests, s.lockDelayTests()...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t)
		})
	}
}

type suite struct {
	newBackend Factory
	opts       Options
	run        string // distinguishes keys of two runs against one store
}

// key returns a key unique to this run and subtest.
func (s *suite) key(t *testing.T, suffix ...string) string {
	name := t.Name()
	if i := strings.LastIndex(name, "/"); i >= 0 {
		name = name[i+1:]
	}
	k := "ct-" + s.run + "-" + name
	for _, x := range suffix {
		k += x
	}
	return k
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func acquire(t *testing.T, b backend.Backend, req backend.AcquireRequest) backend.Grant {
	t.Helper()
	ctx := ctxTimeout(t, req.Wait+20*time.Second)
	g, err := b.Acquire(ctx, req)
	if err != nil {
		t.Fatalf("Acquire(%q, owner %q, ttl %v, wait %v): %v", req.Key, req.Owner, req.TTL, req.Wait, err)
	}
	return g
}

func wantHeld(t *testing.T, err error, holder *backend.Grant) {
	t.Helper()
	if !errors.Is(err, backend.ErrHeld) {
		t.Fatalf("got error %v, want ErrHeld", err)
	}
	var he *backend.HeldError
	if holder == nil || !errors.As(err, &he) || he.Holder == nil {
		return // the holder is reported "when known"
	}
	if he.Holder.Token != holder.Token || he.Holder.Owner != holder.Owner {
		t.Errorf("HeldError holder = {owner %q token %d}, want {owner %q token %d}",
			he.Holder.Owner, he.Holder.Token, holder.Owner, holder.Token)
	}
}

func wantLeaseExpired(t *testing.T, err error, what string) {
	t.Helper()
	if !errors.Is(err, backend.ErrLeaseExpired) {
		t.Fatalf("%s: got error %v, want ErrLeaseExpired", what, err)
	}
}

func (s *suite) tryAcquire(t *testing.T, b backend.Backend, key string) (backend.Grant, error) {
	t.Helper()
	return b.Acquire(ctxTimeout(t, 20*time.Second), backend.AcquireRequest{Key: key, Owner: "probe", TTL: 10 * time.Second})
}

// A grant says what was asked: key, owner, TTL, a deadline TTL from now, and a
// lease id that is an unguessable capability.
func (s *suite) grantShape(t *testing.T) {
	b := s.newBackend(t)
	key := s.key(t)
	const ttl = 5 * time.Second
	before := time.Now()
	g := acquire(t, b, backend.AcquireRequest{Key: key, Owner: "shape-owner", TTL: ttl})
	after := time.Now()
	if g.Key != key || g.Owner != "shape-owner" {
		t.Errorf("grant = {key %q owner %q}, want {%q %q}", g.Key, g.Owner, key, "shape-owner")
	}
	s.wantTTL(t, "grant", g.TTL, ttl)
	if g.Token == 0 {
		t.Errorf("token = 0, want a positive fencing token")
	}
	// The deadline is counted from the grant, which happened inside the
	// call, with the TTL the grant reports.
	lo, hi := before.Add(g.TTL).Add(-time.Millisecond), after.Add(g.TTL).Add(time.Millisecond)
	if g.ExpiresAt.Before(lo) || g.ExpiresAt.After(hi) {
		t.Errorf("expires_at = %v, want within [%v, %v]", g.ExpiresAt, lo, hi)
	}
	if !lease.ValidID(g.LeaseID) {
		t.Errorf("lease id %q is not URL-safe or is longer than %d bytes", g.LeaseID, lease.MaxIDLen)
	}
	if len(g.LeaseID) < 22 { // 128 bits in base64 need 22 characters
		t.Errorf("lease id %q is too short to carry 128 random bits", g.LeaseID)
	}
	if err := b.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	g2 := acquire(t, b, backend.AcquireRequest{Key: key, TTL: ttl})
	if g2.LeaseID == g.LeaseID {
		t.Errorf("two grants share lease id %q", g.LeaseID)
	}
	if g2.Owner != "" {
		t.Errorf("owner = %q, want empty when none was given", g2.Owner)
	}
}

// wantTTL checks a grant's reported TTL against the one asked for: equal, or
// for a backend that reports validity, strictly less but more than half.
func (s *suite) wantTTL(t *testing.T, what string, got, asked time.Duration) {
	t.Helper()
	if s.opts.ValidityBelowTTL == "" {
		if got != asked {
			t.Errorf("%s TTL = %v, want the %v asked for", what, got, asked)
		}
		return
	}
	if got >= asked || got <= asked/2 {
		t.Errorf("%s TTL = %v, want the validity: less than the %v asked for (%s), but more than half of it", what, got, asked, s.opts.ValidityBelowTTL)
	}
}

// While a lease holds the key, nobody else gets it, on any replica, and the
// refusal names the holder.
func (s *suite) exclusiveGrant(t *testing.T) {
	b1, b2 := s.newBackend(t), s.newBackend(t)
	key := s.key(t)
	g := acquire(t, b1, backend.AcquireRequest{Key: key, Owner: "first", TTL: 10 * time.Second})
	for i, b := range []backend.Backend{b1, b2} {
		_, err := b.Acquire(ctxTimeout(t, 10*time.Second), backend.AcquireRequest{Key: key, Owner: "second", TTL: time.Second})
		if err == nil {
			t.Fatalf("replica %d: second acquire of a held key succeeded", i+1)
		}
		wantHeld(t, err, &g)
	}
}

// Many acquirers trying at once across replicas: exactly one winner per round.
func (s *suite) concurrentOneWinner(t *testing.T) {
	replicas := []backend.Backend{s.newBackend(t), s.newBackend(t)}
	const rounds, contenders = 5, 16
	for r := 0; r < rounds; r++ {
		key := s.key(t, fmt.Sprint("-", r))
		var (
			wg      sync.WaitGroup
			winners atomic.Int32
			others  = make(chan error, contenders)
			start   = make(chan struct{})
		)
		for i := 0; i < contenders; i++ {
			wg.Add(1)
			go func(b backend.Backend) {
				defer wg.Done()
				<-start
				ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
				defer cancel()
				_, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: 30 * time.Second})
				if err == nil {
					winners.Add(1)
					return
				}
				others <- err
			}(replicas[i%len(replicas)])
		}
		close(start)
		wg.Wait()
		close(others)
		if got := winners.Load(); got != 1 {
			t.Errorf("round %d: %d winners among %d concurrent single tries, want exactly 1", r, got, contenders)
		}
		for err := range others {
			if !errors.Is(err, backend.ErrHeld) {
				t.Errorf("round %d: a losing try got %v, want ErrHeld", r, err)
			}
		}
	}
}

// Workers that wait for the lock, hold it briefly and release it never
// overlap, and the tokens they see, in the order they held the lock, strictly
// increase.
func (s *suite) mutualExclusionUnderContention(t *testing.T) {
	replicas := []backend.Backend{s.newBackend(t), s.newBackend(t)}
	key := s.key(t)
	const workers, each = 6, 5
	var (
		inside   atomic.Int32
		mu       sync.Mutex
		tokens   []uint64
		failures = make(chan string, workers*each)
		wg       sync.WaitGroup
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int, b backend.Backend) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				g, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: fmt.Sprint("w", w), TTL: 20 * time.Second, Wait: 25 * time.Second})
				cancel()
				if err != nil {
					failures <- fmt.Sprintf("worker %d: acquire: %v", w, err)
					return
				}
				if n := inside.Add(1); n != 1 {
					failures <- fmt.Sprintf("worker %d: %d holders inside the critical section", w, n)
				}
				mu.Lock()
				tokens = append(tokens, g.Token)
				mu.Unlock()
				time.Sleep(2 * time.Millisecond)
				inside.Add(-1)
				ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
				err = b.Release(ctx, key, g.LeaseID)
				cancel()
				if err != nil {
					failures <- fmt.Sprintf("worker %d: release: %v", w, err)
					return
				}
			}
		}(w, replicas[w%len(replicas)])
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Error(f)
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Errorf("token %d held after token %d: tokens in holding order must strictly increase (all: %v)", tokens[i], tokens[i-1], tokens)
			break
		}
	}
	if len(tokens) != workers*each {
		t.Errorf("%d grants, want %d", len(tokens), workers*each)
	}
}

// Tokens strictly increase across release, expiry, and replicas.
func (s *suite) fencingIncreases(t *testing.T) {
	replicas := []backend.Backend{s.newBackend(t), s.newBackend(t)}
	key := s.key(t)
	var last uint64
	check := func(g backend.Grant, how string) {
		t.Helper()
		if g.Token <= last {
			t.Fatalf("%s: token %d after token %d, want strictly greater", how, g.Token, last)
		}
		last = g.Token
	}
	for i := 0; i < 6; i++ {
		b := replicas[i%2]
		g := acquire(t, b, backend.AcquireRequest{Key: key, TTL: 10 * time.Second})
		check(g, fmt.Sprintf("grant %d after release", i))
		if err := b.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	// After an expiry, too: the holder never releases.
	g := acquire(t, replicas[0], backend.AcquireRequest{Key: key, TTL: 200 * time.Millisecond})
	check(g, "grant before expiry")
	g = acquire(t, replicas[1], backend.AcquireRequest{Key: key, TTL: 10 * time.Second, Wait: 5 * time.Second})
	check(g, "grant after expiry")
}

// Release frees the key at once; a second release of the same lease is
// refused.
func (s *suite) releaseFrees(t *testing.T) {
	b := s.newBackend(t)
	key := s.key(t)
	g := acquire(t, b, backend.AcquireRequest{Key: key, TTL: 30 * time.Second})
	if err := b.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if _, err := s.tryAcquire(t, b, key); err != nil {
		t.Fatalf("single try after release: %v, want a grant", err)
	}
	wantLeaseExpired(t, b.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID), "second release of a released lease")
}

// Renew keeps the token and moves the deadline: the lease outlives its
// original TTL.
func (s *suite) renewExtends(t *testing.T) {
	b := s.newBackend(t)
	key := s.key(t)
	g := acquire(t, b, backend.AcquireRequest{Key: key, Owner: "renewer", TTL: 700 * time.Millisecond})
	time.Sleep(300 * time.Millisecond)
	before := time.Now()
	r, err := b.Renew(ctxTimeout(t, 10*time.Second), key, g.LeaseID, 3*time.Second)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if r.Token != g.Token || r.LeaseID != g.LeaseID || r.Key != key || r.Owner != "renewer" {
		t.Errorf("renewed grant = {token %d lease %q key %q owner %q}, want the same token, lease, key and owner as %+v", r.Token, r.LeaseID, r.Key, r.Owner, g)
	}
	s.wantTTL(t, "renewed", r.TTL, 3*time.Second)
	if lo := before.Add(r.TTL).Add(-time.Millisecond); r.ExpiresAt.Before(lo) {
		t.Errorf("renewed expires_at %v, want at least %v (its TTL %v from before the call)", r.ExpiresAt, lo, r.TTL)
	}
	// Past the original deadline (+ the contract's second), still held.
	time.Sleep(time.Until(g.ExpiresAt.Add(time.Second)))
	_, err = s.tryAcquire(t, s.newBackend(t), key)
	wantHeld(t, err, &g)
	// TTL 0 keeps the lease's TTL (the API's renew without ttl_ms).
	before = time.Now()
	r, err = b.Renew(ctxTimeout(t, 10*time.Second), key, g.LeaseID, 0)
	if err != nil {
		t.Fatalf("Renew keeping the TTL: %v", err)
	}
	s.wantTTL(t, "Renew with TTL 0: the lease's 3s, renewed", r.TTL, 3*time.Second)
	if r.ExpiresAt.Before(before.Add(r.TTL).Add(-time.Millisecond)) {
		t.Errorf("Renew with TTL 0 = {ttl %v expires_at %v}, want its TTL from now (%v)", r.TTL, r.ExpiresAt, before.Add(r.TTL))
	}
}

// A lease that ran out stays dead: renewing it is refused and nobody's lock
// comes back to life.
func (s *suite) renewNeverResurrects(t *testing.T) {
	b := s.newBackend(t)
	key := s.key(t)
	g := acquire(t, b, backend.AcquireRequest{Key: key, TTL: 150 * time.Millisecond})
	time.Sleep(400 * time.Millisecond)
	_, err := b.Renew(ctxTimeout(t, 10*time.Second), key, g.LeaseID, 10*time.Second)
	wantLeaseExpired(t, err, "renew after the TTL ran out")
	if _, err := s.tryAcquire(t, b, key); err != nil {
		t.Fatalf("single try after the expired renew: %v, want a grant", err)
	}
	wantLeaseExpired(t, b.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID), "release of the expired lease")
}

// With nobody renewing, the lock is free within TTL + 1 s: for a waiter, and
// for a single try made after that.
func (s *suite) expiryFrees(t *testing.T) {
	b := s.newBackend(t)
	for _, ttl := range []time.Duration{100 * time.Millisecond, 1500 * time.Millisecond} {
		key := s.key(t, fmt.Sprint("-", ttl.Milliseconds()))
		start := time.Now()
		acquire(t, b, backend.AcquireRequest{Key: key, TTL: ttl})
		g := acquire(t, s.newBackend(t), backend.AcquireRequest{Key: key, TTL: 10 * time.Second, Wait: ttl + 10*time.Second})
		if took, limit := time.Since(start), ttl+time.Second+schedSlack; took > limit {
			t.Errorf("ttl %v: waiter granted %v after the holder's acquire started, want within %v", ttl, took, limit)
		}
		if g.Token == 0 {
			t.Errorf("ttl %v: zero token", ttl)
		}

		key = s.key(t, fmt.Sprint("-try-", ttl.Milliseconds()))
		acquire(t, b, backend.AcquireRequest{Key: key, TTL: ttl})
		time.Sleep(ttl + time.Second)
		if _, err := s.tryAcquire(t, s.newBackend(t), key); err != nil {
			t.Errorf("ttl %v: single try TTL+1s after the grant: %v, want a grant", ttl, err)
		}
	}
}

// Expiry is state in the store: with the granting replica gone, another
// replica still sees the grant until it runs out, and then gets the lock.
func (s *suite) expiryWithoutGranter(t *testing.T) {
	granter, other := s.newBackend(t), s.newBackend(t)
	key := s.key(t)
	const ttl = 800 * time.Millisecond
	start := time.Now()
	g := acquire(t, granter, backend.AcquireRequest{Key: key, Owner: "gone", TTL: ttl})
	if err := granter.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
	if time.Since(start) < ttl/2 {
		_, err := s.tryAcquire(t, other, key)
		wantHeld(t, err, &g)
	}
	g2 := acquire(t, other, backend.AcquireRequest{Key: key, TTL: 10 * time.Second, Wait: 10 * time.Second})
	if took, limit := time.Since(start), ttl+time.Second+schedSlack; took > limit {
		t.Errorf("lock freed %v after the grant with its granter gone, want within %v", took, limit)
	}
	if g2.Token <= g.Token {
		t.Errorf("token %d after %d, want strictly greater", g2.Token, g.Token)
	}
}

// A lease granted by one replica is renewed and released through another (a
// restarted lockd honours what it granted before).
func (s *suite) grantSurvivesRestart(t *testing.T) {
	first := s.newBackend(t)
	key := s.key(t)
	g := acquire(t, first, backend.AcquireRequest{Key: key, Owner: "survivor", TTL: 5 * time.Second})
	if err := first.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
	second := s.newBackend(t)
	_, err := s.tryAcquire(t, second, key)
	wantHeld(t, err, &g)
	r, err := second.Renew(ctxTimeout(t, 10*time.Second), key, g.LeaseID, 5*time.Second)
	if err != nil {
		t.Fatalf("Renew through another replica: %v", err)
	}
	if r.Token != g.Token || r.Owner != "survivor" {
		t.Errorf("renewed = {token %d owner %q}, want {token %d owner %q}", r.Token, r.Owner, g.Token, "survivor")
	}
	if err := second.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release through another replica: %v", err)
	}
	g2, err := s.tryAcquire(t, second, key)
	if err != nil {
		t.Fatalf("single try after release: %v", err)
	}
	if g2.Token <= g.Token {
		t.Errorf("token %d after %d, want strictly greater", g2.Token, g.Token)
	}
}

// A lease that no longer holds the key (released, then the key granted to
// someone else) can neither renew nor release, and leaves the new holder alone.
func (s *suite) staleLeaseRefused(t *testing.T) {
	b := s.newBackend(t)
	key := s.key(t)
	old := acquire(t, b, backend.AcquireRequest{Key: key, TTL: 10 * time.Second})
	if err := b.Release(ctxTimeout(t, 10*time.Second), key, old.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	cur := acquire(t, b, backend.AcquireRequest{Key: key, Owner: "current", TTL: 10 * time.Second})
	_, err := b.Renew(ctxTimeout(t, 10*time.Second), key, old.LeaseID, 10*time.Second)
	wantLeaseExpired(t, err, "renew with a released lease")
	wantLeaseExpired(t, b.Release(ctxTimeout(t, 10*time.Second), key, old.LeaseID), "release with a released lease")
	_, err = s.tryAcquire(t, b, key)
	wantHeld(t, err, &cur)
	if _, err := b.Renew(ctxTimeout(t, 10*time.Second), key, cur.LeaseID, 10*time.Second); err != nil {
		t.Errorf("the current holder's renew failed after the stale calls: %v", err)
	}
}

// Lease ids that were never this key's (another key's, made up, almost right)
// are refused and never free the true holder.
func (s *suite) foreignLeaseRefused(t *testing.T) {
	b := s.newBackend(t)
	key, other := s.key(t), s.key(t, "-other")
	holder := acquire(t, b, backend.AcquireRequest{Key: key, Owner: "holder", TTL: 10 * time.Second})
	foreign := acquire(t, b, backend.AcquireRequest{Key: other, TTL: 10 * time.Second})
	flipped := []byte(holder.LeaseID)
	if flipped[0] == 'A' {
		flipped[0] = 'B'
	} else {
		flipped[0] = 'A'
	}
	for _, id := range []string{foreign.LeaseID, lease.NewID(), string(flipped), holder.LeaseID + "x", "x"} {
		_, err := b.Renew(ctxTimeout(t, 10*time.Second), key, id, 10*time.Second)
		wantLeaseExpired(t, err, fmt.Sprintf("renew with foreign lease id %q", id))
		wantLeaseExpired(t, b.Release(ctxTimeout(t, 10*time.Second), key, id), fmt.Sprintf("release with foreign lease id %q", id))
	}
	// The holder's lease does not work on another key either.
	wantLeaseExpired(t, b.Release(ctxTimeout(t, 10*time.Second), other, holder.LeaseID), "release of another key with the holder's lease")
	_, err := s.tryAcquire(t, b, key)
	wantHeld(t, err, &holder)
	_, err = s.tryAcquire(t, b, other)
	wantHeld(t, err, &foreign)
}

// Keys that are prefixes of each other or differ in one character are
// separate locks.
func (s *suite) keysIndependent(t *testing.T) {
	b := s.newBackend(t)
	base := s.key(t)
	keys := []string{base, base + ".b", base + ":1", base + ":10", base + "-", base + "_x"}
	grants := make([]backend.Grant, len(keys))
	for i, k := range keys {
		grants[i] = acquire(t, b, backend.AcquireRequest{Key: k, TTL: 10 * time.Second})
	}
	if err := b.Release(ctxTimeout(t, 10*time.Second), keys[0], grants[0].LeaseID); err != nil {
		t.Fatalf("Release %q: %v", keys[0], err)
	}
	for i, k := range keys[1:] {
		_, err := s.tryAcquire(t, b, k)
		wantHeld(t, err, &grants[i+1])
	}
	st, err := b.Inspect(ctxTimeout(t, 10*time.Second), keys[0])
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if st.Held {
		t.Errorf("Inspect(%q) after release = held by %+v, want free (a longer key's lock must not show through)", keys[0], st.Holder)
	}
}

// A wait that runs out ends with ErrHeld naming the holder, not sooner than
// asked.
func (s *suite) waitTimesOut(t *testing.T) {
	b := s.newBackend(t)
	key := s.key(t)
	g := acquire(t, b, backend.AcquireRequest{Key: key, Owner: "sitter", TTL: 20 * time.Second})
	const wait = 400 * time.Millisecond
	start := time.Now()
	_, err := b.Acquire(ctxTimeout(t, 20*time.Second), backend.AcquireRequest{Key: key, TTL: time.Second, Wait: wait})
	took := time.Since(start)
	wantHeld(t, err, &g)
	if took < wait-5*time.Millisecond {
		t.Errorf("gave up after %v, want no sooner than the wait of %v", took, wait)
	}
	if took > wait+5*time.Second {
		t.Errorf("gave up after %v, want close to the wait of %v", took, wait)
	}
}

func (s *suite) handoff(t *testing.T, holderB, waiterB backend.Backend) {
	key := s.key(t)
	g := acquire(t, holderB, backend.AcquireRequest{Key: key, TTL: 30 * time.Second})
	type result struct {
		g   backend.Grant
		err error
		at  time.Time
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		w, err := waiterB.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: 10 * time.Second, Wait: 20 * time.Second})
		done <- result{w, err, time.Now()}
	}()
	s.waitForWaiters(t, waiterB, key, 1)
	select {
	case r := <-done:
		t.Fatalf("waiter returned before the release: %+v, %v", r.g, r.err)
	default:
	}
	released := time.Now()
	if err := holderB.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("waiter: %v, want a grant after the release", r.err)
	}
	// Generous: a handoff that took seconds is polling, not a wake-up. Prompt
	// handoff is measured by each backend's benchmark.
	if took := r.at.Sub(released); took > 3*time.Second {
		t.Errorf("waiter granted %v after the release, want a prompt wake-up", took)
	}
	if r.g.Token <= g.Token {
		t.Errorf("waiter's token %d, want greater than %d", r.g.Token, g.Token)
	}
}

// A release wakes a waiter long before its wait runs out.
func (s *suite) releaseWakesWaiter(t *testing.T) {
	b := s.newBackend(t)
	s.handoff(t, b, b)
}

// ...also when the waiter waits through another replica.
func (s *suite) releaseWakesRemoteWaiter(t *testing.T) {
	s.handoff(t, s.newBackend(t), s.newBackend(t))
}

// waitForWaiters waits until Inspect counts n waiters (or, for a backend that
// cannot count them, a moment for the waiter to queue).
func (s *suite) waitForWaiters(t *testing.T, b backend.Backend, key string, n int) {
	t.Helper()
	if s.opts.NoWaiterCount != "" {
		time.Sleep(300 * time.Millisecond)
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := b.Inspect(ctxTimeout(t, 10*time.Second), key)
		if err != nil {
			t.Fatalf("Inspect: %v", err)
		}
		if st.Waiters == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Inspect(%q).Waiters = %d, want %d", key, st.Waiters, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Waiters are granted in the order they arrived, across replicas.
func (s *suite) fifo(t *testing.T) {
	if s.opts.NoFIFO != "" {
		t.Skip("not FIFO: " + s.opts.NoFIFO)
	}
	replicas := []backend.Backend{s.newBackend(t), s.newBackend(t)}
	key := s.key(t)
	g := acquire(t, replicas[0], backend.AcquireRequest{Key: key, TTL: 30 * time.Second})
	const n = 5
	var (
		mu    sync.Mutex
		order []int
		errs  = make(chan error, n)
		wg    sync.WaitGroup
	)
	for i := 0; i < n; i++ {
		b := replicas[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
			defer cancel()
			w, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: fmt.Sprint(i), TTL: 20 * time.Second, Wait: 30 * time.Second})
			if err != nil {
				errs <- fmt.Errorf("waiter %d: %w", i, err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			if err := b.Release(ctx, key, w.LeaseID); err != nil {
				errs <- fmt.Errorf("waiter %d: release: %w", i, err)
			}
		}()
		// The next waiter arrives only once this one is queued.
		s.waitForWaiters(t, replicas[0], key, i+1)
	}
	if err := replicas[0].Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if !sort.IntsAreSorted(order) || len(order) != n {
		t.Errorf("waiters granted in order %v, want 0..%d in arrival order", order, n-1)
	}
}

// Waiters that queued longer than their own TTL keep their turns: a TTL
// counts from the grant, not from when the waiter queued, so at each handoff
// neither a newcomer trying with wait 0 nor a waiter further back takes the
// lock from the next waiter in line, and each grant is a fresh lease.
// Several such waiters hand the lock on one after another, each handoff a
// moment in which a backend that judges a waiter by the deadline it queued
// with would see it expired.
func (s *suite) waiterOutwaitsTTL(t *testing.T) {
	replicas := []backend.Backend{s.newBackend(t), s.newBackend(t)}
	key := s.key(t)
	h := acquire(t, replicas[0], backend.AcquireRequest{Key: key, Owner: "holder", TTL: 30 * time.Second})
	const (
		ttl        = 500 * time.Millisecond
		outwaiters = 3 // then one waiter behind them, with a long TTL
	)
	type turn struct {
		who       int
		g         backend.Grant
		granted   time.Time // when Acquire returned
		releasing time.Time // when its Release began
	}
	var (
		mu      sync.Mutex
		turns   []turn
		errs    = make(chan error, outwaiters+1)
		waiters sync.WaitGroup
	)
	queue := func(who int, b backend.Backend, req backend.AcquireRequest) {
		waiters.Add(1)
		go func() {
			defer waiters.Done()
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			g, err := b.Acquire(ctx, req)
			if err != nil {
				errs <- fmt.Errorf("%s: %w", req.Owner, err)
				return
			}
			tu := turn{who: who, g: g, granted: time.Now()}
			tu.releasing = time.Now() // at once: the grant's TTL is short
			err = b.Release(ctx, key, g.LeaseID)
			if errors.Is(err, backend.ErrLeaseExpired) && time.Now().After(g.ExpiresAt) {
				// The release came back after the grant's short TTL (a
				// loaded machine): refusing it is right. Refused while the
				// grant was still valid would be a bug, and fails below.
				err = nil
			}
			mu.Lock()
			turns = append(turns, tu)
			mu.Unlock()
			if err != nil {
				errs <- fmt.Errorf("%s: release %v after the grant: %w", req.Owner, time.Since(tu.granted), err)
			}
		}()
	}
	owner := func(who int) string {
		if who == outwaiters {
			return "behind"
		}
		return fmt.Sprint("outwaiter-", who)
	}
	for i := 0; i < outwaiters; i++ {
		queue(i, replicas[(i+1)%2], backend.AcquireRequest{Key: key, Owner: owner(i), TTL: ttl, Wait: 20 * time.Second})
		s.waitForWaiters(t, replicas[0], key, i+1)
	}
	queue(outwaiters, replicas[0], backend.AcquireRequest{Key: key, Owner: owner(outwaiters), TTL: 10 * time.Second, Wait: 30 * time.Second})
	s.waitForWaiters(t, replicas[0], key, outwaiters+1)

	// Newcomers keep trying with wait 0 through both replicas, from before
	// the release until every waiter had its turn.
	var (
		newcomers sync.WaitGroup
		stop      = make(chan struct{})
		newGrants []time.Time // when a newcomer's Acquire returned a grant
		newErrs   = make(chan error, 8)
	)
	stopNewcomers := sync.OnceFunc(func() { close(stop); newcomers.Wait() })
	t.Cleanup(stopNewcomers)
	for i := 0; i < 8; i++ {
		newcomers.Add(1)
		go func(b backend.Backend) {
			defer newcomers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
				g, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: "newcomer", TTL: 10 * time.Second})
				if err == nil {
					mu.Lock()
					newGrants = append(newGrants, time.Now())
					mu.Unlock()
					err = b.Release(ctx, key, g.LeaseID)
				} else if errors.Is(err, backend.ErrHeld) {
					err = nil
				}
				cancel()
				if err != nil {
					select {
					case <-stop: // the test is over: its context ended
					default:
						newErrs <- fmt.Errorf("newcomer: %w", err)
					}
					return
				}
			}
		}(replicas[i%2])
	}

	time.Sleep(3 * ttl) // every waiter waits well past its TTL
	mu.Lock()
	early := len(turns)
	mu.Unlock()
	if early > 0 {
		t.Fatalf("%d waiters granted before the holder released", early)
	}
	released := time.Now()
	if err := replicas[0].Release(ctxTimeout(t, 10*time.Second), key, h.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	done := make(chan struct{})
	go func() {
		waiters.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		t.Fatalf("waiters still not granted 40s after the release")
	}
	stopNewcomers()
	close(errs)
	close(newErrs)
	for err := range errs {
		t.Error(err)
	}
	for err := range newErrs {
		t.Error(err)
	}
	mu.Lock()
	defer mu.Unlock()
	// Each holds the lock alone, so the order of the grants' returns is the
	// order in which they held it.
	sort.Slice(turns, func(i, j int) bool { return turns[i].granted.Before(turns[j].granted) })
	var order []int
	prev, prevToken := released, h.Token
	for _, tu := range turns {
		order = append(order, tu.who)
		want := ttl
		if tu.who == outwaiters {
			want = 10 * time.Second
		}
		if tu.g.Owner != owner(tu.who) {
			t.Errorf("grant owner %q, want %q", tu.g.Owner, owner(tu.who))
		}
		s.wantTTL(t, "grant of "+owner(tu.who), tu.g.TTL, want)
		// Counted from the grant, which came after the previous holder's
		// release began; the deadline the waiter queued with had passed.
		if hi := tu.granted.Add(want).Add(time.Millisecond); !tu.g.ExpiresAt.After(prev) || tu.g.ExpiresAt.After(hi) {
			t.Errorf("%s: expires_at %v, want a fresh lease: after the previous holder's release began (%v), by %v",
				owner(tu.who), tu.g.ExpiresAt.Format(time.StampMilli), prev.Format(time.StampMilli), hi.Format(time.StampMilli))
		}
		if tu.g.Token <= prevToken {
			t.Errorf("%s: token %d after %d, want strictly greater", owner(tu.who), tu.g.Token, prevToken)
		}
		prev, prevToken = tu.releasing, tu.g.Token
	}
	if len(turns) != outwaiters+1 {
		return // the errors above say who missed its turn
	}
	if s.opts.NoFIFO != "" {
		t.Logf("turn order %v not checked (not FIFO: %s)", order, s.opts.NoFIFO)
		return
	}
	if !sort.IntsAreSorted(order) {
		t.Errorf("waiters held the lock in order %v, want 0..%d in arrival order: a waiter that outwaited its TTL lost its turn", order, outwaiters)
	}
	last := turns[len(turns)-1].granted
	jumped := 0
	for _, at := range newGrants {
		if at.Before(last) {
			jumped++
		}
	}
	if jumped > 0 {
		t.Errorf("%d newcomers trying with wait 0 were granted before the last waiter had its turn, want 0", jumped)
	}
}

// A waiter whose caller gives up leaves the queue at once: it returns
// promptly with the context's error, the waiter count drops, and it neither
// gets the lock nor delays the waiter behind it.
func (s *suite) cancelledWaiter(t *testing.T) {
	b := s.newBackend(t)
	key := s.key(t)
	g := acquire(t, b, backend.AcquireRequest{Key: key, TTL: 30 * time.Second})

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: "quitter", TTL: 30 * time.Second, Wait: 30 * time.Second})
		done <- err
	}()
	s.waitForWaiters(t, b, key, 1)

	behind := make(chan error, 1)
	go func() {
		c, cl := context.WithTimeout(t.Context(), 40*time.Second)
		defer cl()
		w, err := b.Acquire(c, backend.AcquireRequest{Key: key, Owner: "behind", TTL: 30 * time.Second, Wait: 30 * time.Second})
		if err == nil {
			err = b.Release(c, key, w.LeaseID)
		}
		behind <- err
	}()
	s.waitForWaiters(t, b, key, 2)

	cancelled := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled waiter got %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("cancelled waiter still waiting %v after its context ended", time.Since(cancelled))
	}
	s.waitForWaiters(t, b, key, 1)

	released := time.Now()
	if err := b.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	select {
	case err := <-behind:
		if err != nil {
			t.Fatalf("waiter behind the cancelled one: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("waiter behind the cancelled one not granted %v after the release: the cancelled waiter blocks the queue", time.Since(released))
	}
	if _, err := s.tryAcquire(t, b, key); err != nil {
		t.Fatalf("single try once everyone left: %v (the cancelled waiter left something behind)", err)
	}
}

// An acquire whose context has already ended gets nothing and leaves nothing.
func (s *suite) cancelledBeforeStart(t *testing.T) {
	b := s.newBackend(t)
	key := s.key(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: 30 * time.Second, Wait: time.Second}); err == nil {
		t.Fatalf("Acquire with a cancelled context succeeded")
	}
	if _, err := s.tryAcquire(t, b, key); err != nil {
		t.Fatalf("single try after the cancelled acquire: %v", err)
	}
}

// Inspect shows the holder (never its lease id) and counts waiters; a free or
// unknown key is simply not held.
func (s *suite) inspect(t *testing.T) {
	b, other := s.newBackend(t), s.newBackend(t)
	key := s.key(t)
	st, err := b.Inspect(ctxTimeout(t, 10*time.Second), key)
	if err != nil {
		t.Fatalf("Inspect of an unknown key: %v", err)
	}
	if st.Held || st.Holder != nil || st.Waiters != 0 {
		t.Errorf("Inspect of an unknown key = %+v, want not held, no waiters", st)
	}
	g := acquire(t, b, backend.AcquireRequest{Key: key, Owner: "inspected", TTL: 10 * time.Second})
	st, err = other.Inspect(ctxTimeout(t, 10*time.Second), key)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if !st.Held || st.Holder == nil {
		t.Fatalf("Inspect of a held key = %+v, want held", st)
	}
	if st.Key != key || st.Holder.Owner != "inspected" || st.Holder.Token != g.Token {
		t.Errorf("Inspect = {key %q owner %q token %d}, want {%q %q %d}", st.Key, st.Holder.Owner, st.Holder.Token, key, "inspected", g.Token)
	}
	// The store's deadline is the grant's; where the grant reports less
	// than was asked (validity), the store may hold it up to that much
	// longer, but never shorter.
	slack := time.Millisecond
	if s.opts.ValidityBelowTTL != "" {
		slack += 10*time.Second - g.TTL
	}
	if d := st.Holder.ExpiresAt.Sub(g.ExpiresAt); d < -time.Millisecond || d > slack {
		t.Errorf("Inspect expires_at %v, want the grant's %v (or up to %v later)", st.Holder.ExpiresAt, g.ExpiresAt, slack)
	}
	if s.opts.NoWaiterCount == "" {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		for i := 0; i < 2; i++ {
			go func() {
				_, _ = other.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: time.Second, Wait: 30 * time.Second})
				done <- struct{}{}
			}()
		}
		s.waitForWaiters(t, b, key, 2)
		cancel()
		<-done
		<-done
		s.waitForWaiters(t, b, key, 0)
	}
	// An expired holder is not shown.
	key2 := s.key(t, "-expired")
	acquire(t, b, backend.AcquireRequest{Key: key2, TTL: 100 * time.Millisecond})
	time.Sleep(300 * time.Millisecond)
	st, err = other.Inspect(ctxTimeout(t, 10*time.Second), key2)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if st.Held {
		t.Errorf("Inspect of an expired grant = held by %+v, want not held", st.Holder)
	}
}

// List shows held locks under a prefix, in key order, a page at a time, and
// leaves out released and expired ones.
func (s *suite) list(t *testing.T) {
	b := s.newBackend(t)
	prefix := s.key(t) + "."
	var want []string
	grants := map[string]backend.Grant{}
	for _, n := range []string{"e", "a", "d", "b", "c"} {
		k := prefix + n
		grants[k] = acquire(t, b, backend.AcquireRequest{Key: k, Owner: "lister-" + n, TTL: 20 * time.Second})
		want = append(want, k)
	}
	// Released, expired, and outside the prefix: none of these may show.
	rel := acquire(t, b, backend.AcquireRequest{Key: prefix + "released", TTL: 20 * time.Second})
	if err := b.Release(ctxTimeout(t, 10*time.Second), prefix+"released", rel.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	acquire(t, b, backend.AcquireRequest{Key: prefix + "expired", TTL: 100 * time.Millisecond})
	acquire(t, b, backend.AcquireRequest{Key: s.key(t) + "x", TTL: 20 * time.Second})
	time.Sleep(300 * time.Millisecond)
	sort.Strings(want)

	var got []string
	after := ""
	for page := 0; page < 10; page++ {
		states, err := b.List(ctxTimeout(t, 10*time.Second), prefix, after, 2)
		if err != nil {
			t.Fatalf("List(%q, after %q): %v", prefix, after, err)
		}
		if len(states) > 2 {
			t.Fatalf("List returned %d locks, want at most the limit of 2", len(states))
		}
		if len(states) == 0 {
			break
		}
		for _, st := range states {
			got = append(got, st.Key)
			g, ok := grants[st.Key]
			if !st.Held || st.Holder == nil {
				t.Errorf("List entry %q not marked held", st.Key)
			} else if ok && (st.Holder.Token != g.Token || st.Holder.Owner != g.Owner) {
				t.Errorf("List entry %q = {owner %q token %d}, want {%q %d}", st.Key, st.Holder.Owner, st.Holder.Token, g.Owner, g.Token)
			}
		}
		after = states[len(states)-1].Key
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("List pages = %v, want %v", got, want)
	}
}

func (s *suite) ping(t *testing.T) {
	if err := s.newBackend(t).Ping(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}
