package redlock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/testserver"
)

func idemReq(key string) backend.AcquireRequest {
	return backend.AcquireRequest{Key: key, Owner: "idem", TTL: time.Minute,
		Idempotency: backend.Idempotency{Key: "ik-" + key, Fingerprint: "fp"}}
}

func wantSame(t *testing.T, got, want backend.Grant) {
	t.Helper()
	if got.LeaseID != want.LeaseID || got.Token != want.Token || !got.ExpiresAt.Equal(want.ExpiresAt) || got.TTL != want.TTL {
		t.Fatalf("retry got {lease %q token %d ttl %v expires %v}, want the first grant {lease %q token %d ttl %v expires %v}",
			got.LeaseID, got.Token, got.TTL, got.ExpiresAt, want.LeaseID, want.Token, want.TTL, want.ExpiresAt)
	}
	if !got.Replayed {
		t.Errorf("retry's grant has Replayed false, want true")
	}
}

// wantHeldBy checks that no other acquirer gets key and that every live
// master's copy is the one lease (no second grant anywhere).
func wantHeldBy(t *testing.T, srv *testserver.RedisSet, other backend.Backend, key string, g backend.Grant) {
	t.Helper()
	_, err := other.Acquire(ctxT(t, 10*time.Second), backend.AcquireRequest{Key: key, Owner: "other", TTL: time.Minute})
	if !errors.Is(err, backend.ErrHeld) {
		t.Fatalf("another acquirer got %v, want ErrHeld: the key would be granted twice", err)
	}
	for i := range srv.Addrs() {
		c := directClient(t, srv.Addr(i))
		h, err := c.HMGet(t.Context(), "lockd:rl:{"+key+"}:lock", "id", "token").Result()
		if err != nil {
			t.Fatalf("master %d: %v", i, err)
		}
		if h[0] != g.LeaseID || h[1] != fmt.Sprint(g.Token) {
			t.Errorf("master %d holds {id %v token %v}, want the one grant {id %s token %d}", i, h[0], h[1], g.LeaseID, g.Token)
		}
		if f, err := c.Get(t.Context(), "lockd:rl:{"+key+"}:fence").Uint64(); err != nil || f < g.Token {
			t.Errorf("master %d's counter = %d (%v), want ≥ the grant's token %d", i, f, err, g.Token)
		}
	}
}

// A retry after masters restarted empty (1 of 3, 2 of 5: a majority still
// holds the grant) returns the same grant, gives the lease back to the
// masters that forgot it under the recorded token, and grants nobody else.
func TestIdempotentRetryAfterMastersRestartedEmpty(t *testing.T) {
	for _, tc := range []struct{ masters, restarted int }{{3, 1}, {5, 2}} {
		t.Run(fmt.Sprintf("%dof%d", tc.restarted, tc.masters), func(t *testing.T) {
			srv := testserver.Redis(t, tc.masters)
			factory := newFactory(srv.Addrs(), testOptions)
			b1, b2 := factory(t), factory(t)
			key := "restarted"
			// Raise the counters first, so that a restarted master's fresh
			// count (1) differs from the grant's token.
			for i := 0; i < 3; i++ {
				g, err := b1.Acquire(ctxT(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: time.Minute})
				if err != nil {
					t.Fatal(err)
				}
				if err := b1.Release(ctxT(t, 10*time.Second), key, g.LeaseID); err != nil {
					t.Fatal(err)
				}
			}
			first, err := b1.Acquire(ctxT(t, 10*time.Second), idemReq(key))
			if err != nil {
				t.Fatalf("first acquire: %v", err)
			}
			for i := 0; i < tc.restarted; i++ {
				if err := srv.Restart(i); err != nil {
					t.Fatalf("Restart %d: %v", i, err)
				}
			}
			// The first reply was lost; the client retries on another replica.
			again, err := b2.Acquire(ctxT(t, 10*time.Second), idemReq(key))
			if err != nil {
				t.Fatalf("retry after %d of %d masters restarted empty: %v, want the first grant", tc.restarted, tc.masters, err)
			}
			wantSame(t, again, first)
			wantHeldBy(t, srv, factory(t), key, first)
			if err := b2.Release(ctxT(t, 10*time.Second), key, first.LeaseID); err != nil {
				t.Fatalf("release of the one grant: %v", err)
			}
			_, err = b1.Acquire(ctxT(t, 10*time.Second), idemReq(key))
			if !errors.Is(err, backend.ErrLeaseExpired) {
				t.Fatalf("retry after the release: %v, want ErrLeaseExpired", err)
			}
		})
	}
}

// lostReplies wraps a real master's client as seen by a lockd that dies
// right after its acquire scripts ran: each acquire runs in Redis but its
// reply never arrives, and nothing sent after it (the give-back) arrives.
type lostReplies struct {
	goredis.UniversalClient
}

func lost(ctx context.Context) *goredis.Cmd {
	cmd := goredis.NewCmd(ctx)
	cmd.SetErr(errors.New("reply lost"))
	return cmd
}

func (c lostReplies) EvalSha(ctx context.Context, sha string, keys []string, args ...any) *goredis.Cmd {
	if sha != acquireScript.Hash() {
		return lost(ctx)
	}
	cmd := c.UniversalClient.EvalSha(ctx, sha, keys, args...)
	if err := cmd.Err(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		return cmd // go-redis sends the script itself next
	}
	return lost(ctx)
}

func (c lostReplies) Eval(ctx context.Context, script string, keys []string, args ...any) *goredis.Cmd {
	if script != acquireLua {
		return lost(ctx)
	}
	c.UniversalClient.Eval(ctx, script, keys, args...)
	return lost(ctx)
}

// An acquire whose replies were all lost (and whose give-back never went
// out) leaves its copies on every master. The retry under the same key on
// another replica takes them over instead of waiting a TTL for them to
// expire: it is granted at once, and the key holds one lease.
func TestIdempotentRetryAdoptsLeftoversOfLostReplies(t *testing.T) {
	srv := testserver.Redis(t, 3)
	var masters []goredis.UniversalClient
	for _, a := range srv.Addrs() {
		masters = append(masters, lostReplies{goredis.NewClient(&goredis.Options{Addr: a, MaxRetries: -1, ContextTimeoutEnabled: true})})
	}
	dying, err := New(masters, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dying.Close() })
	key := "leftovers"
	if g, err := dying.Acquire(ctxT(t, 10*time.Second), idemReq(key)); err == nil {
		t.Fatalf("acquire with every reply lost granted %+v", g)
	}
	for i := range srv.Addrs() {
		if n, err := directClient(t, srv.Addr(i)).Exists(t.Context(), "lockd:rl:{"+key+"}:lock").Result(); err != nil || n != 1 {
			t.Fatalf("master %d: lock copy exists = %d (%v), want 1: no leftover, the test proves nothing", i, n, err)
		}
	}
	factory := newFactory(srv.Addrs(), testOptions)
	g, err := factory(t).Acquire(ctxT(t, 10*time.Second), idemReq(key))
	if err != nil {
		t.Fatalf("retry over the lost attempt's leftovers: %v, want granted at once", err)
	}
	wantHeldBy(t, srv, factory(t), key, g)
	// A second retry gets the same grant, now committed.
	again, err := factory(t).Acquire(ctxT(t, 10*time.Second), idemReq(key))
	if err != nil {
		t.Fatalf("second retry: %v", err)
	}
	wantSame(t, again, g)
}

// Redlock has no queue, but a retry sent while the first attempt still
// waits does not take a second grant: whichever wins first records its
// lease, the other adopts it, and both return the one grant.
func TestIdempotentRetryWhileFirstWaits(t *testing.T) {
	srv := testserver.Redis(t, 3)
	factory := newFactory(srv.Addrs(), testOptions)
	b1, b2 := factory(t), factory(t)
	key := "waiting"
	holder, err := b1.Acquire(ctxT(t, 10*time.Second), backend.AcquireRequest{Key: key, Owner: "holder", TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	req := idemReq(key)
	req.Wait = 30 * time.Second
	type result struct {
		g   backend.Grant
		err error
	}
	run := func(b backend.Backend) <-chan result {
		ch := make(chan result, 1)
		go func() {
			g, err := b.Acquire(ctxT(t, 60*time.Second), req)
			ch <- result{g, err}
		}()
		return ch
	}
	first := run(b1)
	time.Sleep(100 * time.Millisecond)
	retry := run(b2)
	time.Sleep(200 * time.Millisecond)
	if err := b1.Release(ctxT(t, 10*time.Second), key, holder.LeaseID); err != nil {
		t.Fatal(err)
	}
	a, r := <-first, <-retry
	if a.err != nil || r.err != nil {
		t.Fatalf("first attempt: %v; its retry: %v; want both granted", a.err, r.err)
	}
	if a.g.LeaseID != r.g.LeaseID || a.g.Token != r.g.Token || !a.g.ExpiresAt.Equal(r.g.ExpiresAt) {
		t.Fatalf("first attempt got {%s %d %v}, its retry {%s %d %v}: two grants for one request",
			a.g.LeaseID, a.g.Token, a.g.ExpiresAt, r.g.LeaseID, r.g.Token, r.g.ExpiresAt)
	}
	if !a.g.Replayed && !r.g.Replayed {
		t.Errorf("Replayed is false on both, want it on the one that adopted the other's grant")
	}
	wantHeldBy(t, srv, factory(t), key, a.g)
}

// The cost of a key: an acquire+release cycle on 5 masters without and with
// an Idempotency-Key (the keyed acquire adds the commit round trip).
func BenchmarkAcquireReleaseKeyed(b *testing.B) {
	srv := testserver.Redis(b, 5)
	var clients []goredis.UniversalClient
	for _, a := range srv.Addrs() {
		clients = append(clients, goredis.NewClient(&goredis.Options{Addr: a, MaxRetries: -1, ContextTimeoutEnabled: true}))
	}
	be, err := New(clients, Options{NodeTimeout: 2 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = be.Close() })
	n := 0 // every keyed acquire gets its own key, across runs
	for _, keyed := range []bool{false, true} {
		b.Run(fmt.Sprintf("keyed=%v", keyed), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				req := backend.AcquireRequest{Key: "bench", TTL: 10 * time.Second}
				if keyed {
					n++
					req.Idempotency = backend.Idempotency{Key: fmt.Sprintf("b%d", n), Fingerprint: "fp"}
				}
				g, err := be.Acquire(b.Context(), req)
				if err != nil {
					b.Fatal(err)
				}
				if err := be.Release(b.Context(), "bench", g.LeaseID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A retry after the holder renewed past the first grant's end gets the
// lease as renewed, not 410: the record keeps the first grant, the copies
// the renew, and the replay reports where a majority of copies run out.
func TestIdempotentRetryAfterRenew(t *testing.T) {
	srv := testserver.Redis(t, 3)
	factory := newFactory(srv.Addrs(), testOptions)
	b := factory(t)
	req := idemReq("renewed")
	req.TTL = time.Second
	first, err := b.Acquire(ctxT(t, 10*time.Second), req)
	if err != nil {
		t.Fatal(err)
	}
	r, err := b.Renew(ctxT(t, 10*time.Second), req.Key, first.LeaseID, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(first.ExpiresAt) + 100*time.Millisecond)
	again, err := factory(t).Acquire(ctxT(t, 10*time.Second), req)
	if err != nil {
		t.Fatalf("retry after a renew, past the first grant's end: %v, want the renewed lease", err)
	}
	if again.LeaseID != first.LeaseID || again.Token != first.Token || !again.Replayed {
		t.Fatalf("retry got {lease %q token %d replayed %v}, want {%q %d true}", again.LeaseID, again.Token, again.Replayed, first.LeaseID, first.Token)
	}
	// Counted from the renew's start without its elapsed time: at most a
	// round trip later than the renew reported, never earlier.
	if again.ExpiresAt.Before(r.ExpiresAt) || again.ExpiresAt.After(r.ExpiresAt.Add(testOptions.NodeTimeout)) {
		t.Fatalf("retry's expires_at %v, want the renew's %v (up to its round trip later)", again.ExpiresAt, r.ExpiresAt)
	}
	wantHeldBy(t, srv, factory(t), req.Key, first)
}

// onceAcquire wraps a real master's client: its first acquire script runs,
// every later one fails before reaching Redis (the master went out of reach
// between two tries of one Acquire).
type onceAcquire struct {
	goredis.UniversalClient
	ran *atomic.Bool
}

func (c onceAcquire) EvalSha(ctx context.Context, sha string, keys []string, args ...any) *goredis.Cmd {
	if sha != acquireScript.Hash() {
		return c.UniversalClient.EvalSha(ctx, sha, keys, args...)
	}
	if c.ran.Load() {
		return lost(ctx)
	}
	cmd := c.UniversalClient.EvalSha(ctx, sha, keys, args...)
	if err := cmd.Err(); err == nil || !strings.HasPrefix(err.Error(), "NOSCRIPT") {
		c.ran.Store(true)
	}
	return cmd
}

func (c onceAcquire) Eval(ctx context.Context, script string, keys []string, args ...any) *goredis.Cmd {
	if script != acquireLua {
		return c.UniversalClient.Eval(ctx, script, keys, args...)
	}
	if c.ran.Swap(true) {
		return lost(ctx)
	}
	return c.UniversalClient.Eval(ctx, script, keys, args...)
}

// A retry that found the committed grant on a bare majority (one master
// restarted empty) tries again under its lease to give it back to that
// master; when the masters do not answer that second try, the retry fails
// as unavailable and leaves the grant alone: it is the first attempt's,
// and it still holds.
func TestIdempotentRetryNeverGivesBackTheGrantItAdopted(t *testing.T) {
	srv := testserver.Redis(t, 3)
	factory := newFactory(srv.Addrs(), testOptions)
	req := idemReq("adopted")
	first, err := factory(t).Acquire(ctxT(t, 10*time.Second), req)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(0); err != nil {
		t.Fatal(err)
	}
	var masters []goredis.UniversalClient
	for _, a := range srv.Addrs() {
		masters = append(masters, onceAcquire{goredis.NewClient(&goredis.Options{Addr: a, MaxRetries: -1, ContextTimeoutEnabled: true}), new(atomic.Bool)})
	}
	retrier, err := New(masters, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = retrier.Close() })
	_, err = retrier.Acquire(ctxT(t, 10*time.Second), req)
	if !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("retry whose second try reached no master: %v, want ErrUnavailable", err)
	}
	st, err := factory(t).Inspect(ctxT(t, 10*time.Second), req.Key)
	if err != nil || !st.Held || st.Holder.Token != first.Token {
		t.Fatalf("after the failed retry the key is %+v (%v), want still held by the first grant (token %d)", st, err, first.Token)
	}
}

// A renew that reached a majority but not every master is a renew: the
// copy it missed expires at the first deadline. A retry after that gets the
// renewed lease; it neither answers 410 nor gives the lease back.
func TestIdempotentRetryAfterPartialRenew(t *testing.T) {
	srv := testserver.Redis(t, 3)
	factory := newFactory(srv.Addrs(), testOptions)
	b := factory(t)
	req := idemReq("partly-renewed")
	req.TTL = time.Second
	first, err := b.Acquire(ctxT(t, 10*time.Second), req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Renew(ctxT(t, 10*time.Second), req.Key, first.LeaseID, time.Minute); err != nil {
		t.Fatal(err)
	}
	// Master 2 missed the renew: its copy keeps the first TTL.
	lock := "lockd:rl:{" + req.Key + "}:lock"
	if err := directClient(t, srv.Addr(2)).PExpireAt(t.Context(), lock, first.ExpiresAt.Add(50*time.Millisecond)).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(first.ExpiresAt) + 300*time.Millisecond)
	if n, _ := directClient(t, srv.Addr(2)).Exists(t.Context(), lock).Result(); n != 0 {
		t.Fatalf("master 2's copy still exists; the test proves nothing")
	}
	again, err := factory(t).Acquire(ctxT(t, 10*time.Second), req)
	if err != nil {
		t.Fatalf("retry after a renew that missed one master: %v, want the renewed lease", err)
	}
	if again.LeaseID != first.LeaseID || again.Token != first.Token || !again.ExpiresAt.After(time.Now()) {
		t.Fatalf("retry got {lease %q token %d expires %v}, want {%q %d, in the future}", again.LeaseID, again.Token, again.ExpiresAt, first.LeaseID, first.Token)
	}
	st, err := factory(t).Inspect(ctxT(t, 10*time.Second), req.Key)
	if err != nil || !st.Held || st.Holder.Token != first.Token {
		t.Fatalf("after the retry the key is %+v (%v), want still held by the renewed lease (token %d)", st, err, first.Token)
	}
}

// The records of an attempt that died half-way outlive its copies (they are
// kept an hour, the copies a TTL). A retry after the copies expired is
// granted at once; the stale record is taken over, never in the way. Eight
// keys, since which lease id sorts first is chance.
func TestIdempotentRetryOverStaleRecords(t *testing.T) {
	srv := testserver.Redis(t, 3)
	var masters []goredis.UniversalClient
	for _, a := range srv.Addrs() {
		masters = append(masters, lostReplies{goredis.NewClient(&goredis.Options{Addr: a, MaxRetries: -1, ContextTimeoutEnabled: true})})
	}
	dying, err := New(masters, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dying.Close() })
	factory := newFactory(srv.Addrs(), testOptions)
	var reqs []backend.AcquireRequest
	for i := 0; i < 8; i++ {
		req := idemReq(fmt.Sprintf("stale-%d", i))
		req.TTL = 300 * time.Millisecond
		if g, err := dying.Acquire(ctxT(t, 10*time.Second), req); err == nil {
			t.Fatalf("acquire with every reply lost granted %+v", g)
		}
		reqs = append(reqs, req)
	}
	time.Sleep(500 * time.Millisecond) // the copies expire; the records stay
	for _, req := range reqs {
		if n, _ := directClient(t, srv.Addr(0)).Exists(t.Context(), "lockd:rl:{"+req.Key+"}:i:"+req.Idempotency.Key).Result(); n != 1 {
			t.Fatalf("%s: no stale record left; the test proves nothing", req.Key)
		}
		req.TTL = time.Minute // the fingerprint, not the TTL, identifies the request here
		g, err := factory(t).Acquire(ctxT(t, 10*time.Second), req)
		if err != nil {
			t.Fatalf("%s: retry over a dead attempt's stale records: %v, want granted", req.Key, err)
		}
		wantHeldBy(t, srv, factory(t), req.Key, g)
	}
}
