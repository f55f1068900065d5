// Package zk keeps lockd's locks in ZooKeeper with the recipe Apache Curator's
// InterProcessMutex made standard: every acquire creates a sequential znode
// under the lock's node, the lowest sequence number holds the lock, and every
// waiter watches only its immediate predecessor, so one release wakes one
// waiter and waiters are served in arrival (sequence) order.
//
// # Layout
//
//	<Root>/<key>                                   container node, one per key
//	<Root>/<key>/_c_<hash>-lock-<seq>              persistent sequential, one per acquirer
//
// The key's node is a container node (ZooKeeper 3.5.3 and later): the server
// deletes it once its last child is gone, so millions of distinct keys over
// time do not grow ZooKeeper forever. A create that finds the container reaped
// under it recreates it and tries again.
//
// # Leases are node data, not ephemeral nodes
//
// An ephemeral node dies with the session of the lockd that made it, which is
// both too early (a lockd restart would drop grants whose TTL still runs; the
// contract says they survive) and too late (a lockd that lives on keeps a
// grant whose holder stopped renewing). So queue nodes are persistent, and
// each carries JSON data written with it: the owner, the TTL, the lease
// deadline and the time after which the node, if it is still queued, counts
// as abandoned ("wait until": the end of its wait plus Options.WaiterGrace).
// The head of the queue holds the lock until its deadline (Unix ms, taken
// from the clock of the lockd that wrote it, so replicas' clocks must agree
// to well under a TTL).
//
// When a node becomes the head by someone else removing its predecessor
// (a release, or the removal of an expired or abandoned node), the remover
// sets the successor's deadline to now + its TTL in the same multi-op that
// deletes the predecessor, with version checks on both: the grant is recorded
// atomically with the handoff and costs no extra write on the handoff path.
// A node created into an empty queue is granted at its creation, and the
// deadline it was created with is already right.
//
// Whoever notices an expired head deletes it (with a version check, so a
// concurrent renew wins or loses as a whole) and promotes the next live
// waiter: the waiter right behind it, which sets a timer at the head's
// deadline; any acquirer that finds it; a release or renew that comes too
// late. Abandoned waiters (their lockd died mid-wait) are skipped and
// deleted the same way. Renew rewrites the deadline with a versioned setData
// and never touches a node whose deadline has passed.
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
// This package must never keep state that matters only in its own memory:
// every decision is made from what ZooKeeper holds.
package zk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

var _ backend.Backend = (*Backend)(nil)

// Options configures a Backend. The zero value works.
type Options struct {
	// Root is the znode under which lock nodes live. Default "/lockd".
	Root string
	// ACL is given to every node the backend creates. Default
	// zk.WorldACL(zk.PermAll).
	ACL []zk.ACL
	// WaiterGrace is how long after the end of its wait a queued node counts
	// as abandoned by a lockd that died while waiting. It must exceed the
	// clock skew between lockd replicas. Default 2s.
	WaiterGrace time.Duration

	backend.Hooks
}

// Backend is the ZooKeeper implementation of backend.Backend.
type Backend struct {
	conn  *zk.Conn
	root  string
	acl   []zk.ACL
	grace time.Duration
	hooks backend.Hooks

	// life ends on Close; background cleanups run on it.
	life      context.Context
	stop      context.CancelFunc
	bg        sync.WaitGroup
	closeOnce sync.Once

	// wakes counts watch events that woke a waiter; tests use it to check
	// that a release wakes one waiter, not the herd.
	wakes atomic.Int64
}

// New returns a backend on conn. The backend owns conn from then on: Close
// closes it.
func New(conn *zk.Conn, opts Options) *Backend {
	root := strings.TrimRight(opts.Root, "/")
	if root == "" {
		root = "/lockd"
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
	return &Backend{conn: conn, root: root, acl: acl, grace: grace, hooks: opts.Hooks, life: life, stop: stop}
}

// Dial connects to a ZooKeeper ensemble and waits until the client has a
// session, or until ctx ends.
func Dial(ctx context.Context, servers []string, sessionTimeout time.Duration) (*zk.Conn, error) {
	conn, events, err := zk.Connect(servers, sessionTimeout, zk.WithLogInfo(false))
	if err != nil {
		return nil, fmt.Errorf("zk: connect %v: %w: %w", servers, backend.ErrUnavailable, err)
	}
	for conn.State() != zk.StateHasSession {
		select {
		case <-events:
		case <-ctx.Done():
			conn.Close()
			return nil, fmt.Errorf("zk: no session with %v: %w: %w", servers, backend.ErrUnavailable, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return conn, nil
}

// Close stops background work and closes the connection. Grants live on in
// ZooKeeper until their deadlines.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.stop()
		b.bg.Wait()
		b.conn.Close()
	})
	return nil
}

// nodeData is what every queue node carries.
type nodeData struct {
	Owner string `json:"owner,omitempty"`
	TTL   int64  `json:"ttl_ms"`
	// Deadline (Unix ms) is when the lease runs out while this node is the
	// head of the queue.
	Deadline int64 `json:"deadline_ms"`
	// WaitUntil (Unix ms): a node still queued behind the head after this is
	// abandoned.
	WaitUntil int64 `json:"wait_until_ms"`
}

func (d nodeData) encode() []byte {
	b, _ := json.Marshal(d) // plain struct: cannot fail
	return b
}

func (d nodeData) expired(now time.Time) bool   { return d.Deadline <= now.UnixMilli() }
func (d nodeData) abandoned(now time.Time) bool { return d.WaitUntil <= now.UnixMilli() }

// child is one queue node.
type child struct {
	name string
	seq  int64
}

const (
	protectedPrefix = "_c_"
	lockMarker      = "-lock-"
)

// nodeHash is what a node name shows of the lease's secret.
func nodeHash(secret string) string {
	sum := sha256.Sum256([]byte("lockd/zk/" + secret))
	return hex.EncodeToString(sum[:16])
}

func nodePrefix(hash string) string { return protectedPrefix + hash + lockMarker }

// parseLease splits a lease id into the node name it stands for. ok is false
// for anything this backend never made.
func parseLease(id string) (name string, ok bool) {
	secret, seq, found := strings.Cut(id, ".")
	if !found || len(secret) != 22 || len(seq) != 10 || !lease.ValidID(id) {
		return "", false
	}
	if _, err := strconv.ParseUint(seq, 10, 32); err != nil {
		return "", false
	}
	return nodePrefix(nodeHash(secret)) + seq, true
}

// parseChild reads a queue node's name; ok is false for foreign nodes.
func parseChild(name string) (child, bool) {
	i := strings.LastIndex(name, lockMarker)
	if !strings.HasPrefix(name, protectedPrefix) || i < 0 {
		return child{}, false
	}
	seq, err := strconv.ParseInt(name[i+len(lockMarker):], 10, 64)
	if err != nil {
		return child{}, false
	}
	return child{name: name, seq: seq}, true
}

func indexOf(q []child, name string) int {
	for i, c := range q {
		if c.name == name {
			return i
		}
	}
	return -1
}

func (b *Backend) keyPath(key string) string { return b.root + "/" + key }

// call runs one ZooKeeper request, giving up when ctx ends (the request
// itself runs to its end in the background: go-zookeeper takes no context).
func call[T any](ctx context.Context, f func() (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
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
func unavailable(op string, err error) error {
	if isCtx(err) {
		return err
	}
	return fmt.Errorf("zk %s: %w: %w", op, backend.ErrUnavailable, err)
}

// queue returns the key's queue in sequence order; a missing key is empty.
func (b *Backend) queue(ctx context.Context, kp string) ([]child, error) {
	names, err := call(ctx, func() ([]string, error) {
		names, _, err := b.conn.Children(kp)
		return names, err
	})
	if errors.Is(err, zk.ErrNoNode) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	q := make([]child, 0, len(names))
	for _, n := range names {
		if c, ok := parseChild(n); ok {
			q = append(q, c)
		}
	}
	sort.Slice(q, func(i, j int) bool { return q[i].seq < q[j].seq })
	return q, nil
}

type nodeRead struct {
	data nodeData
	stat *zk.Stat
}

// read returns a node's data; zk.ErrNoNode when it is gone.
func (b *Backend) read(ctx context.Context, p string) (nodeRead, error) {
	return call(ctx, func() (nodeRead, error) {
		raw, st, err := b.conn.Get(p)
		if err != nil {
			return nodeRead{}, err
		}
		var d nodeData
		if err := json.Unmarshal(raw, &d); err != nil {
			return nodeRead{}, fmt.Errorf("zk: node %s holds no lockd data: %w", p, err)
		}
		return nodeRead{d, st}, nil
	})
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
		var d nodeData
		if err := json.Unmarshal(raw, &d); err != nil {
			return res{}, fmt.Errorf("zk: node %s holds no lockd data: %w", p, err)
		}
		return res{nodeRead{d, st}, ch}, nil
	})
	return r.r, r.ch, err
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

// removeHead deletes the head of q (at version v) and, in the same multi-op,
// deletes the abandoned waiters right behind it and grants the lock to the
// first live one by writing its deadline. A conflict (someone changed the
// queue) comes back as an error for which isConflict is true.
func (b *Backend) removeHead(ctx context.Context, key string, q []child, v int32) error {
	kp := b.keyPath(key)
	ops := []any{&zk.DeleteRequest{Path: kp + "/" + q[0].name, Version: v}}
	now := time.Now()
	for _, c := range q[1:] {
		p := kp + "/" + c.name
		r, err := b.read(ctx, p)
		if errors.Is(err, zk.ErrNoNode) {
			continue
		}
		if err != nil {
			return err
		}
		if r.data.abandoned(now) {
			ops = append(ops, &zk.DeleteRequest{Path: p, Version: r.stat.Version})
			continue
		}
		d := r.data
		d.Deadline = lease.Deadline(now, time.Duration(d.TTL)*time.Millisecond).UnixMilli()
		ops = append(ops, &zk.SetDataRequest{Path: p, Data: d.encode(), Version: r.stat.Version})
		break
	}
	_, err := call(ctx, func() ([]zk.MultiResponse, error) { return b.conn.Multi(ops...) })
	return err
}

// expireHead removes an expired head and tells the hooks.
func (b *Backend) expireHead(ctx context.Context, key string, q []child, v int32) error {
	err := b.removeHead(ctx, key, q, v)
	if err == nil {
		b.hooks.Expired(key)
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
	p := ""
	for _, part := range strings.Split(strings.TrimPrefix(b.root, "/"), "/") {
		p += "/" + part
		_, err := call(ctx, func() (string, error) { return b.conn.Create(p, nil, zk.FlagPersistent, b.acl) })
		if err != nil && !errors.Is(err, zk.ErrNodeExists) {
			return err
		}
	}
	return create()
}

// Acquire implements backend.Backend.
func (b *Backend) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	if err := ctx.Err(); err != nil {
		return backend.Grant{}, err
	}
	secret := lease.NewID()
	a := &acquirer{
		b:       b,
		req:     req,
		kp:      b.keyPath(req.Key),
		secret:  secret,
		prefix:  nodePrefix(nodeHash(secret)),
		waitEnd: time.Now().Add(req.Wait),
	}
	return a.run(ctx)
}

// acquirer is one Acquire call.
type acquirer struct {
	b       *Backend
	req     backend.AcquireRequest
	kp      string
	secret  string
	prefix  string // our node's name without the sequence number
	waitEnd time.Time
	name    string // our node, once it exists
	// unknown: a create's reply was lost; our node may exist.
	unknown bool
}

// retryDelay is the pause before trying again after ZooKeeper could not be
// reached (the client reconnects meanwhile).
const retryDelay = 100 * time.Millisecond

func (a *acquirer) run(ctx context.Context) (backend.Grant, error) {
	var lastErr error
	for {
		if lastErr != nil {
			// ZooKeeper failed us: try again while the wait lasts.
			if isCtx(lastErr) || !time.Now().Add(retryDelay).Before(a.waitEnd) {
				return backend.Grant{}, a.fail(lastErr)
			}
			select {
			case <-ctx.Done():
				return backend.Grant{}, a.fail(ctx.Err())
			case <-time.After(retryDelay):
			}
			lastErr = nil
		}
		g, done, err := a.step(ctx)
		if done {
			if err != nil {
				return backend.Grant{}, err
			}
			return g, nil
		}
		lastErr = err
	}
}

// fail ends an acquire that did not get the lock because of err (ZooKeeper
// unreachable, or ctx ended): our node, if any, leaves the queue — now if
// possible, else in the background — and nothing is left behind.
func (a *acquirer) fail(err error) error {
	cleanup, cancel := context.WithTimeout(a.b.life, 5*time.Second)
	defer cancel()
	if a.name != "" {
		if lerr := a.b.leave(cleanup, a.req.Key, a.name, nil); lerr == nil {
			return unavailableOr(err)
		}
	}
	a.b.cleanupLater(a.kp, a.prefix)
	return unavailableOr(err)
}

func unavailableOr(err error) error {
	if isCtx(err) || errors.Is(err, backend.ErrUnavailable) {
		return err
	}
	return unavailable("acquire", err)
}

// step makes one pass: create our node if needed, read the queue, and either
// hold the lock, clear an expired or abandoned node ahead of us, give up, or
// wait for a change. done reports that the acquire is over (granted or
// failed with err); otherwise err, if any, is a ZooKeeper failure to retry.
func (a *acquirer) step(ctx context.Context) (g backend.Grant, done bool, err error) {
	if a.name == "" {
		if err := a.create(ctx); err != nil {
			if isCtx(err) {
				return g, true, a.fail(err)
			}
			return g, false, err
		}
	}
	q, err := a.b.queue(ctx, a.kp)
	if err != nil {
		return g, false, err
	}
	i := indexOf(q, a.name)
	if i < 0 {
		// Our node is gone: removed as abandoned by a replica whose clock
		// runs ahead, or by hand. Queue again while the wait lasts.
		a.name = ""
		if !time.Now().Before(a.waitEnd) {
			return g, true, a.held(ctx, q)
		}
		return g, false, nil
	}
	if i == 0 {
		g, ok, err := a.holding(ctx)
		if err != nil && !isConflict(err) {
			return g, false, err
		}
		return g, ok, nil
	}

	// Clear what stands in our way: an expired head, an abandoned waiter
	// right ahead of us. Then wait for our predecessor to go, with a timer
	// at the earliest moment it could stop counting.
	waiting := time.Now().Before(a.waitEnd)
	headPath := a.kp + "/" + q[0].name
	var (
		head  nodeRead
		watch <-chan zk.Event
	)
	if i == 1 && waiting {
		// The head is our predecessor: watch its data too, so that a renew
		// moves our expiry timer.
		head, watch, err = a.b.readW(ctx, headPath)
	} else {
		head, err = a.b.read(ctx, headPath)
	}
	if errors.Is(err, zk.ErrNoNode) {
		return g, false, nil // the queue moved: look again
	}
	if err != nil {
		return g, false, err
	}
	now := time.Now()
	if head.data.expired(now) {
		if err := a.b.expireHead(ctx, a.req.Key, q, head.stat.Version); err != nil && !isConflict(err) {
			return g, false, err
		}
		return g, false, nil
	}
	dies := head.data.Deadline // when our predecessor stops counting, Unix ms
	pred := a.kp + "/" + q[i-1].name
	if i > 1 {
		r, err := a.b.read(ctx, pred)
		if errors.Is(err, zk.ErrNoNode) {
			return g, false, nil
		}
		if err != nil {
			return g, false, err
		}
		if r.data.abandoned(now) {
			_, err := call(ctx, func() (struct{}, error) { return struct{}{}, a.b.conn.Delete(pred, r.stat.Version) })
			if err != nil && !isConflict(err) {
				return g, false, err
			}
			return g, false, nil
		}
		// A queued predecessor promoted later than now holds the lock until
		// at least now + its TTL; look again then (or when it is abandoned).
		// Watching its data instead would wake us at every handoff ahead.
		dies = min(r.data.WaitUntil, now.Add(time.Duration(r.data.TTL)*time.Millisecond).UnixMilli())
	}
	if !waiting {
		return a.giveUp(ctx, head)
	}
	if watch == nil {
		watch, err = a.b.watchDeletion(ctx, pred)
		if errors.Is(err, zk.ErrNoNode) {
			return g, false, nil
		}
		if err != nil {
			return g, false, err
		}
	}
	expiry := time.NewTimer(time.Until(time.UnixMilli(dies)) + time.Millisecond)
	defer expiry.Stop()
	waitOver := time.NewTimer(time.Until(a.waitEnd))
	defer waitOver.Stop()
	select {
	case <-watch:
		a.b.wakes.Add(1)
	case <-expiry.C:
	case <-waitOver.C:
	case <-ctx.Done():
		return g, true, a.fail(ctx.Err())
	}
	return g, false, nil
}

// create adds our node to the queue. When the reply to a create is lost, the
// node may exist all the same: look for it by its protected prefix before
// creating another, and until the look-up answers, create nothing.
func (a *acquirer) create(ctx context.Context) error {
	if a.unknown {
		if found, err := a.adopt(ctx); err != nil || found {
			return err
		}
	}
	for attempt := 0; ; attempt++ {
		now := time.Now()
		data := nodeData{
			Owner:     a.req.Owner,
			TTL:       a.req.TTL.Milliseconds(),
			Deadline:  lease.Deadline(now, a.req.TTL).UnixMilli(),
			WaitUntil: a.waitEnd.Add(a.b.grace).UnixMilli(),
		}
		p, err := call(ctx, func() (string, error) {
			return a.b.conn.Create(a.kp+"/"+a.prefix, data.encode(), zk.FlagSequence, a.b.acl)
		})
		switch {
		case err == nil:
			a.name = path.Base(p)
			return nil
		case errors.Is(err, zk.ErrNoNode) && attempt < 5:
			// No container for the key yet, or it was just reaped.
			if err := a.b.ensureKey(ctx, a.kp); err != nil {
				return err
			}
		case isCtx(err) || attempt >= 5:
			return err
		default:
			a.unknown = true
			if found, ferr := a.adopt(ctx); ferr != nil || found {
				if ferr != nil {
					return err
				}
				return nil
			}
		}
	}
}

// adopt looks for our node after a create whose outcome is unknown.
func (a *acquirer) adopt(ctx context.Context) (found bool, err error) {
	name, err := a.b.findNode(ctx, a.kp, a.prefix)
	if err != nil {
		return false, err
	}
	a.unknown = false
	if name != "" {
		a.name = name
		return true, nil
	}
	return false, nil
}

// findNode looks for the node whose name starts with prefix. It syncs first:
// the member we read from may not yet have applied a create that another
// member committed before our connection dropped.
func (b *Backend) findNode(ctx context.Context, kp, prefix string) (string, error) {
	_, err := call(ctx, func() (string, error) { return b.conn.Sync(kp) })
	if err != nil && !errors.Is(err, zk.ErrNoNode) {
		return "", err
	}
	q, err := b.queue(ctx, kp)
	if err != nil {
		return "", err
	}
	for _, c := range q {
		if strings.HasPrefix(c.name, prefix) {
			return c.name, nil
		}
	}
	return "", nil
}

// holding is called when our node heads the queue: it is the grant, once its
// deadline is right.
func (a *acquirer) holding(ctx context.Context) (backend.Grant, bool, error) {
	p := a.kp + "/" + a.name
	r, err := a.b.read(ctx, p)
	if errors.Is(err, zk.ErrNoNode) {
		a.name = ""
		return backend.Grant{}, false, nil
	}
	if err != nil {
		return backend.Grant{}, false, err
	}
	now := time.Now()
	if remaining := time.UnixMilli(r.data.Deadline).Sub(now); remaining < a.req.TTL/2 {
		// Nobody recorded our grant (the node ahead vanished without a
		// handoff, or the remover read the queue before we joined it): start
		// the lease now. A competing removal of our node wins or loses
		// against this as a whole, by version.
		d := r.data
		d.Deadline = lease.Deadline(now, a.req.TTL).UnixMilli()
		st, err := call(ctx, func() (*zk.Stat, error) { return a.b.conn.Set(p, d.encode(), r.stat.Version) })
		if err != nil {
			return backend.Grant{}, false, err
		}
		r = nodeRead{d, st}
	}
	return a.grant(r), true, nil
}

func (a *acquirer) grant(r nodeRead) backend.Grant {
	return backend.Grant{
		Key:       a.req.Key,
		LeaseID:   a.secret + "." + a.name[len(a.name)-10:],
		Token:     uint64(r.stat.Czxid),
		Owner:     r.data.Owner,
		TTL:       time.Duration(r.data.TTL) * time.Millisecond,
		ExpiresAt: time.UnixMilli(r.data.Deadline),
	}
}

// giveUp ends a wait that ran out: our node leaves the queue and the caller
// learns who holds the lock. If a handoff to us raced with the give-up, the
// grant stands.
func (a *acquirer) giveUp(ctx context.Context, head nodeRead) (backend.Grant, bool, error) {
	holder := &backend.Holder{Owner: head.data.Owner, Token: uint64(head.stat.Czxid), ExpiresAt: time.UnixMilli(head.data.Deadline)}
	g, granted, err := a.leaveKeeping(ctx)
	if err != nil {
		return backend.Grant{}, false, err
	}
	if granted {
		return g, true, nil
	}
	return backend.Grant{}, true, &backend.HeldError{Key: a.req.Key, Holder: holder}
}

// held reports the key held by whoever heads q.
func (a *acquirer) held(ctx context.Context, q []child) error {
	var holder *backend.Holder
	if len(q) > 0 {
		if r, err := a.b.read(ctx, a.kp+"/"+q[0].name); err == nil && !r.data.expired(time.Now()) {
			holder = &backend.Holder{Owner: r.data.Owner, Token: uint64(r.stat.Czxid), ExpiresAt: time.UnixMilli(r.data.Deadline)}
		}
	}
	return &backend.HeldError{Key: a.req.Key, Holder: holder}
}

// leaveKeeping takes our node out of the queue unless it already holds the
// lock, in which case the grant is returned.
func (a *acquirer) leaveKeeping(ctx context.Context) (backend.Grant, bool, error) {
	var g backend.Grant
	granted := false
	err := a.b.leave(ctx, a.req.Key, a.name, func(r nodeRead) bool {
		g, granted = a.grant(r), true
		return true
	})
	return g, granted, err
}

// leave removes node name from key's queue. When the node heads the queue
// with an unexpired deadline and keep is set, keep decides whether it stays
// (it holds the lock; keep returns true) instead.
func (b *Backend) leave(ctx context.Context, key, name string, keep func(nodeRead) bool) error {
	kp := b.keyPath(key)
	p := kp + "/" + name
	for attempt := 0; attempt < 20; attempt++ {
		q, err := b.queue(ctx, kp)
		if err != nil {
			return err
		}
		i := indexOf(q, name)
		if i < 0 {
			return nil
		}
		r, err := b.read(ctx, p)
		if errors.Is(err, zk.ErrNoNode) {
			return nil
		}
		if err != nil {
			return err
		}
		if i == 0 {
			if keep != nil && !r.data.expired(time.Now()) && keep(r) {
				return nil
			}
			err = b.removeHead(ctx, key, q, r.stat.Version)
		} else {
			_, err = call(ctx, func() (struct{}, error) { return struct{}{}, b.conn.Delete(p, r.stat.Version) })
		}
		if err == nil || errors.Is(err, zk.ErrNoNode) && i > 0 {
			return nil
		}
		if !isConflict(err) {
			return err
		}
	}
	return fmt.Errorf("zk: leave %s: the queue kept changing", p)
}

// cleanupLater removes, in the background, the node whose name starts with
// prefix, once ZooKeeper answers again: the reply to its create may have been
// lost, or the create may still be on its way.
func (b *Backend) cleanupLater(kp, prefix string) {
	key := strings.TrimPrefix(kp, b.root+"/")
	b.bg.Add(1)
	go func() {
		defer b.bg.Done()
		ctx, cancel := context.WithTimeout(b.life, time.Minute)
		defer cancel()
		// A create abandoned by a cancelled context may land a moment later:
		// look twice, a second apart, after the last failure.
		misses := 0
		for misses < 2 {
			name, err := b.findNode(ctx, kp, prefix)
			if err == nil && name != "" {
				err = b.leave(ctx, key, name, nil)
			}
			if err == nil && name == "" {
				misses++
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}()
}

// Renew implements backend.Backend.
func (b *Backend) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.Grant, error) {
	name, ok := parseLease(leaseID)
	if !ok {
		return backend.Grant{}, fmt.Errorf("zk renew %q: %w", key, backend.ErrLeaseExpired)
	}
	p := b.keyPath(key) + "/" + name
	for attempt := 0; attempt < 10; attempt++ {
		r, err := b.read(ctx, p)
		if errors.Is(err, zk.ErrNoNode) {
			return backend.Grant{}, fmt.Errorf("zk renew %q: %w", key, backend.ErrLeaseExpired)
		}
		if err != nil {
			return backend.Grant{}, unavailable("renew", err)
		}
		now := time.Now()
		if r.data.expired(now) {
			return backend.Grant{}, fmt.Errorf("zk renew %q: %w", key, backend.ErrLeaseExpired)
		}
		d := r.data
		d.TTL = ttl.Milliseconds()
		d.Deadline = lease.Deadline(now, ttl).UnixMilli()
		st, err := call(ctx, func() (*zk.Stat, error) { return b.conn.Set(p, d.encode(), r.stat.Version) })
		switch {
		case err == nil:
			return backend.Grant{
				Key: key, LeaseID: leaseID, Token: uint64(st.Czxid), Owner: d.Owner,
				TTL: ttl, ExpiresAt: time.UnixMilli(d.Deadline),
			}, nil
		case errors.Is(err, zk.ErrNoNode):
			return backend.Grant{}, fmt.Errorf("zk renew %q: %w", key, backend.ErrLeaseExpired)
		case errors.Is(err, zk.ErrBadVersion):
			continue // a concurrent renew: read again
		default:
			return backend.Grant{}, unavailable("renew", err)
		}
	}
	return backend.Grant{}, unavailable("renew", errors.New("the lease kept changing"))
}

// Release implements backend.Backend.
func (b *Backend) Release(ctx context.Context, key, leaseID string) error {
	name, ok := parseLease(leaseID)
	if !ok {
		return fmt.Errorf("zk release %q: %w", key, backend.ErrLeaseExpired)
	}
	kp := b.keyPath(key)
	p := kp + "/" + name
	for attempt := 0; attempt < 20; attempt++ {
		// The node and the queue are read at once: the handoff is the
		// latency that matters.
		var (
			q     []child
			qErr  error
			ready = make(chan struct{})
		)
		go func() {
			q, qErr = b.queue(ctx, kp)
			close(ready)
		}()
		r, err := b.read(ctx, p)
		<-ready
		if errors.Is(err, zk.ErrNoNode) {
			return fmt.Errorf("zk release %q: %w", key, backend.ErrLeaseExpired)
		}
		if err == nil {
			err = qErr
		}
		if err != nil {
			return unavailable("release", err)
		}
		if indexOf(q, name) != 0 {
			// Read between two changes of the queue; a lease's node, once
			// granted, heads the queue until it is deleted.
			continue
		}
		if r.data.expired(time.Now()) {
			// Too late: the lease ran out. Clear it for the next waiter.
			if err := b.expireHead(ctx, key, q, r.stat.Version); err != nil && !isConflict(err) {
				return unavailable("release", err)
			}
			return fmt.Errorf("zk release %q: %w", key, backend.ErrLeaseExpired)
		}
		err = b.removeHead(ctx, key, q, r.stat.Version)
		if err == nil {
			return nil
		}
		if !isConflict(err) {
			return unavailable("release", err)
		}
	}
	return unavailable("release", errors.New("the queue kept changing"))
}

// Inspect implements backend.Backend.
func (b *Backend) Inspect(ctx context.Context, key string) (backend.LockState, error) {
	st, err := b.inspect(ctx, key)
	if err != nil {
		return backend.LockState{}, unavailable("inspect", err)
	}
	return st, nil
}

func (b *Backend) inspect(ctx context.Context, key string) (backend.LockState, error) {
	kp := b.keyPath(key)
	for attempt := 0; ; attempt++ {
		q, err := b.queue(ctx, kp)
		if err != nil || len(q) == 0 {
			return backend.LockState{Key: key}, err
		}
		r, err := b.read(ctx, kp+"/"+q[0].name)
		if errors.Is(err, zk.ErrNoNode) && attempt < 10 {
			continue
		}
		if err != nil {
			return backend.LockState{}, err
		}
		st := backend.LockState{Key: key, Waiters: len(q) - 1}
		if !r.data.expired(time.Now()) {
			st.Held = true
			st.Holder = &backend.Holder{Owner: r.data.Owner, Token: uint64(r.stat.Czxid), ExpiresAt: time.UnixMilli(r.data.Deadline)}
		}
		return st, nil
	}
}

// List implements backend.Backend. It reads every key node under Root whose
// name matches, so its cost grows with the number of keys with a queue.
func (b *Backend) List(ctx context.Context, prefix, after string, limit int) ([]backend.LockState, error) {
	names, err := call(ctx, func() ([]string, error) {
		names, _, err := b.conn.Children(b.root)
		return names, err
	})
	if errors.Is(err, zk.ErrNoNode) {
		return nil, nil
	}
	if err != nil {
		return nil, unavailable("list", err)
	}
	sort.Strings(names)
	var out []backend.LockState
	for _, k := range names {
		if len(out) >= limit {
			break
		}
		if !strings.HasPrefix(k, prefix) || k <= after {
			continue
		}
		st, err := b.inspect(ctx, k)
		if err != nil {
			return nil, unavailable("list", err)
		}
		if st.Held {
			out = append(out, st)
		}
	}
	return out, nil
}

// Ping implements backend.Backend.
func (b *Backend) Ping(ctx context.Context) error {
	if s := b.conn.State(); s != zk.StateHasSession {
		return fmt.Errorf("zk ping: %w: client state %v", backend.ErrUnavailable, s)
	}
	_, err := call(ctx, func() (bool, error) {
		ok, _, err := b.conn.Exists(b.root)
		return ok, err
	})
	if err != nil {
		return unavailable("ping", err)
	}
	return nil
}
