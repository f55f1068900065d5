// Package etcd keeps lockd's locks in etcd, with etcd's own primitives: a
// queue of keys ordered by create revision, leases, transactions and watches.
//
// # Layout
//
// Every acquire of lock K is one key <prefix>q/<K>/<lease id>. Lock keys never
// contain '/', so the range <prefix>q/<K>/ holds K's entries and no other
// lock's. The entry with the lowest create revision is at the head of the
// queue; it holds the lock when its record carries a deadline. Entries behind
// it are waiters, served in create-revision order (FIFO).
//
// # Fencing token
//
// The token is the create revision of the grant's entry. Revisions grow over
// the whole cluster's history. An entry is granted only when no entry with a
// lower create revision is left in its range (the grant transaction checks
// exactly that), so grants of one lock are made in create-revision order and
// tokens strictly increase. A waiter that leaves the queue is never granted
// (the grant also checks the entry still exists), so its revision is skipped,
// never reused. Renewing rewrites the entry, which keeps its create revision.
//
// # Millisecond leases on whole-second etcd leases
//
// etcd leases have whole-second TTLs and a minimum of about two seconds, so
// the contract's lease lives in the record: its deadline (unix ms, the
// granting lockd's clock). The etcd lease attached to the entry only collects
// garbage: it is chosen to outlive the deadline by at least two seconds, so
// etcd never frees a lock early. Whoever notices an entry past its deadline (an
// acquirer, the waiter behind it, whose timer fires at the deadline, a
// release) removes it with a delete conditioned on its mod revision, so a
// renew that won the race is never undone. Entries share etcd leases by the
// ten seconds in which their garbage collection is due (see leasePool), so an
// acquire costs one write, not a lease grant and a write.
//
// Waiters' entries hang on one short lease per Backend, kept alive while the
// Backend lives: the queue entries of a lockd that died disappear within a
// few seconds, and a waiter whose client left deletes its entry at once.
//
// # Wake-ups
//
// A waiter watches only the entry ahead of it. The watch is opened at the
// current revision, which etcd serves at once; a watch opened at a past
// revision is "unsynced" and served by a loop that runs every 100 ms — the
// reason etcd's concurrency.Mutex hands a lock over in about 100 ms. The entry
// right behind the holder also sets a timer at the holder's deadline; the
// others at the deadline plus a grace, should that waiter be gone.
//
// # Cost under contention
//
// Which entry is ahead is asked keys-only (the head, the predecessor), which
// etcd answers from its in-memory index on its read path; the one guarded
// write that grants runs only once nothing is ahead. A transaction that
// compares against a whole queue runs in etcd's serial apply loop and reads
// every entry, so with thousands of waiters on a key it must stay rare: an
// acquire of a key this instance found held in the last ten seconds reads
// before it writes, any other tries the write at once (one round trip when
// the key is free).
//
// # Clocks
//
// Deadlines are written and read by lockd replicas, each with its own clock,
// through one policy (lease.Clock): a holder's lease ends at its deadline, and
// anyone else removes the grant only once the deadline plus the declared
// skew (Options.Clock.MaxSkew) has passed. Replicas measure their clocks
// against each other through heartbeats under <prefix>clock/ (ClockOffset).
//
// This package never releases a lock on Close: grants run on in etcd.
package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// Options configures a Backend. The zero value works.
type Options struct {
	// Prefix is put before every key lockd writes; default "/lockd/".
	Prefix string
	// OpTimeout bounds one round trip to etcd, after which the call fails
	// with backend.ErrUnavailable; default 5 s.
	OpTimeout time.Duration
	// WaiterLeaseTTL is the etcd lease of queue entries, kept alive while
	// this Backend runs: how long a dead lockd's waiters block a queue;
	// default 5 s.
	WaiterLeaseTTL time.Duration
	// MaxContendedOps bounds the round trips to etcd in flight at once
	// for acquirers that found their key held (see slot). Default 64.
	MaxContendedOps int
	// Clock decides every deadline (see lease.Clock); the zero value is
	// the system clock with no skew allowed.
	Clock lease.Clock
	// ClockHeartbeat is how often this Backend writes the heartbeat its
	// peers measure clock offsets by, once ClockOffset was called;
	// default 1 s.
	ClockHeartbeat time.Duration
	backend.Hooks
}

// Backend implements backend.Backend on an etcd cluster.
type Backend struct {
	cli  *clientv3.Client
	opts Options

	leases *leasePool
	busy   busyKeys
	slots  chan struct{} // see slot

	life   context.Context // ends on Close
	cancel context.CancelFunc

	mu      sync.Mutex
	session clientv3.LeaseID // waiters' lease; 0 until the first wait or after it was lost

	clocks clockPeers // see ClockOffset
}

var _ backend.Backend = (*Backend)(nil)

// New returns a Backend over cli. Close does not close cli: its owner does.
func New(cli *clientv3.Client, opts Options) *Backend {
	if opts.Prefix == "" {
		opts.Prefix = "/lockd/"
	}
	if opts.OpTimeout == 0 {
		opts.OpTimeout = 5 * time.Second
	}
	if opts.WaiterLeaseTTL == 0 {
		opts.WaiterLeaseTTL = 5 * time.Second
	}
	if opts.ClockHeartbeat <= 0 {
		opts.ClockHeartbeat = time.Second
	}
	if opts.MaxContendedOps <= 0 {
		opts.MaxContendedOps = 64
	}
	life, cancel := context.WithCancel(context.Background())
	return &Backend{cli: cli, opts: opts, leases: newLeasePool(cli), slots: make(chan struct{}, opts.MaxContendedOps), life: life, cancel: cancel}
}

// record is the value of a queue entry.
type record struct {
	Owner    string `json:"o,omitempty"`
	TTL      int64  `json:"t"`           // ms
	Deadline int64  `json:"d,omitempty"` // unix ms; 0 while waiting
}

func (r record) held() bool { return r.Deadline != 0 }

func (r record) deadline() time.Time { return time.UnixMilli(r.Deadline) }

// valid reports whether the holder's lease still runs, by c: what a renew
// and a release check.
func (r record) valid(c lease.Clock) bool { return r.held() && c.Valid(r.deadline()) }

// overdue reports whether someone other than the holder may remove the
// grant, by c (its deadline plus the declared skew has passed).
func (r record) overdue(c lease.Clock) bool { return r.held() && c.Overdue(r.deadline()) }

// entry is a queue entry as read from etcd.
type entry struct {
	key       string
	leaseID   string
	createRev int64
	modRev    int64
	rec       record
	readRev   int64 // the store's revision when this entry was read (lookAhead)
}

func (b *Backend) queue(key string) string { return b.opts.Prefix + "q/" + key + "/" }

func (b *Backend) decode(kv []byte, k string, createRev, modRev int64) (entry, error) {
	var rec record
	if err := json.Unmarshal(kv, &rec); err != nil {
		return entry{}, fmt.Errorf("etcd: corrupt record at %q: %w", k, err)
	}
	return entry{key: k, leaseID: k[strings.LastIndexByte(k, '/')+1:], createRev: createRev, modRev: modRev, rec: rec}, nil
}

func (b *Backend) entryFrom(resp *clientv3.GetResponse) (*entry, error) {
	if resp == nil || len(resp.Kvs) == 0 {
		return nil, nil
	}
	kv := resp.Kvs[0]
	e, err := b.decode(kv.Value, string(kv.Key), kv.CreateRevision, kv.ModRevision)
	return &e, err
}

func (e *entry) holder() *backend.Holder {
	return &backend.Holder{Owner: e.rec.Owner, Token: uint64(e.createRev), ExpiresAt: time.UnixMilli(e.rec.Deadline)}
}

func (e *entry) grant(lockKey string) backend.Grant {
	return backend.Grant{
		Key: lockKey, LeaseID: e.leaseID, Token: uint64(e.createRev), Owner: e.rec.Owner,
		TTL: time.Duration(e.rec.TTL) * time.Millisecond, ExpiresAt: time.UnixMilli(e.rec.Deadline),
	}
}

func (e *entry) expiry(lockKey string) backend.Expiry {
	return backend.Expiry{Key: lockKey, Owner: e.rec.Owner, Token: uint64(e.createRev)}
}

func mustJSON(r record) string {
	b, _ := json.Marshal(r)
	return string(b)
}

// fail maps an etcd error: the caller's context first, then unavailability.
func fail(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return errors.Join(ctx.Err(), fmt.Errorf("etcd %s: %w", op, err))
	}
	return fmt.Errorf("%w: etcd %s: %v", backend.ErrUnavailable, op, err)
}

func (b *Backend) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.opts.OpTimeout)
}

type contendedKey struct{}

// contended marks ctx as the work of an acquirer that found its key held,
// which may go on until the given time (the end of its wait). Such work
// takes a slot (see slot) for each round trip to etcd.
func contended(ctx context.Context, until time.Time) context.Context {
	return context.WithValue(ctx, contendedKey{}, until)
}

// slot waits for one of Options.MaxContendedOps slots when ctx is
// contended, and returns its release; otherwise it returns at once. A burst
// of thousands of acquirers on held keys so lines up in lockd, instead of
// in etcd, where each operation would wait behind all the others until it
// timed out. A holder's renew and release, and the first try of an acquire,
// never wait for a slot. Past the end of its wait plus OpTimeout an
// acquirer gives up with ErrUnavailable: etcd is not keeping up.
func (b *Backend) slot(ctx context.Context) (release func(), err error) {
	until, ok := ctx.Value(contendedKey{}).(time.Time)
	if !ok {
		return func() {}, nil
	}
	select {
	case b.slots <- struct{}{}:
		return func() { <-b.slots }, nil
	default:
	}
	t := time.NewTimer(max(time.Until(until), 0) + b.opts.OpTimeout)
	defer t.Stop()
	select {
	case b.slots <- struct{}{}:
		return func() { <-b.slots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("%w: etcd: more acquirers of held keys than it keeps up with (%d at a time)", backend.ErrUnavailable, cap(b.slots))
	}
}

func (b *Backend) txn(ctx context.Context, op string, cmps []clientv3.Cmp, then, els []clientv3.Op) (*clientv3.TxnResponse, error) {
	release, err := b.slot(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	c, cancel := b.opCtx(ctx)
	defer cancel()
	resp, err := b.cli.Txn(c).If(cmps...).Then(then...).Else(els...).Commit()
	if err != nil {
		return nil, fail(ctx, op, err)
	}
	return resp, nil
}

// removeExpired deletes e if it is still the same expired entry.
func (b *Backend) removeExpired(ctx context.Context, lockKey string, e *entry) error {
	resp, err := b.txn(ctx, "remove expired",
		[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(e.key), "=", e.modRev)},
		[]clientv3.Op{clientv3.OpDelete(e.key)}, nil)
	if err != nil {
		return err
	}
	if resp.Succeeded {
		b.opts.Hooks.Expired(e.expiry(lockKey))
	}
	return nil
}

// Acquire implements backend.Backend.
func (b *Backend) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	if err := ctx.Err(); err != nil {
		return backend.Grant{}, err
	}
	if g, found, err := b.replay(ctx, req); found {
		return g, err
	}
	q := b.queue(req.Key)
	id := lease.NewID()
	mine := q + id
	giveUp := time.Now().Add(req.Wait)
	held := contended(ctx, giveUp) // for the work once the key was found held
	// grantIfFree makes this acquire the holder when the queue is empty.
	grantIfFree := func(c context.Context) (backend.Grant, bool, error) {
		rec, gcLease, err := b.holderRecord(ctx, req)
		if err != nil {
			return backend.Grant{}, false, err
		}
		idemCmps, idemOps, err := b.idemWrite(ctx, req, id)
		if err != nil {
			return backend.Grant{}, false, err
		}
		resp, err := b.txn(c, "acquire",
			append([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(q), "=", 0).WithPrefix()}, idemCmps...),
			append([]clientv3.Op{clientv3.OpPut(mine, mustJSON(rec), clientv3.WithLease(gcLease))}, idemOps...), nil)
		if err == nil && !resp.Succeeded && len(idemCmps) > 0 {
			// A twin of this acquire (same idempotency key) may have won.
			if g, found, err := b.replay(ctx, req); found {
				return g, true, err
			}
		}
		if err != nil || !resp.Succeeded {
			return backend.Grant{}, false, err
		}
		e := entry{key: mine, leaseID: id, createRev: resp.Header.Revision, rec: rec}
		return e.grant(req.Key), true, nil
	}
	for first := true; ; first = false {
		if first && !b.busy.recent(req.Key, time.Now()) {
			// A key not seen queued lately: one transaction, that writes
			// when the queue is empty and reads nothing otherwise.
			if g, ok, err := grantIfFree(ctx); ok || err != nil {
				return g, err
			}
			b.busy.mark(req.Key, time.Now()) // the acquirers right behind read first
		}
		// Held, or lately queued: a read first. On a key with a queue,
		// acquirers must not turn into transactions that etcd applies one
		// after another, each comparing against the whole queue.
		head, _, err := b.lookAhead(held, q, "", 0)
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
		if head.rec.overdue(b.opts.Clock) {
			if err := b.removeExpired(held, req.Key, head); err != nil {
				return backend.Grant{}, err
			}
			continue
		}
		if req.Wait <= 0 {
			he := &backend.HeldError{Key: req.Key}
			if head.rec.held() {
				he.Holder = head.holder()
			}
			return backend.Grant{}, he
		}
		return b.wait(held, req, id, giveUp)
	}
}

// busyKeys remembers the keys this instance lately found held, so that an
// acquire there reads before it writes. A hint for speed only: every
// decision is made by etcd. Bounded: it forgets everything at 4,096 keys.
type busyKeys struct {
	mu    sync.Mutex
	until map[string]time.Time
}

const busyFor = 10 * time.Second

func (k *busyKeys) mark(key string, now time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.until == nil || len(k.until) >= 4096 {
		k.until = map[string]time.Time{}
	}
	k.until[key] = now.Add(busyFor)
}

func (k *busyKeys) recent(key string, now time.Time) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	t, ok := k.until[key]
	if ok && now.After(t) {
		delete(k.until, key)
		return false
	}
	return ok
}

// holderRecord is req's record as the holder from now on, and the etcd
// lease that will collect it after its deadline.
func (b *Backend) holderRecord(ctx context.Context, req backend.AcquireRequest) (record, clientv3.LeaseID, error) {
	rec := record{Owner: req.Owner, TTL: req.TTL.Milliseconds(), Deadline: b.opts.Clock.Deadline(req.TTL).UnixMilli()}
	gcLease, err := b.leases.get(ctx, b.opts.OpTimeout, time.UnixMilli(rec.Deadline))
	return rec, gcLease, err
}

// lookAhead reads the head of queue q and, when myRev is set, the entry
// just ahead of mine, created at myRev (nil when none is ahead; pred.readRev
// is the revision it was seen at); errEntryLost when mine is gone. It only
// reads: the ordering questions are asked keys-only, which etcd answers from
// its in-memory index on its read path, so many waiters on one key do not
// line up in etcd's apply loop behind transactions that each compare
// against the whole queue.
func (b *Backend) lookAhead(ctx context.Context, q, mine string, myRev int64) (head, pred *entry, err error) {
	release, err := b.slot(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer release()
	c, cancel := b.opCtx(ctx)
	defer cancel()
	ops := []clientv3.Op{clientv3.OpGet(q, append(clientv3.WithFirstCreate(), clientv3.WithKeysOnly())...)}
	if myRev > 0 {
		ops = append(ops,
			clientv3.OpGet(mine, clientv3.WithKeysOnly()),
			clientv3.OpGet(q, append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(myRev-1), clientv3.WithKeysOnly())...))
	}
	resp, err := b.cli.Txn(c).Then(ops...).Commit()
	if err != nil {
		return nil, nil, fail(ctx, "read queue", err)
	}
	keyOnly := func(i int) *entry {
		r := resp.Responses[i].GetResponseRange()
		if len(r.Kvs) == 0 {
			return nil
		}
		kv := r.Kvs[0]
		return &entry{key: string(kv.Key), createRev: kv.CreateRevision, modRev: kv.ModRevision}
	}
	if myRev > 0 {
		if self := keyOnly(1); self == nil || self.createRev != myRev {
			return nil, nil, errEntryLost
		}
		if pred = keyOnly(2); pred != nil {
			pred.readRev = resp.Header.Revision
		}
	}
	if keyOnly(0) == nil {
		return nil, pred, nil
	}
	// The head's record (its deadline), read on its own: one key.
	hr, err := b.cli.Get(c, keyOnly(0).key)
	if err != nil {
		return nil, nil, fail(ctx, "read queue head", err)
	}
	if head, err = b.entryFrom(hr); err != nil {
		return nil, nil, err
	}
	// A head gone between the reads leaves head nil: the caller's next
	// step (a guarded transaction, or a watch that finds pred changed)
	// notices.
	return head, pred, nil
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

func (b *Backend) wait(ctx context.Context, req backend.AcquireRequest, id string, giveUp time.Time) (g backend.Grant, err error) {
	q := b.queue(req.Key)
	mine := q + id
	wl, err := b.waiterLease(ctx)
	if err != nil {
		return backend.Grant{}, err
	}
	release, err := b.slot(ctx)
	if err != nil {
		return backend.Grant{}, err
	}
	idemCmps, idemOps, err := b.idemWrite(ctx, req, id)
	if err != nil {
		release()
		return backend.Grant{}, err
	}
	c, cancel := b.opCtx(ctx)
	put, err := b.cli.Txn(c).If(idemCmps...).Then(append([]clientv3.Op{
		clientv3.OpPut(mine, mustJSON(record{Owner: req.Owner, TTL: req.TTL.Milliseconds()}), clientv3.WithLease(wl))}, idemOps...)...).Commit()
	cancel()
	release()
	if err != nil {
		err = fail(ctx, "enqueue", err)
	} else if !put.Succeeded {
		// A twin of this acquire (same idempotency key) came first.
		if g, found, err := b.replay(ctx, req); found {
			return g, err
		}
		return backend.Grant{}, fmt.Errorf("%w: etcd: idempotency record vanished while enqueuing", backend.ErrUnavailable)
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
	return b.waitTurn(ctx, req, id, myRev, giveUp)
}

// waitTurn waits, as the queue entry of lease id created at myRev, until
// nothing is ahead of it, and takes the lock; or gives up at giveUp with
// ErrHeld. It leaves the entry to its caller.
func (b *Backend) waitTurn(ctx context.Context, req backend.AcquireRequest, id string, myRev int64, giveUp time.Time) (backend.Grant, error) {
	q := b.queue(req.Key)
	mine := q + id

	// grant takes the lock if nothing is ahead of this entry. Entries
	// created later have larger revisions, so when nothing is ahead only
	// the loss of our own entry can fail it.
	grant := func() (backend.Grant, bool, error) {
		rec, gcLease, err := b.holderRecord(ctx, req)
		if err != nil {
			return backend.Grant{}, false, err
		}
		cmps := []clientv3.Cmp{
			clientv3.Compare(clientv3.CreateRevision(mine), "=", myRev),
			clientv3.Compare(clientv3.CreateRevision(q), ">", myRev-1).WithPrefix(),
		}
		if req.Idempotency.Key != "" {
			// Twins wait on one entry: only the first grants it.
			cmps = append(cmps, clientv3.Compare(clientv3.Value(mine), "=", mustJSON(record{Owner: req.Owner, TTL: req.TTL.Milliseconds()})))
		}
		resp, err := b.txn(ctx, "grant waiter", cmps,
			[]clientv3.Op{clientv3.OpPut(mine, mustJSON(rec), clientv3.WithLease(gcLease))}, nil)
		if err != nil || !resp.Succeeded {
			return backend.Grant{}, false, err
		}
		e := entry{key: mine, leaseID: id, createRev: myRev, rec: rec}
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
		head, pred, err := b.lookAhead(ctx, q, mine, myRev)
		if err != nil {
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
		if head != nil && head.rec.overdue(b.opts.Clock) {
			if err := b.removeExpired(ctx, req.Key, head); err != nil {
				return backend.Grant{}, err
			}
			continue
		}
		if !time.Now().Before(giveUp) {
			he := &backend.HeldError{Key: req.Key}
			if head != nil && head.rec.held() {
				he.Holder = head.holder()
			}
			return backend.Grant{}, he
		}
		// Wake on any change of the entry ahead, when the holder's grant
		// may be removed (its deadline plus the declared skew, by this
		// replica's clock, as a time of this machine's timers), or when
		// the wait is over.
		var expiry time.Time
		if head != nil && head.rec.held() {
			expiry = time.Now().Add(b.opts.Clock.Until(b.opts.Clock.FreeAt(head.rec.deadline())))
			if !behindHead {
				expiry = expiry.Add(time.Second) // the waiter behind the holder goes first
			}
		}
		if err := b.waitChange(ctx, pred, pred.readRev, expiry, giveUp); err != nil {
			return backend.Grant{}, err
		}
	}
}

// compacted tells a watch or read that asked for history etcd has
// compacted away (lockd's compactor keeps only the last revisions). The
// watch of a waiter that fell behind is cancelled so: the waiter looks at
// the queue again, as after any wake-up.
func compacted(err error) bool { return errors.Is(err, rpctypes.ErrCompacted) }

// waitChange returns when the entry pred changes or goes, at expiry (if
// set), at giveUp, or with ctx's error.
func (b *Backend) waitChange(ctx context.Context, pred *entry, readRev int64, expiry, giveUp time.Time) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	release, err := b.slot(ctx)
	if err != nil {
		return err
	}
	// Opened at the current revision, so etcd serves it at once.
	wch := b.cli.Watch(wctx, pred.key, clientv3.WithCreatedNotify())
	var created clientv3.WatchResponse
	select {
	case created = <-wch:
		release()
	case <-ctx.Done():
		release()
		return ctx.Err()
	}
	if compacted(created.Err()) {
		return nil
	}
	if err := created.Err(); err != nil || !created.Created {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: etcd watch: %v", backend.ErrUnavailable, created.Err())
	}
	// Anything written between our read and the watch's start is not in
	// the watch: look again if the store moved on.
	if created.Header.Revision != readRev {
		release, err := b.slot(ctx)
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

// get reads one queue entry.
func (b *Backend) get(ctx context.Context, key, leaseID string) (*entry, error) {
	if !lease.ValidID(leaseID) || strings.Contains(leaseID, "/") {
		return nil, nil
	}
	c, cancel := b.opCtx(ctx)
	defer cancel()
	resp, err := b.cli.Get(c, b.queue(key)+leaseID)
	if err != nil {
		return nil, fail(ctx, "read lease", err)
	}
	return b.entryFrom(resp)
}

// Renew implements backend.Backend.
func (b *Backend) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.Grant, error) {
	for attempt := 0; attempt < 3; attempt++ {
		e, err := b.get(ctx, key, leaseID)
		if err != nil {
			return backend.Grant{}, err
		}
		if e == nil || !e.rec.held() {
			return backend.Grant{}, backend.ErrLeaseExpired
		}
		if !e.rec.valid(b.opts.Clock) {
			if e.rec.overdue(b.opts.Clock) {
				_ = b.removeExpired(ctx, key, e)
			}
			return backend.Grant{}, backend.ErrLeaseExpired
		}
		rec := e.rec
		if ttl > 0 {
			rec.TTL = ttl.Milliseconds()
		}
		rec.Deadline = b.opts.Clock.Deadline(time.Duration(rec.TTL) * time.Millisecond).UnixMilli()
		gcLease, err := b.leases.get(ctx, b.opts.OpTimeout, time.UnixMilli(rec.Deadline))
		if err != nil {
			return backend.Grant{}, err
		}
		// The entry must be exactly as read: an expiry removal or another
		// renew in between wins, and this one looks again.
		resp, err := b.txn(ctx, "renew",
			[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(e.key), "=", e.modRev)},
			[]clientv3.Op{clientv3.OpPut(e.key, mustJSON(rec), clientv3.WithLease(gcLease))}, nil)
		if err != nil {
			return backend.Grant{}, err
		}
		if resp.Succeeded {
			e.rec = rec
			return e.grant(key), nil
		}
	}
	return backend.Grant{}, fmt.Errorf("%w: renew kept racing with other writers", backend.ErrUnavailable)
}

// Release implements backend.Backend.
func (b *Backend) Release(ctx context.Context, key, leaseID string) error {
	if !lease.ValidID(leaseID) {
		return backend.ErrLeaseExpired
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
	if !e.rec.valid(b.opts.Clock) {
		// It was no longer the holder's to release; removing it was
		// right all the same.
		b.opts.Hooks.Expired(e.expiry(key))
		return backend.ErrLeaseExpired
	}
	return nil
}

// Inspect implements backend.Backend.
func (b *Backend) Inspect(ctx context.Context, key string) (backend.LockState, error) {
	for attempt := 1; ; attempt++ {
		st, err := b.inspect(ctx, key)
		// The head is read at the revision of the first read: a compaction
		// in between drops that revision, and a new snapshot answers.
		if !compacted(err) {
			return st, err
		}
		if attempt == 3 {
			return st, fail(ctx, "inspect", err)
		}
	}
}

func (b *Backend) inspect(ctx context.Context, key string) (backend.LockState, error) {
	q := b.queue(key)
	// Keys only, then the head's record at the same revision: one
	// snapshot, without reading every waiter's record.
	resp, err := b.txn(ctx, "inspect", nil,
		[]clientv3.Op{clientv3.OpGet(q, append(clientv3.WithFirstCreate(), clientv3.WithKeysOnly())...), clientv3.OpGet(q, clientv3.WithPrefix(), clientv3.WithCountOnly())}, nil)
	if err != nil {
		return backend.LockState{}, err
	}
	st := backend.LockState{Key: key, Waiters: int(resp.Responses[1].GetResponseRange().Count)}
	first := resp.Responses[0].GetResponseRange().Kvs
	if len(first) == 0 {
		return st, nil
	}
	c, cancel := b.opCtx(ctx)
	defer cancel()
	hr, err := b.cli.Get(c, string(first[0].Key), clientv3.WithRev(resp.Header.Revision))
	if compacted(err) {
		return st, err
	}
	if err != nil {
		return st, fail(ctx, "inspect", err)
	}
	head, err := b.entryFrom(hr)
	if err != nil {
		return st, err
	}
	if head != nil && head.rec.held() {
		st.Waiters-- // the holder's entry, expired or not, is no waiter
		if !head.rec.overdue(b.opts.Clock) {
			st.Held, st.Holder = true, head.holder()
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

// Ping implements backend.Backend: a linearizable read of one key.
func (b *Backend) Ping(ctx context.Context) error {
	c, cancel := b.opCtx(ctx)
	defer cancel()
	if _, err := b.cli.Get(c, b.opts.Prefix+"ping"); err != nil {
		return fail(ctx, "ping", err)
	}
	return nil
}

// Close stops this Backend's background work. Grants stay in etcd; waiters'
// entries go with their lease within WaiterLeaseTTL if not removed first.
func (b *Backend) Close() error {
	b.cancel()
	return nil
}
