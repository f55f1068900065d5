package etcd

// Fair read-write locks.
//
// Every acquire of rwlock K is one key in the range <prefix>rw/<K>/: readers
// at rw/<K>/r/<lease id>, writers at rw/<K>/w/<lease id>. Both sit in one
// revision space, so create revisions order one FIFO queue of both modes.
// An entry's record is a lock's (queue.go): granted once it carries a
// deadline.
//
// A reader is blocked only by a writer ahead of it; a writer by any entry
// ahead. So each waiter reads the nearest blocker ahead of it — the entry
// with the largest create revision below its own, in r/ and w/ for a writer,
// in w/ only for a reader — and watches that one key (plus a timer at its
// deadline when it holds). A read at a revision at or after the waiter's own
// that finds nothing ahead stays true: entries created later have larger
// revisions. The grant is then one put guarded by the waiter's entry still
// existing with its own create revision: a waiter whose entry was removed
// (its lockd's waiter lease lost, its client gone) is never granted
// (etcd#16221), and nothing is retried in a loop without a wake-up
// (etcd#6408).
//
// Tokens are create revisions, as for locks: a writer is granted only with
// nothing ahead, so above every earlier grant; a reader only with no writer
// ahead, so above every earlier writer. Renewing rewrites the record, which
// keeps the create revision (etcd's recipe orders by mod revision, which
// renewals would break).

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

var _ backend.RWLocker = (*Backend)(nil)

// RWLocks implements backend.RWLocker.
func (b *Backend) RWLocks() backend.RWLocks { return rwlocks{b} }

type rwlocks struct{ b *Backend }

func (rwlocks) Features() backend.RWFeatures {
	return backend.RWFeatures{Fair: true, Wakeup: "watch", Sessions: true}
}

func (b *Backend) rwQueue(key string) string { return b.opts.Prefix + "rw/" + key + "/" }

func rwSub(mode string) string {
	if mode == backend.ModeWrite {
		return "w/"
	}
	return "r/"
}

// rwMode is the mode of the entry at k.
func rwMode(k string) string {
	if strings.HasSuffix(k[:strings.LastIndexByte(k, '/')+1], "/w/") {
		return backend.ModeWrite
	}
	return backend.ModeRead
}

func (e *entry) rwGrant(key string) backend.RWGrant {
	return backend.RWGrant{Grant: e.grant(key), Mode: rwMode(e.key)}
}

func (e *entry) rwHolder() backend.RWHolder {
	return backend.RWHolder{Mode: rwMode(e.key), Holder: *e.holder()}
}

// blockers is the range of entries that block a new acquire of mode: any
// entry for a writer, writers for a reader.
func (b *Backend) blockers(key, mode string) string {
	if mode == backend.ModeWrite {
		return b.rwQueue(key)
	}
	return b.rwQueue(key) + "w/"
}

// Acquire implements backend.RWLocks.
func (rw rwlocks) Acquire(ctx context.Context, req backend.RWAcquireRequest) (backend.RWGrant, error) {
	b := rw.b
	if err := ctx.Err(); err != nil {
		return backend.RWGrant{}, err
	}
	if req.Mode != backend.ModeRead && req.Mode != backend.ModeWrite {
		return backend.RWGrant{}, fmt.Errorf("etcd: rwlock mode %q", req.Mode)
	}
	id := lease.NewID()
	if req.LockDelay > 0 {
		id += delayMark
	}
	mine := b.rwQueue(req.Key) + rwSub(req.Mode) + id
	giveUp := time.Now().Add(req.Wait)
	for attempt := 0; attempt < 5; attempt++ {
		// Nothing that blocks this mode in the queue: granted at once, in
		// one transaction.
		rec, gcLease, err := b.holderRecord(ctx, req.AcquireRequest, "")
		if err != nil {
			return backend.RWGrant{}, err
		}
		sc, so := b.sessionWrite(rec, mine, id)
		resp, err := b.txn(ctx, atOnce, "rw acquire",
			append([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(b.blockers(req.Key, req.Mode)), "=", 0).WithPrefix()}, sc...),
			append([]clientv3.Op{clientv3.OpPut(mine, mustJSON(rec), clientv3.WithLease(gcLease))}, so...), nil)
		if err != nil {
			return backend.RWGrant{}, err
		}
		if resp.Succeeded {
			e := entry{key: mine, leaseID: id, createRev: resp.Header.Revision, rec: rec}
			return e.rwGrant(req.Key), nil
		}
		if req.Wait > 0 {
			return rw.wait(ctx, req, id, mine, giveUp)
		}
		// A single try: refused unless a blocker is an expired grant,
		// which goes, and the try again.
		entries, _, err := rw.read(ctx, req.Key)
		if err != nil {
			return backend.RWGrant{}, err
		}
		removed := false
		var delay *backend.Delay // the soonest-ending one that blocks
		for i := range entries {
			e := &entries[i]
			if req.Mode != backend.ModeWrite && rwMode(e.key) != backend.ModeWrite {
				continue // a reader blocks no reader
			}
			switch {
			case e.rec.removable(b.opts.Clock):
				if err := b.rwRemoveExpired(ctx, atOnce, e); err != nil {
					return backend.RWGrant{}, err
				}
				removed = true
			case e.rec.delayed(b.opts.Clock):
				if d := e.delay(b.opts.Clock); delay == nil || d.Until.Before(delay.Until) {
					delay = d
				}
			}
		}
		if !removed {
			return backend.RWGrant{}, &backend.RWHeldError{Key: req.Key, Holders: rw.holders(entries), Delay: delay}
		}
	}
	return backend.RWGrant{}, fmt.Errorf("%w: rwlock acquire kept racing with other writers", backend.ErrUnavailable)
}

// wait queues the acquire at mine and waits for its turn, leaving nothing
// behind when it gives up.
func (rw rwlocks) wait(ctx context.Context, req backend.RWAcquireRequest, id, mine string, giveUp time.Time) (g backend.RWGrant, err error) {
	b := rw.b
	wl, err := b.waiterLease(ctx)
	if err != nil {
		return backend.RWGrant{}, err
	}
	put, err := b.txn(ctx, contended(giveUp), "rw enqueue", nil,
		[]clientv3.Op{clientv3.OpPut(mine, mustJSON(record{Owner: req.Owner, TTL: req.TTL.Milliseconds()}), clientv3.WithLease(wl))}, nil)
	defer func() {
		if err != nil {
			// Not a queue entry, and not a grant that raced with the
			// give-up (its reply may have been lost).
			b.giveUp(req.AcquireRequest, mine)
		}
	}()
	if err != nil {
		return backend.RWGrant{}, err
	}
	myRev := put.Header.Revision
	if req.Session == "" {
		return rw.waitTurn(ctx, req, id, mine, myRev, giveUp)
	}
	sctx, stop := b.watchSession(ctx, sessionHash(req.Session))
	defer stop()
	g, err = rw.waitTurn(sctx, req, id, mine, myRev, giveUp)
	return g, sessionEnded(ctx, sctx, err)
}

// waitTurn waits, as the entry mine created at myRev, until no blocker is
// ahead of it, and takes its grant; or gives up at giveUp with ErrHeld.
func (rw rwlocks) waitTurn(ctx context.Context, req backend.RWAcquireRequest, id, mine string, myRev int64, giveUp time.Time) (backend.RWGrant, error) {
	b := rw.b
	adm := contended(giveUp)
	for {
		if err := ctx.Err(); err != nil {
			return backend.RWGrant{}, err
		}
		pred, err := rw.nearestBlocker(ctx, adm, req.Key, req.Mode, mine, myRev)
		if err != nil {
			return backend.RWGrant{}, err
		}
		if pred == nil {
			rec, gcLease, err := b.holderRecord(ctx, req.AcquireRequest, "")
			if err != nil {
				return backend.RWGrant{}, err
			}
			sc, so := b.sessionWrite(rec, mine, id)
			resp, err := b.txn(ctx, adm, "rw grant waiter",
				append([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(mine), "=", myRev)}, sc...),
				append([]clientv3.Op{clientv3.OpPut(mine, mustJSON(rec), clientv3.WithLease(gcLease))}, so...), nil)
			if err != nil {
				return backend.RWGrant{}, err
			}
			if !resp.Succeeded {
				if rec.S != "" {
					continue // the session, or the entry: the next read tells
				}
				return backend.RWGrant{}, errEntryLost
			}
			e := entry{key: mine, leaseID: id, createRev: myRev, rec: rec}
			return e.rwGrant(req.Key), nil
		}
		if pred.rec.removable(b.opts.Clock) {
			if err := b.rwRemoveExpired(ctx, adm, pred); err != nil {
				return backend.RWGrant{}, err
			}
			continue
		}
		if !time.Now().Before(giveUp) {
			he := &backend.RWHeldError{Key: req.Key}
			if entries, _, err := rw.read(ctx, req.Key); err == nil {
				he.Holders = rw.holders(entries)
			}
			if pred.rec.delayed(b.opts.Clock) {
				he.Delay = pred.delay(b.opts.Clock)
			}
			return backend.RWGrant{}, he
		}
		// Wake on any change of the blocker, or when its grant may be
		// removed (its deadline plus its lock-delay plus the declared
		// skew), or at the end of the wait.
		var expiry time.Time
		if pred.rec.held() {
			expiry = pred.rec.freeAt(b.opts.Clock)
		}
		if err := b.waitChange(ctx, adm, b.rwQueue(req.Key), pred, pred.readRev, expiry, giveUp); err != nil {
			return backend.RWGrant{}, err
		}
	}
}

// nearestBlocker reads the entry that blocks mine (created at myRev) and is
// nearest to it: nil when none is ahead; errEntryLost when mine is gone.
func (rw rwlocks) nearestBlocker(ctx context.Context, adm admission, key, mode, mine string, myRev int64) (*entry, error) {
	b := rw.b
	release, err := b.slot(ctx, adm)
	if err != nil {
		return nil, err
	}
	defer release()
	c, cancel := b.opCtx(ctx)
	defer cancel()
	resp, err := b.cli.Txn(c).Then(
		clientv3.OpGet(mine, clientv3.WithKeysOnly()),
		clientv3.OpGet(b.blockers(key, mode), append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(myRev-1))...),
	).Commit()
	if err != nil {
		return nil, fail(ctx, "read rwlock queue", err)
	}
	if self := resp.Responses[0].GetResponseRange().Kvs; len(self) == 0 || self[0].CreateRevision != myRev {
		return nil, errEntryLost
	}
	kvs := resp.Responses[1].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, nil
	}
	e, err := b.decode(kvs[0].Value, string(kvs[0].Key), kvs[0].CreateRevision, kvs[0].ModRevision)
	if err != nil {
		return nil, err
	}
	e.readRev = resp.Header.Revision
	if err := b.resolve(ctx, &e); err != nil {
		return nil, err
	}
	return &e, nil
}

// rwRemoveExpired deletes e if it is still the same expired grant.
func (b *Backend) rwRemoveExpired(ctx context.Context, adm admission, e *entry) error {
	ops := []clientv3.Op{clientv3.OpDelete(e.key)}
	if e.rec.S != "" {
		ops = append(ops, clientv3.OpDelete(b.sessionIndex(e.rec.S)+e.leaseID))
	}
	_, err := b.txn(ctx, adm, "rw remove expired",
		append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(e.key), "=", e.modRev)}, b.sessionGuard(e)...), ops, nil)
	return err
}

// read returns key's entries in queue order, sessions resolved, and the
// revision they were read at.
func (rw rwlocks) read(ctx context.Context, key string) ([]entry, int64, error) {
	b := rw.b
	c, cancel := b.opCtx(ctx)
	defer cancel()
	resp, err := b.cli.Get(c, b.rwQueue(key), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return nil, 0, fail(ctx, "read rwlock", err)
	}
	var out []entry
	for _, kv := range resp.Kvs {
		e, err := b.decode(kv.Value, string(kv.Key), kv.CreateRevision, kv.ModRevision)
		if err != nil {
			return nil, 0, err
		}
		if err := b.resolve(ctx, &e); err != nil {
			return nil, 0, err
		}
		out = append(out, e)
	}
	return out, resp.Header.Revision, nil
}

// holders are the unexpired grants among entries, as others see them.
func (rw rwlocks) holders(entries []entry) []backend.RWHolder {
	var hs []backend.RWHolder
	for i := range entries {
		if e := &entries[i]; e.rec.held() && !e.rec.overdue(rw.b.opts.Clock) {
			hs = append(hs, e.rwHolder())
		}
	}
	return hs
}

// get reads the entry of leaseID under key, in either mode.
func (rw rwlocks) get(ctx context.Context, key, leaseID string) (*entry, error) {
	b := rw.b
	if !lease.ValidID(leaseID) || strings.Contains(leaseID, "/") {
		return nil, nil
	}
	c, cancel := b.opCtx(ctx)
	defer cancel()
	q := b.rwQueue(key)
	resp, err := b.cli.Txn(c).Then(clientv3.OpGet(q+"r/"+leaseID), clientv3.OpGet(q+"w/"+leaseID)).Commit()
	if err != nil {
		return nil, fail(ctx, "read rwlock lease", err)
	}
	for _, r := range resp.Responses {
		if kvs := r.GetResponseRange().Kvs; len(kvs) > 0 {
			e, err := b.decode(kvs[0].Value, string(kvs[0].Key), kvs[0].CreateRevision, kvs[0].ModRevision)
			return &e, err
		}
	}
	return nil, nil
}

// Renew implements backend.RWLocks, as a lock's renew: a put guarded by the
// entry's mod revision, never of an expired grant.
func (rw rwlocks) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.RWGrant, error) {
	b := rw.b
	for attempt := 0; attempt < 3; attempt++ {
		e, err := rw.get(ctx, key, leaseID)
		if err != nil {
			return backend.RWGrant{}, err
		}
		if e == nil || !e.rec.held() {
			return backend.RWGrant{}, backend.ErrLeaseExpired
		}
		if e.rec.S != "" {
			if err := b.resolve(ctx, e); err != nil {
				return backend.RWGrant{}, err
			}
			if e.rec.valid(b.opts.Clock) {
				return backend.RWGrant{}, backend.ErrSessionBound
			}
		}
		if !e.rec.valid(b.opts.Clock) {
			if e.rec.removable(b.opts.Clock) {
				_ = b.rwRemoveExpired(ctx, atOnce, e)
			}
			return backend.RWGrant{}, backend.ErrLeaseExpired
		}
		rec := e.rec
		if ttl > 0 {
			rec.TTL = ttl.Milliseconds()
		}
		rec.Deadline = b.opts.Clock.Deadline(time.Duration(rec.TTL) * time.Millisecond).UnixMilli()
		gcLease, err := b.leases.get(ctx, b.opts.OpTimeout, rec.delayEnd())
		if err != nil {
			return backend.RWGrant{}, err
		}
		resp, err := b.txn(ctx, atOnce, "rw renew",
			[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(e.key), "=", e.modRev)},
			[]clientv3.Op{clientv3.OpPut(e.key, mustJSON(rec), clientv3.WithLease(gcLease))}, nil)
		if err != nil {
			return backend.RWGrant{}, err
		}
		if resp.Succeeded {
			e.rec = rec
			return e.rwGrant(key), nil
		}
	}
	return backend.RWGrant{}, fmt.Errorf("%w: rwlock renew kept racing with other writers", backend.ErrUnavailable)
}

// Release implements backend.RWLocks: the delete of the grant's entry, which
// wakes the waiters it blocked (they watch it).
func (rw rwlocks) Release(ctx context.Context, key, leaseID string) error {
	b := rw.b
	if !lease.ValidID(leaseID) || strings.Contains(leaseID, "/") {
		return backend.ErrLeaseExpired
	}
	if strings.HasSuffix(leaseID, delayMark) {
		return rw.releaseDelayed(ctx, key, leaseID)
	}
	q := b.rwQueue(key)
	c, cancel := b.opCtx(ctx)
	defer cancel()
	// Only a grant is released: a waiter's entry (no deadline yet) is
	// never the caller's to remove by lease id. Both modes' keys are
	// tried; at most one exists.
	var prev *entry
	for _, k := range []string{q + "r/" + leaseID, q + "w/" + leaseID} {
		resp, err := b.cli.Delete(c, k, clientv3.WithPrevKV())
		if err != nil {
			return fail(ctx, "rw release", err)
		}
		if len(resp.PrevKvs) > 0 {
			kv := resp.PrevKvs[0]
			e, err := b.decode(kv.Value, string(kv.Key), kv.CreateRevision, kv.ModRevision)
			if err != nil {
				return err
			}
			prev = &e
			break
		}
	}
	if prev == nil || !prev.rec.held() {
		return backend.ErrLeaseExpired
	}
	if prev.rec.S != "" {
		_, _ = b.cli.Delete(c, b.sessionIndex(prev.rec.S)+prev.leaseID)
		if err := b.resolve(ctx, prev); err != nil {
			return err
		}
	}
	if !prev.rec.valid(b.opts.Clock) {
		return backend.ErrLeaseExpired
	}
	return nil
}

// releaseDelayed is Release of a grant asked with a lock-delay, as a lock's
// (Backend.releaseDelayed): a late release is refused and leaves it.
func (rw rwlocks) releaseDelayed(ctx context.Context, key, leaseID string) error {
	b := rw.b
	return b.releaseValid(ctx, "rwlock release",
		func() (*entry, error) { return rw.get(ctx, key, leaseID) },
		func(e *entry) { _ = b.rwRemoveExpired(ctx, atOnce, e) })
}

// Inspect implements backend.RWLocks: the whole queue, read at once.
func (rw rwlocks) Inspect(ctx context.Context, key string) (backend.RWState, error) {
	entries, _, err := rw.read(ctx, key)
	if err != nil {
		return backend.RWState{}, err
	}
	st := backend.RWState{Key: key, Holders: rw.holders(entries)}
	if len(st.Holders) > 0 {
		st.Mode = st.Holders[0].Mode
	}
	for _, e := range entries {
		if e.rec.delayed(rw.b.opts.Clock) {
			if u := e.delay(rw.b.opts.Clock).Until; u.After(st.DelayedUntil) {
				st.DelayedUntil = u
			}
		}
		if e.rec.held() {
			continue
		}
		if rwMode(e.key) == backend.ModeWrite {
			st.WaitingWriters++
		} else {
			st.WaitingReaders++
		}
	}
	return st, nil
}
