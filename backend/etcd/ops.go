package etcd

// Renew, release and inspection of grants.

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// Renew implements backend.Backend.
func (b *Backend) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.Grant, error) {
	e, err := b.renew(ctx, key, leaseID, ttl)
	if err != nil {
		return backend.Grant{}, err
	}
	return e.grant(key), nil
}

// renew is Renew, answering with the renewed entry (an election's value
// with it).
func (b *Backend) renew(ctx context.Context, key, leaseID string, ttl time.Duration) (*entry, error) {
	for attempt := 0; attempt < 3; attempt++ {
		e, err := b.get(ctx, key, leaseID)
		if err != nil {
			return nil, err
		}
		if e == nil || !e.rec.held() {
			return nil, backend.ErrLeaseExpired
		}
		if e.rec.S != "" {
			if err := b.resolve(ctx, e); err != nil {
				return nil, err
			}
			if e.rec.valid(b.opts.Clock) {
				return nil, backend.ErrSessionBound
			}
		}
		if !e.rec.valid(b.opts.Clock) {
			if e.rec.removable(b.opts.Clock) {
				_ = b.removeExpired(ctx, atOnce, key, e)
			}
			return nil, backend.ErrLeaseExpired
		}
		rec := e.rec
		if ttl > 0 {
			rec.TTL = ttl.Milliseconds()
		}
		rec.Deadline = b.opts.Clock.Deadline(time.Duration(rec.TTL) * time.Millisecond).UnixMilli()
		gcLease, err := b.leases.get(ctx, b.opts.OpTimeout, rec.delayEnd())
		if err != nil {
			return nil, err
		}
		// The entry must be exactly as read: an expiry removal or another
		// renew in between wins, and this one looks again.
		resp, err := b.txn(ctx, atOnce, "renew",
			[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(e.key), "=", e.modRev)},
			[]clientv3.Op{clientv3.OpPut(e.key, mustJSON(rec), clientv3.WithLease(gcLease))}, nil)
		if err != nil {
			return nil, err
		}
		if resp.Succeeded {
			e.rec = rec
			return e, nil
		}
	}
	return nil, fmt.Errorf("%w: renew kept racing with other writers", backend.ErrUnavailable)
}

// Release implements backend.Backend.
func (b *Backend) Release(ctx context.Context, key, leaseID string) error {
	if !lease.ValidID(leaseID) {
		return backend.ErrLeaseExpired
	}
	if strings.HasSuffix(leaseID, delayMark) {
		return b.releaseDelayed(ctx, key, leaseID)
	}
	c, cancel := b.opCtx(ctx)
	defer cancel()
	resp, err := b.cli.Delete(c, b.queue(key)+leaseID, clientv3.WithPrevKV())
	if err != nil {
		return fail(ctx, "release", err)
	}
	if len(resp.PrevKvs) == 0 {
		return backend.ErrLeaseExpired
	}
	prev := resp.PrevKvs[0]
	e, err := b.decode(prev.Value, string(prev.Key), prev.CreateRevision, prev.ModRevision)
	if err != nil {
		return err
	}
	if !e.rec.held() {
		return backend.ErrLeaseExpired // a waiter's entry: never a grant
	}
	if e.rec.S != "" {
		_, _ = b.cli.Delete(c, b.sessionIndex(e.rec.S)+e.leaseID) // Close need not look for it
		if err := b.resolve(ctx, &e); err != nil {
			return err
		}
	}
	if !e.rec.valid(b.opts.Clock) {
		// It was no longer the holder's to release; removing it was
		// right all the same.
		b.opts.Hooks.Expired(e.expiry(key))
		return backend.ErrLeaseExpired
	}
	return nil
}

// releaseDelayed is the release of a grant asked with a lock-delay: the
// delete is guarded by the entry as read while still valid, so that a
// release after expiry is refused and leaves the record, and so the delay,
// in place.
func (b *Backend) releaseDelayed(ctx context.Context, key, leaseID string) error {
	return b.releaseValid(ctx, "release",
		func() (*entry, error) { return b.get(ctx, key, leaseID) },
		func(e *entry) { _ = b.removeExpired(ctx, atOnce, key, e) })
}

// releaseValid deletes the grant get reads, guarded by its mod revision,
// only while it is valid; an expired one is refused (and removed with
// removeExpired once its lock-delay is over). The guarded release of every
// queue (locks, read-write locks).
func (b *Backend) releaseValid(ctx context.Context, what string, get func() (*entry, error), removeExpired func(*entry)) error {
	for attempt := 0; attempt < 3; attempt++ {
		e, err := get()
		if err != nil {
			return err
		}
		if e == nil || !e.rec.held() {
			return backend.ErrLeaseExpired
		}
		if err := b.resolve(ctx, e); err != nil {
			return err
		}
		if !e.rec.valid(b.opts.Clock) {
			if e.rec.removable(b.opts.Clock) {
				removeExpired(e)
			}
			return backend.ErrLeaseExpired
		}
		ops := []clientv3.Op{clientv3.OpDelete(e.key)}
		if e.rec.S != "" {
			ops = append(ops, clientv3.OpDelete(b.sessionIndex(e.rec.S)+e.leaseID))
		}
		resp, err := b.txn(ctx, atOnce, what, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(e.key), "=", e.modRev)}, ops, nil)
		if err != nil {
			return err
		}
		if resp.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%w: %s kept racing with other writers", backend.ErrUnavailable, what)
}

// Inspect implements backend.Backend.
func (b *Backend) Inspect(ctx context.Context, key string) (backend.LockState, error) {
	return b.inspect(ctx, key)
}

func (b *Backend) inspect(ctx context.Context, key string) (backend.LockState, error) {
	q := b.queue(key)
	// The head is the queue's first key (one record read), the count of
	// entries from etcd's index: one snapshot, without reading every
	// waiter's record.
	resp, err := b.txn(ctx, atOnce, "inspect", nil,
		[]clientv3.Op{clientv3.OpGet(q, clientv3.WithRange(clientv3.GetPrefixRangeEnd(q)), clientv3.WithLimit(1)), clientv3.OpGet(q, clientv3.WithPrefix(), clientv3.WithCountOnly())}, nil)
	if err != nil {
		return backend.LockState{}, err
	}
	st := backend.LockState{Key: key, Waiters: int(resp.Responses[1].GetResponseRange().Count)}
	head, err := b.entryFrom(resp.Responses[0].GetResponseRange())
	if err != nil || head == nil {
		return st, err
	}
	if err := b.resolve(ctx, head); err != nil {
		return st, err
	}
	if head != nil && head.rec.held() {
		st.Waiters-- // the holder's entry, expired or not, is no waiter
		switch {
		case !head.rec.overdue(b.opts.Clock):
			st.Held, st.Holder = true, head.holder()
		case head.rec.delayed(b.opts.Clock):
			st.DelayedUntil = head.delay(b.opts.Clock).Until
		}
	}
	return st, nil
}

// List implements backend.Backend. It reads every queue entry under the
// prefix (a page of etcd keys at a time), so it costs in proportion to the
// entries under the prefix, not to the page asked for: an operator's tool.
func (b *Backend) List(ctx context.Context, prefix, after string, limit int) ([]backend.LockState, error) {
	base := b.opts.Prefix + "q/"
	start, end := base+prefix, clientv3.GetPrefixRangeEnd(base+prefix)
	heads := map[string]*entry{}
	for {
		c, cancel := b.opCtx(ctx)
		resp, err := b.cli.Get(c, start, clientv3.WithRange(end), clientv3.WithLimit(1000))
		cancel()
		if err != nil {
			return nil, fail(ctx, "list", err)
		}
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			rest := k[len(base):]
			slash := strings.LastIndexByte(rest, '/')
			if slash < 0 {
				continue
			}
			lockKey := rest[:slash]
			if lockKey <= after || !strings.HasPrefix(lockKey, prefix) {
				continue
			}
			e, err := b.decode(kv.Value, k, kv.CreateRevision, kv.ModRevision)
			if err != nil {
				return nil, err
			}
			if h := heads[lockKey]; h == nil || e.createRev < h.createRev {
				heads[lockKey] = &e
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	var out []backend.LockState
	for k, h := range heads {
		if err := b.resolve(ctx, h); err != nil {
			return nil, err
		}
		if h.rec.held() && !h.rec.overdue(b.opts.Clock) {
			out = append(out, backend.LockState{Key: k, Held: true, Holder: h.holder()})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}
