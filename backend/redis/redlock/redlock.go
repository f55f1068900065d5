// Package redlock keeps lockd's locks on N independent Redis masters with the
// Redlock algorithm: a lock is held when a majority (N/2+1) of masters hold
// it, and a grant is valid for TTL − elapsed acquire time − clock drift.
// Grants and renewals report that validity as their TTL, and ExpiresAt as
// the moment the first master was asked plus the validity: a little under
// what was asked, and never past what the masters hold.
//
// # Why not redsync
//
// The algorithm is written here, not taken from go-redsync/redsync: a grant
// must carry a fencing token (an INCR made in the same step as the per-master
// SET, then raised to the majority's maximum), the holder's owner and
// deadline for inspection, and a lease id chosen by lockd. redsync's per-master
// scripts store only a value and cannot INCR a counter atomically with the
// grant, so they would need a second, non-atomic step per master. The compare
// suite still runs a plain redsync pair for reference.
//
// # Layout on each master
//
//	<Prefix>{<key>}:lock   hash {id, owner, token, exp}, PX = the lease's TTL
//	<Prefix>{<key>}:fence  counter; never expires
//	<Prefix>{<key>}:i:<k>  hash {f, l, t, e, v}: the record of an acquire
//	                       with idempotency key k (see idempotency.go)
//
// # Fencing tokens are NOT safe under failures
//
// Each master INCRs its own counter when it grants; the grant's token is the
// largest value among the majority, written back to that majority's counters
// (and their copies of the grant) before the grant is returned, so that the
// next majority — which shares at least one master with this one — counts
// past it. While every master keeps its data and clocks behave, tokens
// strictly increase. They stop doing so, and mutual exclusion itself fails,
// when (M. Kleppmann, "How to do distributed locking", 2016):
//   - a master restarts without its data (no AOF fsync): it forgets both the
//     grant and its counter, so a second majority can form while the first
//     holder is still inside its validity, and its token may be smaller;
//   - a master's clock jumps forward and its key expires early, with the same
//     effect;
//   - the holder pauses (GC, SIGSTOP) past its validity: Redlock has no way to
//     stop it, and without a token the resource can check, nothing does.
//
// A resource that checks tokens (lockd's fence package) rejects the last case
// only if the tokens it sees increase, which the first two cases break. Use
// the redis or etcd/zk backends where fencing must hold.
//
// # Clients
//
// Give each master its own client with MaxRetries -1 (a retry belongs to
// the algorithm, not to one master), DialerRetries 1 (a dead master must
// fail fast, not after go-redis's five dials) and ContextTimeoutEnabled. A
// master that does not answer within NodeTimeout counts as failed either way.
//
// # Idempotent acquires
//
// An acquire with an idempotency key leaves a record on each master that
// granted it, committed with the grant's token and expiry once a majority
// did; a retry returns the committed grant, and re-runs under the recorded
// lease id when the first attempt left copies but no commit
// (idempotency.go). There is no queue, so a retry cannot wait in the first
// attempt's place: whichever of the two wins first records its lease and
// the other adopts it.
//
// # Waiting
//
// Redlock has no queue: a waiter retries with jittered exponential back-off
// (capped at the holder's known deadline), so handoff costs up to one back-off
// step and a releaser that re-acquires at once usually wins again. Waiters are
// not served in arrival order. Even a single try (Wait 0) tries again, a
// bounded number of times, when nobody won a majority (concurrent acquirers
// split the masters and all gave back) or when the majority came too late to
// leave validity: in both cases nobody holds the lock, so "held" would be
// wrong, and ErrUnavailable is kept for when it keeps happening.
package redlock

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/redis/internal/store"
	"github.com/lockd/lockd/internal/lease"
)

var _ backend.Backend = (*Backend)(nil)

var (
	//go:embed scripts/acquire.lua
	acquireLua string
	//go:embed scripts/fence.lua
	fenceLua string
	//go:embed scripts/renew.lua
	renewLua string
	//go:embed scripts/release.lua
	releaseLua string
	//go:embed scripts/commit.lua
	commitLua string

	acquireScript = goredis.NewScript(acquireLua)
	fenceScript   = goredis.NewScript(fenceLua)
	renewScript   = goredis.NewScript(renewLua)
	releaseScript = goredis.NewScript(releaseLua)
	commitScript  = goredis.NewScript(commitLua)
)

// Options configures a Backend. The zero value works.
type Options struct {
	// Prefix starts every Redis key. Default "lockd:rl:".
	Prefix string
	// NodeTimeout bounds each call to one master; a slow master counts as
	// failed. It must be small against the TTLs in use (Redlock's authors
	// suggest 5–50 ms for a 10 s TTL). Default 50ms.
	NodeTimeout time.Duration
	// DriftFactor is the share of the TTL allowed for clock drift between
	// masters; 2 ms are added to it. Default 0.01.
	DriftFactor float64
	// MinRetryDelay and MaxRetryDelay bound a waiter's jittered exponential
	// back-off. Defaults 5ms and 100ms.
	MinRetryDelay, MaxRetryDelay time.Duration
	// There are no backend.Hooks: every master expires its copy by itself
	// and no lockd sees it happen, so OnExpire could never be called.
}

// Backend is the Redlock implementation of backend.Backend.
type Backend struct {
	masters []goredis.UniversalClient
	quorum  int
	prefix  string
	opts    Options

	life      context.Context // ends on Close: waiting acquires give up
	stop      context.CancelFunc
	closeOnce sync.Once
}

// New returns a Backend over independent masters, which it owns from now on
// (Close closes them). Use an odd number of masters.
func New(masters []goredis.UniversalClient, opts Options) (*Backend, error) {
	if len(masters) == 0 {
		return nil, errors.New("redlock: no masters")
	}
	if opts.Prefix == "" {
		opts.Prefix = "lockd:rl:"
	}
	if opts.NodeTimeout <= 0 {
		opts.NodeTimeout = 50 * time.Millisecond
	}
	if opts.DriftFactor <= 0 {
		opts.DriftFactor = 0.01
	}
	if opts.MinRetryDelay <= 0 {
		opts.MinRetryDelay = 5 * time.Millisecond
	}
	if opts.MaxRetryDelay < opts.MinRetryDelay {
		opts.MaxRetryDelay = max(100*time.Millisecond, opts.MinRetryDelay)
	}
	b := &Backend{masters: masters, quorum: len(masters)/2 + 1, prefix: opts.Prefix, opts: opts}
	b.life, b.stop = context.WithCancel(context.Background())
	return b, nil
}

// Close ends waiting acquires and closes every master's client. Leases run
// on in Redis.
func (b *Backend) Close() error {
	var errs []error
	b.closeOnce.Do(func() {
		b.stop()
		for _, m := range b.masters {
			errs = append(errs, m.Close())
		}
	})
	return errors.Join(errs...)
}

func (b *Backend) keys(key string) []string {
	base := store.Base(b.prefix, key)
	return []string{base + "lock", base + "fence"}
}

var errClosed = fmt.Errorf("redlock: %w: backend closed", backend.ErrUnavailable)

// reply is one master's answer.
type reply struct {
	v   any
	err error
}

// each calls f on every master at once and returns the replies in master
// order. Each call is bounded by NodeTimeout whatever the client's own
// timeouts (go-redis ignores context deadlines on sockets unless
// ContextTimeoutEnabled): a master that has not answered by then counts as
// failed, and its call ends in the background.
func (b *Backend) each(ctx context.Context, f func(ctx context.Context, m goredis.UniversalClient) (any, error)) []reply {
	type indexed struct {
		i int
		reply
	}
	ctx, cancel := context.WithTimeout(ctx, b.opts.NodeTimeout)
	defer cancel()
	ch := make(chan indexed, len(b.masters))
	for i, m := range b.masters {
		go func() {
			v, err := f(ctx, m)
			ch <- indexed{i, reply{v, err}}
		}()
	}
	out := make([]reply, len(b.masters))
	for i := range out {
		out[i].err = fmt.Errorf("master %d: no answer within %v", i, b.opts.NodeTimeout)
	}
	for n := 0; n < len(b.masters); n++ {
		select {
		case r := <-ch:
			out[r.i] = r.reply
		case <-ctx.Done():
			return out
		}
	}
	return out
}

// drift is the clock drift allowed for a lease of ttl.
func (b *Backend) drift(ttl time.Duration) time.Duration {
	return time.Duration(float64(ttl)*b.opts.DriftFactor) + 2*time.Millisecond
}

// validity is what a lease of ttl asked for at start is worth now, when a
// majority has answered: ttl − elapsed − drift, in whole milliseconds
// (rounded down), or ≤ 0 when nothing is left. A grant reports it as its TTL
// and start + validity as its ExpiresAt. Both count from start, which is no
// earlier than the client's send: a client that takes its own deadline as
// "sent + ttl_ms" stays inside the validity, and every master keeps its copy
// until at least start + ttl (its own clock, within the drift).
func (b *Backend) validity(start time.Time, ttl time.Duration) time.Duration {
	return (ttl - time.Since(start) - b.drift(ttl)).Truncate(time.Millisecond)
}

// failed is the result of one acquire attempt that did not grant.
type failed struct {
	holder      *backend.Holder
	unavailable error // set when fewer than a quorum of masters answered
	// split: no lease held a majority (concurrent acquirers each took
	// some masters and all gave back). The lock is not held, so even a
	// single try tries again rather than report it held.
	split bool
	// slow: a majority was won, but too late to leave any validity. Also
	// tried again past the wait (a few times), since nobody holds the lock.
	slow bool
	// switched: an idempotent acquire found an earlier attempt's lease
	// and tries again under it at once.
	switched bool
	// mismatch: masters that refused because their live semaphore has
	// another size, by that size (semaphores only).
	mismatch map[int]int
}

// A target is one Redlock mutex as every master keeps it: a lock, or one
// slot of a semaphore. keys[0] is its hash {id, owner, token, exp, ttl},
// keys[1] the fencing counter (fence.lua's KEYS); acquire runs one master's
// half of an acquire (acquire.lua's answers, plus {-4, size} for a
// semaphore of another size), release its half of a release (1: released
// there).
type target struct {
	key     string
	keys    []string
	acquire func(c context.Context, m goredis.UniversalClient, id string, deadline time.Time) ([]any, error)
	release func(c context.Context, m goredis.UniversalClient, id string) (int, error)
}

// lockTarget is the lock of key.
func (b *Backend) lockTarget(req backend.AcquireRequest) target {
	keys := b.keys(req.Key)
	return target{key: req.Key, keys: keys,
		acquire: func(c context.Context, m goredis.UniversalClient, id string, deadline time.Time) ([]any, error) {
			return acquireScript.Run(c, m, keys, id, req.Owner, store.Ms(req.TTL), deadline.UnixMilli()).Slice()
		},
		release: func(c context.Context, m goredis.UniversalClient, id string) (int, error) {
			return releaseScript.Run(c, m, keys[:1], id).Int()
		},
	}
}

// maxSplitRetries bounds the extra attempts past the wait after split
// votes; contenders back off at random, so one soon wins a majority.
const maxSplitRetries = 32

// Acquire implements backend.Backend.
func (b *Backend) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	if err := ctx.Err(); err != nil {
		return backend.Grant{}, err
	}
	giveUpAt := time.Now().Add(req.Wait)
	delay := b.opts.MinRetryDelay
	splits := 0
	idem := &idemState{id: lease.NewID()}
	for {
		var (
			g   backend.Grant
			f   *failed
			err error
		)
		if req.Idempotency.Key != "" {
			g, f, err = b.tryIdem(ctx, req, idem)
		} else {
			g, f, err = b.try(ctx, b.lockTarget(req), req.Owner, req.TTL)
		}
		if err != nil {
			return backend.Grant{}, err
		}
		if f == nil {
			return g, nil
		}
		if f.switched {
			continue
		}
		left := time.Until(giveUpAt)
		if left <= 0 && splits < maxSplitRetries && (f.split && f.unavailable == nil || f.slow && splits < 3) {
			splits++
			left = delay
		}
		if left <= 0 {
			if f.unavailable != nil {
				return backend.Grant{}, f.unavailable
			}
			return backend.Grant{}, &backend.HeldError{Key: req.Key, Holder: f.holder}
		}
		// Jittered exponential back-off, but no later than just after the
		// holder's deadline nor the end of the wait.
		sleep := delay/2 + rand.N(delay/2+1)
		delay = min(2*delay, b.opts.MaxRetryDelay)
		if f.holder != nil {
			if d := time.Until(f.holder.ExpiresAt) + time.Millisecond; d > 0 && d < sleep {
				sleep = d
			}
		}
		sleep = min(sleep, left)
		t := time.NewTimer(sleep)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return backend.Grant{}, ctx.Err()
		case <-b.life.Done():
			t.Stop()
			return backend.Grant{}, errClosed
		}
	}
}

// try makes one Redlock attempt on t. It returns a grant, or why none was
// made (having undone any partial grant), or ctx's error.
func (b *Backend) try(ctx context.Context, t target, owner string, ttl time.Duration) (backend.Grant, *failed, error) {
	keys := t.keys
	id := lease.NewID()
	start := time.Now()
	deadline := lease.Deadline(start, ttl)
	replies := b.each(ctx, func(c context.Context, m goredis.UniversalClient) (any, error) {
		return t.acquire(c, m, id, deadline)
	})
	var (
		granted  []int // masters that granted
		tokens   = make([]uint64, len(b.masters))
		maxToken uint64
		holders  = map[string]*backend.Holder{}
		votes    = map[string]int{}
		mismatch map[int]int
		errs     []error
	)
	for i, r := range replies {
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		res := r.v.([]any)
		if store.Int(res[0]) == -4 {
			if mismatch == nil {
				mismatch = map[int]int{}
			}
			mismatch[int(store.Int(res[1]))]++
			continue
		}
		if store.Int(res[0]) == 1 {
			granted = append(granted, i)
			tokens[i] = uint64(store.Int(res[1]))
			maxToken = max(maxToken, tokens[i])
			continue
		}
		hid := store.Str(res[1])
		votes[hid]++
		if h := holders[hid]; h == nil || uint64(store.Int(res[3])) > h.Token {
			holders[hid] = &backend.Holder{Owner: store.Str(res[2]), Token: uint64(store.Int(res[3])), ExpiresAt: time.UnixMilli(store.Int(res[4]))}
		}
	}
	giveUp := func(f *failed) (backend.Grant, *failed, error) {
		if len(granted) > 0 || len(errs) > 0 { // a timed-out master may have granted
			b.releaseOn(t, id)
		}
		if err := ctx.Err(); err != nil {
			return backend.Grant{}, nil, err
		}
		return backend.Grant{}, f, nil
	}
	if len(granted) < b.quorum {
		f := &failed{mismatch: mismatch}
		best := 0
		for hid, n := range votes {
			if n > best {
				best, f.holder = n, holders[hid]
			}
		}
		f.split = best < b.quorum
		if len(b.masters)-len(errs) < b.quorum {
			f.unavailable = fmt.Errorf("redlock acquire %q: %w: %d of %d masters answered, %d needed: %w",
				t.key, backend.ErrUnavailable, len(b.masters)-len(errs), len(b.masters), b.quorum, errors.Join(errs...))
		}
		return giveUp(f)
	}
	// Raise the masters that counted lower to the chosen token.
	var behind []int
	for _, i := range granted {
		if tokens[i] < maxToken {
			behind = append(behind, i)
		}
	}
	if len(behind) > 0 {
		ok := len(granted) - len(behind)
		raised := b.each(ctx, func(c context.Context, m goredis.UniversalClient) (any, error) {
			for _, i := range behind {
				if b.masters[i] == m {
					return fenceScript.Run(c, m, keys, id, maxToken).Int()
				}
			}
			return 0, nil
		})
		for _, i := range behind {
			if raised[i].err == nil && raised[i].v.(int) == 1 {
				ok++
			}
		}
		if ok < b.quorum {
			return giveUp(&failed{unavailable: fmt.Errorf("redlock acquire %q: %w: the token reached %d masters, %d needed",
				t.key, backend.ErrUnavailable, ok, b.quorum)})
		}
	}
	validity := b.validity(start, ttl)
	if validity <= 0 {
		// The majority was won too slowly to be worth anything.
		return giveUp(&failed{slow: true, unavailable: fmt.Errorf("redlock acquire %q: %w: majority won after %v, no validity left of a %v TTL",
			t.key, backend.ErrUnavailable, time.Since(start).Round(time.Millisecond), ttl)})
	}
	g := backend.Grant{Key: t.key, LeaseID: id, Token: maxToken, Owner: owner, TTL: validity, ExpiresAt: lease.Deadline(start, validity)}
	if err := ctx.Err(); err != nil { // granted as the caller gave up
		b.releaseOn(t, id)
		return backend.Grant{}, nil, err
	}
	return g, nil, nil
}

// releaseAll deletes id's grant of the lock keys[0] on every master, on its
// own deadline: the caller's context may be over. A master that misses it
// lets it expire.
func (b *Backend) releaseAll(keys []string, id string) {
	b.releaseOn(target{keys: keys, release: func(c context.Context, m goredis.UniversalClient, id string) (int, error) {
		return releaseScript.Run(c, m, keys[:1], id).Int()
	}}, id)
}

// releaseOn deletes id's grant of t on every master, as releaseAll does.
func (b *Backend) releaseOn(t target, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*b.opts.NodeTimeout)
	defer cancel()
	b.each(ctx, func(c context.Context, m goredis.UniversalClient) (any, error) {
		return t.release(c, m, id)
	})
}

// Renew implements backend.Backend: it extends the lease on every master
// that still holds it, and succeeds when a majority did within the new
// validity. A lease that no longer holds a majority is released everywhere.
func (b *Backend) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.Grant, error) {
	keys := b.keys(key)
	g, _, err := b.renewOn(ctx, b.lockTarget(backend.AcquireRequest{Key: key}), leaseID, ttl, func(c context.Context, m goredis.UniversalClient, ttlMS int64, start time.Time) (any, error) {
		return renewScript.Run(c, m, keys[:1], leaseID, ttlMS, start.UnixMilli()).Result()
	})
	return g, err
}

// renewOn is Renew on t, whose masters answer run with {owner, token, ttl
// ms, extra...} or a non-table when the lease does not hold there. extra
// is the first extra field (a semaphore's size) of the masters that held.
func (b *Backend) renewOn(ctx context.Context, t target, leaseID string, ttl time.Duration,
	run func(c context.Context, m goredis.UniversalClient, ttlMS int64, start time.Time) (any, error)) (backend.Grant, int64, error) {
	key := t.key
	start := time.Now()
	ttlMS := int64(0) // keep the lease's TTL, as each master stored it
	if ttl > 0 {
		ttlMS = store.Ms(ttl)
	}
	replies := b.each(ctx, func(c context.Context, m goredis.UniversalClient) (any, error) {
		return run(c, m, ttlMS, start)
	})
	g := backend.Grant{Key: key, LeaseID: leaseID}
	var ttls []time.Duration // the TTL each master that still held it set
	var extra int64
	errs := 0
	for _, r := range replies {
		if r.err != nil {
			errs++
			continue
		}
		if res, ok := r.v.([]any); ok {
			g.Owner = store.Str(res[0])
			g.Token = max(g.Token, uint64(store.Int(res[1])))
			ttls = append(ttls, time.Duration(store.Int(res[2]))*time.Millisecond)
			if len(res) > 3 {
				extra = store.Int(res[3])
			}
		}
	}
	held := len(ttls)
	if err := ctx.Err(); err != nil {
		return backend.Grant{}, 0, err
	}
	if held >= b.quorum {
		// The lease holds while a majority holds it: until the quorum-th
		// longest of the TTLs set (they differ only when an earlier renew
		// reached some masters and not others).
		sort.Slice(ttls, func(i, j int) bool { return ttls[i] > ttls[j] })
		// Reported like an acquire's: the validity, counted from start. The
		// lease's TTL on the masters stays the one asked for, so renewing
		// without a ttl_ms does not shorten the lease step by step.
		if validity := b.validity(start, ttls[b.quorum-1]); validity > 0 {
			g.TTL, g.ExpiresAt = validity, lease.Deadline(start, validity)
			return g, extra, nil
		}
	}
	if held+errs >= b.quorum {
		return backend.Grant{}, 0, fmt.Errorf("redlock renew %q: %w: %d of %d masters renewed, %d did not answer",
			key, backend.ErrUnavailable, held, len(b.masters), errs)
	}
	b.releaseOn(t, leaseID)
	return backend.Grant{}, 0, fmt.Errorf("redlock renew %q: %w", key, backend.ErrLeaseExpired)
}

// Release implements backend.Backend. It deletes the lease's copy on every
// master that answers and succeeds when the lease may have held a majority
// and at least one copy was deleted: a master that did not answer keeps its
// copy until it expires, and the masters that did can form a majority
// without it.
func (b *Backend) Release(ctx context.Context, key, leaseID string) error {
	return b.releaseMajority(ctx, b.lockTarget(backend.AcquireRequest{Key: key}), leaseID)
}

// releaseMajority is Release on t.
func (b *Backend) releaseMajority(ctx context.Context, t target, leaseID string) error {
	key := t.key
	replies := b.each(ctx, func(c context.Context, m goredis.UniversalClient) (any, error) {
		return t.release(c, m, leaseID)
	})
	released, errs := 0, 0
	for _, r := range replies {
		switch {
		case r.err != nil:
			errs++
		case r.v.(int) == 1:
			released++
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	switch {
	case released+errs < b.quorum:
		// It cannot have held a majority; any copies left are gone now.
		return fmt.Errorf("redlock release %q: %w", key, backend.ErrLeaseExpired)
	case released > 0:
		// Gone from every master that answered; copies on the others (at
		// most a minority of the live masters) expire with the lease.
		return nil
	default:
		return fmt.Errorf("redlock release %q: %w: none of %d masters released, %d did not answer",
			key, backend.ErrUnavailable, len(b.masters), errs)
	}
}

// Inspect implements backend.Backend: the key is held when a majority of
// masters hold the same lease. Waiters are not counted (there is no queue).
func (b *Backend) Inspect(ctx context.Context, key string) (backend.LockState, error) {
	lockKey := b.keys(key)[0]
	replies := b.each(ctx, func(c context.Context, m goredis.UniversalClient) (any, error) {
		return m.HMGet(c, lockKey, "id", "owner", "token", "exp").Result()
	})
	st := backend.LockState{Key: key}
	votes := map[string]int{}
	holders := map[string]*backend.Holder{}
	answered := 0
	for _, r := range replies {
		if r.err != nil {
			continue
		}
		answered++
		res := r.v.([]any)
		hid, ok := res[0].(string)
		if !ok {
			continue
		}
		votes[hid]++
		h := holders[hid]
		if h == nil {
			h = &backend.Holder{Owner: store.Str(res[1])}
			holders[hid] = h
		}
		var tok, exp uint64
		fmt.Sscan(store.Str(res[2]), &tok)
		fmt.Sscan(store.Str(res[3]), &exp)
		h.Token = max(h.Token, tok)
		if e := time.UnixMilli(int64(exp)); h.ExpiresAt.IsZero() || e.Before(h.ExpiresAt) {
			h.ExpiresAt = e
		}
	}
	if err := ctx.Err(); err != nil {
		return st, err
	}
	if answered < b.quorum {
		return st, fmt.Errorf("redlock inspect %q: %w: %d of %d masters answered", key, backend.ErrUnavailable, answered, len(b.masters))
	}
	for hid, n := range votes {
		if n >= b.quorum {
			st.Held, st.Holder = true, holders[hid]
		}
	}
	return st, nil
}

// List implements backend.Backend. Each page SCANs every master for keys
// under the prefix, sorts the union of names and inspects the first `limit`
// after `after`: O(keys on every master) per page — for operators, not for a
// hot path.
func (b *Backend) List(ctx context.Context, prefix, after string, limit int) ([]backend.LockState, error) {
	var mu sync.Mutex
	seen := map[string]bool{}
	answered := 0
	var wg sync.WaitGroup
	for _, m := range b.masters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			names, err := store.Keys(ctx, m, b.prefix, prefix, after)
			if err != nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			answered++
			for _, k := range names {
				seen[k] = true
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if answered < b.quorum {
		return nil, fmt.Errorf("redlock list: %w: %d of %d masters answered", backend.ErrUnavailable, answered, len(b.masters))
	}
	names := make([]string, 0, len(seen))
	for k := range seen {
		names = append(names, k)
	}
	sort.Strings(names)
	var out []backend.LockState
	for _, k := range names {
		if len(out) == limit {
			break
		}
		st, err := b.Inspect(ctx, k)
		if err != nil {
			return nil, err
		}
		if st.Held {
			out = append(out, st)
		}
	}
	return out, nil
}

// Ping implements backend.Backend: a majority of masters must answer.
func (b *Backend) Ping(ctx context.Context) error {
	replies := b.each(ctx, func(c context.Context, m goredis.UniversalClient) (any, error) {
		return nil, m.Ping(c).Err()
	})
	ok := 0
	for _, r := range replies {
		if r.err == nil {
			ok++
		}
	}
	if ok < b.quorum {
		return fmt.Errorf("redlock ping: %w: %d of %d masters answered", backend.ErrUnavailable, ok, len(b.masters))
	}
	return nil
}

var _ backend.Unordered = (*Backend)(nil)

// NoFIFO implements backend.Unordered.
func (b *Backend) NoFIFO() string {
	return "Redlock has no queue: waiters retry with jittered back-off and whoever tries first after a release wins"
}
