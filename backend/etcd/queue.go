package etcd

// The queue of a lock and its entries' records: the layout the package
// comment describes.

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// record is the value of a queue entry.
type record struct {
	Owner    string `json:"o,omitempty"`
	TTL      int64  `json:"t"`           // ms
	Deadline int64  `json:"d,omitempty"` // unix ms; 0 while waiting
	Value    string `json:"v,omitempty"` // an election's value; locks have none
	// S names the session a grant lives in (session.go); its Deadline then
	// only marks it granted, and the session's deadline is the real one.
	S string `json:"s,omitempty"`
	// LD is the grant's lock-delay (ms): once its deadline passed without
	// a release, the record stays, and nothing is granted in its place,
	// until the deadline plus LD is overdue.
	LD int64 `json:"ld,omitempty"`
}

func (r record) held() bool { return r.Deadline != 0 }

func (r record) deadline() time.Time { return time.UnixMilli(r.Deadline) }

// valid reports whether the holder's lease still runs, by c: what a renew
// and a release check.
func (r record) valid(c lease.Clock) bool { return r.held() && c.Valid(r.deadline()) }

// overdue reports whether the grant is no longer a holder for anyone but
// itself, by c (its deadline plus the declared skew has passed).
func (r record) overdue(c lease.Clock) bool { return r.held() && c.Overdue(r.deadline()) }

// delayEnd is when the grant's lock-delay ends: its deadline plus LD.
func (r record) delayEnd() time.Time {
	return r.deadline().Add(time.Duration(r.LD) * time.Millisecond)
}

// removable reports whether someone other than the holder may remove the
// grant, by c: its deadline plus its lock-delay plus the declared skew
// has passed.
func (r record) removable(c lease.Clock) bool { return r.held() && c.Overdue(r.delayEnd()) }

// delayed reports whether the grant expired and its lock-delay still runs:
// not a holder, and nothing is granted in its place.
func (r record) delayed(c lease.Clock) bool { return r.overdue(c) && !r.removable(c) }

// freeAt is when the grant may be removed, by c, as a time of this
// machine's timers.
func (r record) freeAt(c lease.Clock) time.Time {
	return time.Now().Add(c.Until(c.FreeAt(r.delayEnd())))
}

// delay is the lock-delay e imposes (e delayed, by c).
func (e *entry) delay(c lease.Clock) *backend.Delay {
	return &backend.Delay{Until: c.FreeAt(e.rec.delayEnd()), ExpiredToken: uint64(e.createRev)}
}

// delayMark ends the lease id of a grant asked with a lock-delay: its
// release reads the grant first, so that a late one leaves the delay in
// place; any other release is one delete. Lease ids are base64url, which
// has no '.'.
const delayMark = ".d"

// entry is a queue entry as read from etcd.
type entry struct {
	key       string
	leaseID   string // the last element of key: <seq>.<id>
	seq       int64  // its sequence number (the queue's key order)
	createRev int64
	modRev    int64
	rec       record
	readRev   int64 // the store's revision when this entry was read (lookAhead)
	sessRev   int64 // the mod revision of its session's record, once resolved; 0: gone
}

// queue is the range of key's entries: under q/ for locks, e/ for
// elections (b.space), so a lock and an election of one name never meet.
func (b *Backend) queue(key string) string { return b.opts.Prefix + b.space + key + "/" }

func (b *Backend) decode(kv []byte, k string, createRev, modRev int64) (entry, error) {
	var rec record
	if err := json.Unmarshal(kv, &rec); err != nil {
		return entry{}, fmt.Errorf("etcd: corrupt record at %q: %w", k, err)
	}
	id := k[strings.LastIndexByte(k, '/')+1:]
	return entry{key: k, leaseID: id, seq: seqOf(id), createRev: createRev, modRev: modRev, rec: rec}, nil
}

func (b *Backend) entryFrom(resp *etcdserverpb.RangeResponse) (*entry, error) {
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
		TTL: time.Duration(e.rec.TTL) * time.Millisecond, ExpiresAt: time.UnixMilli(e.rec.Deadline), Session: e.rec.S != "",
	}
}

func (e *entry) expiry(lockKey string) backend.Expiry {
	return backend.Expiry{Key: lockKey, Owner: e.rec.Owner, Token: uint64(e.createRev)}
}

func mustJSON(r record) string {
	b, _ := json.Marshal(r)
	return string(b)
}

// removeExpired deletes e if it is still the same expired entry (its
// lock-delay over: the caller checked removable).
func (b *Backend) removeExpired(ctx context.Context, adm admission, lockKey string, e *entry) error {
	ops := []clientv3.Op{clientv3.OpDelete(e.key)}
	if e.rec.S != "" {
		ops = append(ops, clientv3.OpDelete(b.sessionIndex(e.rec.S)+e.leaseID))
	}
	resp, err := b.txn(ctx, adm, "remove expired",
		append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(e.key), "=", e.modRev)}, b.sessionGuard(e)...),
		ops, nil)
	if err != nil {
		return err
	}
	if resp.Succeeded {
		b.opts.Hooks.Expired(e.expiry(lockKey))
	}
	return nil
}

// holderRecord is req's record as the holder from now on, and the etcd
// lease that will collect it after its deadline.
func (b *Backend) holderRecord(ctx context.Context, req backend.AcquireRequest, value string) (record, clientv3.LeaseID, error) {
	if req.Session != "" {
		// No lease of its own: it lives as long as the session says.
		h, s, err := b.liveSession(ctx, req.Session)
		return record{Owner: req.Owner, TTL: s.ttl, Deadline: s.deadline, Value: value, S: h, LD: req.LockDelay.Milliseconds()}, 0, err
	}
	rec := record{Owner: req.Owner, TTL: req.TTL.Milliseconds(), Deadline: b.opts.Clock.Deadline(req.TTL).UnixMilli(), Value: value, LD: req.LockDelay.Milliseconds()}
	// The garbage collector outlives the lock-delay too: the record is
	// the delay.
	gcLease, err := b.leases.get(ctx, b.opts.OpTimeout, rec.delayEnd())
	return rec, gcLease, err
}

// Entry names. An entry of lock K is q/<K>/~<seq>.<id>: id the random
// lease id, seq a number of 20 digits (so that key order is numeric order)
// that orders the queue by key. An entry is written only by a put guarded
// by "no entry at or after my name" (enqueueGuard), so entries are created
// in the order of their names: key order is create-revision order, and the
// tokens (create revisions) of a queue's entries rise along it. That makes
// every ordering question a read of a few keys: the head is the first key,
// the predecessor the last key below mine (found by sequence number, below),
// and "nothing ahead of me" is a compare over [q/<K>/, mine). Asked by create
// revision (WithFirstCreate, WithLastCreate+WithMaxCreateRev) etcd reads
// every key of the queue to answer, so each look cost O(queue) and N
// arrivals O(N²).
//
// Sequence numbers come from a hint per key (seqHints): one more than the
// last this Backend wrote or saw there, else the store's revision as last
// seen (larger than any sequence number a queue is likely to have). A put
// whose guard fails learns from its Else (the entries at or after its name,
// a few) the number to take instead. Entries of one replica's waiters are
// consecutive, so the predecessor is nearly always the entry one below.
// Names written by lockd before this layout (q/<K>/<id>, base64url, so all
// below '~') sort ahead of every numbered one: such a grant still blocks
// every newer waiter, and is renewed and released as before. An old
// replica's waiter is not ordered with new ones, though, and the two can
// wait on each other until they give up: every replica must be upgraded
// together (README).

const seqDigits = 20

// leaf is the last element of an entry's name, the grant's lease id.
func leaf(seq int64, id string) string { return fmt.Sprintf("~%0*d.%s", seqDigits, seq, id) }

// seqOf is the sequence number of an entry's leaf; 0 for a name without one.
func seqOf(leaf string) int64 {
	if len(leaf) <= seqDigits+1 || leaf[0] != '~' || leaf[seqDigits+1] != '.' {
		return 0
	}
	n, err := strconv.ParseInt(leaf[1:seqDigits+1], 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// seqPrefix is the prefix of queue q's entry names with sequence number n.
func seqPrefix(q string, n int64) string { return fmt.Sprintf("%s~%0*d.", q, seqDigits, n) }

// enqueueGuard holds when no entry of queue q is at or after the name mine:
// mine is then the queue's last name, and key order stays create order.
func enqueueGuard(q, mine string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(mine), "=", 0).WithRange(clientv3.GetPrefixRangeEnd(q))
}

// nothingAhead holds when queue q has no entry below the name mine.
func nothingAhead(q, mine string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(q), "=", 0).WithRange(mine)
}

// afterMine reads the entries at or after mine, keys only: what a failed
// enqueueGuard found (a few entries that came first).
func afterMine(q, mine string) clientv3.Op {
	return clientv3.OpGet(mine, clientv3.WithRange(clientv3.GetPrefixRangeEnd(q)), clientv3.WithKeysOnly())
}

// seqHints remembers per key the next sequence number to try. A hint for
// speed only: enqueueGuard decides. Bounded: it forgets everything at 4,096
// keys.
//
// This Backend's enqueues of one key go one at a time (turn): sent
// together, etcd may apply them in any order, and every put that lands
// after a higher number fails its guard and goes again, so a burst of k
// would cost about k²/ln k puts instead of k.
type seqHints struct {
	mu    sync.Mutex
	next  map[string]int64
	seen  atomic.Int64 // the highest store revision this Backend saw
	turns [256]chan struct{}
}

// turn waits until this Backend enqueues nothing else of key (keys share
// 256 turns by hash), and returns its end.
func (h *seqHints) turn(ctx context.Context, key string) (func(), error) {
	f := fnv.New32a()
	_, _ = f.Write([]byte(key))
	i := f.Sum32() % uint32(len(h.turns))
	h.mu.Lock()
	if h.turns[i] == nil {
		h.turns[i] = make(chan struct{}, 1)
	}
	t := h.turns[i]
	h.mu.Unlock()
	select {
	case t <- struct{}{}:
		return func() { <-t }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// take returns a sequence number for a new entry of key, and moves the hint
// past it.
func (h *seqHints) take(key string) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.next[key]
	if n == 0 {
		n = h.seen.Load() + 1
	}
	if h.next == nil || len(h.next) >= 4096 {
		h.next = map[string]int64{}
	}
	h.next[key] = n + 1
	return n
}

// untake gives back n, taken for key by a write that did not happen (a
// first try that found the key held), unless another was taken since: the
// next waiter's entry is then the one right after the holder's, and its
// first look needs no search (enqueuedLook).
func (h *seqHints) untake(key string, n int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.next[key] == n+1 {
		h.next[key] = n
	}
}

// after tells the hints that key has an entry with sequence number n, and
// that the store reached revision rev.
func (h *seqHints) after(key string, n, rev int64) {
	h.saw(rev)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.next == nil || len(h.next) >= 4096 {
		h.next = map[string]int64{}
	}
	if h.next[key] <= n {
		h.next[key] = n + 1
	}
}

func (h *seqHints) saw(rev int64) {
	for {
		cur := h.seen.Load()
		if rev <= cur || h.seen.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// retrySeq learns from the Else of a put whose enqueueGuard failed (resp,
// the read of afterMine at index i) the sequence number to try next; false
// when the guard held (another compare failed).
func (b *Backend) retrySeq(key string, resp *clientv3.TxnResponse, i int) bool {
	kvs := resp.Responses[i].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return false
	}
	top := int64(0)
	for _, kv := range kvs {
		k := string(kv.Key)
		top = max(top, seqOf(k[strings.LastIndexByte(k, '/')+1:]))
	}
	if top == 0 {
		// Only names without a number (an old replica's): go past the
		// store's revision.
		top = resp.Header.Revision
	}
	b.seqs.after(key, top, resp.Header.Revision)
	return true
}

// lookAhead reads the head of queue q (with its record) and, when myRev is
// set, the entry just ahead of mine, created at myRev (nil when none is
// ahead; pred.readRev is the revision it was seen at); errEntryLost when
// mine is gone. It only reads a few keys: the head is the queue's first key
// (limit 1) and the predecessor the entry one sequence number below mine,
// found by its name's prefix; only when that one left (a waiter gave up)
// does it read the names just below mine, a widening window at a time.
func (b *Backend) lookAhead(ctx context.Context, adm admission, q, mine string, myRev int64) (head, pred *entry, err error) {
	release, err := b.slot(ctx, adm)
	if err != nil {
		return nil, nil, err
	}
	defer release()
	c, cancel := b.opCtx(ctx)
	defer cancel()
	var seq int64
	if myRev > 0 {
		seq = seqOf(mine[len(q):])
	}
	ops := []clientv3.Op{clientv3.OpGet(q, clientv3.WithRange(clientv3.GetPrefixRangeEnd(q)), clientv3.WithLimit(1))}
	if myRev > 0 {
		ops = append(ops, clientv3.OpGet(mine, clientv3.WithKeysOnly()))
		if seq > 1 {
			ops = append(ops, clientv3.OpGet(seqPrefix(q, seq-1), clientv3.WithPrefix(), clientv3.WithLimit(1), clientv3.WithKeysOnly()))
		}
	}
	resp, err := b.cli.Txn(c).Then(ops...).Commit()
	if err != nil {
		return nil, nil, fail(ctx, "read queue", err)
	}
	b.seqs.saw(resp.Header.Revision)
	if head, err = b.entryFrom(resp.Responses[0].GetResponseRange()); err != nil {
		return nil, nil, err
	}
	if myRev > 0 {
		if self := keyOnly(resp.Responses[1].GetResponseRange()); self == nil || self.createRev != myRev {
			return nil, nil, errEntryLost
		}
		if head != nil && head.key != mine {
			if len(ops) > 2 {
				pred = keyOnly(resp.Responses[2].GetResponseRange())
			}
			if pred == nil {
				if pred, err = b.below(c, ctx, q, mine, head, seq); err != nil {
					return nil, nil, err
				}
			}
			if pred != nil && pred.readRev == 0 {
				pred.readRev = resp.Header.Revision
			}
		}
	}
	if err := b.resolve(ctx, head); err != nil {
		return nil, nil, err
	}
	return head, pred, nil
}

// below finds the last entry of q below mine (sequence number seq) when
// the one right below is gone: the names in a window below mine, widened
// until it holds one or reaches the head.
func (b *Backend) below(c, ctx context.Context, q, mine string, head *entry, seq int64) (*entry, error) {
	for width := int64(64); ; width *= 16 {
		lo := q
		if seq-width > head.seq {
			lo = seqPrefix(q, seq-width)
		}
		r, err := b.cli.Get(c, lo, clientv3.WithRange(mine), clientv3.WithKeysOnly())
		if err != nil {
			return nil, fail(ctx, "read queue", err)
		}
		if n := len(r.Kvs); n > 0 {
			kv := r.Kvs[n-1]
			return &entry{key: string(kv.Key), createRev: kv.CreateRevision, modRev: kv.ModRevision, readRev: r.Header.Revision}, nil
		}
		if lo == q {
			return nil, nil
		}
	}
}

func keyOnly(r *etcdserverpb.RangeResponse) *entry {
	if len(r.Kvs) == 0 {
		return nil
	}
	kv := r.Kvs[0]
	return &entry{key: string(kv.Key), createRev: kv.CreateRevision, modRev: kv.ModRevision}
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
	return b.entryFrom((*etcdserverpb.RangeResponse)(resp))
}

// sessionWrite is what a grant of rec at the entry key of leaseID adds to
// its transaction when it lives in a session: the session must be valid,
// and the grant goes into the session's index.
func (b *Backend) sessionWrite(rec record, key, leaseID string) ([]clientv3.Cmp, []clientv3.Op) {
	if rec.S == "" {
		return nil, nil
	}
	return []clientv3.Cmp{b.sessionValid(rec.S)}, []clientv3.Op{clientv3.OpPut(b.sessionIndex(rec.S)+leaseID, key)}
}
