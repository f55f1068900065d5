package backendtest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// The clock subtests stand replicas with clocks off by a known amount over
// one store, through the one clock policy (lease.Clock.Shifted).

// testSkew is the bound the clock subtests declare.
const testSkew = 500 * time.Millisecond

// clocked returns an instance whose clock is off by offset under testSkew,
// or skips with the backend's declared reason when its leases do not depend
// on lockd's clocks.
func (s *suite) clocked(t *testing.T, offset time.Duration) backend.Backend {
	t.Helper()
	switch {
	case s.opts.StoreClock != "":
		t.Skipf("not applicable: %s", s.opts.StoreClock)
	case s.opts.Clocked == nil:
		t.Fatal("backendtest.Options sets neither Clocked nor StoreClock: a backend must either run the clock subtests or say why they do not apply")
	}
	return s.opts.Clocked(t, lease.SystemClock(testSkew).Shifted(offset))
}

// Two replicas whose clocks differ by less than the declared bound never
// take a lock from a holder still inside its own validity — counted as the
// client counts it, from the moment it sent the acquire — whichever of them
// granted, whichever removes the expired grant, by a waiter's timer or by a
// newcomer's single tries.
func (s *suite) skewBelowBound(t *testing.T) {
	const (
		ahead = 400 * time.Millisecond // < testSkew
		ttl   = 300 * time.Millisecond
		turns = 8
	)
	replicas := []backend.Backend{s.clocked(t, 0), s.clocked(t, ahead)}
	key := s.key(t)
	var prev backend.Grant
	sent := time.Now()
	prevSent := sent
	g, err := replicas[0].Acquire(ctxTimeout(t, 20*time.Second), backend.AcquireRequest{Key: key, Owner: "turn-0", TTL: ttl})
	if err != nil {
		t.Fatalf("first acquire: %v", err)
	}
	prev, prevSent = g, sent
	for turn := 1; turn <= turns; turn++ {
		b := replicas[turn%2]
		longPoll := (turn/2)%2 == 0
		req := backend.AcquireRequest{Key: key, Owner: fmt.Sprint("turn-", turn), TTL: ttl}
		var got backend.Grant
		if longPoll {
			req.Wait = 10 * time.Second
			sent = time.Now()
			got = acquire(t, b, req)
		} else {
			for {
				sent = time.Now()
				g, err := b.Acquire(ctxTimeout(t, 20*time.Second), req)
				if err == nil {
					got = g
					break
				}
				if !errors.Is(err, backend.ErrHeld) {
					t.Fatalf("turn %d: single try: %v", turn, err)
				}
				if time.Since(prevSent) > ttl+testSkew+ahead+10*time.Second {
					t.Fatalf("turn %d: never freed", turn)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		granted := time.Now()
		// The grant was made before it returned; the previous holder's own
		// window ran to prevSent + ttl by its client's reckoning.
		if validTo := prevSent.Add(ttl); granted.Before(validTo) {
			t.Errorf("turn %d (replica clock %+v, %s): granted %v while the previous holder (token %d, replica clock %+v) was still valid for %v: a double grant",
				turn, []time.Duration{0, ahead}[turn%2], map[bool]string{true: "long poll", false: "single tries"}[longPoll],
				granted.Sub(sent).Round(time.Millisecond), prev.Token, []time.Duration{0, ahead}[(turn-1)%2], validTo.Sub(granted).Round(time.Millisecond))
		}
		if got.Token <= prev.Token {
			t.Errorf("turn %d: token %d after %d, want strictly greater", turn, got.Token, prev.Token)
		}
		if longPoll {
			// As the Go client does after a wait: its deadline counts
			// from the send of the last acquire or renew, so a grant that
			// took long to come is renewed at once.
			acquireSent := sent
			sent = time.Now()
			if _, err := b.Renew(ctxTimeout(t, 20*time.Second), key, got.LeaseID, 0); err != nil {
				// Refused only if the grant's TTL ran out before the
				// renew: it cannot have, unless more than the TTL passed
				// since the acquire was sent (a loaded machine).
				if took := time.Since(acquireSent); !errors.Is(err, backend.ErrLeaseExpired) || took < ttl {
					t.Fatalf("turn %d: renew right after the grant (%v after the acquire was sent): %v", turn, took, err)
				}
				t.Logf("turn %d: the grant's %v TTL ran out before its renew (%v after the acquire was sent); its window is counted from the acquire", turn, ttl, time.Since(acquireSent))
				sent = acquireSent
			}
		}
		prev, prevSent = got, sent
	}
}

// A replica whose clock is further from the shared reference than the bound
// allows says so (lease.Clock.OffsetTooLarge) and the replicas within it do
// not. Three replicas: with two, a backend that compares replicas with each
// other cannot tell which one is off.
func (s *suite) skewAboveBound(t *testing.T) {
	const off = 2 * testSkew
	good1, good2, bad := s.clocked(t, 0), s.clocked(t, 0), s.clocked(t, off)
	checkers := map[string]backend.Backend{"good-1": good1, "good-2": good2, "skewed": bad}
	for name, b := range checkers {
		if _, ok := b.(backend.ClockChecker); !ok {
			t.Fatalf("%s: the backend enforces deadlines by lockd's clocks (no StoreClock declared) but is no backend.ClockChecker", name)
		}
	}
	policy := lease.SystemClock(testSkew)
	var last map[string]string
	deadline := time.Now().Add(20 * time.Second)
	for {
		last = map[string]string{}
		ok := true
		for name, b := range checkers {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			r, err := b.(backend.ClockChecker).ClockOffset(ctx)
			cancel()
			if err != nil {
				t.Fatalf("%s: ClockOffset: %v", name, err)
			}
			last[name] = fmt.Sprintf("offset %v ±%v against %s (%d peers)", r.Offset, r.Uncertainty, r.Reference, r.Peers)
			if policy.OffsetTooLarge(r.Offset) != (name == "skewed") || r.Uncertainty > testSkew/4 {
				ok = false
			}
		}
		if ok {
			t.Logf("readings: %v", last)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("want only the replica %v ahead to be out of ±%v; last readings: %v", off, testSkew/2, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
