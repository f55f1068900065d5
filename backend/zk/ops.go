package zk

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

func leaseExpired(op, key string) error {
	return fmt.Errorf("zk %s %q: %w", op, key, backend.ErrLeaseExpired)
}

// Renew implements backend.Backend.
func (b *Backend) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.Grant, error) {
	g, _, err := b.renew(ctx, key, leaseID, ttl)
	return g, err
}

// renew is Renew, answering also with the node's value (an election
// leader's, kept).
func (b *Backend) renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.Grant, string, error) {
	secret, seq, ok := parseLease(leaseID)
	if !ok {
		return backend.Grant{}, "", leaseExpired("renew", key)
	}
	kp := b.keyPath(key)
	for attempt := 0; attempt < 10; attempt++ {
		c, ok := b.grants.get(leaseID, key)
		fromCache := ok && attempt == 0
		if !fromCache {
			// Find the node and read it: the lease may have been granted
			// or renewed by another replica.
			q, err := b.queue(ctx, kp)
			if err != nil {
				return backend.Grant{}, "", unavailable("renew", err)
			}
			i, found := byLease(q, secret, seq)
			if !found {
				b.grants.drop(leaseID)
				return backend.Grant{}, "", leaseExpired("renew", key)
			}
			r, err := b.read(ctx, kp+"/"+q[i].name)
			if errors.Is(err, zk.ErrNoNode) {
				b.grants.drop(leaseID)
				return backend.Grant{}, "", leaseExpired("renew", key)
			}
			if err != nil {
				return backend.Grant{}, "", unavailable("renew", err)
			}
			if r.sess != "" {
				// Renewed only through its session (r has its deadline).
				if r.data.valid(b.clock) {
					return backend.Grant{}, "", fmt.Errorf("zk renew %q: %w", key, backend.ErrSessionBound)
				}
				return backend.Grant{}, "", leaseExpired("renew", key)
			}
			c = cached{key: key, name: q[i].name, owner: q[i].owner, version: r.stat.Version, deadline: r.data.Deadline, ttl: r.data.TTL, token: r.stat.Czxid, value: r.data.Value}
		}
		now := b.clock.Now()
		if !b.clock.Valid(time.UnixMilli(c.deadline)) {
			if fromCache {
				continue // renewed elsewhere, perhaps: only the node says it ran out
			}
			b.grants.drop(leaseID)
			return backend.Grant{}, "", leaseExpired("renew", key)
		}
		ttl := ttl
		if ttl <= 0 { // keep the lease's TTL
			ttl = time.Duration(c.ttl) * time.Millisecond
		}
		d := nodeData{Deadline: lease.Deadline(now, ttl).UnixMilli(), TTL: ttl.Milliseconds(), Value: c.value}
		st, err := call(ctx, func() (*zk.Stat, error) { return b.conn.Set(kp+"/"+c.name, d.encode(), c.version) })
		switch {
		case err == nil:
			c.version, c.deadline, c.ttl = st.Version, d.Deadline, d.TTL
			b.grants.put(leaseID, c)
			return backend.Grant{
				Key: key, LeaseID: leaseID, Token: uint64(c.token), Owner: c.owner,
				TTL: ttl, ExpiresAt: time.UnixMilli(d.Deadline),
			}, c.value, nil
		case errors.Is(err, zk.ErrNoNode):
			b.grants.drop(leaseID)
			return backend.Grant{}, "", leaseExpired("renew", key)
		case errors.Is(err, zk.ErrBadVersion):
			continue // renewed elsewhere meanwhile: read it again
		default:
			return backend.Grant{}, "", unavailable("renew", err)
		}
	}
	return backend.Grant{}, "", unavailable("renew", errors.New("the lease kept changing"))
}

// Release implements backend.Backend. The release is one multi-op that
// deletes the lease's node (versioned) and hands the lock on (removeHead):
// the next live waiter's node gets its fresh deadline in the same
// transaction, so nobody can read the queue between the two and see that
// waiter heading it with the deadline it queued with (long past, if it
// waited longer than its TTL) and remove it as expired. The delete wakes the
// one waiter watching the node, which finds its grant written.
func (b *Backend) Release(ctx context.Context, key, leaseID string) error {
	secret, seq, ok := parseLease(leaseID)
	if !ok {
		return leaseExpired("release", key)
	}
	kp := b.keyPath(key)
	c, cachedOK := b.grants.get(leaseID, key)
	var guard []any // the head's session as read, for its removal as expired
	for attempt := 0; attempt < 20; attempt++ {
		// The queue names the waiter to hand on to; the grant cache, if it
		// knows the lease, saves reading the node.
		q, err := b.queue(ctx, kp)
		if err != nil {
			return unavailable("release", err)
		}
		i, found := byLease(q, secret, seq)
		if !found || i != 0 {
			// Gone, or (never granted) not heading the queue.
			b.grants.drop(leaseID)
			return leaseExpired("release", key)
		}
		fromCache := cachedOK && c.name == q[0].name
		cachedOK = false
		if !fromCache {
			// Granted or renewed elsewhere: read the node.
			r, err := b.read(ctx, kp+"/"+q[0].name)
			if errors.Is(err, zk.ErrNoNode) {
				continue
			}
			if err != nil {
				return unavailable("release", err)
			}
			c = cached{key: key, name: q[0].name, version: r.stat.Version, deadline: r.data.Deadline, token: r.stat.Czxid}
			guard = b.sessionGuard(r)
		}
		if !b.clock.Valid(time.UnixMilli(c.deadline)) {
			if fromCache {
				continue // renewed elsewhere, perhaps: only the node says it ran out
			}
			// Too late: the lease ran out. Clear it for the next waiter
			// once nobody could still count on it and its lock-delay is
			// over: a late release lifts no delay.
			b.grants.drop(leaseID)
			if q[0].removable(b.clock, nodeData{Deadline: c.deadline}) {
				if err := b.expireHead(ctx, key, q, c.version, c.token, guard...); err != nil && !isConflict(err) {
					return unavailable("release", err)
				}
			}
			return leaseExpired("release", key)
		}
		// The version proves the node still holds the deadline just checked.
		err = b.removeHead(ctx, key, q, c.version)
		switch {
		case err == nil:
			b.grants.drop(leaseID)
			return nil
		case isConflict(err):
			// Renewed elsewhere, removed, or the waiter to hand on to left
			// meanwhile: read the queue again.
			continue
		default:
			return unavailable("release", err)
		}
	}
	return unavailable("release", errors.New("the lease kept changing"))
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
		if !r.data.overdue(b.clock) {
			st.Held = true
			st.Holder = &backend.Holder{Owner: q[0].owner, Token: uint64(r.stat.Czxid), ExpiresAt: time.UnixMilli(r.data.Deadline)}
		} else if d := q[0].delayOf(b.clock, r); d != nil {
			st.DelayedUntil = d.Until
		}
		return st, nil
	}
}

// List implements backend.Backend. It lists every key node under Root and
// inspects those that match, so its cost grows with the number of keys that
// have a queue (and getChildren of Root must fit ZooKeeper's jute.maxbuffer,
// 1 MB by default: a few thousand keys).
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
		if !strings.HasPrefix(k, prefix) || k <= after || strings.HasPrefix(k, "_") { // "_": lockd's own nodes, never keys
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
