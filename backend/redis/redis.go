// Package redis keeps lockd's locks in one Redis (or a Sentinel or cluster
// setup through go-redis's UniversalClient), in the manner of Redisson's fair
// lock: every state change is one Lua script, so each acquire, renew and
// release is one atomic round trip, and waiters queue in Redis in arrival
// order and are woken by pub/sub, not by polling.
//
// # Layout (one hash tag per lock key, so one cluster slot)
//
//	<Prefix>{<key>}:lock   hash {id, owner, token, exp, ttl, value, s}, PX =
//	                       the lease's TTL; s names the session of a grant
//	                       made in one, whose deadline is the session's
//	<Prefix>{<key>}:fence  counter, INCR'd by every grant: the fencing token
//	<Prefix>{<key>}:q      list of waiter ids in arrival order
//	<Prefix>{<key>}:qt     zset waiter id -> heartbeat deadline (Redis ms)
//	<Prefix>{<key>}:ev     stream: the key's event log, written by the
//	                       scripts that change the holder (events.go)
//	<Prefix>e:{<name>}:... the same keys for the election <name> (election.go)
//	<Prefix>wake           pub/sub channel; a message is the waiter id to wake
//	                       (or "s:<h>": the waiters of a closed session)
//	<Prefix>s:<h>, s:<h>:g a session and the set of its grants (sessions.go;
//	                       one Redis only, not Redis Cluster)
//
// The lock hash expires with the lease (PEXPIRE), so an abandoned grant frees
// itself in Redis with no lockd alive. Deadlines are Redis's clock (TIME in
// the scripts): replicas of lockd agree on them whatever their own clocks.
//
// The fencing counter never expires: one small key per distinct lock key
// ever used. It only moves forward while Redis keeps its data; a Redis that
// restarts without persistence, or fails over to a replica that had not
// received the last INCR, hands out a token that is not larger than one
// already given — and can grant a held lock a second time. This backend is
// exactly as safe as the Redis deployment's durability.
//
// # Waiting
//
// A waiter pushes its id on the queue with a heartbeat deadline in the
// zset. Its lockd keeps that deadline ahead with ONE beat script per queue
// it has waiters on, every HeartbeatTimeout/3, for all of them at once
// (beats.go): Redis runs O(queues × replicas) scripts per period, not one
// per waiter. Only the head of the queue may take a free lock; a single try
// (Wait 0) never jumps the queue. A release, or a waiter leaving, publishes
// the id of the first live waiter; each Backend holds ONE subscription and
// hands the message to the waiting goroutine with that id, so a release
// wakes one waiter, not the herd. A waiter re-runs the acquire script only
// when woken, at its holder's deadline (the script returns it), at a
// lock-delay's or its session's end, or when it gives up. A waiter whose
// lockd died stops beating; once it is at the head and its deadline passed,
// the next beat of any replica with waiters on the key drops it and wakes
// the new head, so it delays the queue by at most about HeartbeatTimeout.
// A pub/sub message lost to a reconnect is made up for by the next beat of
// the head's replica (it answers whether the head may go now), and a waiter
// whose place Redis forgot (a restart without persistence) is told by it
// to queue again.
//
// This package must never keep state that matters only in its memory: the
// waiter registry is only a mailbox for wake-ups and the list of whose
// heartbeats to send; every decision is made by a
// script from what Redis holds.
package redis

import (
	"context"
	_ "embed"
	"fmt"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/redis/internal/store"
	"github.com/lockd/lockd/internal/lease"
)

var _ backend.Backend = (*Backend)(nil)

var (
	//go:embed scripts/prelude.lua
	prelude string
	//go:embed scripts/acquire.lua
	acquireLua string
	//go:embed scripts/renew.lua
	renewLua string
	//go:embed scripts/release.lua
	releaseLua string
	//go:embed scripts/abandon.lua
	abandonLua string
	//go:embed scripts/inspect.lua
	inspectLua string
	//go:embed scripts/proclaim.lua
	proclaimLua string
	//go:embed scripts/look.lua
	lookLua string

	acquireScript  = goredis.NewScript(prelude + acquireLua)
	renewScript    = goredis.NewScript(prelude + renewLua)
	releaseScript  = goredis.NewScript(prelude + releaseLua)
	abandonScript  = goredis.NewScript(prelude + abandonLua)
	inspectScript  = goredis.NewScript(prelude + inspectLua)
	proclaimScript = goredis.NewScript(prelude + proclaimLua)
	lookScript     = goredis.NewScript(prelude + lookLua)
)

// Options configures a Backend. The zero value works.
type Options struct {
	// Prefix starts every Redis key and the wake channel. Default "lockd:".
	Prefix string
	// HeartbeatTimeout is how long a queued waiter keeps its place without
	// a heartbeat; each Backend beats for all its waiters on a key every
	// third of it. It bounds how long a waiter whose lockd died delays the
	// queue. Default 3s.
	HeartbeatTimeout time.Duration
	// There are no backend.Hooks: Redis expires a lease's key by itself,
	// and a lockd sees it only when a script reaps it (events.go) — not
	// at once, and not on every replica — so OnExpire is not offered.
}

// Backend is the Redis implementation of backend.Backend.
type Backend struct {
	client  goredis.UniversalClient
	prefix  string
	channel string
	beat    time.Duration

	sub     *goredis.PubSub
	subDone chan struct{}

	mu      sync.Mutex
	waiters map[string]chan struct{} // waiter id -> wake-up mailbox
	// session wake message (sessionWake) -> the mailboxes of the
	// acquires waiting in that session
	inSession map[string]map[chan struct{}]bool
	closed    bool
	active    sync.WaitGroup        // acquires in flight, waited for by Close
	groups    map[string]*beatGroup // a queue's zset key -> its local waiters (beats.go)
	beaters   sync.WaitGroup        // the groups' heartbeat goroutines

	life      context.Context // ends on Close: waiting acquires give up
	stop      context.CancelFunc
	closeOnce sync.Once
}

// New returns a Backend over client, which it owns from now on (Close closes
// it). It subscribes to the wake channel before returning, so that no
// wake-up is missed by an acquire made through it.
func New(ctx context.Context, client goredis.UniversalClient, opts Options) (*Backend, error) {
	if opts.Prefix == "" {
		opts.Prefix = "lockd:"
	}
	if opts.HeartbeatTimeout <= 0 {
		opts.HeartbeatTimeout = 3 * time.Second
	}
	b := &Backend{
		client:    client,
		prefix:    opts.Prefix,
		channel:   opts.Prefix + "wake",
		beat:      opts.HeartbeatTimeout,
		waiters:   map[string]chan struct{}{},
		inSession: map[string]map[chan struct{}]bool{},
		groups:    map[string]*beatGroup{},
		subDone:   make(chan struct{}),
	}
	b.sub = client.Subscribe(ctx, b.channel)
	if _, err := b.sub.Receive(ctx); err != nil { // the subscription's confirmation
		_ = b.sub.Close()
		return nil, unavailable(ctx, "subscribe", err)
	}
	b.life, b.stop = context.WithCancel(context.Background())
	go b.dispatch()
	return b, nil
}

// dispatch hands each wake message to the waiter it names. go-redis
// resubscribes after a reconnect; messages published meanwhile are lost, and
// the beats make up for them (beats.go).
func (b *Backend) dispatch() {
	defer close(b.subDone)
	for msg := range b.sub.Channel() {
		b.mu.Lock()
		chs := b.inSession[msg.Payload]
		if ch := b.waiters[msg.Payload]; ch != nil {
			chs = map[chan struct{}]bool{ch: true}
		}
		for ch := range chs {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
		b.mu.Unlock()
	}
}

// Close ends waiting acquires (with ErrUnavailable), drops the subscription
// and closes the client. Leases run on in Redis.
func (b *Backend) Close() error {
	var err error
	b.closeOnce.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		b.stop()
		b.active.Wait()
		b.beaters.Wait()
		_ = b.sub.Close()
		<-b.subDone
		err = b.client.Close()
	})
	return err
}

func (b *Backend) keys(key string) []string { return b.keysIn(lockNS, key) }

// Namespaces: a lock "x" and an election "x" never share a key.
const (
	lockNS     = ""
	electionNS = "e:"
)

// keysIn is every script's KEYS for key in namespace ns (see prelude.lua).
func (b *Backend) keysIn(ns, key string) []string {
	base := store.Base(b.prefix+ns, key)
	return []string{base + "lock", base + "fence", base + "q", base + "qt", base + "ev"}
}

// unavailable wraps a failed Redis call: ctx's error when ctx ended (the
// caller gave up), ErrUnavailable otherwise.
func unavailable(ctx context.Context, op string, err error) error {
	return backend.Unavailable(ctx, "redis", op, err)
}

var errClosed = fmt.Errorf("redis: %w: backend closed", backend.ErrUnavailable)

// mailbox registers an acquire with the backend, and, when it will wait,
// a mailbox for its wake-ups: registered before the first script call, so
// that a release right after it queues finds it. An acquire in a session
// (sessWake its sessionWake) is also woken when the session closes. done
// unregisters both.
func (b *Backend) mailbox(wait bool, sessWake string) (waiter string, wake chan struct{}, done func(), err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return "", nil, nil, errClosed
	}
	b.active.Add(1)
	if wait {
		waiter = lease.NewID()
		wake = make(chan struct{}, 1)
		b.waiters[waiter] = wake
		if sessWake != "" {
			if b.inSession[sessWake] == nil {
				b.inSession[sessWake] = map[chan struct{}]bool{}
			}
			b.inSession[sessWake][wake] = true
		}
	}
	return waiter, wake, func() {
		b.mu.Lock()
		delete(b.waiters, waiter)
		if m := b.inSession[sessWake]; m != nil {
			delete(m, wake)
			if len(m) == 0 {
				delete(b.inSession, sessWake)
			}
		}
		b.mu.Unlock()
		b.active.Done()
	}, nil
}

// Acquire implements backend.Backend.
func (b *Backend) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	return b.acquire(ctx, b.idemKeys(req), req, "")
}

// acquire runs the acquire script on keys (keysIn's, then the idempotency
// record), writing value into the grant.
func (b *Backend) acquire(ctx context.Context, keys []string, req backend.AcquireRequest, value string) (backend.Grant, error) {
	if err := ctx.Err(); err != nil {
		return backend.Grant{}, err
	}
	var sessWake string
	if req.Session != "" {
		sk, err := b.sessionKey(req.Session)
		if err != nil {
			return backend.Grant{}, err
		}
		keys = append(keys[:len(keys):len(keys)], sk) // KEYS[7]
		sessWake = sessionWake(req.Session)
	}
	waiter, wake, done, err := b.mailbox(req.Wait > 0, sessWake)
	if err != nil {
		return backend.Grant{}, err
	}
	defer func() {
		// replayed may have moved the mailbox to another waiter id.
		b.mu.Lock()
		delete(b.waiters, waiter)
		b.mu.Unlock()
		done()
	}()

	id := lease.NewID()
	giveUpAt := time.Now().Add(req.Wait)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	idem := idemArgs(req)
	first := id       // a grant under another lease id is an earlier attempt's
	attached := false // waiting in the place of an earlier attempt with the same idempotency key
	beating, leaveBeat := "", func() {}
	defer func() { leaveBeat() }()
	for {
		res, err := acquireScript.Run(ctx, b.client, keys, id, req.Owner, store.Ms(req.TTL), waiter, store.Ms(b.beat), idem.fingerprint, idem.keepMS, value, req.LockDelay.Milliseconds()).Slice()
		if err != nil {
			// The script may have run (a lost reply): undo whatever it did
			// (an idempotent grant stays, for the retry to find).
			if !attached {
				b.abandon(keys, waiter, id, idem.on)
			}
			return backend.Grant{}, unavailable(ctx, "acquire", err)
		}
		if store.Int(res[0]) == -4 {
			if waiter != "" && !attached {
				b.abandon(keys, waiter, id, idem.on)
			}
			return backend.Grant{}, fmt.Errorf("redis acquire %q: %w", req.Key, backend.ErrSessionExpired)
		}
		if store.Int(res[0]) < 0 {
			var ok bool
			if id, waiter, ok, err = b.replayed(req, res, waiter, wake); !ok {
				return backend.Grant{}, err
			}
			attached = true
			continue
		}
		if store.Int(res[0]) == 1 {
			g := backend.Grant{
				Key: req.Key, LeaseID: store.Str(res[6]), Token: uint64(store.Int(res[2])), Owner: store.Str(res[1]),
				TTL: req.TTL, ExpiresAt: time.UnixMilli(store.Int(res[3])), Replayed: store.Str(res[6]) != first,
				Session: store.Int(res[8]) == 1,
			}
			if ttl := store.Int(res[7]); ttl > 0 {
				g.TTL = time.Duration(ttl) * time.Millisecond
			}
			if err := ctx.Err(); err != nil { // granted as the caller gave up
				b.abandon(keys, "", id, false)
				return backend.Grant{}, err
			}
			return g, nil
		}
		if waiter != beating {
			// Queued (perhaps in an earlier attempt's place): our replica's
			// heartbeat for this key keeps the place from now on.
			leaveBeat()
			leaveBeat, beating = b.joinBeat(beatScript, keys[:5], waiter, wake), waiter
		}
		var holder *backend.Holder
		next := time.Duration(1<<63 - 1) // only the timers below, and wake-ups
		// Only the head of the line looks again when the holder's lease or
		// a lock-delay may have ended: the others are woken when they reach
		// the head (a release, a leaving waiter or a beat publishes to it).
		head := len(res) < 13 || store.Int(res[12]) == 1
		if store.Int(res[5]) == 1 {
			exp := store.Int(res[3])
			holder = &backend.Holder{Owner: store.Str(res[1]), Token: uint64(store.Int(res[2])), ExpiresAt: time.UnixMilli(exp)}
			// Wake up when the holder's lease runs out, in Redis's time.
			if d := time.Duration(exp-store.Int(res[4])+1) * time.Millisecond; d < next && head {
				next = d
			}
		}
		var delay *backend.Delay
		if until := store.Int(res[10]); until > 0 {
			// An expired grant's lock-delay: wake up at its end.
			delay = &backend.Delay{Until: time.UnixMilli(until), ExpiredToken: uint64(store.Int(res[11]))}
			if d := time.Duration(until-store.Int(res[4])+1) * time.Millisecond; d < next && head {
				next = d
			}
		}
		if sexp := store.Int(res[9]); sexp > 0 {
			// Leave when our session runs out: the script will say so.
			if d := time.Duration(sexp-store.Int(res[4])+1) * time.Millisecond; d < next {
				next = d
			}
		}
		left := time.Until(giveUpAt)
		if left <= 0 {
			if waiter != "" && !attached {
				b.abandon(keys, waiter, id, idem.on)
			}
			return backend.Grant{}, &backend.HeldError{Key: req.Key, Holder: holder, Delay: delay}
		}
		if left < next {
			next = left
		}
		timer.Reset(next)
		select {
		case <-wake:
			timer.Stop() // Go 1.23+ timers: no stale tick after Stop or Reset
		case <-timer.C:
		case <-ctx.Done():
			if !attached {
				b.abandon(keys, waiter, id, idem.on)
			}
			return backend.Grant{}, ctx.Err()
		case <-b.life.Done():
			if !attached {
				b.abandon(keys, waiter, id, idem.on)
			}
			return backend.Grant{}, errClosed
		}
	}
}

// abandon leaves the queue and releases a grant made under id, if any, on
// its own short deadline: the caller's context may be over.
func (b *Backend) abandon(keys []string, waiter, id string, idempotent bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	flag := ""
	if idempotent {
		flag = "1"
	}
	// A failure leaves at most a queue entry that stops beating and a
	// grant that expires: both free themselves.
	_ = abandonScript.Run(ctx, b.client, keys, waiter, id, b.channel, flag).Err()
}

// Renew implements backend.Backend.
func (b *Backend) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.Grant, error) {
	ttlMS := int64(0) // keep the lease's TTL
	if ttl > 0 {
		ttlMS = store.Ms(ttl)
	}
	g, _, err := b.update(ctx, renewScript, "renew", lockNS, key, leaseID, ttlMS)
	return g, err
}

// update runs the renew or the proclaim script, which answer alike: the
// grant and its value, or ErrLeaseExpired.
func (b *Backend) update(ctx context.Context, s *goredis.Script, op, ns, key, leaseID string, arg any) (backend.Grant, string, error) {
	v, err := s.Run(ctx, b.client, b.keysIn(ns, key), leaseID, arg).Result()
	if err != nil {
		return backend.Grant{}, "", unavailable(ctx, op, err)
	}
	if n, _ := v.(int64); n == -1 {
		return backend.Grant{}, "", fmt.Errorf("redis %s %q: %w", op, key, backend.ErrSessionBound)
	}
	res, ok := v.([]any)
	if !ok {
		return backend.Grant{}, "", fmt.Errorf("redis %s %q: %w", op, key, backend.ErrLeaseExpired)
	}
	return backend.Grant{
		Key: key, LeaseID: leaseID, Owner: store.Str(res[0]), Token: uint64(store.Int(res[1])),
		TTL: time.Duration(store.Int(res[3])) * time.Millisecond, ExpiresAt: time.UnixMilli(store.Int(res[2])),
	}, store.Str(res[4]), nil
}

// Release implements backend.Backend.
func (b *Backend) Release(ctx context.Context, key, leaseID string) error {
	return b.release(ctx, lockNS, key, leaseID)
}

func (b *Backend) release(ctx context.Context, ns, key, leaseID string) error {
	n, err := releaseScript.Run(ctx, b.client, b.keysIn(ns, key), leaseID, b.channel).Int()
	if err != nil {
		return unavailable(ctx, "release", err)
	}
	if n != 1 {
		return fmt.Errorf("redis release %q: %w", key, backend.ErrLeaseExpired)
	}
	return nil
}

// Inspect implements backend.Backend.
func (b *Backend) Inspect(ctx context.Context, key string) (backend.LockState, error) {
	res, err := inspectScript.Run(ctx, b.client, b.keys(key)).Slice()
	if err != nil {
		return backend.LockState{}, unavailable(ctx, "inspect", err)
	}
	st := backend.LockState{Key: key, Waiters: int(store.Int(res[3]))}
	if until := store.Int(res[4]); until > 0 {
		st.DelayedUntil = time.UnixMilli(until)
	}
	if tok := store.Int(res[1]); tok != 0 {
		st.Held = true
		st.Holder = &backend.Holder{Owner: store.Str(res[0]), Token: uint64(tok), ExpiresAt: time.UnixMilli(store.Int(res[2]))}
	}
	return st, nil
}

// List implements backend.Backend. Redis has no ordered index of keys: each
// page SCANs every key matching the prefix (on every master of a cluster),
// sorts the names and reads the first `limit` after `after`. A page costs
// O(keys in Redis) on the server and O(matching keys) in lockd; fine for
// operators' listings, not for a hot path.
func (b *Backend) List(ctx context.Context, prefix, after string, limit int) ([]backend.LockState, error) {
	names, err := store.Keys(ctx, b.client, b.prefix, prefix, after)
	if err != nil {
		return nil, unavailable(ctx, "list", err)
	}
	var out []backend.LockState
	for len(names) > 0 && len(out) < limit {
		batch := names[:min(len(names), limit-len(out))]
		names = names[len(batch):]
		for _, k := range batch {
			// Expired but not yet evicted keys read as free and are left out.
			st, err := b.Inspect(ctx, k)
			if err != nil {
				return nil, err
			}
			if st.Held {
				out = append(out, st)
			}
		}
	}
	return out, nil
}

// Ping implements backend.Backend.
func (b *Backend) Ping(ctx context.Context) error {
	if err := b.client.Ping(ctx).Err(); err != nil {
		return unavailable(ctx, "ping", err)
	}
	return nil
}
