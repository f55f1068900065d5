package backendtest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// semaphoreTests are the subtests of backend.Semaphores.
func (s *suite) semaphoreTests() []struct {
	name string
	fn   func(t *testing.T)
} {
	return []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"SemaphoreAtMostNPermits", s.semAtMostN},
		{"SemaphoreSlotsDistinct", s.semSlotsDistinct},
		{"SemaphoreTokensIncrease", s.semTokensIncrease},
		{"SemaphoreExpiredNotCounted", s.semExpiredNotCounted},
		{"SemaphoreReleaseAfterExpiryRefused", s.semReleaseAfterExpiry},
		{"SemaphoreFIFOWaiters", s.semFIFO},
		{"SemaphoreCancelledWaiterLeavesNoTrace", s.semCancelledWaiter},
		{"SemaphorePermitsMismatchRefused", s.semPermitsMismatch},
		{"SemaphoreRenewOwnPermitOnly", s.semRenewOwnOnly},
	}
}

// semaphores returns a new replica's semaphores, or skips with the reason
// the backend declared. The replica itself comes second, to Close it.
func (s *suite) semaphores(t *testing.T) (backend.Semaphores, backend.Backend) {
	t.Helper()
	b := s.newBackend(t)
	sm, ok := b.(backend.Semaphorer)
	if !ok {
		if s.opts.NoSemaphores != "" {
			t.Skip(s.opts.NoSemaphores)
		}
		t.Fatal("the backend does not implement backend.Semaphorer, and Options.NoSemaphores gives no reason")
	}
	return sm.Semaphores(), b
}

// permit acquires one permit and checks its shape.
func permit(t *testing.T, sm backend.Semaphores, req backend.SemaphoreRequest) backend.Permit {
	t.Helper()
	p, err := sm.Acquire(ctxTimeout(t, req.Wait+20*time.Second), req)
	if err != nil {
		t.Fatalf("Acquire(%q, permits %d, owner %q): %v", req.Key, req.Permits, req.Owner, err)
	}
	if p.Key != req.Key || p.Owner != req.Owner || p.Permits != req.Permits || p.Token == 0 || !lease.ValidID(p.LeaseID) {
		t.Fatalf("Acquire = %+v, want key %q owner %q permits %d, a token and a lease id", p, req.Key, req.Owner, req.Permits)
	}
	if p.Slot < 0 || p.Slot >= req.Permits {
		t.Fatalf("slot %d, want within 0..%d", p.Slot, req.Permits-1)
	}
	return p
}

func semInspect(t *testing.T, sm backend.Semaphores, key string) backend.SemaphoreState {
	t.Helper()
	st, err := sm.Inspect(ctxTimeout(t, 10*time.Second), key)
	if err != nil {
		t.Fatalf("Inspect(%q): %v", key, err)
	}
	return st
}

// wantSemHeld checks err is a give-up that names the holders (when read).
func wantSemHeld(t *testing.T, err error, holders ...backend.Permit) {
	t.Helper()
	if !errors.Is(err, backend.ErrHeld) {
		t.Fatalf("got error %v, want ErrHeld", err)
	}
	var he *backend.SemaphoreHeldError
	if !errors.As(err, &he) {
		t.Fatalf("got %T (%v), want a *SemaphoreHeldError", err, err)
	}
	if he.Holders == nil {
		return
	}
	got := map[uint64]int{}
	for _, h := range he.Holders {
		got[h.Token] = h.Slot
	}
	for _, p := range holders {
		if slot, ok := got[p.Token]; !ok || slot != p.Slot {
			t.Errorf("SemaphoreHeldError holders %+v, want token %d at slot %d among them", he.Holders, p.Token, p.Slot)
		}
	}
}

// waitForSemWaiters waits until Inspect counts n waiters on key.
func (s *suite) waitForSemWaiters(t *testing.T, sm backend.Semaphores, key string, n int) {
	t.Helper()
	if s.opts.NoWaiterCount != "" {
		time.Sleep(300 * time.Millisecond)
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := semInspect(t, sm, key)
		if st.Waiters == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Inspect(%q).Waiters = %d, want %d", key, st.Waiters, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// N+5 tries at once over two replicas, none waiting: exactly N permits, the
// others refused with the holders; inspection shows the N.
func (s *suite) semAtMostN(t *testing.T) {
	a, _ := s.semaphores(t)
	b, _ := s.semaphores(t)
	key := s.key(t)
	const n = 3
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		granted []backend.Permit
		others  []error
	)
	for i := range n + 5 {
		sm := a
		if i%2 == 1 {
			sm = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := sm.Acquire(ctxTimeout(t, 20*time.Second), backend.SemaphoreRequest{Key: key, Permits: n, Owner: fmt.Sprint(i), TTL: 20 * time.Second})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				granted = append(granted, p)
			case errors.Is(err, backend.ErrHeld):
			default:
				others = append(others, err)
			}
		}()
	}
	wg.Wait()
	if len(others) > 0 {
		t.Fatalf("acquire errors: %v", others)
	}
	if len(granted) != n {
		t.Fatalf("%d permits granted among %d tries of a semaphore of %d, want exactly %d", len(granted), n+5, n, n)
	}
	_, err := b.Acquire(ctxTimeout(t, 20*time.Second), backend.SemaphoreRequest{Key: key, Permits: n, TTL: 20 * time.Second})
	wantSemHeld(t, err, granted...)
	st := semInspect(t, a, key)
	if st.Permits != n || len(st.Holders) != n {
		t.Fatalf("Inspect = %+v, want permits %d and %d holders", st, n, n)
	}
}

// Live permits never share a slot; a freed slot is the one the next permit
// takes.
func (s *suite) semSlotsDistinct(t *testing.T) {
	a, _ := s.semaphores(t)
	b, _ := s.semaphores(t)
	key := s.key(t)
	const n = 4
	slots := map[int]backend.Permit{}
	for i := range n {
		sm := []backend.Semaphores{a, b}[i%2]
		p := permit(t, sm, backend.SemaphoreRequest{Key: key, Permits: n, Owner: fmt.Sprint(i), TTL: 20 * time.Second})
		if q, dup := slots[p.Slot]; dup {
			t.Fatalf("permits %d and %d share slot %d", q.Token, p.Token, p.Slot)
		}
		slots[p.Slot] = p
	}
	freed := slots[2]
	if err := b.Release(ctxTimeout(t, 10*time.Second), key, freed.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	p := permit(t, a, backend.SemaphoreRequest{Key: key, Permits: n, Owner: "again", TTL: 20 * time.Second})
	if p.Slot != freed.Slot {
		t.Errorf("the only free slot is %d, the new permit got %d", freed.Slot, p.Slot)
	}
	st := semInspect(t, b, key)
	seen := map[int]bool{}
	for _, h := range st.Holders {
		if seen[h.Slot] {
			t.Errorf("Inspect shows slot %d twice: %+v", h.Slot, st.Holders)
		}
		seen[h.Slot] = true
	}
	if len(seen) != n || !sort.SliceIsSorted(st.Holders, func(i, j int) bool { return st.Holders[i].Slot < st.Holders[j].Slot }) {
		t.Errorf("Inspect holders %+v, want %d distinct slots in order", st.Holders, n)
	}
}

// Tokens strictly increase over all permits, in grant order, across
// replicas, releases and expiries; so a slot's tokens increase too.
func (s *suite) semTokensIncrease(t *testing.T) {
	a, _ := s.semaphores(t)
	b, _ := s.semaphores(t)
	key := s.key(t)
	const n = 2
	var last uint64
	perSlot := map[int]uint64{}
	check := func(p backend.Permit) {
		t.Helper()
		if p.Token <= last {
			t.Fatalf("token %d after %d, want strictly greater", p.Token, last)
		}
		if p.Token <= perSlot[p.Slot] {
			t.Fatalf("slot %d: token %d after %d, want strictly greater", p.Slot, p.Token, perSlot[p.Slot])
		}
		last, perSlot[p.Slot] = p.Token, p.Token
	}
	held := []backend.Permit{}
	for i := range 8 {
		sm := []backend.Semaphores{a, b}[i%2]
		if len(held) == n {
			// Free the older permit: by release, or every third time by
			// letting a short one expire.
			if err := sm.Release(ctxTimeout(t, 10*time.Second), key, held[0].LeaseID); err != nil && !errors.Is(err, backend.ErrLeaseExpired) {
				t.Fatalf("Release: %v", err)
			}
			held = held[1:]
		}
		ttl := 20 * time.Second
		if i%3 == 2 {
			ttl = 200 * time.Millisecond
		}
		p := permit(t, sm, backend.SemaphoreRequest{Key: key, Permits: n, TTL: ttl, Wait: 10 * time.Second})
		check(p)
		held = append(held, p)
	}
}

// Permits that ran out are not counted, even with their granting replica
// gone: the slots are free within TTL + 1 s, and inspection leaves them out.
func (s *suite) semExpiredNotCounted(t *testing.T) {
	granter, gb := s.semaphores(t)
	other, _ := s.semaphores(t)
	key := s.key(t)
	const n, ttl = 2, 800 * time.Millisecond
	start := time.Now()
	var old []backend.Permit
	for i := range n {
		old = append(old, permit(t, granter, backend.SemaphoreRequest{Key: key, Permits: n, Owner: fmt.Sprint("gone", i), TTL: ttl}))
	}
	if err := gb.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
	if time.Since(start) < ttl/2 {
		_, err := other.Acquire(ctxTimeout(t, 10*time.Second), backend.SemaphoreRequest{Key: key, Permits: n, TTL: 10 * time.Second})
		wantSemHeld(t, err, old...)
	}
	// Both slots, waited for at once.
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		tokens []uint64
		errs   []error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := other.Acquire(ctxTimeout(t, 30*time.Second), backend.SemaphoreRequest{Key: key, Permits: n, Owner: fmt.Sprint("new", i), TTL: 10 * time.Second, Wait: 10 * time.Second})
			mu.Lock()
			defer mu.Unlock()
			errs = append(errs, err)
			tokens = append(tokens, p.Token)
		}()
	}
	wg.Wait()
	took := time.Since(start)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("waiter for a slot: %v", err)
		}
		if tokens[i] <= old[n-1].Token {
			t.Errorf("token %d after %d, want strictly greater", tokens[i], old[n-1].Token)
		}
	}
	if limit := ttl + time.Second + schedSlack; took > limit {
		t.Errorf("both slots freed %v after the grants with their granter gone, want within %v", took, limit)
	}
	t.Logf("both slots freed %v after the grants", took)
	st := semInspect(t, other, key)
	if len(st.Holders) != n {
		t.Fatalf("Inspect holders %+v, want only the %d new ones", st.Holders, n)
	}
	for _, h := range st.Holders {
		for _, o := range old {
			if h.Token == o.Token {
				t.Errorf("Inspect shows the expired permit %d", o.Token)
			}
		}
	}
}

// A permit that ran out can be neither released nor renewed.
func (s *suite) semReleaseAfterExpiry(t *testing.T) {
	sm, _ := s.semaphores(t)
	key := s.key(t)
	const ttl = 300 * time.Millisecond
	p := permit(t, sm, backend.SemaphoreRequest{Key: key, Permits: 2, TTL: ttl})
	q := permit(t, sm, backend.SemaphoreRequest{Key: key, Permits: 2, TTL: ttl})
	time.Sleep(ttl + 100*time.Millisecond)
	if st := semInspect(t, sm, key); len(st.Holders) != 0 {
		t.Errorf("Inspect holders %+v after both permits ran out, want none", st.Holders)
	}
	wantLeaseExpired(t, sm.Release(ctxTimeout(t, 10*time.Second), key, p.LeaseID), "release of the expired permit")
	_, err := sm.Renew(ctxTimeout(t, 10*time.Second), key, q.LeaseID, 10*time.Second)
	wantLeaseExpired(t, err, "renew of the expired permit")
}

// Waiters are served in arrival order across replicas, the head as soon as
// any slot frees: with one slot of two kept busy, the other serves the line
// in order.
func (s *suite) semFIFO(t *testing.T) {
	a, _ := s.semaphores(t)
	b, _ := s.semaphores(t)
	if s.opts.NoSemaphoreFIFO != "" {
		if a.Features().FIFO {
			t.Fatalf("Options.NoSemaphoreFIFO says %q, yet SemaphoreFeatures.FIFO is true", s.opts.NoSemaphoreFIFO)
		}
		t.Skip("not FIFO: " + s.opts.NoSemaphoreFIFO)
	}
	if !a.Features().FIFO {
		t.Fatal("SemaphoreFeatures.FIFO is false, and Options.NoSemaphoreFIFO gives no reason")
	}
	key := s.key(t)
	const n = 2
	first := permit(t, a, backend.SemaphoreRequest{Key: key, Permits: n, TTL: 30 * time.Second})
	permit(t, a, backend.SemaphoreRequest{Key: key, Permits: n, TTL: 30 * time.Second})
	const waiters = 5
	var (
		mu    sync.Mutex
		order []int
		errs  = make(chan error, waiters)
		wg    sync.WaitGroup
	)
	for i := range waiters {
		sm := []backend.Semaphores{a, b}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
			defer cancel()
			p, err := sm.Acquire(ctx, backend.SemaphoreRequest{Key: key, Permits: n, Owner: fmt.Sprint(i), TTL: 20 * time.Second, Wait: 30 * time.Second})
			if err != nil {
				errs <- fmt.Errorf("waiter %d: %w", i, err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			if err := sm.Release(ctx, key, p.LeaseID); err != nil {
				errs <- fmt.Errorf("waiter %d: release: %w", i, err)
			}
		}()
		s.waitForSemWaiters(t, a, key, i+1)
	}
	released := time.Now()
	if err := b.Release(ctxTimeout(t, 10*time.Second), key, first.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	// Newcomers trying once, right through the handoffs, never take a slot
	// before the line has passed.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	jumped := 0
	for passed := false; !passed; {
		select {
		case <-done:
			passed = true
			continue
		default:
		}
		p, err := b.Acquire(ctxTimeout(t, 10*time.Second), backend.SemaphoreRequest{Key: key, Permits: n, Owner: "newcomer", TTL: 10 * time.Second})
		if err == nil {
			mu.Lock()
			if len(order) < waiters {
				jumped++
			}
			mu.Unlock()
			_ = b.Release(ctxTimeout(t, 10*time.Second), key, p.LeaseID)
		} else if !errors.Is(err, backend.ErrHeld) {
			t.Fatalf("newcomer: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if !sort.IntsAreSorted(order) || len(order) != waiters {
		t.Errorf("waiters granted in order %v, want 0..%d in arrival order", order, waiters-1)
	}
	if jumped > 0 {
		t.Errorf("%d newcomers trying once were granted a permit before the line had passed, want 0", jumped)
	}
	// Five handoffs through one slot, each woken by the release before it:
	// generous, but far below what polling or a missed wake-up costs.
	if took := time.Since(released); took > 15*time.Second {
		t.Errorf("the line took %v to pass one slot, want the head woken at each release", took)
	}
}

// A waiter whose caller gives up leaves the line at once: it returns with
// the context's error, the count drops, it never gets a permit and does not
// delay the waiter behind it; once everyone left the semaphore is empty.
func (s *suite) semCancelledWaiter(t *testing.T) {
	sm, _ := s.semaphores(t)
	key := s.key(t)
	held := permit(t, sm, backend.SemaphoreRequest{Key: key, Permits: 1, TTL: 30 * time.Second})

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := sm.Acquire(ctx, backend.SemaphoreRequest{Key: key, Permits: 1, Owner: "quitter", TTL: 30 * time.Second, Wait: 30 * time.Second})
		done <- err
	}()
	s.waitForSemWaiters(t, sm, key, 1)
	behind := make(chan error, 1)
	go func() {
		c, cl := context.WithTimeout(t.Context(), 40*time.Second)
		defer cl()
		p, err := sm.Acquire(c, backend.SemaphoreRequest{Key: key, Permits: 1, Owner: "behind", TTL: 30 * time.Second, Wait: 30 * time.Second})
		if err == nil {
			err = sm.Release(c, key, p.LeaseID)
		}
		behind <- err
	}()
	s.waitForSemWaiters(t, sm, key, 2)

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
	s.waitForSemWaiters(t, sm, key, 1)
	released := time.Now()
	if err := sm.Release(ctxTimeout(t, 10*time.Second), key, held.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	select {
	case err := <-behind:
		if err != nil {
			t.Fatalf("waiter behind the cancelled one: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("waiter behind the cancelled one not granted %v after the release: the cancelled waiter blocks the line", time.Since(released))
	}
	if st := semInspect(t, sm, key); st.Permits != 0 || len(st.Holders) != 0 || st.Waiters != 0 {
		t.Fatalf("Inspect = %+v once everyone left, want an empty semaphore (the cancelled waiter left something behind)", st)
	}
	// And its size is free to change.
	permit(t, sm, backend.SemaphoreRequest{Key: key, Permits: 3, TTL: 10 * time.Second})
}

// An acquire of another size than the live semaphore's is refused with the
// current size, while a permit holds or a waiter waits; an empty semaphore
// takes the new size.
func (s *suite) semPermitsMismatch(t *testing.T) {
	a, _ := s.semaphores(t)
	b, _ := s.semaphores(t)
	key := s.key(t)
	wantMismatch := func(err error, current int) {
		t.Helper()
		var me *backend.PermitsMismatchError
		if !errors.Is(err, backend.ErrPermitsMismatch) || !errors.As(err, &me) || me.Permits != current {
			t.Fatalf("got %v, want a *PermitsMismatchError naming %d permits", err, current)
		}
	}
	p := permit(t, a, backend.SemaphoreRequest{Key: key, Permits: 1, TTL: 30 * time.Second})
	_, err := b.Acquire(ctxTimeout(t, 10*time.Second), backend.SemaphoreRequest{Key: key, Permits: 3, TTL: 10 * time.Second})
	wantMismatch(err, 1)
	_, err = b.Acquire(ctxTimeout(t, 10*time.Second), backend.SemaphoreRequest{Key: key, Permits: 3, TTL: 10 * time.Second, Wait: 5 * time.Second})
	wantMismatch(err, 1)

	// A waiter carries the size too, once the holder is gone.
	waiting := make(chan error, 1)
	go func() {
		c, cl := context.WithTimeout(t.Context(), 40*time.Second)
		defer cl()
		w, err := a.Acquire(c, backend.SemaphoreRequest{Key: key, Permits: 1, Owner: "waiter", TTL: 30 * time.Second, Wait: 30 * time.Second})
		if err == nil {
			err = a.Release(c, key, w.LeaseID)
		}
		waiting <- err
	}()
	s.waitForSemWaiters(t, a, key, 1)
	if st := semInspect(t, b, key); st.Permits != 1 {
		t.Errorf("Inspect permits %d, want 1", st.Permits)
	}
	if err := a.Release(ctxTimeout(t, 10*time.Second), key, p.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := <-waiting; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	q := permit(t, b, backend.SemaphoreRequest{Key: key, Permits: 3, Owner: "resized", TTL: 10 * time.Second})
	if st := semInspect(t, a, key); st.Permits != 3 || len(st.Holders) != 1 || st.Holders[0].Token != q.Token {
		t.Fatalf("Inspect = %+v, want the empty semaphore resized to 3 with the new permit", st)
	}
	_, err = a.Acquire(ctxTimeout(t, 10*time.Second), backend.SemaphoreRequest{Key: key, Permits: 1, TTL: 10 * time.Second})
	wantMismatch(err, 3)

	// Tries of two sizes at once on an empty semaphore: one size wins, and
	// never more permits than it. Several rounds, for the tries to meet.
	for round := range 8 {
		s.semMixedSizes(t, a, b, s.key(t, fmt.Sprint("-mixed", round)))
	}
}

func (s *suite) semMixedSizes(t *testing.T, a, b backend.Semaphores, mixed string) {
	t.Helper()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		granted = map[int]int{}
		others  []error
		start   = make(chan struct{})
	)
	for i := range 12 {
		sm, size := []backend.Semaphores{a, b}[i%2], []int{2, 5}[(i/2)%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			p, err := sm.Acquire(ctxTimeout(t, 20*time.Second), backend.SemaphoreRequest{Key: mixed, Permits: size, TTL: 20 * time.Second})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				granted[p.Permits]++
			case errors.Is(err, backend.ErrHeld), errors.Is(err, backend.ErrPermitsMismatch):
			default:
				others = append(others, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(others) > 0 {
		t.Fatalf("acquire errors: %v", others)
	}
	if len(granted) != 1 {
		t.Fatalf("permits granted by size: %v, want one size only", granted)
	}
	for size, n := range granted {
		if n > size {
			t.Fatalf("%d permits of a semaphore of %d", n, size)
		}
	}
}

// Renew extends only the permit its lease id names, keeping slot and token;
// another key's, a made-up or a released lease id changes nothing. A permit
// in a session is renewed only through its session.
func (s *suite) semRenewOwnOnly(t *testing.T) {
	sm, b := s.semaphores(t)
	key, other := s.key(t), s.key(t, "-other")
	p := permit(t, sm, backend.SemaphoreRequest{Key: key, Permits: 2, Owner: "p", TTL: 5 * time.Second})
	q := permit(t, sm, backend.SemaphoreRequest{Key: other, Permits: 2, Owner: "q", TTL: 5 * time.Second})
	ctx := ctxTimeout(t, 30*time.Second)
	r, err := sm.Renew(ctx, key, p.LeaseID, 20*time.Second)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if r.Token != p.Token || r.Slot != p.Slot || r.LeaseID != p.LeaseID || r.Permits != p.Permits || !r.ExpiresAt.After(p.ExpiresAt) {
		t.Errorf("Renew = %+v, want token %d slot %d permits %d, the same lease and a later deadline than %v", r, p.Token, p.Slot, p.Permits, p.ExpiresAt)
	}
	s.wantTTL(t, "renewed permit", r.TTL, 20*time.Second)
	_, err = sm.Renew(ctx, key, q.LeaseID, 20*time.Second)
	wantLeaseExpired(t, err, "renew with another key's permit")
	_, err = sm.Renew(ctx, key, lease.NewID(), 20*time.Second)
	wantLeaseExpired(t, err, "renew with a made-up lease id")
	wantLeaseExpired(t, sm.Release(ctx, key, q.LeaseID), "release with another key's permit")
	if err := sm.Release(ctx, key, p.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	_, err = sm.Renew(ctx, key, p.LeaseID, 20*time.Second)
	wantLeaseExpired(t, err, "renew of a released permit")
	wantLeaseExpired(t, sm.Release(ctx, key, p.LeaseID), "second release")
	if st := semInspect(t, sm, other); len(st.Holders) != 1 || st.Holders[0].Token != q.Token {
		t.Errorf("Inspect(other) = %+v, want q's permit untouched", st)
	}

	ss, ok := b.(backend.Sessioner)
	if !ok || !sm.Features().Sessions {
		return
	}
	sess := openSession(t, ss.Sessions(), "sem", 10*time.Second)
	sp := permit(t, sm, backend.SemaphoreRequest{Key: key, Permits: 2, Owner: "sem", Session: sess.ID})
	wantSessionGrant(t, sp.Grant, sess)
	if _, err := sm.Renew(ctx, key, sp.LeaseID, 20*time.Second); !errors.Is(err, backend.ErrSessionBound) {
		t.Errorf("renew of a permit in a session: %v, want ErrSessionBound", err)
	}
	if err := ss.Sessions().Close(ctx, sess.ID); err != nil {
		t.Fatalf("Close session: %v", err)
	}
	if st := semInspect(t, sm, key); len(st.Holders) != 0 {
		t.Errorf("Inspect holders %+v after the session closed, want none", st.Holders)
	}
}
