package backendtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
)

// idempotencyTests are the subtests of backend.Idempotent.
func (s *suite) idempotencyTests() []struct {
	name string
	fn   func(t *testing.T)
} {
	return []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"IdempotentRetrySameGrant", s.idemSameGrant},
		{"IdempotentRetryOtherReplica", s.idemOtherReplica},
		{"IdempotentRetryWhileQueuedKeepsPlace", s.idemQueuedKeepsPlace},
		{"IdempotentAfterRelease410", s.idemAfterRelease},
		{"IdempotentDifferentPayload422", s.idemDifferentPayload},
		{"IdempotentRefusalNotRecorded", s.idemRefusalNotRecorded},
		{"IdempotentRetryAfterQueuingReplicaDied", s.idemQueuingReplicaDied},
	}
}

// idempotent returns a new replica that must honour Idempotency, or skips
// with the reason the backend declared.
func (s *suite) idempotent(t *testing.T) backend.Backend {
	t.Helper()
	b := s.newBackend(t)
	if _, ok := b.(backend.Idempotent); !ok {
		if s.opts.NoIdempotency != "" {
			t.Skip(s.opts.NoIdempotency)
		}
		t.Fatal("the backend does not implement backend.Idempotent, and Options.NoIdempotency gives no reason")
	}
	return b
}

func idem(key, fp string) backend.Idempotency {
	return backend.Idempotency{Key: "ik" + randomHex(8) + key, Fingerprint: fp}
}

func wantSameGrant(t *testing.T, got, want backend.Grant) {
	t.Helper()
	if got.LeaseID != want.LeaseID || got.Token != want.Token || !got.ExpiresAt.Equal(want.ExpiresAt) {
		t.Fatalf("retry got {lease %q token %d expires %v}, want the same grant {lease %q token %d expires %v}",
			got.LeaseID, got.Token, got.ExpiresAt, want.LeaseID, want.Token, want.ExpiresAt)
	}
}

// A retry of a granted acquire returns the same grant, and changes nothing.
func (s *suite) idemSameGrant(t *testing.T) {
	b := s.idempotent(t)
	key := s.key(t)
	req := backend.AcquireRequest{Key: key, Owner: "idem", TTL: 10 * time.Second, Idempotency: idem(key, "fp")}
	g := acquire(t, b, req)
	time.Sleep(20 * time.Millisecond) // a fresh grant would have a later deadline
	again := acquire(t, b, req)
	wantSameGrant(t, again, g)
	// The retry did not take a second lease: the first still holds, alone.
	st, err := b.Inspect(ctxTimeout(t, 10*time.Second), key)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Held || st.Holder.Token != g.Token {
		t.Fatalf("inspect after the retry: %+v, want held by token %d", st, g.Token)
	}
	if err := b.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("release of the (one) grant: %v", err)
	}
}

// The record is in the store: another replica answers the retry alike.
func (s *suite) idemOtherReplica(t *testing.T) {
	b1 := s.idempotent(t)
	b2 := s.newBackend(t)
	key := s.key(t)
	req := backend.AcquireRequest{Key: key, Owner: "idem", TTL: 10 * time.Second, Idempotency: idem(key, "fp")}
	g := acquire(t, b1, req)
	wantSameGrant(t, acquire(t, b2, req), g)
}

// A retry that arrives while the first attempt still waits takes the first
// attempt's place in the queue, not the back of it, and both get the one
// grant when its turn comes.
func (s *suite) idemQueuedKeepsPlace(t *testing.T) {
	if s.opts.NoFIFO != "" {
		t.Skip(s.opts.NoFIFO)
	}
	b1 := s.idempotent(t)
	b2 := s.newBackend(t)
	key := s.key(t)
	holder := acquire(t, b1, backend.AcquireRequest{Key: key, Owner: "holder", TTL: 30 * time.Second})
	const wait = 30 * time.Second
	type result struct {
		g   backend.Grant
		err error
	}
	start := func(b backend.Backend, req backend.AcquireRequest) <-chan result {
		ch := make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(t.Context(), wait+20*time.Second)
			defer cancel()
			g, err := b.Acquire(ctx, req)
			ch <- result{g, err}
		}()
		return ch
	}
	first := backend.AcquireRequest{Key: key, Owner: "first", TTL: 10 * time.Second, Wait: wait, Idempotency: idem(key, "fp")}
	a := start(b1, first)
	s.waitForWaiters(t, b1, key, 1)
	other := start(b2, backend.AcquireRequest{Key: key, Owner: "second", TTL: 10 * time.Second, Wait: wait})
	s.waitForWaiters(t, b1, key, 2)
	retry := start(b2, first) // the first's reply was lost; it is sent again
	time.Sleep(300 * time.Millisecond)
	if err := b1.Release(ctxTimeout(t, 10*time.Second), key, holder.LeaseID); err != nil {
		t.Fatal(err)
	}
	ra, rr := <-a, <-retry
	if ra.err != nil || rr.err != nil {
		t.Fatalf("first attempt: %v; its retry: %v; want both granted", ra.err, rr.err)
	}
	wantSameGrant(t, rr.g, ra.g)
	select {
	case r := <-other:
		t.Fatalf("the waiter queued behind the first attempt got %+v (%v) before it; the retry jumped the queue or lost its place", r.g, r.err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := b1.Release(ctxTimeout(t, 10*time.Second), key, ra.g.LeaseID); err != nil {
		t.Fatal(err)
	}
	if r := <-other; r.err != nil {
		t.Fatalf("the second waiter after the first released: %v", r.err)
	}
}

// Once the recorded grant ended, a retry is told so; it never gets a fresh
// grant (its caller would hold the lock twice in its own eyes).
func (s *suite) idemAfterRelease(t *testing.T) {
	b := s.idempotent(t)
	key := s.key(t)
	req := backend.AcquireRequest{Key: key, TTL: 10 * time.Second, Idempotency: idem(key, "fp")}
	g := acquire(t, b, req)
	if err := b.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatal(err)
	}
	_, err := b.Acquire(ctxTimeout(t, 10*time.Second), req)
	wantLeaseExpired(t, err, "retry after release")
	if st, err := b.Inspect(ctxTimeout(t, 10*time.Second), key); err != nil || st.Held {
		t.Fatalf("inspect after the refused retry: %+v, %v; want free", st, err)
	}
}

// The same key with another request is refused, and changes nothing.
func (s *suite) idemDifferentPayload(t *testing.T) {
	b := s.idempotent(t)
	key := s.key(t)
	req := backend.AcquireRequest{Key: key, TTL: 10 * time.Second, Idempotency: idem(key, "fp-1")}
	g := acquire(t, b, req)
	req.Idempotency.Fingerprint = "fp-2"
	req.TTL = 20 * time.Second
	_, err := b.Acquire(ctxTimeout(t, 10*time.Second), req)
	if !errors.Is(err, backend.ErrIdempotencyKeyReused) {
		t.Fatalf("same key, other fingerprint: %v, want ErrIdempotencyKeyReused", err)
	}
	if err := b.Release(ctxTimeout(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("the first grant after the refused reuse: %v", err)
	}
}

// A refusal (held, single try) records nothing: the same key later runs
// afresh and can be granted.
func (s *suite) idemRefusalNotRecorded(t *testing.T) {
	b := s.idempotent(t)
	key := s.key(t)
	holder := acquire(t, b, backend.AcquireRequest{Key: key, Owner: "holder", TTL: 30 * time.Second})
	req := backend.AcquireRequest{Key: key, TTL: 10 * time.Second, Idempotency: idem(key, "fp")}
	_, err := b.Acquire(ctxTimeout(t, 10*time.Second), req)
	wantHeld(t, err, &holder)
	if err := b.Release(ctxTimeout(t, 10*time.Second), key, holder.LeaseID); err != nil {
		t.Fatal(err)
	}
	g := acquire(t, b, req)
	if g.LeaseID == holder.LeaseID {
		t.Fatal("granted the old holder's lease")
	}
	// A waiter that gave up (409 after its wait) records nothing either.
	holder = acquire(t, b, backend.AcquireRequest{Key: key + "-w", Owner: "holder", TTL: 30 * time.Second})
	wreq := backend.AcquireRequest{Key: key + "-w", TTL: 10 * time.Second, Wait: 200 * time.Millisecond, Idempotency: idem(key+"-w", "fp")}
	_, err = b.Acquire(ctxTimeout(t, 10*time.Second), wreq)
	wantHeld(t, err, &holder)
	if err := b.Release(ctxTimeout(t, 10*time.Second), key+"-w", holder.LeaseID); err != nil {
		t.Fatal(err)
	}
	acquire(t, b, wreq)
}

// The replica that queued an acquire dies while it waits (its queue entry
// goes with it), and the client retries through another one: the first
// attempt never held the lock, so the retry is a fresh attempt that queues
// and is granted, not told that its grant ended.
func (s *suite) idemQueuingReplicaDied(t *testing.T) {
	dying := s.idempotent(t)
	holderB, other := s.newBackend(t), s.newBackend(t)
	key := s.key(t)
	holder := acquire(t, holderB, backend.AcquireRequest{Key: key, Owner: "holder", TTL: 30 * time.Second})
	req := backend.AcquireRequest{Key: key, Owner: "retried", TTL: 10 * time.Second, Wait: 30 * time.Second, Idempotency: idem(key, "fp")}
	first := make(chan error, 1)
	go func() {
		_, err := dying.Acquire(ctxTimeout(t, 60*time.Second), req)
		first <- err
	}()
	s.waitForWaiters(t, holderB, key, 1)
	if err := dying.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
	if err := <-first; err == nil {
		t.Fatal("the acquire of a replica that closed under it was granted")
	}
	// Its queue entry goes with it, as with a lockd that died — at once, or
	// (ZooKeeper) only once its wait is over; then the retry may as well
	// wait in the dead attempt's place. Either way it must be granted.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if st, err := holderB.Inspect(ctxTimeout(t, 10*time.Second), key); s.opts.NoWaiterCount == "" && err == nil && st.Waiters == 0 {
			break
		}
	}
	go func() {
		time.Sleep(500 * time.Millisecond)
		_ = holderB.Release(ctxTimeout(t, 10*time.Second), key, holder.LeaseID)
	}()
	g, err := other.Acquire(ctxTimeout(t, 60*time.Second), req)
	if err != nil {
		t.Fatalf("retry through another replica after the first attempt's replica died while it queued: %v, want a fresh attempt that is granted", err)
	}
	if g.Token <= holder.Token {
		t.Errorf("token %d after the holder's %d, want strictly greater", g.Token, holder.Token)
	}
}
