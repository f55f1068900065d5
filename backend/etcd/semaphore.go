package etcd

// Counting semaphores, under <prefix>sem/<key>/.
//
// Waiters are entries q/<id> ordered by create revision, as in a lock's
// queue, each carrying the size it asks for; holders are the slot keys
// s/<k>, k in 0..permits-1, each carrying the size, the owner, the deadline
// and the permit's secret. A permit's lease id is "<secret>.<k>": renew and
// release go straight to the slot and check the secret.
//
// A grant is one transaction that puts s/<k>, guarded by:
//   - the slot being free: CreateRevision(s/<k>) = 0;
//   - no slot created since the grantor read them all: CreateRevision of
//     every s/ key ≤ that read's revision. The read checked that every live
//     slot carries the grantor's size, so permits of two sizes never hold at
//     once, and with distinct slot keys in 0..size-1 at most size exist;
//   - for a newcomer, no waiter at all (q/ empty); for a waiter, its own
//     entry still there (etcd#16221, Jepsen's etcd#11456) and nobody ahead
//     of it, and the same transaction deletes its entry.
//
// The token is the create revision of the slot key: revisions grow over the
// whole store, so tokens strictly increase over all permits of the key and
// so per slot (a freed slot key is created anew by the next grant).
//
// Expiry is the record's deadline, as for locks: whoever finds a slot whose
// deadline is overdue (lease.Clock) removes it, guarded by its mod revision,
// so a permit runs out with no lockd alive; an etcd lease from the pool
// collects the key later still. Permits in a session take its deadline
// (resolve) and are indexed under the session as lock grants are, with the
// slot's value, so that a session's Close removes exactly that permit and
// never a later holder of the same slot (session-bound permits are never
// rewritten, so the value names the permit).
//
// Waking: the waiter at the head of the line watches the s/ range and sets a
// timer at the earliest holder's expiry; every other waiter watches only the
// entry ahead of it. Nobody polls.

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

var _ backend.Semaphorer = (*Backend)(nil)

// Semaphores implements backend.Semaphorer.
func (b *Backend) Semaphores() backend.Semaphores { return semaphores{b} }

type semaphores struct{ b *Backend }

func (semaphores) Features() backend.SemaphoreFeatures {
	return backend.SemaphoreFeatures{FIFO: true, Sessions: true}
}

// semRecord is the value of a waiter (no deadline, no secret) or of a slot.
type semRecord struct {
	record
	P int    `json:"p"`           // the semaphore's size
	L string `json:"l,omitempty"` // the holder's secret; the lease id is "<L>.<slot>"
}

func semJSON(r semRecord) string {
	v, _ := json.Marshal(r)
	return string(v)
}

// semSlot is a slot key as read: entry's fields (resolve and sessionGuard
// work on it) plus the slot's own.
type semSlot struct {
	entry
	slot  int
	p     int
	l     string
	value string // as stored, for the session index
}

func (sl *semSlot) holder() backend.SemaphoreHolder {
	return backend.SemaphoreHolder{Slot: sl.slot, Owner: sl.rec.Owner, Token: uint64(sl.createRev), ExpiresAt: sl.rec.deadline()}
}

func (sl *semSlot) permit(key string) backend.Permit {
	g := sl.grant(key)
	g.LeaseID = sl.l + "." + strconv.Itoa(sl.slot)
	return backend.Permit{Grant: g, Slot: sl.slot, Permits: sl.p}
}

func (b *Backend) semBase(key string) string  { return b.opts.Prefix + "sem/" + key + "/" }
func (b *Backend) semSlots(key string) string { return b.semBase(key) + "s/" }
func (b *Backend) semLine(key string) string  { return b.semBase(key) + "q/" }

func (b *Backend) decodeSlot(kv []byte, k string, createRev, modRev int64) (semSlot, error) {
	var r semRecord
	if err := json.Unmarshal(kv, &r); err != nil {
		return semSlot{}, fmt.Errorf("etcd: corrupt semaphore record at %q: %w", k, err)
	}
	n, err := strconv.Atoi(k[strings.LastIndexByte(k, '/')+1:])
	if err != nil {
		return semSlot{}, fmt.Errorf("etcd: corrupt semaphore slot key %q", k)
	}
	return semSlot{entry: entry{key: k, createRev: createRev, modRev: modRev, rec: r.record}, slot: n, p: r.P, l: r.L, value: string(kv)}, nil
}

// semView is one read of a semaphore: every slot, the line's head (with
// its record) and length, and for a waiter its own entry and the one ahead.
type semView struct {
	rev     int64
	slots   []semSlot // resolved
	headP   int       // the size the first waiter asks for; 0 with none
	waiters int
	self    bool
	pred    *entry // keys only
}

// live returns the unexpired slots, and those anyone may remove; the
// slots of expired permits whose lock-delay still runs are in neither.
func (v semView) live(c lease.Clock) (live, overdue []semSlot) {
	for _, sl := range v.slots {
		switch {
		case sl.rec.removable(c):
			overdue = append(overdue, sl)
		case sl.rec.overdue(c):
		case sl.rec.held():
			live = append(live, sl)
		}
	}
	return live, overdue
}

// delayed returns the slots of expired permits whose lock-delay still runs.
func (v semView) delayed(c lease.Clock) []semSlot {
	var out []semSlot
	for _, sl := range v.slots {
		if sl.rec.delayed(c) {
			out = append(out, sl)
		}
	}
	return out
}

// size is the live semaphore's size: its holders', else its first
// waiter's; 0 when empty.
func (v semView) size(live []semSlot) int {
	if len(live) > 0 {
		return live[0].p
	}
	return v.headP
}

// free is the lowest slot in 0..n-1 no key occupies (expired or not: an
// expired one is removed first); -1 when none.
func (v semView) free(n int) int {
	taken := map[int]bool{}
	for _, sl := range v.slots {
		taken[sl.slot] = true
	}
	for k := 0; k < n; k++ {
		if !taken[k] {
			return k
		}
	}
	return -1
}

func (b *Backend) semRead(ctx context.Context, adm admission, key, mine string, myRev int64) (semView, error) {
	line := b.semLine(key)
	ops := []clientv3.Op{
		clientv3.OpGet(b.semSlots(key), clientv3.WithPrefix()),
		clientv3.OpGet(line, clientv3.WithFirstCreate()...),
		clientv3.OpGet(line, clientv3.WithPrefix(), clientv3.WithCountOnly()),
	}
	if myRev > 0 {
		ops = append(ops,
			clientv3.OpGet(mine, clientv3.WithKeysOnly()),
			clientv3.OpGet(line, append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(myRev-1), clientv3.WithKeysOnly())...))
	}
	resp, err := b.txn(ctx, adm, "read semaphore", nil, ops, nil)
	if err != nil {
		return semView{}, err
	}
	v := semView{rev: resp.Header.Revision, waiters: int(resp.Responses[2].GetResponseRange().Count)}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		sl, err := b.decodeSlot(kv.Value, string(kv.Key), kv.CreateRevision, kv.ModRevision)
		if err != nil {
			return semView{}, err
		}
		if err := b.resolve(ctx, &sl.entry); err != nil {
			return semView{}, err
		}
		v.slots = append(v.slots, sl)
	}
	sort.Slice(v.slots, func(i, j int) bool { return v.slots[i].slot < v.slots[j].slot })
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		var r semRecord
		if err := json.Unmarshal(kvs[0].Value, &r); err != nil {
			return semView{}, fmt.Errorf("etcd: corrupt semaphore waiter at %q: %w", kvs[0].Key, err)
		}
		v.headP = r.P
	}
	if myRev > 0 {
		if kvs := resp.Responses[3].GetResponseRange().Kvs; len(kvs) > 0 && kvs[0].CreateRevision == myRev {
			v.self = true
		}
		if kvs := resp.Responses[4].GetResponseRange().Kvs; len(kvs) > 0 {
			v.pred = &entry{key: string(kvs[0].Key), createRev: kvs[0].CreateRevision, modRev: kvs[0].ModRevision}
		}
	}
	return v, nil
}

// semRemove deletes the slot sl when it is still exactly as read (and its
// session as resolved): an expired permit, or a released one.
func (b *Backend) semRemove(ctx context.Context, adm admission, sl semSlot) (bool, error) {
	ops := []clientv3.Op{clientv3.OpDelete(sl.key)}
	if sl.rec.S != "" {
		ops = append(ops, clientv3.OpDelete(b.sessionIndex(sl.rec.S)+sl.l))
	}
	cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(sl.key), "=", sl.modRev)}, b.sessionGuard(&sl.entry)...)
	resp, err := b.txn(ctx, adm, "remove permit", cmps, ops, nil)
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// semPrune removes v's overdue permits, and takes them out of v: the
// grant's guards hold over removals (nothing was created), so the caller
// goes on from v without reading again — a handoff after an expiry costs
// no extra round trip. again is set when a removal lost a race (the slot
// changed): the caller reads again.
func (b *Backend) semPrune(ctx context.Context, adm admission, v *semView) (live []semSlot, again bool, err error) {
	live, overdue := v.live(b.opts.Clock)
	if len(overdue) == 0 {
		return live, false, nil
	}
	for _, sl := range overdue {
		ok, err := b.semRemove(ctx, adm, sl)
		if err != nil {
			return nil, false, err
		}
		again = again || !ok
	}
	v.slots = live
	return live, again, nil
}

// semHeld is the give-up of an acquire that last saw v.
func (b *Backend) semHeld(key string, v semView) error {
	live, _ := v.live(b.opts.Clock)
	he := &backend.SemaphoreHeldError{Key: key, Permits: v.size(live), Holders: []backend.SemaphoreHolder{}}
	for _, sl := range live {
		he.Holders = append(he.Holders, sl.holder())
	}
	for _, sl := range v.delayed(b.opts.Clock) {
		if d := sl.delay(b.opts.Clock); he.Delay == nil || d.Until.Before(he.Delay.Until) {
			he.Delay = d
		}
	}
	return he
}

// semGrant tries to put req's permit at slot k as last read in v; extra
// guards and ops come from the caller (a waiter's own entry). ok is false
// when a guard failed: the caller reads again.
func (b *Backend) semGrant(ctx context.Context, adm admission, req backend.SemaphoreRequest, secret string, k int, v semView, cmps []clientv3.Cmp, ops []clientv3.Op) (backend.Permit, bool, string, error) {
	rec, gcLease, err := b.holderRecord(ctx, backend.AcquireRequest{Key: req.Key, Owner: req.Owner, TTL: req.TTL, Session: req.Session, LockDelay: req.LockDelay}, "")
	if err != nil {
		return backend.Permit{}, false, "", err
	}
	slotKey := b.semSlots(req.Key) + strconv.Itoa(k)
	value := semJSON(semRecord{record: rec, P: req.Permits, L: secret})
	cmps = append(cmps,
		clientv3.Compare(clientv3.CreateRevision(slotKey), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(b.semSlots(req.Key)), "<", v.rev+1).WithPrefix())
	ops = append(ops, clientv3.OpPut(slotKey, value, clientv3.WithLease(gcLease)))
	if rec.S != "" {
		// The index names the permit by its value (never rewritten), so
		// that a Close never removes a later holder of the slot.
		cmps = append(cmps, b.sessionValid(rec.S))
		ops = append(ops, clientv3.OpPut(b.sessionIndex(rec.S)+secret, slotKey+"\n"+value))
	}
	resp, err := b.txn(ctx, adm, "grant permit", cmps, ops, nil)
	if err != nil {
		return backend.Permit{}, false, value, err
	}
	if !resp.Succeeded {
		return backend.Permit{}, false, value, nil
	}
	sl := semSlot{entry: entry{key: slotKey, createRev: resp.Header.Revision, modRev: resp.Header.Revision, rec: rec}, slot: k, p: req.Permits, l: secret}
	if rec.S != "" {
		if _, s, err := b.liveSession(ctx, req.Session); err == nil {
			sl.rec.Deadline, sl.rec.TTL = s.deadline, s.ttl
		}
	}
	return sl.permit(req.Key), true, value, nil
}

// semMismatch refuses req when the live size differs.
func semMismatch(req backend.SemaphoreRequest, cur int) error {
	if cur != 0 && cur != req.Permits {
		return &backend.PermitsMismatchError{Key: req.Key, Permits: cur}
	}
	return nil
}

// Acquire implements backend.Semaphores.
func (s semaphores) Acquire(ctx context.Context, req backend.SemaphoreRequest) (backend.Permit, error) {
	b := s.b
	if err := ctx.Err(); err != nil {
		return backend.Permit{}, err
	}
	secret := lease.NewID()
	giveUp := time.Now().Add(req.Wait)
	for {
		v, err := b.semRead(ctx, atOnce, req.Key, "", 0)
		if err != nil {
			return backend.Permit{}, err
		}
		live, again, err := b.semPrune(ctx, atOnce, &v)
		if err != nil {
			return backend.Permit{}, err
		}
		if again {
			continue
		}
		if err := semMismatch(req, v.size(live)); err != nil {
			return backend.Permit{}, err
		}
		if k := v.free(req.Permits); k >= 0 && v.waiters == 0 {
			p, ok, value, err := b.semGrant(ctx, atOnce, req, secret, k, v,
				[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(b.semLine(req.Key)), "=", 0).WithPrefix()}, nil)
			if err != nil {
				b.semUndo(req.Key, k, value)
				return backend.Permit{}, err
			}
			if ok {
				return p, nil
			}
			continue // someone came first: look again
		}
		if req.Wait <= 0 {
			return backend.Permit{}, b.semHeld(req.Key, v)
		}
		return b.semWait(ctx, req, secret, giveUp)
	}
}

// semUndo removes a permit whose grant may have committed though its reply
// was lost (the caller gives up): only if it is exactly the one written.
func (b *Backend) semUndo(key string, k int, value string) {
	if value == "" {
		return
	}
	c, cancel := context.WithTimeout(b.life, b.opts.OpTimeout)
	defer cancel()
	slotKey := b.semSlots(key) + strconv.Itoa(k)
	ops := []clientv3.Op{clientv3.OpDelete(slotKey)}
	var r semRecord
	if json.Unmarshal([]byte(value), &r) == nil && r.S != "" {
		ops = append(ops, clientv3.OpDelete(b.sessionIndex(r.S)+r.L))
	}
	_, _ = b.cli.Txn(c).If(clientv3.Compare(clientv3.Value(slotKey), "=", value)).Then(ops...).Commit()
}

// semWait queues req and waits for its turn and a free slot.
func (b *Backend) semWait(ctx context.Context, req backend.SemaphoreRequest, secret string, giveUp time.Time) (p backend.Permit, err error) {
	line := b.semLine(req.Key)
	mine := line + secret
	adm := contended(giveUp)
	wl, err := b.waiterLease(ctx)
	if err != nil {
		return backend.Permit{}, err
	}
	c, cancel := b.opCtx(ctx)
	put, err := b.cli.Put(c, mine, semJSON(semRecord{record: record{Owner: req.Owner, TTL: req.TTL.Milliseconds()}, P: req.Permits}), clientv3.WithLease(wl))
	cancel()
	var tried struct {
		k     int
		value string
	}
	defer func() {
		if err == nil {
			return
		}
		// Leave nothing behind: not the entry, not a grant whose reply
		// was lost.
		c, cancel := context.WithTimeout(b.life, b.opts.OpTimeout)
		defer cancel()
		_, _ = b.cli.Delete(c, mine)
		b.semUndo(req.Key, tried.k, tried.value)
	}()
	if err != nil {
		return backend.Permit{}, fail(ctx, "enqueue", err)
	}
	myRev := put.Header.Revision
	wctx := ctx
	if req.Session != "" {
		// A wait in a session ends when the session does (etcd#19597).
		sctx, stop := b.watchSession(ctx, sessionHash(req.Session))
		defer stop()
		defer func() { err = sessionEnded(ctx, sctx, err) }()
		wctx = sctx
	}
	for {
		if err := wctx.Err(); err != nil {
			return backend.Permit{}, err
		}
		v, err := b.semRead(wctx, adm, req.Key, mine, myRev)
		if err != nil {
			return backend.Permit{}, err
		}
		if !v.self {
			return backend.Permit{}, errEntryLost
		}
		live, again, err := b.semPrune(wctx, adm, &v)
		if err != nil {
			return backend.Permit{}, err
		}
		if again {
			continue
		}
		if len(live) > 0 {
			if err := semMismatch(req, live[0].p); err != nil {
				return backend.Permit{}, err
			}
		}
		var (
			watch  string
			prefix bool
			expiry time.Time
		)
		if v.pred == nil {
			// The head: take a free slot, or wait for one.
			if k := v.free(req.Permits); k >= 0 {
				tried.k = k
				p, ok, value, err := b.semGrant(wctx, adm, req, secret, k, v, []clientv3.Cmp{
					clientv3.Compare(clientv3.CreateRevision(mine), "=", myRev),
					clientv3.Compare(clientv3.CreateRevision(line), ">", myRev-1).WithPrefix(),
				}, []clientv3.Op{clientv3.OpDelete(mine)})
				tried.value = value
				if err != nil {
					return backend.Permit{}, err
				}
				if ok {
					return p, nil
				}
				tried.value = ""
				continue
			}
			watch, prefix = b.semSlots(req.Key), true
			for _, sl := range append(live, v.delayed(b.opts.Clock)...) {
				at := sl.rec.freeAt(b.opts.Clock)
				if expiry.IsZero() || at.Before(expiry) {
					expiry = at
				}
			}
		} else {
			watch = v.pred.key
		}
		if !time.Now().Before(giveUp) {
			return backend.Permit{}, b.semHeld(req.Key, v)
		}
		if err := b.semWatch(wctx, watch, prefix, v.rev, expiry, giveUp); err != nil {
			return backend.Permit{}, err
		}
	}
}

// semWatch returns when key (or the range it prefixes) changes after rev,
// at expiry (if set), at giveUp, or with ctx's error.
func (b *Backend) semWatch(ctx context.Context, key string, prefix bool, rev int64, expiry, giveUp time.Time) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithRev(rev + 1)}
	if prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	wch := b.cli.Watch(wctx, key, opts...)
	return b.awaitChange(ctx, wch, expiry, giveUp)
}

// semLease splits a permit's lease id into its secret and slot.
func semLease(leaseID string) (secret string, slot int, ok bool) {
	i := strings.LastIndexByte(leaseID, '.')
	if i <= 0 || !lease.ValidID(leaseID) {
		return "", 0, false
	}
	n, err := strconv.Atoi(leaseID[i+1:])
	if err != nil || n < 0 || n >= backend.MaxPermits || strconv.Itoa(n) != leaseID[i+1:] {
		return "", 0, false
	}
	return leaseID[:i], n, true
}

// semGet reads the slot leaseID names; nil when it is not that permit's.
func (b *Backend) semGet(ctx context.Context, key, leaseID string) (*semSlot, error) {
	secret, k, ok := semLease(leaseID)
	if !ok {
		return nil, nil
	}
	c, cancel := b.opCtx(ctx)
	defer cancel()
	resp, err := b.cli.Get(c, b.semSlots(key)+strconv.Itoa(k))
	if err != nil {
		return nil, fail(ctx, "read permit", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	kv := resp.Kvs[0]
	sl, err := b.decodeSlot(kv.Value, string(kv.Key), kv.CreateRevision, kv.ModRevision)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare([]byte(sl.l), []byte(secret)) != 1 {
		return nil, nil
	}
	if err := b.resolve(ctx, &sl.entry); err != nil {
		return nil, err
	}
	return &sl, nil
}

// Renew implements backend.Semaphores.
func (s semaphores) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.Permit, error) {
	b := s.b
	for attempt := 0; attempt < 3; attempt++ {
		sl, err := b.semGet(ctx, key, leaseID)
		if err != nil {
			return backend.Permit{}, err
		}
		if sl == nil || !sl.rec.held() {
			return backend.Permit{}, backend.ErrLeaseExpired
		}
		if sl.rec.S != "" && sl.rec.valid(b.opts.Clock) {
			return backend.Permit{}, backend.ErrSessionBound
		}
		if !sl.rec.valid(b.opts.Clock) {
			if sl.rec.removable(b.opts.Clock) {
				_, _ = b.semRemove(ctx, atOnce, *sl)
			}
			return backend.Permit{}, backend.ErrLeaseExpired
		}
		rec := sl.rec
		if ttl > 0 {
			rec.TTL = ttl.Milliseconds()
		}
		rec.Deadline = b.opts.Clock.Deadline(time.Duration(rec.TTL) * time.Millisecond).UnixMilli()
		gcLease, err := b.leases.get(ctx, b.opts.OpTimeout, rec.delayEnd())
		if err != nil {
			return backend.Permit{}, err
		}
		resp, err := b.txn(ctx, atOnce, "renew permit",
			[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(sl.key), "=", sl.modRev)},
			[]clientv3.Op{clientv3.OpPut(sl.key, semJSON(semRecord{record: rec, P: sl.p, L: sl.l}), clientv3.WithLease(gcLease))}, nil)
		if err != nil {
			return backend.Permit{}, err
		}
		if resp.Succeeded {
			sl.rec = rec
			return sl.permit(key), nil
		}
	}
	return backend.Permit{}, fmt.Errorf("%w: permit renew kept racing with other writers", backend.ErrUnavailable)
}

// Release implements backend.Semaphores: the slot goes, guarded by its mod
// revision; a permit that had already run out goes too, but the caller is
// told it no longer held.
func (s semaphores) Release(ctx context.Context, key, leaseID string) error {
	b := s.b
	for attempt := 0; attempt < 3; attempt++ {
		sl, err := b.semGet(ctx, key, leaseID)
		if err != nil {
			return err
		}
		if sl == nil || !sl.rec.held() {
			return backend.ErrLeaseExpired
		}
		if !sl.rec.valid(b.opts.Clock) && !sl.rec.removable(b.opts.Clock) {
			// Expired inside its lock-delay: the slot stays delayed.
			return backend.ErrLeaseExpired
		}
		ok, err := b.semRemove(ctx, atOnce, *sl)
		if err != nil {
			return err
		}
		if !ok {
			continue // renewed or removed in between: look again
		}
		if !sl.rec.valid(b.opts.Clock) {
			return backend.ErrLeaseExpired
		}
		return nil
	}
	return fmt.Errorf("%w: permit release kept racing with other writers", backend.ErrUnavailable)
}

// Inspect implements backend.Semaphores.
func (s semaphores) Inspect(ctx context.Context, key string) (backend.SemaphoreState, error) {
	b := s.b
	v, err := b.semRead(ctx, atOnce, key, "", 0)
	if err != nil {
		return backend.SemaphoreState{}, err
	}
	live, _ := v.live(b.opts.Clock)
	st := backend.SemaphoreState{Key: key, Permits: v.size(live), Waiters: v.waiters, Holders: []backend.SemaphoreHolder{}}
	for _, sl := range live {
		st.Holders = append(st.Holders, sl.holder())
	}
	for _, sl := range v.delayed(b.opts.Clock) {
		st.Delayed = append(st.Delayed, backend.SlotDelay{Slot: sl.slot, Delay: *sl.delay(b.opts.Clock)})
	}
	return st, nil
}
