package etcd

// Acquire and waiting in the queue.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// Acquire implements backend.Backend.
func (b *Backend) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	return b.acquire(ctx, req, "")
}

// acquire is Acquire of a record carrying value (an election's).
func (b *Backend) acquire(ctx context.Context, req backend.AcquireRequest, value string) (backend.Grant, error) {
	if err := ctx.Err(); err != nil {
		return backend.Grant{}, err
	}
	if g, found, err := b.replay(ctx, req); found {
		return g, err
	}
	q := b.queue(req.Key)
	id := lease.NewID()
	if req.LockDelay > 0 {
		id += delayMark
	}
	giveUp := time.Now().Add(req.Wait)
	held := contended(giveUp) // for the work once the key was found held
	// grantIfFree makes this acquire the holder when the queue is empty
	// (so any sequence number keeps the queue in order).
	grantIfFree := func(adm admission) (backend.Grant, bool, error) {
		seq := b.seqs.take(req.Key)
		name := leaf(seq, id)
		mine := q + name
		rec, gcLease, err := b.holderRecord(ctx, req, value)
		if err != nil {
			return backend.Grant{}, false, err
		}
		idemCmps, idemOps, err := b.idemWrite(ctx, req, name, true)
		if err != nil {
			return backend.Grant{}, false, err
		}
		sc, so := b.sessionWrite(rec, mine, name)
		resp, err := b.txn(ctx, adm, "acquire",
			append(append([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(q), "=", 0).WithPrefix()}, idemCmps...), sc...),
			append(append([]clientv3.Op{clientv3.OpPut(mine, mustJSON(rec), clientv3.WithLease(gcLease))}, idemOps...), so...), nil)
		if err == nil && !resp.Succeeded && len(idemCmps) > 0 {
			// A twin of this acquire (same idempotency key) may have won.
			if g, found, err := b.replay(ctx, req); found {
				return g, true, err
			}
		}
		if err == nil && !resp.Succeeded {
			b.seqs.untake(req.Key, seq)
		}
		if err != nil || !resp.Succeeded {
			return backend.Grant{}, false, err
		}
		b.seqs.saw(resp.Header.Revision)
		e := entry{key: mine, leaseID: name, seq: seqOf(name), createRev: resp.Header.Revision, rec: rec}
		return e.grant(req.Key), true, nil
	}
	for first := true; ; first = false {
		if first {
			end, try, err := b.busy.firstTry(ctx, req.Key)
			if err != nil {
				return backend.Grant{}, err
			}
			if try {
				// A key not seen queued lately: one transaction, that
				// writes when the queue is empty and reads nothing
				// otherwise.
				g, ok, err := grantIfFree(atOnce)
				if !ok {
					// Held, or etcd did not answer in time: either way the
					// acquirers right behind queue at once, instead of each
					// trying (and, with etcd behind, timing out) in turn.
					b.busy.mark(req.Key, time.Now())
				}
				end()
				if ok || err != nil {
					return g, err
				}
			}
			if req.Wait > 0 {
				// Held, or lately queued, and willing to wait: straight
				// into the queue. waitTurn's first look does what a read
				// here would (grant at once when nothing is ahead, remove
				// an expired head), so each waiter of a burst costs one
				// read less.
				return b.wait(ctx, req, id, giveUp, value)
			}
		}
		// Held, or lately queued: a read first. On a key with a queue,
		// acquirers must not turn into transactions that etcd applies one
		// after another, each comparing against the whole queue.
		head, _, err := b.lookAhead(ctx, held, q, "", 0)
		if err != nil {
			return backend.Grant{}, err
		}
		if head != nil {
			b.busy.mark(req.Key, time.Now())
		}
		if head == nil {
			if g, ok, err := grantIfFree(held); ok || err != nil {
				return g, err
			}
			continue // someone came first: look again
		}
		if head.rec.removable(b.opts.Clock) {
			if err := b.removeExpired(ctx, held, req.Key, head); err != nil {
				return backend.Grant{}, err
			}
			continue
		}
		if req.Wait <= 0 {
			return backend.Grant{}, b.heldBy(req.Key, head)
		}
		return b.wait(ctx, req, id, giveUp, value)
	}
}

// heldBy is the refusal of an acquire that found head at the head of the
// queue: its holder, or the lock-delay it keeps after expiring.
func (b *Backend) heldBy(key string, head *entry) error {
	he := &backend.HeldError{Key: key}
	switch {
	case head == nil || !head.rec.held():
	case head.rec.delayed(b.opts.Clock):
		he.Delay = head.delay(b.opts.Clock)
	default:
		he.Holder = head.holder()
	}
	return he
}

// waiterLease returns the lease queue entries of this Backend hang on,
// granting it and starting its keep-alive on first use.
func (b *Backend) waiterLease(ctx context.Context) (clientv3.LeaseID, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.session != 0 {
		return b.session, nil
	}
	c, cancel := b.opCtx(ctx)
	defer cancel()
	g, err := b.cli.Grant(c, int64((b.opts.WaiterLeaseTTL+time.Second-1)/time.Second))
	if err != nil {
		return 0, fail(ctx, "grant waiter lease", err)
	}
	ch, err := b.cli.KeepAlive(b.life, g.ID)
	if err != nil {
		return 0, fail(ctx, "keep waiter lease alive", err)
	}
	b.session = g.ID
	go func() {
		for range ch {
		}
		// The lease is gone (Close, or lost to a partition): the next
		// waiter grants a new one; waiters whose entries it took see them
		// vanish and fail.
		b.mu.Lock()
		if b.session == g.ID {
			b.session = 0
		}
		b.mu.Unlock()
	}()
	return g.ID, nil
}

// errEntryLost: a waiter's queue entry vanished under it (its lease was
// lost to a partition).
var errEntryLost = fmt.Errorf("%w: etcd: queue entry lost while waiting", backend.ErrUnavailable)

func (b *Backend) wait(ctx context.Context, req backend.AcquireRequest, id string, giveUp time.Time, value string) (g backend.Grant, err error) {
	q := b.queue(req.Key)
	wl, err := b.waiterLease(ctx)
	if err != nil {
		return backend.Grant{}, err
	}
	// One enqueue of a key at a time per Backend (seqHints.turn), which
	// bounds these round trips without an admission slot: waiting for a
	// slot while holding the turn would stall the key's whole line behind
	// other waiters' reads.
	release, err := b.seqs.turn(ctx, req.Key)
	if err != nil {
		return backend.Grant{}, err
	}
	// The entry goes at the end of the queue under the next sequence
	// number; a put that finds entries at or after its name (another
	// replica's) takes the number after them.
	var (
		name, mine string
		put        *clientv3.TxnResponse
		looks      int // the index of put's first read of lookOps
	)
	for attempt := 0; ; attempt++ {
		name = leaf(b.seqs.take(req.Key), id)
		mine = q + name
		idemCmps, idemOps, ierr := b.idemWrite(ctx, req, name, false)
		if ierr != nil {
			release()
			return backend.Grant{}, ierr
		}
		// The put also reads what waitTurn's first look would (lookOps),
		// as of right after it: one round trip less per waiter.
		then := append(append([]clientv3.Op{
			clientv3.OpPut(mine, mustJSON(record{Owner: req.Owner, TTL: req.TTL.Milliseconds()}), clientv3.WithLease(wl))}, idemOps...),
			lookOps(q, mine)...)
		looks = len(then) - len(lookOps(q, mine))
		c, cancel := b.opCtx(ctx)
		put, err = b.cli.Txn(c).If(append([]clientv3.Cmp{enqueueGuard(q, mine)}, idemCmps...)...).Then(then...).
			Else(afterMine(q, mine)).Commit()
		cancel()
		if err != nil || put.Succeeded || !b.retrySeq(req.Key, put, 0) {
			break
		}
		if attempt == 20 {
			release()
			return backend.Grant{}, fmt.Errorf("%w: etcd: enqueue kept racing with other replicas", backend.ErrUnavailable)
		}
	}
	release()
	if err != nil {
		err = fail(ctx, "enqueue", err)
	} else if !put.Succeeded {
		// A twin of this acquire (same idempotency key) came first.
		if g, found, err := b.replay(ctx, req); found {
			return g, err
		}
		return backend.Grant{}, fmt.Errorf("%w: etcd: idempotency record vanished while enqueuing", backend.ErrUnavailable)
	} else {
		b.seqs.after(req.Key, seqOf(name), put.Header.Revision)
		b.busy.mark(req.Key, time.Now()) // while waiters queue, the next ones skip the first try
	}
	myRev := int64(0)
	if err == nil {
		myRev = put.Header.Revision
	}
	defer func() {
		if err == nil {
			return
		}
		// Leave nothing behind: not a queue entry, and not a grant that
		// raced with the give-up (its reply may have been lost).
		b.giveUp(req, mine)
	}()
	if err != nil {
		return backend.Grant{}, err
	}
	seen := b.enqueuedLook(ctx, q, mine, put, looks)
	if req.Session == "" {
		return b.waitTurn(ctx, req, name, myRev, giveUp, value, seen)
	}
	// A wait in a session ends when the session does (etcd#19597).
	sctx, stop := b.watchSession(ctx, sessionHash(req.Session))
	defer stop()
	g, err = b.waitTurn(sctx, req, name, myRev, giveUp, value, seen)
	return g, sessionEnded(ctx, sctx, err)
}

// look is what a look at the queue found: its head, and the entry just
// ahead of the waiter's (nil when none is).
type look struct{ head, pred *entry }

// lookOps are the reads of lookAhead's common case, for the transaction
// that puts mine: the queue's head, and the entry one sequence number
// below mine.
func lookOps(q, mine string) []clientv3.Op {
	ops := []clientv3.Op{clientv3.OpGet(q, clientv3.WithRange(clientv3.GetPrefixRangeEnd(q)), clientv3.WithLimit(1))}
	if seq := seqOf(mine[len(q):]); seq > 1 {
		ops = append(ops, clientv3.OpGet(seqPrefix(q, seq-1), clientv3.WithPrefix(), clientv3.WithLimit(1), clientv3.WithKeysOnly()))
	}
	return ops
}

// enqueuedLook is the look that the put of mine read (lookOps, from index
// i of its responses); nil when it cannot stand in for lookAhead (the
// entry ahead is not the one right below mine), and waitTurn looks itself.
func (b *Backend) enqueuedLook(ctx context.Context, q, mine string, put *clientv3.TxnResponse, i int) *look {
	head, err := b.entryFrom(put.Responses[i].GetResponseRange())
	if err != nil || head == nil {
		return nil
	}
	l := &look{head: head}
	if head.key != mine {
		if len(put.Responses) <= i+1 {
			return nil
		}
		if l.pred = keyOnly(put.Responses[i+1].GetResponseRange()); l.pred == nil {
			return nil
		}
		l.pred.readRev = put.Header.Revision
	}
	if b.resolve(ctx, head) != nil {
		return nil
	}
	return l
}

// waitTurn waits, as the queue entry of lease id (its name's last element)
// created at myRev, until nothing is ahead of it, and takes the lock; or
// gives up at giveUp with ErrHeld. It leaves the entry to its caller.
// seen, when set, is a look at the queue made at myRev: the first look.
func (b *Backend) waitTurn(ctx context.Context, req backend.AcquireRequest, id string, myRev int64, giveUp time.Time, value string, seen *look) (backend.Grant, error) {
	q := b.queue(req.Key)
	mine := q + id
	adm := contended(giveUp)

	// grant takes the lock if nothing is ahead of this entry: a compare
	// over the names below mine, which etcd answers from the few keys in
	// that range (none, when it holds). Entries created later sort after
	// mine, so when nothing is ahead only the loss of our own entry can
	// fail it.
	grant := func() (backend.Grant, bool, error) {
		rec, gcLease, err := b.holderRecord(ctx, req, value)
		if err != nil {
			return backend.Grant{}, false, err
		}
		cmps := []clientv3.Cmp{
			clientv3.Compare(clientv3.CreateRevision(mine), "=", myRev),
			nothingAhead(q, mine),
		}
		ops := []clientv3.Op{clientv3.OpPut(mine, mustJSON(rec), clientv3.WithLease(gcLease))}
		sc, so := b.sessionWrite(rec, mine, id)
		cmps, ops = append(cmps, sc...), append(ops, so...)
		if req.Idempotency.Key != "" {
			// Twins wait on one entry: only the first grants it, and
			// marks the record granted.
			cmps = append(cmps, clientv3.Compare(clientv3.Value(mine), "=", mustJSON(record{Owner: req.Owner, TTL: req.TTL.Milliseconds()})))
			_, idemOps, err := b.idemWrite(ctx, req, id, true)
			if err != nil {
				return backend.Grant{}, false, err
			}
			ops = append(ops, idemOps...)
		}
		resp, err := b.txn(ctx, adm, "grant waiter", cmps, ops, nil)
		if err != nil || !resp.Succeeded {
			return backend.Grant{}, false, err
		}
		e := entry{key: mine, leaseID: id, seq: seqOf(id), createRev: myRev, rec: rec}
		return e.grant(req.Key), true, nil
	}
	behindHead := false // the entry ahead was the holder when last looked at
	for {
		if err := ctx.Err(); err != nil {
			return backend.Grant{}, err
		}
		if behindHead {
			// Woken behind the holder: most likely it is gone, and one
			// guarded write, without a read first, makes the handoff.
			if g, ok, err := grant(); ok || err != nil {
				return g, err
			}
		}
		var (
			head, pred *entry
			err        error
		)
		if seen != nil {
			head, pred, seen = seen.head, seen.pred, nil
		} else if head, pred, err = b.lookAhead(ctx, adm, q, mine, myRev); err != nil {
			return backend.Grant{}, err
		}
		if head != nil && head.key == mine && head.rec.held() {
			return head.grant(req.Key), nil // granted to a twin (same idempotency key)
		}
		if pred == nil {
			if g, ok, err := grant(); ok || err != nil {
				return g, err
			}
			continue
		}
		behindHead = head != nil && head.key == pred.key
		if head != nil && head.rec.removable(b.opts.Clock) {
			if err := b.removeExpired(ctx, adm, req.Key, head); err != nil {
				return backend.Grant{}, err
			}
			continue
		}
		if !time.Now().Before(giveUp) {
			return backend.Grant{}, b.heldBy(req.Key, head)
		}
		// Wake on any change of the entry ahead, when the holder's grant
		// may be removed (its deadline plus its lock-delay plus the
		// declared skew, by this replica's clock), or when the wait is
		// over.
		var expiry time.Time
		if head != nil && head.rec.held() {
			expiry = head.rec.freeAt(b.opts.Clock)
			if !behindHead {
				expiry = expiry.Add(time.Second) // the waiter behind the holder goes first
			}
		}
		if err := b.waitChange(ctx, adm, q, pred, pred.readRev, expiry, giveUp); err != nil {
			return backend.Grant{}, err
		}
	}
}

// compacted tells a watch or read that asked for history etcd has
// compacted away (lockd's compactor keeps only the last revisions). The
// watch of a waiter that fell behind is cancelled so: the waiter looks at
// the queue again, as after any wake-up.
func compacted(err error) bool { return errors.Is(err, rpctypes.ErrCompacted) }

// waitChange returns when the entry pred of queue q changes or goes, at
// expiry (if set), at giveUp, or with ctx's error. It waits on this
// Backend's one watch of q (watchHub).
func (b *Backend) waitChange(ctx context.Context, adm admission, q string, pred *entry, readRev int64, expiry, giveUp time.Time) error {
	w, wake, stale, done, err := b.hub.subscribe(ctx, q, pred.key, readRev)
	if err != nil {
		return err
	}
	defer done()
	if stale {
		// The watch may have gone past a change since our read: look at
		// pred itself.
		release, err := b.slot(ctx, adm)
		if err != nil {
			return err
		}
		c, cl := b.opCtx(ctx)
		r, err := b.cli.Get(c, pred.key)
		cl()
		release()
		if err != nil {
			return fail(ctx, "read predecessor", err)
		}
		if len(r.Kvs) == 0 || r.Kvs[0].ModRevision != pred.modRev {
			return nil
		}
	}
	return b.hub.awaitWake(ctx, w, wake, expiry, giveUp)
}

// awaitChange returns at the first event on wch (or a compacted watch:
// the caller looks again), at expiry (if set), at giveUp, or with ctx's
// error.
func (b *Backend) awaitChange(ctx context.Context, wch clientv3.WatchChan, expiry, giveUp time.Time) error {
	wake := giveUp
	if !expiry.IsZero() && expiry.Before(wake) {
		wake = expiry
	}
	timer := time.NewTimer(time.Until(wake))
	defer timer.Stop()
	for {
		select {
		case resp, ok := <-wch:
			if !ok {
				return ctx.Err()
			}
			if err := resp.Err(); err != nil {
				if compacted(err) {
					return nil
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("%w: etcd watch: %v", backend.ErrUnavailable, err)
			}
			if len(resp.Events) > 0 {
				return nil
			}
		case <-timer.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-b.life.Done():
			return fmt.Errorf("%w: etcd backend closed", backend.ErrUnavailable)
		}
	}
}
