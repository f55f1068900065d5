package zk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// Acquire implements backend.Backend.
func (b *Backend) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	return b.acquire(ctx, req, "")
}

// acquire is Acquire of a node carrying value (an election candidate's).
func (b *Backend) acquire(ctx context.Context, req backend.AcquireRequest, value string) (backend.Grant, error) {
	if err := ctx.Err(); err != nil {
		return backend.Grant{}, err
	}
	secret := lease.NewID()
	a := &acquirer{
		b:       b,
		req:     req,
		kp:      b.keyPath(req.Key),
		secret:  secret,
		value:   value,
		waitEnd: time.Now().Add(req.Wait),
	}
	if req.Idempotency.Key != "" {
		a.rec = b.idemPath(req.Idempotency.Key)
	}
	if req.Session != "" {
		if !lease.ValidID(req.Session) {
			return backend.Grant{}, backend.ErrSessionExpired
		}
		a.sess = sessionHash(req.Session)
	}
	g, err := inSession(ctx, b, a.sess, req.Wait, fmt.Sprintf("zk acquire %q", req.Key), a.run)
	g.Replayed = err == nil && a.replay
	return g, err
}

// acquirer is one Acquire call.
type acquirer struct {
	b       *Backend
	req     backend.AcquireRequest
	kp      string
	secret  string
	value   string // an election candidate's; written with the node
	waitEnd time.Time
	name    string // our node, once it exists
	// unknown: a create's reply was lost; our node may exist.
	unknown bool
	// headGone: the head, right ahead of us, was deleted. Nothing can come
	// between (sequence numbers only grow), so our node now heads the queue.
	headGone bool
	// rec is the path of the idempotency record, when the acquire has a key.
	rec string
	// replay: the node is an earlier attempt's (same idempotency key); this
	// acquire only waits for its grant and never removes it.
	replay bool
	// sess is the hash of the session the acquire is made in, or "".
	sess string
	// fresh is our node as its create wrote it (its czxid the create's
	// zxid), when the create told: the first look at the queue then needs
	// no read of it.
	fresh     *nodeRead
	freshZxid int64
}

var errClosed = errors.New("backend closed")

// retryDelay is the pause before trying again after ZooKeeper could not be
// reached (the client reconnects meanwhile).
const retryDelay = 100 * time.Millisecond

func (a *acquirer) run(ctx context.Context) (backend.Grant, error) {
	// A step that ends with an error has already left the queue.
	return runSteps(ctx, a.b, a.waitEnd, a.step, a.fail, func(err error) error { return err })
}

// runSteps runs step until it is done, trying again after retryDelay while
// ZooKeeper fails us and the wait lasts: the loop of every acquirer (locks,
// semaphores, read-write locks). fail ends an acquire that got nothing
// because of err; doneErr maps the error of a step that ended the acquire.
func runSteps[G any](ctx context.Context, b *Backend, waitEnd time.Time, step func(context.Context) (G, bool, error), fail, doneErr func(error) error) (G, error) {
	var zero G
	var lastErr error
	for {
		if lastErr != nil {
			if isCtx(lastErr) || !time.Now().Add(retryDelay).Before(waitEnd) {
				return zero, fail(lastErr)
			}
			select {
			case <-ctx.Done():
				return zero, fail(ctx.Err())
			case <-b.life.Done():
				return zero, fail(errClosed)
			case <-time.After(retryDelay):
			}
			lastErr = nil
		}
		g, done, err := step(ctx)
		if done {
			if err != nil {
				return zero, doneErr(err)
			}
			return g, nil
		}
		lastErr = err
	}
}

// inSession runs run under a context that ends when session sess does (a
// wait in a session ends with it, etcd#19597), when there is a session and
// a wait; what names the acquire in the error.
func inSession[G any](ctx context.Context, b *Backend, sess string, wait time.Duration, what string, run func(context.Context) (G, error)) (G, error) {
	if sess == "" || wait <= 0 {
		return run(ctx)
	}
	sctx, stop := b.watchSession(ctx, sess)
	defer stop()
	g, err := run(sctx)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(sctx), errSessionOver) {
		return g, fmt.Errorf("%s: %w", what, backend.ErrSessionExpired)
	}
	return g, err
}

// fail ends an acquire that did not get the lock because of err (ZooKeeper
// unreachable, or ctx ended): our node, if any, leaves the queue — now if
// possible, else in the background — and nothing is left behind.
func (a *acquirer) fail(err error) error {
	if !isCtx(err) && !errors.Is(err, backend.ErrUnavailable) && !errors.Is(err, backend.ErrSessionExpired) {
		err = unavailable("acquire", err)
	}
	if a.replay {
		return err // the node is the earlier attempt's to remove
	}
	cleanup, cancel := context.WithTimeout(a.b.life, 5*time.Second)
	defer cancel()
	if a.name != "" && a.b.leave(cleanup, a.req.Key, a.name, nil, a.rec) == nil {
		return err
	}
	if a.name != "" || a.unknown {
		a.b.cleanupLater(a.kp, protected(a.secret), a.rec)
	}
	return err
}

// step makes one pass: create our node if needed, read the queue, and either
// hold the lock, clear an expired or abandoned node ahead of us, give up, or
// wait for a change. done reports that the acquire is over (granted or
// failed with err); otherwise err, if any, is a ZooKeeper failure to retry.
func (a *acquirer) step(ctx context.Context) (g backend.Grant, done bool, err error) {
	if a.name == "" {
		err := a.create(ctx)
		if errors.Is(err, errRecorded) {
			var found bool
			found, err = a.recorded(ctx)
			if found && err != nil {
				return g, true, err
			}
		}
		if err != nil {
			if isCtx(err) {
				return g, true, a.fail(err)
			}
			if errors.Is(err, backend.ErrSessionExpired) {
				return g, true, err
			}
			return g, false, err
		}
		if a.name == "" {
			return g, false, nil // the record went meanwhile: start afresh
		}
	}
	if a.headGone {
		// The handoff: one read of our own node, as go-zookeeper's Lock
		// makes one read of the queue.
		a.headGone = false
		self, err := a.b.read(ctx, a.kp+"/"+a.name)
		if err == nil {
			g, err := a.claim(ctx, self)
			if errors.Is(err, backend.ErrLeaseExpired) {
				return g, true, err
			}
			if errors.Is(err, backend.ErrSessionExpired) {
				return g, true, a.fail(err)
			}
			if err == nil {
				return g, true, nil
			}
		}
		if err != nil && !isConflict(err) {
			return g, false, err
		}
	}
	// Our node is read along with the queue: when we head it, that is the
	// grant.
	var (
		q       []child
		self    nodeRead
		selfErr error
	)
	if a.fresh != nil {
		// Just created, and read by nobody but a handoff to us, which
		// only moves the deadline later and the version up: holding's
		// versioned write, or the next renew or release, sees it.
		self, a.fresh = *a.fresh, nil
		q, err = a.b.queue(ctx, a.kp)
	} else {
		q, self, err, selfErr = a.b.queueAndRead(ctx, a.kp, a.name)
	}
	if err != nil {
		return g, false, err
	}
	i := indexOf(q, a.name)
	if i < 0 || errors.Is(selfErr, zk.ErrNoNode) {
		// Our node is gone: removed as abandoned by a replica whose clock
		// runs ahead, or by hand. Queue again while the wait lasts.
		if a.rec != "" {
			// With an idempotency key, the grant may have been returned
			// to a retry and have ended since: never make a fresh one. A
			// retry whose record went with the node was waiting for an
			// attempt that gave up: it is refused alike.
			if a.replay {
				if ok, err := a.b.exists(ctx, a.rec); err == nil && !ok {
					return g, true, a.held(ctx, q)
				}
			}
			return g, true, a.ended()
		}
		a.name = ""
		if !time.Now().Before(a.waitEnd) {
			return g, true, a.held(ctx, q)
		}
		return g, false, nil
	}
	if selfErr != nil {
		return g, false, selfErr
	}
	if i == 0 {
		g, err := a.claim(ctx, self)
		if errors.Is(err, backend.ErrLeaseExpired) {
			return g, true, err
		}
		if errors.Is(err, backend.ErrSessionExpired) {
			return g, true, a.fail(err)
		}
		if err != nil {
			if isConflict(err) {
				return g, false, nil
			}
			return g, false, err
		}
		return g, true, nil
	}

	// Clear what stands in our way: an expired head, an abandoned waiter
	// right ahead of us. Then wait for our predecessor to go, with a timer
	// at the earliest moment it could stop counting.
	waiting := time.Now().Before(a.waitEnd)
	var (
		head  nodeRead
		watch <-chan zk.Event
	)
	headPath := a.kp + "/" + q[0].name
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
	now := a.b.clock.Now()
	if q[0].removable(a.b.clock, head.data) {
		if err := a.b.expireHead(ctx, a.req.Key, q, head.stat.Version, head.stat.Czxid, a.b.sessionGuard(head)...); err != nil && !isConflict(err) {
			return g, false, err
		}
		return g, false, nil
	}
	dies := q[0].delayedUntil(a.b.clock, head.data).UnixMilli() // when our predecessor stops counting, Unix ms
	pred := q[i-1]
	if i > 1 {
		if pred.abandoned(a.b.clock) {
			// Only while a node is still ahead of it: a node that has come
			// to head the queue may hold the lock (our queue read may be old
			// by the time the delete lands).
			_, err := call(ctx, func() ([]zk.MultiResponse, error) {
				return a.b.conn.Multi(
					&zk.CheckVersionRequest{Path: a.kp + "/" + q[i-2].name, Version: -1},
					&zk.DeleteRequest{Path: a.kp + "/" + pred.name, Version: 0})
			})
			if err != nil && !isConflict(err) {
				return g, false, err
			}
			return g, false, nil
		}
		// A queued predecessor that comes to head the queue after now holds
		// the lock until at least now + its TTL (the handoff writes that;
		// nine tenths leaves room for a node that, not promoted, keeps
		// its own deadline: see holding): look again then, or when it is
		// abandoned. Watching its data instead would wake us at every
		// handoff ahead of us.
		dies = min(a.b.clock.FreeAt(time.UnixMilli(pred.waitUntil)).UnixMilli(), now.Add(pred.ttl*9/10).UnixMilli())
	}
	if !waiting {
		return a.giveUp(ctx, q[0], head)
	}
	if watch == nil {
		watch, err = a.b.watchDeletion(ctx, a.kp+"/"+pred.name)
		if errors.Is(err, zk.ErrNoNode) {
			return g, false, nil
		}
		if err != nil {
			return g, false, err
		}
	}
	expiry := time.NewTimer(a.b.clock.Until(time.UnixMilli(dies)) + time.Millisecond)
	defer expiry.Stop()
	waitOver := time.NewTimer(time.Until(a.waitEnd))
	defer waitOver.Stop()
	select {
	case ev := <-watch:
		a.b.wakes.Add(1)
		a.headGone = i == 1 && ev.Type == zk.EventNodeDeleted
	case <-expiry.C:
	case <-waitOver.C:
	case <-ctx.Done():
		return g, true, a.fail(ctx.Err())
	case <-a.b.life.Done():
		return g, true, a.fail(errClosed)
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
	// The end of the wait, written by this replica's clock for others to read.
	waitUntil := a.b.clock.Now().Add(time.Until(a.waitEnd) + a.b.grace)
	for attempt := 0; ; attempt++ {
		data := nodeData{Deadline: a.b.clock.Deadline(a.req.TTL).UnixMilli(), TTL: a.req.TTL.Milliseconds(), Value: a.value}
		sessVer := int32(-1)
		if a.sess != "" {
			// In a session: it must run now, and still be as read when
			// the node joins it.
			d, st, err := a.b.readSession(ctx, a.sess)
			if errors.Is(err, zk.ErrNoNode) || err == nil && !a.b.clock.Valid(time.UnixMilli(d.Deadline)) {
				return fmt.Errorf("zk acquire %q: %w", a.req.Key, backend.ErrSessionExpired)
			}
			if err != nil {
				return err
			}
			data.Deadline, data.TTL, sessVer = d.Deadline, d.TTL, st.Version
		}
		name := queueName(a.secret, time.Duration(data.TTL)*time.Millisecond, a.req.LockDelay, waitUntil, a.req.Owner, a.sess)
		p, noShard, err := a.createNode(ctx, a.kp+"/"+name, data.encode(), sessVer)
		switch {
		case errors.Is(err, errSessionMoved) && attempt < 5:
			continue // renewed, closed or swept meanwhile: read it again
		case err == nil:
			a.name = path.Base(p)
			if a.freshZxid != 0 {
				a.fresh = &nodeRead{data: data, stat: &zk.Stat{Czxid: a.freshZxid}}
			}
			if a.rec != "" {
				a.b.maybeSweep(a.rec)
			}
			return nil
		case errors.Is(err, zk.ErrNodeExists) && a.rec != "":
			return errRecorded
		case errors.Is(err, zk.ErrNoNode) && attempt < 5:
			// No container for the key (or the record) yet, or it was just
			// reaped.
			ensure := a.b.ensureKey
			if noShard {
				ensure = a.b.ensureShard
				p = a.rec
			} else {
				p = a.kp
			}
			if err := ensure(ctx, p); err != nil {
				return err
			}
		case isCtx(err):
			a.unknown = true // the create may still land
			return err
		case attempt >= 5:
			return err
		default:
			a.unknown = true
			found, ferr := a.adopt(ctx)
			if ferr != nil {
				return err
			}
			if found {
				return nil
			}
		}
	}
}

// errSessionMoved: the session node changed (or went) between its read and
// the create that checks it.
var errSessionMoved = errors.New("session node changed")

// createNode creates our queue node at p (sequential) and, in the same
// multi-op, for an acquire with an idempotency key its record, and for one
// in a session the check that the session node is still at sessVer and the
// session's index entry (session.go). noShard reports that the record's
// parent is missing.
func (a *acquirer) createNode(ctx context.Context, p string, data []byte, sessVer int32) (created string, noShard bool, err error) {
	if a.rec == "" && a.sess == "" {
		// With a setData of the token node in the same multi-op, whose
		// stat (mzxid) is the multi-op's zxid, so our node's czxid: the
		// grant needs no read of the node (create, getChildren: two
		// requests when uncontended).
		tok := a.b.sessRoot + clockNode
		for attempt := 0; ; attempt++ {
			res, err := call(ctx, func() ([]zk.MultiResponse, error) {
				return a.b.conn.Multi(&zk.CreateRequest{Path: p, Data: data, Acl: a.b.acl, Flags: zk.FlagSequence},
					&zk.SetDataRequest{Path: tok, Data: nil, Version: -1})
			})
			if err == nil {
				a.freshZxid = res[1].Stat.Mzxid
				return res[0].String, false, nil
			}
			if attempt > 0 || !errors.Is(err, zk.ErrNoNode) || len(res) < 2 || res[0].Error != nil {
				return "", false, err
			}
			// No token node yet (it is ClockOffset's node): make it.
			if _, err := call(ctx, func() (string, error) { return a.b.conn.Create(tok, nil, zk.FlagPersistent, a.b.acl) }); err != nil && !errors.Is(err, zk.ErrNodeExists) {
				return "", false, err
			}
		}
	}
	var ops []any
	if a.sess != "" {
		sp := a.b.sessionPath(a.sess)
		idx, _ := json.Marshal(indexEntry{Key: a.req.Key, Elections: a.b.elections})
		ops = append(ops, &zk.CheckVersionRequest{Path: sp, Version: sessVer},
			&zk.CreateRequest{Path: sp + "/" + nodeHash(a.secret), Data: idx, Acl: a.b.acl, Flags: zk.FlagPersistent})
	}
	recAt := len(ops)
	if a.rec != "" {
		ops = append(ops, &zk.CreateRequest{Path: a.rec, Data: a.b.newRecord(a.req, a.secret), Acl: a.b.acl, Flags: zk.FlagPersistent})
	}
	ops = append(ops, &zk.CreateRequest{Path: p, Data: data, Acl: a.b.acl, Flags: zk.FlagSequence})
	res, err := call(ctx, func() ([]zk.MultiResponse, error) { return a.b.conn.Multi(ops...) })
	if err != nil {
		// The first op with an error is the one that failed.
		failed := -1
		for i, r := range res {
			if r.Error != nil {
				failed = i
				break
			}
		}
		if a.sess != "" && failed == 0 {
			return "", false, errSessionMoved
		}
		return "", a.rec != "" && failed == recAt && errors.Is(err, zk.ErrNoNode), err
	}
	return res[len(res)-1].String, false, nil
}

// claim is holding for an acquire of our own, and for a retry of an
// earlier one the grant as it stands (never changed) if it still runs.
func (a *acquirer) claim(ctx context.Context, r nodeRead) (backend.Grant, error) {
	if !a.replay {
		return a.holding(ctx, r)
	}
	if !r.data.valid(a.b.clock) {
		return backend.Grant{}, a.ended()
	}
	return a.grant(r), nil
}

// adopt looks for our node after a create whose outcome is unknown.
func (a *acquirer) adopt(ctx context.Context) (found bool, err error) {
	name, err := a.b.findNode(ctx, a.kp, protected(a.secret))
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

// holding is called when our node heads the queue: it is the grant. The
// lease runs to the deadline our node carries. A node that came to head the
// queue through a handoff (a release, the removal of an expired holder, a
// holder leaving) carries the deadline the handoff wrote, counted from then:
// its data version is above 0, and that is the grant as it stands. A node
// never written to (version 0) carries the deadline it was created with,
// counted from when it joined the queue (so never later than a deadline the
// client counts from sending its request): kept when at least nine tenths of
// the TTL remain, else restarted now. A deadline that passed before we
// noticed the grant is restarted too. Either write is versioned: a competing
// removal of our node wins or loses against it as a whole.
//
// A node in a session holds until its session's deadline (r carries it):
// nothing to write, and a session over ends the acquire.
func (a *acquirer) holding(ctx context.Context, r nodeRead) (backend.Grant, error) {
	if r.sess != "" {
		if !r.data.valid(a.b.clock) {
			return backend.Grant{}, fmt.Errorf("zk acquire %q: %w", a.req.Key, backend.ErrSessionExpired)
		}
		return a.grant(r), nil
	}
	now := a.b.clock.Now()
	remaining := r.data.deadline().Sub(now)
	if remaining <= 0 || r.stat.Version == 0 && remaining < a.req.TTL*9/10 {
		d := nodeData{Deadline: lease.Deadline(now, a.req.TTL).UnixMilli(), TTL: a.req.TTL.Milliseconds(), Value: r.data.Value}
		st, err := call(ctx, func() (*zk.Stat, error) { return a.b.conn.Set(a.kp+"/"+a.name, d.encode(), r.stat.Version) })
		if err != nil {
			return backend.Grant{}, err
		}
		r = nodeRead{data: d, stat: st}
	}
	return a.grant(r), nil
}

// grant is the Grant for our node read as r, remembered for renew and
// release.
func (a *acquirer) grant(r nodeRead) backend.Grant {
	g := backend.Grant{
		Key:       a.req.Key,
		LeaseID:   leaseID(a.secret, a.name),
		Token:     uint64(r.stat.Czxid),
		Owner:     a.req.Owner,
		TTL:       time.Duration(r.data.TTL) * time.Millisecond,
		ExpiresAt: time.UnixMilli(r.data.Deadline),
		Session:   r.sess != "",
	}
	if g.Session {
		return g // every use reads the session: nothing worth caching
	}
	a.b.grants.put(g.LeaseID, cached{
		key: a.req.Key, name: a.name, owner: a.req.Owner,
		version: r.stat.Version, deadline: r.data.Deadline, ttl: r.data.TTL, token: r.stat.Czxid, value: r.data.Value,
	})
	return g
}

// giveUp ends a wait that ran out: our node leaves the queue and the caller
// learns who holds the lock. If a handoff to us raced with the give-up, the
// grant stands.
func (a *acquirer) giveUp(ctx context.Context, head child, r nodeRead) (backend.Grant, bool, error) {
	holder := &backend.Holder{Owner: head.owner, Token: uint64(r.stat.Czxid), ExpiresAt: time.UnixMilli(r.data.Deadline)}
	delay := head.delayOf(a.b.clock, r)
	if delay != nil {
		holder = nil // expired: not a holder, but delayed
	}
	if a.replay {
		// The node stays for the attempt that made it.
		return backend.Grant{}, true, &backend.HeldError{Key: a.req.Key, Holder: holder, Delay: delay}
	}
	var g backend.Grant
	granted := false
	err := a.b.leave(ctx, a.req.Key, a.name, func(r nodeRead) bool {
		var err error
		g, err = a.holding(ctx, r)
		granted = err == nil
		return granted
	}, a.rec)
	if err != nil {
		return backend.Grant{}, false, err
	}
	if granted {
		return g, true, nil
	}
	return backend.Grant{}, true, &backend.HeldError{Key: a.req.Key, Holder: holder, Delay: delay}
}

// held reports the key held by whoever heads q.
func (a *acquirer) held(ctx context.Context, q []child) error {
	he := &backend.HeldError{Key: a.req.Key}
	if len(q) > 0 {
		if r, err := a.b.read(ctx, a.kp+"/"+q[0].name); err == nil && !r.data.overdue(a.b.clock) {
			he.Holder = &backend.Holder{Owner: q[0].owner, Token: uint64(r.stat.Czxid), ExpiresAt: time.UnixMilli(r.data.Deadline)}
		} else if err == nil {
			he.Delay = q[0].delayOf(a.b.clock, r)
		}
	}
	return he
}

// leave removes node name from key's queue, handing the lock on if the node
// held it. When the node heads the queue unexpired and keep is given, keep
// may claim it instead (by returning true) and the node stays.
//
// rec, when set, is the node's idempotency record: it goes in the same
// multi-op as the node, and only while the node waits. A node heading the
// queue stays (its grant may have been returned to a retry) and runs out
// at its deadline; the record is then its tombstone.
func (b *Backend) leave(ctx context.Context, key, name string, keep func(nodeRead) bool, rec string) error {
	kp := b.keyPath(key)
	for attempt := 0; attempt < 20; attempt++ {
		q, r, err, rErr := b.queueAndRead(ctx, kp, name)
		if err != nil {
			return err
		}
		i := indexOf(q, name)
		if i < 0 || errors.Is(rErr, zk.ErrNoNode) {
			return nil
		}
		if rErr != nil {
			return rErr
		}
		switch {
		case i == 0:
			if keep != nil && r.data.valid(b.clock) && keep(r) {
				return nil
			}
			if rec != "" {
				return nil
			}
			err = b.removeHead(ctx, key, q, r.stat.Version)
		case rec != "":
			var res []zk.MultiResponse
			res, err = call(ctx, func() ([]zk.MultiResponse, error) {
				return b.conn.Multi(&zk.DeleteRequest{Path: kp + "/" + name, Version: r.stat.Version}, &zk.DeleteRequest{Path: rec, Version: -1})
			})
			if errors.Is(err, zk.ErrNoNode) && len(res) > 1 && res[0].Error == nil {
				rec = "" // the record went (swept): the node goes alone
				continue
			}
		default:
			err = b.delete(ctx, kp+"/"+name, r.stat.Version)
		}
		if err == nil || errors.Is(err, zk.ErrNoNode) && i > 0 {
			if i > 0 {
				b.dropIndex(q[i])
			}
			return nil
		}
		if !isConflict(err) {
			return err
		}
	}
	return fmt.Errorf("zk: leave %s/%s: the queue kept changing", kp, name)
}

// cleanupLater removes, in the background, the node whose name starts with
// prefix (and its idempotency record rec, if any: see leave), once ZooKeeper
// answers again: the reply to its create may have been lost, or the create
// may still be on its way.
func (b *Backend) cleanupLater(kp, prefix, rec string) {
	key := strings.TrimPrefix(kp, b.root+"/")
	b.cleanupUntilGone(func(ctx context.Context) (bool, error) {
		name, err := b.findNode(ctx, kp, prefix)
		if err == nil && name != "" {
			err = b.leave(ctx, key, name, nil, rec)
		}
		return name != "", err
	})
}

// cleanupUntilGone runs pass in the background once a second until two
// passes found nothing left to remove (a create abandoned with its caller's
// context may land a moment later), or for a minute at most. pass reports
// whether it found something. A closed Backend starts nothing: a stopped
// lockd's queued nodes are abandoned once their wait ends.
func (b *Backend) cleanupUntilGone(pass func(ctx context.Context) (found bool, err error)) {
	b.bgMu.Lock()
	defer b.bgMu.Unlock()
	if b.closed {
		return
	}
	b.bg.Add(1)
	go func() {
		defer b.bg.Done()
		ctx, cancel := context.WithTimeout(b.life, time.Minute)
		defer cancel()
		for misses := 0; misses < 2; {
			if found, err := pass(ctx); err == nil && !found {
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
