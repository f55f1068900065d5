// Package zk keeps lockd's locks in ZooKeeper with the recipe Apache Curator's
// InterProcessMutex made standard: every acquire creates a sequential znode
// under the lock's node, the lowest sequence number holds the lock, and every
// waiter watches only its immediate predecessor, so one release wakes one
// waiter and waiters are served in arrival (sequence) order.
//
// # Layout
//
//	<Root>/<key>                                       container node, one per key
//	<Root>/<key>/_c_<hash>-<ttl>-<until>-<owner>-lock-<seq>   persistent sequential, one per acquirer
//	<Root>/_idem/<shard>/<hash>                        persistent, one per idempotency key (idempotency.go)
//	<Root>/_elect/<name>/...                           an election: the same queue, with values (election.go)
//	<Root>/_sessions/<hash>                            persistent, one per session: its deadline (session.go)
//	<Root>/_sem/<key>/...                              a counting semaphore (semaphore.go)
//	<Root>/_rw/<key>/...                               a read-write lock (rwlock.go)
//
// The key's node is a container node (ZooKeeper 3.5.3 and later; Debian 12
// ships 3.8): the server deletes it once its last child is gone, so millions
// of distinct keys over time do not grow ZooKeeper forever. A create that
// finds the container reaped under it recreates it and tries again.
//
// A queue node's name carries what never changes (see node.go): the TTL
// asked for, the time after which the node, if still queued, counts as
// abandoned ("until": the end of its wait plus Options.WaiterGrace), and the
// owner. Its data carries what changes: the lease deadline and TTL.
//
// # Leases are node data, not ephemeral nodes
//
// An ephemeral node dies with the session of the lockd that made it, which is
// both too early (a lockd restart would drop grants whose TTL still runs; the
// contract says they survive) and too late (a lockd that lives on keeps a
// grant whose holder stopped renewing). So queue nodes are persistent, and
// the head of the queue holds the lock until the deadline in its data (Unix
// ms, from the clock of the lockd that wrote it). Clocks go through one
// policy (lease.Clock): the holder's lease ends at its deadline, and anyone
// else removes the node only once the deadline plus the declared skew has
// passed; likewise for a waiter's end of wait. ClockOffset measures this
// replica's clock against the mtime ZooKeeper's leader stamps on a write.
//
// A node is created with the deadline it would have if it headed the queue at
// once (now + TTL, counted from before the create, so never later than a
// deadline the client counts from sending its request).
//
// The head never leaves alone: whoever removes it (Release, a holder leaving,
// whoever notices it expired) deletes it with a version check (so a
// concurrent renew wins or loses as a whole) and, in the same multi-op,
// deletes the abandoned waiters behind it and writes a fresh deadline, now +
// its TTL, on the first live one: the handoff. So a waiter that queued for
// longer than its TTL never heads the queue with the deadline it queued with,
// which a newcomer or a timer would take for an expired grant; its lease
// counts from the handoff, and the waiter, woken by the delete, reads its
// grant from its own node. A waiter that leaves at that moment either
// deletes its node first (the multi fails and the releaser hands on to the
// next) or finds itself promoted (its versioned delete fails) and leaves as
// a holder does, handing on. Renew is one versioned setData, which never
// touches a node whose deadline has passed.
//
// Noticing an expired head is the job of the waiter right behind the head
// (it watches the head's data and deletion, and sets a timer at its
// deadline), of any acquirer that reads the queue, and of a late release.
// A waiter further back sets a timer at the earliest moment its predecessor
// could stop counting (abandoned, or promoted and expired), so it never
// needs to be woken by a handoff ahead of it. A lockd that dies while
// waiting may still be handed the lock, which is then free again after at
// most that node's TTL.
//
// # Fencing token: czxid, not the sequence number
//
// The token is the czxid of the holder's node: the zxid of the transaction
// that created it. Zxids increase over the whole ensemble's history, across
// leader elections (the epoch is the high half), so later grants of a key have
// larger tokens. The sequence number would not do: it is a counter kept in the
// parent, and it starts again at 0 when the container is reaped and
// recreated, so tokens would go backwards.
//
// # Connection loss and sessions
//
// Node names carry a hash of the lease's secret (Curator's "protected" mode):
// when a create's reply is lost, the acquirer lists the queue and adopts its
// node if the create happened, so no orphan waits in the queue. An acquire
// that gives up with its create's outcome unknown leaves a background cleanup
// that removes the node once it can. No grant depends on the ZooKeeper
// session, so a session expiry loses no lock: it only drops watches, which
// waiters set again, and Ping reports the backend unavailable while the client
// has no session.
//
// The lease id is "<secret>.<seq>": 128 random bits and the node's sequence
// number. The node name holds only a hash of the secret, so reading ZooKeeper
// does not reveal the capability to renew or release.
//
// # Access control
//
// Every node the backend creates (Root and its missing parents, the key
// containers, the queue nodes, the idempotency records and their parents)
// gets Options.ACL. Without one it is
// world:anyone with every right, so anyone who reaches ZooKeeper can read,
// change or delete locks. A lockd given credentials uses Digest: the client
// adds the digest identity to its session (go-zookeeper re-sends it after
// every reconnect) and nodes carry Digest.ACL, every right for that user and
// none for anyone else. CheckAccess, called at start, turns a credential
// ZooKeeper will refuse into an error before the first request. Digest auth
// is not encryption: the password is sent in clear unless lockd reaches the
// ensemble's TLS client port (secureClientPort) with DialTLS.
//
// This package must never keep state that matters only in its own memory:
// every decision is made from what ZooKeeper holds. (The instance that made
// or renewed a grant remembers its node and version to save a read; each use
// is a versioned write that ZooKeeper checks, and any other instance reads.)
package zk

import (
	"context"
	"errors"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

var _ backend.Backend = (*Backend)(nil)

// rwDir is the read-write locks' namespace under Root (rwlock.go). Like
// every name of lockd's own under Root it starts with '_', which no lock key
// does, so List never takes it for a key.
const rwDir = "/_rw"

// Options configures a Backend. The zero value works.
type Options struct {
	// Root is the znode under which lock nodes live, created when missing.
	// Default "/lockd".
	Root string
	// ACL is given to every node the backend creates. Default
	// zk.WorldACL(zk.PermAll): anyone may do anything. Digest.ACL gives one
	// authenticated user everything and everyone else nothing; the conn
	// must then carry that identity (Digest.AddAuth).
	ACL []zk.ACL
	// WaiterGrace is how long after the end of its wait a queued node counts
	// as abandoned by a lockd that died while waiting. It must exceed the
	// clock skew between lockd replicas. Default 2s.
	WaiterGrace time.Duration
	// Clock decides every deadline (see lease.Clock); the zero value is
	// the system clock with no skew allowed.
	Clock lease.Clock

	backend.Hooks
}

// Backend is the ZooKeeper implementation of backend.Backend.
type Backend struct {
	conn  *zk.Conn
	root  string
	acl   []zk.ACL
	grace time.Duration
	clock lease.Clock
	hooks backend.Hooks

	// life ends on Close; background cleanups run on it.
	life      context.Context
	stop      context.CancelFunc
	bgMu      sync.Mutex // guards closed against bg.Add after Close began
	closed    bool
	bg        sync.WaitGroup
	closeOnce sync.Once

	// wakes counts watch events that woke a waiter; tests use it to check
	// that a release wakes one waiter, not the herd.
	wakes atomic.Int64

	// listings coalesces concurrent reads of one key's queue.
	listings listings

	// grants remembers where this instance's grants live, to save a round
	// trip on renew and release. It is only a hint: every use is checked by
	// ZooKeeper (a versioned write), and another replica, or this one after
	// a restart, finds the node by reading the queue.
	grants grantCache

	// idem is the bookkeeping of idempotency record sweeps.
	idem idemState

	// elect keeps the elections: this Backend's queue machinery under
	// <Root>/_elect, sharing conn (see election.go). Nil in elect itself.
	elect *Backend
	// elections is set in elect: queue nodes carry a value, and every end
	// of a term is logged in the container (removeHead).
	elections bool
	// outage is how long followers read through an outage (followOutage).
	outage time.Duration
	// watchers: the keys being watched, by the last listing of each.
	watchers watched
	// sessRoot is the Root sessions live under (session.go), shared by
	// elect; sess is the bookkeeping of their sweeps.
	sessRoot string
	sess     *sessState
	// semq and rwq keep the semaphores and read-write locks: Backends
	// sharing conn whose Root is <Root>/_sem and <Root>/_rw. Nil in them.
	semq, rwq *Backend
}

// New returns a backend on conn. The backend owns conn from then on: Close
// closes it.
func New(conn *zk.Conn, opts Options) *Backend {
	root := strings.TrimRight(opts.Root, "/")
	if root == "" {
		root = "/lockd"
	}
	if !strings.HasPrefix(root, "/") {
		root = "/" + root
	}
	acl := opts.ACL
	if len(acl) == 0 {
		acl = zk.WorldACL(zk.PermAll)
	}
	grace := opts.WaiterGrace
	if grace <= 0 {
		grace = 2 * time.Second
	}
	life, stop := context.WithCancel(context.Background())
	b := &Backend{conn: conn, root: root, acl: acl, grace: grace, clock: opts.Clock, hooks: opts.Hooks, life: life, stop: stop, outage: followOutage,
		idem: idemState{shards: idemShards, keep: backend.IdempotencyWindow, sweepEvery: idemSweepEvery}}
	// The elections' expiries are not locks' (no hooks): OnExpire counts
	// and audits locks.
	elife, estop := context.WithCancel(life)
	b.elect = &Backend{conn: conn, root: root + electDir, acl: acl, grace: grace, clock: opts.Clock, life: elife, stop: estop, elections: true, outage: followOutage}
	b.sessRoot, b.elect.sessRoot = root, root
	b.sess = &sessState{sweepEvery: sessSweepEvery, delayKeep: backend.MaxLockDelay}
	b.elect.sess = b.sess
	// Semaphores and read-write locks keep their nodes in namespaces of
	// their own (semaphore.go, rwlock.go), on the same conn and clock.
	b.semq = b.sub(root + semDir)
	b.rwq = b.sub(root + rwDir)
	return b
}

// sub is a Backend sharing b's conn, clock, ACL and sessions, whose keys live
// under root: a primitive's own namespace. Its expiries are not locks' (no
// hooks).
func (b *Backend) sub(root string) *Backend {
	life, stop := context.WithCancel(b.life)
	return &Backend{conn: b.conn, root: root, acl: b.acl, grace: b.grace, clock: b.clock, life: life, stop: stop,
		outage: followOutage, sessRoot: b.sessRoot, sess: b.sess}
}

// Close stops background work and closes the connection; acquires still
// waiting return ErrUnavailable. Grants live on in ZooKeeper until their
// deadlines.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		all := []*Backend{b.elect, b.semq, b.rwq, b}
		for _, x := range all {
			x.bgMu.Lock()
			x.closed = true
			x.bgMu.Unlock()
			x.stop()
		}
		for _, x := range all {
			x.bg.Wait()
		}
		b.conn.Close()
	})
	return nil
}

func (b *Backend) keyPath(key string) string { return b.root + "/" + key }

// call runs one ZooKeeper request, giving up when ctx ends (the request
// itself runs to its end in the background: go-zookeeper takes no context).
func call[T any](ctx context.Context, f func() (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	if ctx.Done() == nil {
		return f() // a context that never ends: no need for a goroutine
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := f()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// isConflict reports errors that mean "the queue changed under us: read it
// again".
func isConflict(err error) bool {
	return errors.Is(err, zk.ErrNoNode) || errors.Is(err, zk.ErrBadVersion) ||
		errors.Is(err, zk.ErrNodeExists) || errors.Is(err, zk.ErrNotEmpty)
}

// isCtx reports whether err is a context's end.
func isCtx(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// unavailable wraps a ZooKeeper failure for the caller.
// Requests that gave up because the caller's ctx ended come back as ctx's
// own error (see call), which is returned as it is.
func unavailable(op string, err error) error {
	if isCtx(err) {
		return err
	}
	return backend.Unavailable(context.Background(), "zk", op, err)
}

// queue returns the key's queue in sequence order; a missing key is empty.
// The slice may be shared with other callers: never modify it.
//
// Concurrent reads of one key's queue are coalesced: a caller joins the next
// getChildren to be sent, never one already on its way (sent, perhaps, before
// the caller's own create, which it would then miss). So every caller still
// sees a listing sent after it asked, but a thousand waiters that look at
// once cost ZooKeeper, and memory, one or two listings instead of a thousand
// (each is O(queue length): without this, queueing n waiters at once
// allocated O(n²) and held much of it at the same time).
func (b *Backend) queue(ctx context.Context, kp string) ([]child, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f := b.listings.join(kp, b.listQueue)
	select {
	case <-f.done:
		return f.q, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// listQueue reads and parses the key's queue.
func (b *Backend) listQueue(kp string) ([]child, error) {
	names, st, err := b.conn.Children(kp)
	if errors.Is(err, zk.ErrNoNode) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	b.watchers.note(kp, names, st)
	return parseQueue(names), nil
}

// watched remembers the keys whose last listing showed a follower's node
// (watch.go): their queue's removals are logged. Only watched keys are
// kept, so it stays as small as the number of keys being watched.
type watched struct {
	mu sync.Mutex
	m  map[string]int64 // key path -> pzxid of the listing that showed one
}

// note takes in a listing of kp. An older listing (a smaller pzxid)
// arriving late never clears a newer one's; it may keep a key logged a
// little longer, which is only a write more.
func (w *watched) note(kp string, names []string, st *zk.Stat) {
	seen := false
	for _, n := range names {
		if strings.HasPrefix(n, watcherPrefix) {
			seen = true
			break
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	pz, ok := w.m[kp]
	switch {
	case seen && (!ok || st.Pzxid > pz):
		if w.m == nil {
			w.m = map[string]int64{}
		}
		w.m[kp] = st.Pzxid
	case !seen && ok && st.Pzxid > pz:
		delete(w.m, kp)
	}
}

func (w *watched) has(kp string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.m[kp]
	return ok
}

// parseQueue parses a queue's children, in sequence order; foreign nodes
// are left out.
func parseQueue(names []string) []child {
	q := make([]child, 0, len(names))
	for _, n := range names {
		if c, ok := parseChild(n); ok && c.mode == "" {
			q = append(q, c)
		}
	}
	sort.Slice(q, func(i, j int) bool { return q[i].seq < q[j].seq })
	return q
}

// listings coalesces queue reads per key path: at most one is on its way
// and one waits to be sent, which every new caller joins.
type listings struct {
	mu sync.Mutex
	m  map[string]*listingPair
}

type listingPair struct {
	sent, next *listing
}

// listing is one getChildren, shared by everyone who joined it.
type listing struct {
	done chan struct{} // closed once q and err are set
	q    []child
	err  error
}

func (l *listings) join(kp string, list func(string) ([]child, error)) *listing {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*listingPair{}
	}
	p := l.m[kp]
	switch {
	case p == nil:
		p = &listingPair{sent: &listing{done: make(chan struct{})}}
		l.m[kp] = p
		go l.run(kp, p, p.sent, list)
		return p.sent
	case p.next == nil:
		p.next = &listing{done: make(chan struct{})}
	}
	return p.next
}

// run sends f, then the listing that waited behind it, if any.
func (l *listings) run(kp string, p *listingPair, f *listing, list func(string) ([]child, error)) {
	for f != nil {
		f.q, f.err = list(kp)
		close(f.done)
		l.mu.Lock()
		f, p.sent, p.next = p.next, p.next, nil
		if f == nil {
			delete(l.m, kp)
		}
		l.mu.Unlock()
	}
}

// read returns a node's data; zk.ErrNoNode when it is gone.
// A node in a session comes with its session's deadline (resolve).
func (b *Backend) read(ctx context.Context, p string) (nodeRead, error) {
	r, err := call(ctx, func() (nodeRead, error) {
		raw, st, err := b.conn.Get(p)
		if err != nil {
			return nodeRead{}, err
		}
		d, err := decodeData(p, raw)
		return nodeRead{data: d, stat: st}, err
	})
	if err != nil {
		return r, err
	}
	return r, b.resolve(ctx, p, &r)
}

// readW is read that also watches the node (deletion and data changes).
func (b *Backend) readW(ctx context.Context, p string) (nodeRead, <-chan zk.Event, error) {
	type res struct {
		r  nodeRead
		ch <-chan zk.Event
	}
	r, err := call(ctx, func() (res, error) {
		raw, st, ch, err := b.conn.GetW(p)
		if err != nil {
			return res{}, err
		}
		d, err := decodeData(p, raw)
		return res{nodeRead{data: d, stat: st}, ch}, err
	})
	if err == nil {
		err = b.resolve(ctx, p, &r.r)
	}
	return r.r, r.ch, err
}

// queueAndRead reads the key's queue and one node of it at once (one round
// trip instead of two on the handoff path).
func (b *Backend) queueAndRead(ctx context.Context, kp, name string) ([]child, nodeRead, error, error) {
	var (
		r    nodeRead
		rErr error
		done = make(chan struct{})
	)
	go func() {
		r, rErr = b.read(ctx, kp+"/"+name)
		close(done)
	}()
	q, qErr := b.queue(ctx, kp)
	<-done
	return q, r, qErr, rErr
}

// watchDeletion watches a node for its deletion only (a children watch fires
// on the node's deletion, never on its data changing), so that promoting a
// node does not wake the waiter behind it.
func (b *Backend) watchDeletion(ctx context.Context, p string) (<-chan zk.Event, error) {
	return call(ctx, func() (<-chan zk.Event, error) {
		_, _, ch, err := b.conn.ChildrenW(p)
		return ch, err
	})
}

func (b *Backend) delete(ctx context.Context, p string, version int32) error {
	_, err := call(ctx, func() (struct{}, error) { return struct{}{}, b.conn.Delete(p, version) })
	return err
}

// removeHead deletes the head of q (at version v) and, in the same multi-op,
// deletes the abandoned waiters right behind it and grants the lock to the
// first live one by writing its deadline. Everything it needs is in the node
// names, so it costs one write. It serves every removal of a head: Release,
// the removal of an expired holder, and a holder leaving through a cancelled
// acquire, so a waiter never heads the queue with the deadline it queued
// with.
//
// A waiter behind the head that left since q was read (single tries queue
// and leave all the time) fails the multi-op with ErrNoNode on its own op:
// the next try goes without it, from the same q, rather than from a new
// read that newer single tries would spoil again. Nodes queued since q was
// read are behind all of q, and fresh: their own deadlines are barely
// started. A conflict on the head itself (the queue changed: renewed,
// removed) comes back as an error for which isConflict is true.
//
// guard, if any, are checks that go last in the multi-op (the head's
// session is still as read: sessionGuard); a failed one is a conflict.
func (b *Backend) removeHead(ctx context.Context, key string, q []child, v int32, guard ...any) error {
	kp := b.keyPath(key)
	behind := q[1:]
	// An election, or a lock that someone watches (q was read after the
	// watcher's node was made, if the head was granted after: see
	// watch.go), logs the end of the grant in the same multi-op. An
	// election carries the value of the candidate it promotes (never
	// written to: its data, read once, holds until the versioned write
	// below).
	var logOp *zk.SetDataRequest
	var values map[string]string
	if b.elections || b.watchers.has(kp) {
		op, err := b.logEnd(ctx, kp, q[0], v)
		if err != nil {
			return err
		}
		logOp = op
	}
	if b.elections {
		values = map[string]string{}
	}
	for {
		ops := []any{&zk.DeleteRequest{Path: kp + "/" + q[0].name, Version: v}}
		gone := -1 // a waiter found gone while building ops
		for i, c := range behind {
			// A node that never headed the queue was never written to: its
			// data version is 0.
			p := kp + "/" + c.name
			if c.abandoned(b.clock) {
				ops = append(ops, &zk.DeleteRequest{Path: p, Version: 0})
				continue
			}
			d := nodeData{Deadline: b.clock.Deadline(c.ttl).UnixMilli(), TTL: c.ttl.Milliseconds()}
			if values != nil {
				val, ok := values[c.name]
				if !ok {
					r, err := b.read(ctx, p)
					if errors.Is(err, zk.ErrNoNode) {
						gone = i
						break
					}
					if err != nil {
						return err
					}
					val = r.data.Value
					values[c.name] = val
				}
				d.Value = val
			}
			ops = append(ops, &zk.SetDataRequest{Path: p, Data: d.encode(), Version: 0})
			break
		}
		if gone < 0 {
			tail := len(guard) // ops after the waiters'
			if logOp != nil {
				ops = append(ops, logOp)
				tail++
			}
			ops = append(ops, guard...)
			res, err := call(ctx, func() ([]zk.MultiResponse, error) { return b.conn.Multi(ops...) })
			if err == nil {
				b.dropIndex(q[0])
			}
			if err == nil || !errors.Is(err, zk.ErrNoNode) {
				return err
			}
			// The op that failed is the first with an error (ZooKeeper marks
			// those before it OK and those after it inconsistent).
			failed := -1
			for i, r := range res {
				if r.Error != nil {
					failed = i
					break
				}
			}
			if failed < 1 || failed >= len(ops)-tail {
				return err // the head itself is gone, or its session changed
			}
			gone = failed - 1 // ops[i] is behind[i-1]
		}
		// q is shared with other readers: never modify it.
		behind = append(append(make([]child, 0, len(behind)-1), behind[:gone]...), behind[gone+1:]...)
	}
}

// expireHead removes an expired head (q[0], granted with token) and tells
// the hooks.
func (b *Backend) expireHead(ctx context.Context, key string, q []child, v int32, token int64, guard ...any) error {
	err := b.removeHead(ctx, key, q, v, guard...)
	if err == nil {
		b.hooks.Expired(backend.Expiry{Key: key, Owner: q[0].owner, Token: uint64(token)})
	}
	return err
}

// ensureKey creates the key's container node (and the root above it).
func (b *Backend) ensureKey(ctx context.Context, kp string) error {
	create := func() error {
		_, err := call(ctx, func() (string, error) { return b.conn.CreateContainer(kp, nil, zk.FlagContainer, b.acl) })
		if errors.Is(err, zk.ErrNodeExists) {
			return nil
		}
		return err
	}
	err := create()
	if !errors.Is(err, zk.ErrNoNode) {
		return err
	}
	if _, err := b.ensureRoot(ctx); err != nil {
		return err
	}
	return create()
}

// ensureRoot creates Root, and its missing parents, with the backend's ACL.
// Nodes that exist are left alone (and not created again: a create needs
// the right to create in the parent, which lockd may lack above Root). p is
// the node whose create failed.
func (b *Backend) ensureRoot(ctx context.Context) (p string, err error) {
	exists := func(p string) (bool, error) {
		return call(ctx, func() (bool, error) {
			ok, _, err := b.conn.Exists(p)
			return ok, err
		})
	}
	if ok, err := exists(b.root); ok || err != nil {
		return b.root, err
	}
	for _, part := range strings.Split(strings.TrimPrefix(b.root, "/"), "/") {
		p += "/" + part
		if ok, err := exists(p); ok || err != nil {
			if err != nil {
				return p, err
			}
			continue
		}
		_, err := call(ctx, func() (string, error) { return b.conn.Create(p, nil, zk.FlagPersistent, b.acl) })
		if err != nil && !errors.Is(err, zk.ErrNodeExists) {
			return p, err
		}
	}
	return b.root, nil
}

// cached is what a grant's instance remembers of it.
type cached struct {
	key      string
	name     string
	owner    string
	version  int32
	deadline int64 // Unix ms
	ttl      int64 // ms
	token    int64
	value    string // an election leader's, as of version
}

type grantCache struct {
	mu sync.Mutex
	m  map[string]cached // by lease id
}

// maxCached bounds the hint: beyond it, entries of expired leases go first,
// then everything (the slow path still works).
const maxCached = 100000

func (c *grantCache) put(id string, g cached) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]cached{}
	}
	if len(c.m) >= maxCached {
		now := time.Now().UnixMilli()
		for k, v := range c.m {
			if v.deadline <= now {
				delete(c.m, k)
			}
		}
		if len(c.m) >= maxCached {
			clear(c.m)
		}
	}
	c.m[id] = g
}

func (c *grantCache) get(id, key string) (cached, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g, ok := c.m[id]
	return g, ok && g.key == key
}

func (c *grantCache) drop(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

var _ backend.LockDelayer = (*Backend)(nil)

// LockDelay implements backend.LockDelayer: every primitive keeps an expired
// grant's node in place, delayed, until its deadline plus its lock-delay is
// overdue (child.removable, semSlot.removable).
func (b *Backend) LockDelay() backend.LockDelayFeatures {
	return backend.LockDelayFeatures{Locks: true, Semaphores: true, RWLocks: true, Elections: true}
}
