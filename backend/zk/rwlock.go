package zk

// Fair read-write locks, in their own namespace (Curator's
// InterProcessReadWriteLock shape, with lockd's protected creates and
// node-data leases):
//
//	<Root>/_rw/<key>                               container node; its data version is the join gate
//	<Root>/_rw/<key>/_c_<hash>-...-read-<seq>      a reader (a lock queue's node name, node.go, with its mode)
//	<Root>/_rw/<key>/_c_<hash>-...-write-<seq>     a writer
//
// Both modes wait in one queue ordered by sequence number. A reader is
// blocked by a writer ahead of it, a writer by any node ahead of it. A node
// that waits carries Queued in its data; its acquirer claims the grant
// itself, once no blocker is ahead, with a versioned setData of its own node
// that writes its deadline (counted from then) and clears Queued. Nodes can
// only leave the part of the queue ahead of a node, so once a listing made
// after its create shows no blocker ahead, none can come.
//
// A newcomer that finds no blocker is granted at once, in one multi-op that
// creates its node with its deadline and sets the container's data at the
// version it listed it with: every waiter's create bumps that version in its
// own multi-op, so a blocker queued since the listing fails the grant, and
// the uncontended acquire costs two requests (getChildren, multi).
//
// A queued node's blocker is removed by whoever meets it dead: a queued one
// once its end of wait (plus grace) is overdue, a granted one once its
// deadline is (lease.Clock), with a versioned delete, so a claim or a renew
// in between wins. Expiry is thus state in the store, with the granter dead.
//
// Each waiter watches only its nearest blocker (a reader: the nearest writer
// ahead; a writer: the node right ahead), for its data and its deletion
// (getData watch), with a timer at the moment it could be removed. A writer
// that leaves wakes the readers that watched it.
//
// Tokens are czxids. A writer is granted only at the head, and nothing
// behind it can be granted before it: every earlier grant was ahead, with a
// smaller czxid. A reader is granted with no writer ahead, and a writer
// behind it waits for it to leave: every earlier writer's grant came before
// the reader's create.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

var _ backend.RWLocker = (*Backend)(nil)

// RWLocks implements backend.RWLocker.
func (b *Backend) RWLocks() backend.RWLocks { return rwlocks{b.rwq} }

// rwlocks runs on q, the Backend whose keys live under _rw.
type rwlocks struct{ q *Backend }

func (rwlocks) Features() backend.RWFeatures {
	return backend.RWFeatures{Fair: true, Wakeup: "watch", Sessions: true}
}

// rwList lists the read-write lock at kp: its nodes in queue order and the
// container's data version; exists is false without a container.
func (b *Backend) rwList(ctx context.Context, kp string) (q []child, ver int32, exists bool, err error) {
	type listed struct {
		names []string
		st    *zk.Stat
	}
	l, err := call(ctx, func() (listed, error) {
		names, st, err := b.conn.Children(kp)
		return listed{names, st}, err
	})
	if errors.Is(err, zk.ErrNoNode) {
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, err
	}
	for _, n := range l.names {
		if c, ok := parseChild(n); ok && c.mode != "" {
			q = append(q, c)
		}
	}
	sort.Slice(q, func(i, j int) bool { return q[i].seq < q[j].seq })
	return q, l.st.Version, true, nil
}

// blocks reports whether c, ahead of a node of mode, blocks it.
func blocks(c child, mode string) bool {
	return mode == backend.ModeWrite || c.mode == backend.ModeWrite
}

// nearestBlocker is the index in q[:end] of the nearest node blocking mode;
// -1 when none.
func nearestBlocker(q []child, end int, mode string) int {
	for j := end - 1; j >= 0; j-- {
		if blocks(q[j], mode) {
			return j
		}
	}
	return -1
}

// rwDead reports whether the node c, read as r, may be removed by anyone:
// queued and abandoned, or granted and overdue with its lock-delay. A
// delayed writer so keeps out both modes, a delayed reader writers only.
func (b *Backend) rwDead(c child, r nodeRead) bool {
	if r.data.Queued {
		return c.abandoned(b.clock)
	}
	return c.removable(b.clock, r.data)
}

// rwRemove deletes c if it is still exactly as read (and its session too).
func (b *Backend) rwRemove(ctx context.Context, kp string, c child, r nodeRead) error {
	ops := append([]any{&zk.DeleteRequest{Path: kp + "/" + c.name, Version: r.stat.Version}}, b.sessionGuard(r)...)
	_, err := call(ctx, func() ([]zk.MultiResponse, error) { return b.conn.Multi(ops...) })
	if err == nil {
		b.dropIndex(c)
	}
	return err
}

// rwReadAll reads every node of q (at once); nodes gone since are left out.
func (b *Backend) rwReadAll(ctx context.Context, kp string, q []child) ([]child, []nodeRead, error) {
	rs := make([]nodeRead, len(q))
	errs := make([]error, len(q))
	var wg sync.WaitGroup
	for i, c := range q {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rs[i], errs[i] = b.read(ctx, kp+"/"+c.name)
		}()
	}
	wg.Wait()
	var cs []child
	var out []nodeRead
	for i := range q {
		if errors.Is(errs[i], zk.ErrNoNode) {
			continue
		}
		if errs[i] != nil {
			return nil, nil, errs[i]
		}
		cs, out = append(cs, q[i]), append(out, rs[i])
	}
	return cs, out, nil
}

// rwHolders are the unexpired grants among q, as others see them.
func (b *Backend) rwHolders(q []child, rs []nodeRead) []backend.RWHolder {
	var hs []backend.RWHolder
	for i, c := range q {
		if !rs[i].data.Queued && !rs[i].data.overdue(b.clock) {
			hs = append(hs, backend.RWHolder{Mode: c.mode, Holder: backend.Holder{Owner: c.owner, Token: uint64(rs[i].stat.Czxid), ExpiresAt: rs[i].data.deadline()}})
		}
	}
	return hs
}

// rwHeld is the give-up of an acquire of mode (whose node, if any, is
// mine): who holds, as far as can be read, and the soonest-ending lock-delay
// of a node ahead that blocks it.
func (b *Backend) rwHeld(ctx context.Context, key, mode, mine string) error {
	he := &backend.RWHeldError{Key: key}
	kp := b.keyPath(key)
	if q, _, _, err := b.rwList(ctx, kp); err == nil {
		if cs, rs, err := b.rwReadAll(ctx, kp, q); err == nil {
			he.Holders = b.rwHolders(cs, rs)
			for i, c := range cs {
				if c.name == mine {
					break
				}
				if d := c.delayOf(b.clock, rs[i]); d != nil && !rs[i].data.Queued && blocks(c, mode) &&
					(he.Delay == nil || d.Until.Before(he.Delay.Until)) {
					he.Delay = d
				}
			}
		}
	}
	return he
}

// rwAcquirer is one Acquire call.
type rwAcquirer struct {
	b       *Backend
	req     backend.RWAcquireRequest
	kp      string
	secret  string
	sess    string // the session's hash, or ""
	waitEnd time.Time
	name    string // our node, once it exists
	unknown bool   // a create's reply was lost: our node may exist
	claimed bool   // a claim's reply was lost: our node may be granted
}

// Acquire implements backend.RWLocks.
func (rw rwlocks) Acquire(ctx context.Context, req backend.RWAcquireRequest) (backend.RWGrant, error) {
	if err := ctx.Err(); err != nil {
		return backend.RWGrant{}, err
	}
	if req.Mode != backend.ModeRead && req.Mode != backend.ModeWrite {
		return backend.RWGrant{}, fmt.Errorf("zk: rwlock mode %q", req.Mode)
	}
	b := rw.q
	a := &rwAcquirer{b: b, req: req, kp: b.keyPath(req.Key), secret: lease.NewID(), waitEnd: time.Now().Add(req.Wait)}
	if req.Session != "" {
		if !lease.ValidID(req.Session) {
			return backend.RWGrant{}, backend.ErrSessionExpired
		}
		a.sess = sessionHash(req.Session)
	}
	return inSession(ctx, b, a.sess, req.Wait, fmt.Sprintf("zk rwlock acquire %q", req.Key), a.run)
}

// run retries steps while ZooKeeper fails and the wait lasts.
func (a *rwAcquirer) run(ctx context.Context) (backend.RWGrant, error) {
	return runSteps(ctx, a.b, a.waitEnd, a.step, a.fail, a.fail)
}

// fail ends an acquire that got no grant: our node leaves the queue (a
// grant whose reply was lost with it), now or in the background.
func (a *rwAcquirer) fail(err error) error {
	refused := errors.Is(err, backend.ErrHeld) || errors.Is(err, backend.ErrSessionExpired)
	if !isCtx(err) && !refused && !errors.Is(err, backend.ErrUnavailable) {
		err = unavailable("rwlock acquire", err)
	}
	if a.name == "" && !a.unknown {
		return err
	}
	cleanup, cancel := context.WithTimeout(a.b.life, 5*time.Second)
	defer cancel()
	if a.name != "" && !a.unknown {
		derr := a.b.delete(cleanup, a.kp+"/"+a.name, -1)
		if derr == nil || errors.Is(derr, zk.ErrNoNode) {
			a.b.dropIndex(child{name: protected(a.secret), session: a.sess})
			return err
		}
	}
	a.b.rwCleanupLater(a.kp, a.secret, a.sess)
	return err
}

// rwCleanupLater removes, in the background, the node whose name starts
// with secret's protected prefix, once ZooKeeper answers: its create's reply
// may have been lost, or the create may still be on its way.
func (b *Backend) rwCleanupLater(kp, secret, sess string) {
	b.cleanupUntilGone(func(ctx context.Context) (bool, error) {
		name, err := b.rwFind(ctx, kp, protected(secret))
		if err == nil && name != "" {
			err = b.delete(ctx, kp+"/"+name, -1)
			if err == nil {
				b.dropIndex(child{name: protected(secret), session: sess})
			}
		}
		return name != "", err
	})
}

// rwFind looks for the node whose name starts with prefix, after a sync (see
// findNode).
func (b *Backend) rwFind(ctx context.Context, kp, prefix string) (string, error) {
	_, err := call(ctx, func() (string, error) { return b.conn.Sync(kp) })
	if err != nil && !errors.Is(err, zk.ErrNoNode) {
		return "", err
	}
	q, _, _, err := b.rwList(ctx, kp)
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

// grant is the grant of our node read (or written) as r.
func (a *rwAcquirer) grant(r nodeRead) backend.RWGrant {
	return backend.RWGrant{Grant: backend.Grant{
		Key: a.req.Key, LeaseID: leaseID(a.secret, a.name), Token: uint64(r.stat.Czxid), Owner: a.req.Owner,
		TTL: time.Duration(r.data.TTL) * time.Millisecond, ExpiresAt: r.data.deadline(), Session: r.sess != "",
	}, Mode: a.req.Mode}
}

// create makes our node: granted (the gate at ver, nothing blocking in the
// listing) or queued (bumping the gate). For an acquire in a session, the
// same multi-op checks the session is as read and indexes the node.
func (a *rwAcquirer) create(ctx context.Context, ver int32, queued bool) (nodeRead, error) {
	b := a.b
	waitUntil := b.clock.Now().Add(time.Until(a.waitEnd) + b.grace)
	d := nodeData{TTL: a.req.TTL.Milliseconds(), Queued: queued}
	var ops []any
	if queued {
		ops = append(ops, &zk.SetDataRequest{Path: a.kp, Data: nil, Version: -1})
	} else {
		ops = append(ops, &zk.SetDataRequest{Path: a.kp, Data: nil, Version: ver})
		d.Deadline = b.clock.Deadline(a.req.TTL).UnixMilli()
	}
	r := nodeRead{}
	if a.sess != "" {
		sd, sst, err := b.readSession(ctx, a.sess)
		if errors.Is(err, zk.ErrNoNode) || err == nil && !b.clock.Valid(time.UnixMilli(sd.Deadline)) {
			return r, fmt.Errorf("zk rwlock acquire %q: %w", a.req.Key, backend.ErrSessionExpired)
		}
		if err != nil {
			return r, err
		}
		d.TTL = sd.TTL
		if !queued {
			d.Deadline = sd.Deadline
		}
		r.sess, r.sessVer = a.sess, sst.Version
		sp := b.sessionPath(a.sess)
		idx, _ := json.Marshal(indexEntry{Key: a.req.Key, RW: true})
		ops = append(ops, &zk.CheckVersionRequest{Path: sp, Version: sst.Version},
			&zk.CreateRequest{Path: sp + "/" + nodeHash(a.secret), Data: idx, Acl: b.acl, Flags: zk.FlagPersistent})
	}
	marker := readMarker
	if a.req.Mode == backend.ModeWrite {
		marker = writeMarker
	}
	name := strings.TrimSuffix(queueName(a.secret, time.Duration(d.TTL)*time.Millisecond, a.req.LockDelay, waitUntil, a.req.Owner, a.sess), lockMarker) + marker
	ops = append(ops, &zk.CreateRequest{Path: a.kp + "/" + name, Data: d.encode(), Acl: b.acl, Flags: zk.FlagSequence})
	res, err := call(ctx, func() ([]zk.MultiResponse, error) { return b.conn.Multi(ops...) })
	if err != nil {
		if !isConflict(err) {
			a.unknown = true // it may have landed, or may still
		}
		return r, err
	}
	a.name = path.Base(res[len(res)-1].String)
	r.data = d
	r.stat = &zk.Stat{Czxid: res[0].Stat.Mzxid} // the ops of a multi-op share its zxid
	return r, nil
}

// claim takes the grant for our queued node, read as r: a versioned setData
// of its deadline, counted from now.
func (a *rwAcquirer) claim(ctx context.Context, r nodeRead) (backend.RWGrant, error) {
	b := a.b
	d := r.data
	d.Queued = false
	if r.sess != "" {
		if !r.data.valid(b.clock) {
			return backend.RWGrant{}, fmt.Errorf("zk rwlock acquire %q: %w", a.req.Key, backend.ErrSessionExpired)
		}
		d.Deadline = r.data.Deadline // the session's; the data's only fills the field
	} else {
		d.Deadline = b.clock.Deadline(a.req.TTL).UnixMilli()
		d.TTL = a.req.TTL.Milliseconds()
	}
	st, err := call(ctx, func() (*zk.Stat, error) { return b.conn.Set(a.kp+"/"+a.name, d.encode(), r.stat.Version) })
	if err != nil {
		if !isConflict(err) {
			a.claimed = true
		}
		return backend.RWGrant{}, err
	}
	return a.grant(nodeRead{data: d, stat: st, sess: r.sess}), nil
}

// step makes one pass. done reports the acquire over (granted, or failed
// with err); otherwise err, if any, is a ZooKeeper failure to retry.
func (a *rwAcquirer) step(ctx context.Context) (g backend.RWGrant, done bool, err error) {
	b := a.b
	if a.unknown {
		name, err := b.rwFind(ctx, a.kp, protected(a.secret))
		if err != nil {
			return g, false, err
		}
		a.name, a.unknown, a.claimed = name, false, name != ""
	}
	if a.claimed {
		// Our node may be granted already (a create or claim whose reply
		// was lost): then that is the grant.
		r, err := b.read(ctx, a.kp+"/"+a.name)
		if err != nil && !errors.Is(err, zk.ErrNoNode) {
			return g, false, err
		}
		a.claimed = false
		if errors.Is(err, zk.ErrNoNode) {
			a.name = ""
		} else if !r.data.Queued {
			if !r.data.valid(b.clock) {
				return g, true, backend.ErrHeld // run out before we knew; the node goes in fail
			}
			return a.grant(r), true, nil
		}
	}
	q, ver, exists, err := b.rwList(ctx, a.kp)
	if err != nil {
		return g, false, err
	}
	if !exists {
		return g, false, b.ensureKey(ctx, a.kp)
	}
	end := len(q)
	if a.name != "" {
		end = indexOf(q, a.name)
		if end < 0 {
			// Our node is gone: removed as abandoned by a replica whose
			// clock runs ahead, or by hand. Queue again while the wait
			// lasts.
			a.name = ""
			end = len(q)
		}
	}
	waiting := time.Now().Before(a.waitEnd)
	j := nearestBlocker(q, end, a.req.Mode)
	if j < 0 {
		if a.name == "" {
			r, err := a.create(ctx, ver, false)
			if err == nil {
				return a.grant(r), true, nil
			}
			if errors.Is(err, backend.ErrSessionExpired) {
				return g, true, err
			}
			if isConflict(err) {
				return g, false, nil // someone queued meanwhile, or the container went: look again
			}
			return g, false, err
		}
		r, err := b.read(ctx, a.kp+"/"+a.name)
		if err == nil {
			g, err = a.claim(ctx, r)
		}
		switch {
		case err == nil:
			return g, true, nil
		case errors.Is(err, backend.ErrSessionExpired):
			return g, true, err
		case isConflict(err):
			return g, false, nil
		default:
			return g, false, err
		}
	}
	// Something blocks us: clear it if it is dead, else wait for it.
	blocker := q[j]
	var (
		r     nodeRead
		watch <-chan zk.Event
	)
	if waiting && a.name != "" {
		r, watch, err = b.readW(ctx, a.kp+"/"+blocker.name)
	} else {
		r, err = b.read(ctx, a.kp+"/"+blocker.name)
	}
	if errors.Is(err, zk.ErrNoNode) {
		return g, false, nil
	}
	if err != nil {
		return g, false, err
	}
	if b.rwDead(blocker, r) {
		if err := b.rwRemove(ctx, a.kp, blocker, r); err != nil && !isConflict(err) {
			return g, false, err
		}
		return g, false, nil
	}
	if !waiting {
		if err := b.sessionOver(ctx, a.sess, "rwlock acquire", a.req.Key); err != nil {
			return g, true, err
		}
		return g, true, b.rwHeld(ctx, a.req.Key, a.req.Mode, a.name)
	}
	if a.name == "" {
		_, err := a.create(ctx, ver, true)
		if errors.Is(err, backend.ErrSessionExpired) {
			return g, true, err
		}
		if isConflict(err) {
			return g, false, nil
		}
		return g, false, err
	}
	at := b.clock.FreeAt(time.UnixMilli(blocker.waitUntil))
	if !r.data.Queued {
		at = blocker.delayedUntil(b.clock, r.data)
	}
	expiry := time.NewTimer(b.clock.Until(at) + time.Millisecond)
	defer expiry.Stop()
	waitOver := time.NewTimer(time.Until(a.waitEnd))
	defer waitOver.Stop()
	select {
	case <-watch:
		b.wakes.Add(1)
	case <-expiry.C:
	case <-waitOver.C:
	case <-ctx.Done():
		return g, true, ctx.Err()
	case <-b.life.Done():
		return g, true, errClosed
	}
	return g, false, nil
}

// rwFindLease finds the node of leaseID in key's queue and reads it; ok is
// false when there is none.
func (b *Backend) rwFindLease(ctx context.Context, kp, leaseID string) (child, nodeRead, bool, error) {
	secret, seq, ok := parseLease(leaseID)
	if !ok {
		return child{}, nodeRead{}, false, nil
	}
	q, _, _, err := b.rwList(ctx, kp)
	if err != nil {
		return child{}, nodeRead{}, false, err
	}
	i, found := byLease(q, secret, seq)
	if !found {
		return child{}, nodeRead{}, false, nil
	}
	r, err := b.read(ctx, kp+"/"+q[i].name)
	if errors.Is(err, zk.ErrNoNode) {
		return child{}, nodeRead{}, false, nil
	}
	if err != nil {
		return child{}, nodeRead{}, false, err
	}
	return q[i], r, true, nil
}

// Renew implements backend.RWLocks: a versioned setData, never of a queued
// or expired node.
func (rw rwlocks) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.RWGrant, error) {
	b := rw.q
	kp := b.keyPath(key)
	for attempt := 0; attempt < 5; attempt++ {
		c, r, ok, err := b.rwFindLease(ctx, kp, leaseID)
		if err != nil {
			return backend.RWGrant{}, unavailable("rwlock renew", err)
		}
		if !ok || r.data.Queued {
			return backend.RWGrant{}, leaseExpired("rwlock renew", key)
		}
		if r.sess != "" && r.data.valid(b.clock) {
			return backend.RWGrant{}, fmt.Errorf("zk rwlock renew %q: %w", key, backend.ErrSessionBound)
		}
		if !r.data.valid(b.clock) {
			if c.removable(b.clock, r.data) { // a late renew or release lifts no lock-delay
				_ = b.rwRemove(ctx, kp, c, r)
			}
			return backend.RWGrant{}, leaseExpired("rwlock renew", key)
		}
		d := r.data
		if ttl > 0 {
			d.TTL = ttl.Milliseconds()
		}
		d.Deadline = b.clock.Deadline(time.Duration(d.TTL) * time.Millisecond).UnixMilli()
		st, err := call(ctx, func() (*zk.Stat, error) { return b.conn.Set(kp+"/"+c.name, d.encode(), r.stat.Version) })
		switch {
		case err == nil:
			return backend.RWGrant{Grant: backend.Grant{Key: key, LeaseID: leaseID, Token: uint64(st.Czxid), Owner: c.owner,
				TTL: time.Duration(d.TTL) * time.Millisecond, ExpiresAt: d.deadline()}, Mode: c.mode}, nil
		case errors.Is(err, zk.ErrNoNode):
			return backend.RWGrant{}, leaseExpired("rwlock renew", key)
		case errors.Is(err, zk.ErrBadVersion):
			continue
		default:
			return backend.RWGrant{}, unavailable("rwlock renew", err)
		}
	}
	return backend.RWGrant{}, unavailable("rwlock renew", errors.New("the grant kept changing"))
}

// Release implements backend.RWLocks: a versioned delete of the grant's
// node, which wakes the waiters that it blocked (they watch it).
func (rw rwlocks) Release(ctx context.Context, key, leaseID string) error {
	b := rw.q
	kp := b.keyPath(key)
	for attempt := 0; attempt < 5; attempt++ {
		c, r, ok, err := b.rwFindLease(ctx, kp, leaseID)
		if err != nil {
			return unavailable("rwlock release", err)
		}
		if !ok || r.data.Queued {
			return leaseExpired("rwlock release", key)
		}
		if !r.data.valid(b.clock) {
			if c.removable(b.clock, r.data) { // a late renew or release lifts no lock-delay
				_ = b.rwRemove(ctx, kp, c, r)
			}
			return leaseExpired("rwlock release", key)
		}
		err = b.rwRemove(ctx, kp, c, nodeRead{data: r.data, stat: r.stat})
		switch {
		case err == nil:
			return nil
		case isConflict(err):
			continue
		default:
			return unavailable("rwlock release", err)
		}
	}
	return unavailable("rwlock release", errors.New("the grant kept changing"))
}

// Inspect implements backend.RWLocks: the whole queue, every node read.
func (rw rwlocks) Inspect(ctx context.Context, key string) (backend.RWState, error) {
	b := rw.q
	kp := b.keyPath(key)
	q, _, _, err := b.rwList(ctx, kp)
	if err != nil {
		return backend.RWState{}, unavailable("rwlock inspect", err)
	}
	cs, rs, err := b.rwReadAll(ctx, kp, q)
	if err != nil {
		return backend.RWState{}, unavailable("rwlock inspect", err)
	}
	st := backend.RWState{Key: key, Holders: b.rwHolders(cs, rs)}
	if len(st.Holders) > 0 {
		st.Mode = st.Holders[0].Mode
	}
	for i, c := range cs {
		if d := c.delayOf(b.clock, rs[i]); d != nil && !rs[i].data.Queued && d.Until.After(st.DelayedUntil) {
			st.DelayedUntil = d.Until
		}
		if !rs[i].data.Queued || c.abandoned(b.clock) {
			continue
		}
		if c.mode == backend.ModeWrite {
			st.WaitingWriters++
		} else {
			st.WaitingReaders++
		}
	}
	return st, nil
}
