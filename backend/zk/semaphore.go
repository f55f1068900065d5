package zk

// Counting semaphores, in their own namespace (Curator's
// InterProcessSemaphoreV2 shape, with lockd's queue and node-data leases):
//
//	<Root>/_sem/<key>                          container node; its data version is the grant gate
//	<Root>/_sem/<key>/_c_<hash>-...-lock-<seq>  a waiter: a lock queue's node name (node.go), data: its size
//	<Root>/_sem/<key>/_s_<k>                   the permit holding slot k: semData
//
// A permit is the slot node _s_<k>, k in 0..size-1, created by the grant
// and deleted by its release or, once its deadline is overdue (lease.Clock),
// by whoever meets it (versioned, so a renew in between wins): expiry is
// state in the store, and a slot frees with its granter dead. A slot's name
// is fixed, so two permits never share one (the create fails). The token is
// the slot node's czxid, the zxid of the grant: zxids grow over the whole
// ensemble, so tokens strictly increase over every permit of the key, and so
// per slot.
//
// Every grant is one multi-op that also sets the container's data at the
// version the grantor listed it with (getChildren returns that version with
// the children, in one read): grants are serialised, and each was decided on
// the exact set of slots it saw (removals in between only free slots). So
// the permits that hold all carry one size, the size of the grant that saw
// none, and never more of them than that size. (The gate would be fooled
// only if the container were reaped and recreated, and then granted as many
// times as before, between a grantor's listing and its multi-op.)
//
// Waiters queue as a lock's do: sequential nodes whose names carry the
// protected hash of the permit's secret (a create whose reply was lost is
// found again by it), the TTL, the end of the wait plus grace (after which
// the node counts as abandoned) and the owner. A newcomer is granted at once
// only when no live waiter is in line; the head of the line takes the lowest
// free slot in the grant's multi-op, which also deletes its waiter node. The
// head watches every slot (a release or a renew fires) and sets a timer at
// the earliest holder's deadline plus the skew; every other waiter watches
// only the deletion of the live waiter right ahead of it, with a timer at
// that one's abandonment. Nobody polls.
//
// A permit may live in a session: its slot node names the session, its
// deadline is the session's (read with it), and the session's index holds
// the slot, so that Close releases exactly that permit (the index entry and
// the slot node's hash must match).

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

var _ backend.Semaphorer = (*Backend)(nil)

const (
	semDir     = "/_sem"
	slotPrefix = "_s_"
)

// Semaphores implements backend.Semaphorer.
func (b *Backend) Semaphores() backend.Semaphores { return semaphores{b.semq} }

// semaphores runs on q, the Backend whose keys live under _sem.
type semaphores struct{ q *Backend }

func (semaphores) Features() backend.SemaphoreFeatures {
	return backend.SemaphoreFeatures{FIFO: true, Sessions: true}
}

// semData is a slot node's data, and (TTL and P only) a waiter's.
type semData struct {
	Deadline int64  `json:"deadline_ms,omitempty"` // Unix ms; the session's when S is set
	TTL      int64  `json:"ttl_ms"`
	P        int    `json:"p"`                  // the semaphore's size
	Owner    string `json:"owner,omitempty"`    // a holder's
	H        string `json:"h,omitempty"`        // nodeHash of the permit's secret
	S        string `json:"s,omitempty"`        // the session's hash, or ""
	D        int64  `json:"delay_ms,omitempty"` // the permit's lock-delay
}

func (d semData) encode() []byte {
	raw, _ := json.Marshal(d) // plain struct: cannot fail
	return raw
}

// semSlot is a slot node as read, its session resolved.
type semSlot struct {
	k        int
	d        semData
	st       *zk.Stat
	sessVer  int32
	sessGone bool
}

func (sl semSlot) deadline() time.Time        { return time.UnixMilli(sl.d.Deadline) }
func (sl semSlot) valid(c lease.Clock) bool   { return c.Valid(sl.deadline()) }
func (sl semSlot) overdue(c lease.Clock) bool { return c.Overdue(sl.deadline()) }

// removable: the permit's deadline plus its lock-delay is overdue; until
// then an expired permit holds its slot, delayed.
func (sl semSlot) removable(c lease.Clock) bool { return c.Overdue(sl.freeFrom()) }

// freeFrom is the deadline plus the lock-delay.
func (sl semSlot) freeFrom() time.Time {
	return sl.deadline().Add(time.Duration(sl.d.D) * time.Millisecond)
}

// delay is the lock-delay in force on sl, or nil.
func (sl semSlot) delay(c lease.Clock) *backend.Delay {
	if !sl.overdue(c) || sl.removable(c) {
		return nil
	}
	return &backend.Delay{Until: c.FreeAt(sl.freeFrom()), ExpiredToken: uint64(sl.st.Czxid)}
}
func slotName(k int) string { return slotPrefix + strconv.Itoa(k) }
func (sl semSlot) holder() backend.SemaphoreHolder {
	return backend.SemaphoreHolder{Slot: sl.k, Owner: sl.d.Owner, Token: uint64(sl.st.Czxid), ExpiresAt: sl.deadline()}
}

func (sl semSlot) permit(key, secret string) backend.Permit {
	return backend.Permit{Grant: backend.Grant{
		Key: key, LeaseID: secret + "." + strconv.Itoa(sl.k), Token: uint64(sl.st.Czxid), Owner: sl.d.Owner,
		TTL: time.Duration(sl.d.TTL) * time.Millisecond, ExpiresAt: sl.deadline(), Session: sl.d.S != "",
	}, Slot: sl.k, Permits: sl.d.P}
}

// sessionGuard checks, in the multi-op that removes sl as expired, that its
// session is still as read.
func (b *Backend) slotSessionGuard(sl semSlot) []any {
	if sl.d.S == "" || sl.sessGone {
		return nil
	}
	return []any{&zk.CheckVersionRequest{Path: b.sessionPath(sl.d.S), Version: sl.sessVer}}
}

// semView is one read of a semaphore.
type semView struct {
	exists  bool
	ver     int32     // the container's data version, as listed
	slots   []semSlot // by slot number; those read
	waiters []child   // in sequence order
}

// decodeSlot reads a slot node's data and resolves its session.
func (b *Backend) decodeSlot(ctx context.Context, k int, raw []byte, st *zk.Stat) (semSlot, error) {
	sl := semSlot{k: k, st: st}
	if err := json.Unmarshal(raw, &sl.d); err != nil {
		return sl, fmt.Errorf("zk: slot node %d holds no lockd data: %w", k, err)
	}
	if sl.d.S == "" {
		return sl, nil
	}
	sd, sst, err := b.readSession(ctx, sl.d.S)
	switch {
	case errors.Is(err, zk.ErrNoNode):
		sl.d.Deadline, sl.sessGone = 1, true
	case err != nil:
		return sl, err
	default:
		sl.d.Deadline, sl.d.TTL, sl.sessVer = sd.Deadline, sd.TTL, sst.Version
	}
	return sl, nil
}

// semGetSlot reads slot k of kp; zk.ErrNoNode when it is free.
func (b *Backend) semGetSlot(ctx context.Context, kp string, k int) (semSlot, error) {
	r, err := b.readRaw(ctx, kp+"/"+slotName(k))
	if err != nil {
		return semSlot{}, err
	}
	return b.decodeSlot(ctx, k, r.raw, r.stat)
}

// semRead lists the semaphore at kp and reads its slots (at once).
func (b *Backend) semRead(ctx context.Context, kp string) (semView, error) {
	type listed struct {
		names []string
		st    *zk.Stat
	}
	l, err := call(ctx, func() (listed, error) {
		names, st, err := b.conn.Children(kp)
		return listed{names, st}, err
	})
	if errors.Is(err, zk.ErrNoNode) {
		return semView{}, nil
	}
	if err != nil {
		return semView{}, err
	}
	v := semView{exists: true, ver: l.st.Version}
	var ks []int
	for _, n := range l.names {
		if s, ok := strings.CutPrefix(n, slotPrefix); ok {
			if k, err := strconv.Atoi(s); err == nil && k >= 0 && slotName(k) == n {
				ks = append(ks, k)
			}
			continue
		}
		if c, ok := parseChild(n); ok {
			v.waiters = append(v.waiters, c)
		}
	}
	sort.Slice(v.waiters, func(i, j int) bool { return v.waiters[i].seq < v.waiters[j].seq })
	sort.Ints(ks)
	slots := make([]semSlot, len(ks))
	errs := make([]error, len(ks))
	var wg sync.WaitGroup
	for i, k := range ks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots[i], errs[i] = b.semGetSlot(ctx, kp, k)
		}()
	}
	wg.Wait()
	for i := range ks {
		switch {
		case errors.Is(errs[i], zk.ErrNoNode):
			// Freed since the listing.
		case errs[i] != nil:
			return semView{}, errs[i]
		default:
			v.slots = append(v.slots, slots[i])
		}
	}
	return v, nil
}

// semRemove deletes slot sl if it is still exactly as read (and its session
// too), with its session's index entry.
func (b *Backend) semRemove(ctx context.Context, kp string, sl semSlot) error {
	ops := append([]any{&zk.DeleteRequest{Path: kp + "/" + slotName(sl.k), Version: sl.st.Version}}, b.slotSessionGuard(sl)...)
	_, err := call(ctx, func() ([]zk.MultiResponse, error) { return b.conn.Multi(ops...) })
	if err == nil && sl.d.S != "" && sl.d.H != "" {
		b.dropIndex(child{name: protectedPrefix + sl.d.H, session: sl.d.S})
	}
	return err
}

// semPrune removes v's permits whose deadline and lock-delay are overdue and
// takes them out of v; again is set when a removal lost a race (the caller
// reads again). Delayed permits stay in v: their slots are not free.
func (b *Backend) semPrune(ctx context.Context, kp string, v *semView) (again bool, err error) {
	live := v.slots[:0:0]
	for _, sl := range v.slots {
		if !sl.removable(b.clock) {
			live = append(live, sl)
			continue
		}
		if err := b.semRemove(ctx, kp, sl); err != nil {
			if !isConflict(err) {
				return false, err
			}
			again = true
		}
	}
	v.slots = live
	return again, nil
}

// liveWaiters are v's waiters not abandoned.
func (v semView) liveWaiters(c lease.Clock) []child {
	var out []child
	for _, w := range v.waiters {
		if !w.abandoned(c) {
			out = append(out, w)
		}
	}
	return out
}

// size is the live semaphore's size: its holders', else its first live
// waiter's (read from its node); 0 when empty.
func (b *Backend) semSize(ctx context.Context, kp string, v semView) (int, error) {
	for _, sl := range v.slots {
		if !sl.overdue(b.clock) {
			return sl.d.P, nil // delayed permits are not live
		}
	}
	for _, w := range v.liveWaiters(b.clock) {
		r, err := b.readRaw(ctx, kp+"/"+w.name)
		if errors.Is(err, zk.ErrNoNode) {
			continue // left meanwhile
		}
		if err != nil {
			return 0, err
		}
		var d semData
		if json.Unmarshal(r.raw, &d) == nil && d.P > 0 {
			return d.P, nil
		}
	}
	return 0, nil
}

// free is the lowest slot in 0..n-1 that no node holds; -1 when none.
func (v semView) free(n int) int {
	taken := make(map[int]bool, len(v.slots))
	for _, sl := range v.slots {
		taken[sl.k] = true
	}
	for k := 0; k < n; k++ {
		if !taken[k] {
			return k
		}
	}
	return -1
}

func (b *Backend) semHeld(key string, size int, v semView) error {
	he := &backend.SemaphoreHeldError{Key: key, Permits: size, Holders: []backend.SemaphoreHolder{}}
	for _, sl := range v.slots {
		if d := sl.delay(b.clock); d != nil {
			if he.Delay == nil || d.Until.Before(he.Delay.Until) {
				he.Delay = d
			}
			continue
		}
		if !sl.overdue(b.clock) {
			he.Holders = append(he.Holders, sl.holder())
		}
	}
	return he
}

func semMismatch(req backend.SemaphoreRequest, cur int) error {
	if cur != 0 && cur != req.Permits {
		return &backend.PermitsMismatchError{Key: req.Key, Permits: cur}
	}
	return nil
}

// semAcquirer is one Acquire call.
type semAcquirer struct {
	b       *Backend
	req     backend.SemaphoreRequest
	kp      string
	secret  string
	sess    string // the session's hash, or ""
	waitEnd time.Time
	name    string // our waiter node, once it exists
	unknown bool   // a create's reply was lost: our waiter node may exist
	tried   int    // a slot whose grant's outcome is unknown; -1 when none
}

// errConflict: the semaphore changed under a write; read it again.
var errConflict = errors.New("changed meanwhile")

// grant makes req's permit at slot k, as last read in v: one multi-op that
// sets the gate at v's version, creates the slot node and, for a waiter,
// deletes its node. errConflict when a guard failed.
func (a *semAcquirer) grant(ctx context.Context, k int, v semView) (backend.Permit, error) {
	b := a.b
	d := semData{TTL: a.req.TTL.Milliseconds(), P: a.req.Permits, Owner: a.req.Owner, H: nodeHash(a.secret), D: a.req.LockDelay.Milliseconds()}
	ops := []any{&zk.SetDataRequest{Path: a.kp, Data: nil, Version: v.ver}}
	var sd sessionData
	if a.sess != "" {
		var (
			sst *zk.Stat
			err error
		)
		sd, sst, err = b.readSession(ctx, a.sess)
		if errors.Is(err, zk.ErrNoNode) || err == nil && !b.clock.Valid(time.UnixMilli(sd.Deadline)) {
			return backend.Permit{}, fmt.Errorf("zk semaphore acquire %q: %w", a.req.Key, backend.ErrSessionExpired)
		}
		if err != nil {
			return backend.Permit{}, err
		}
		d.S, d.TTL = a.sess, 0
		idx, _ := json.Marshal(indexEntry{Key: a.req.Key, Sem: true, Slot: k})
		sp := b.sessionPath(a.sess)
		ops = append(ops, &zk.CheckVersionRequest{Path: sp, Version: sst.Version},
			&zk.CreateRequest{Path: sp + "/" + d.H, Data: idx, Acl: b.acl, Flags: zk.FlagPersistent})
	} else {
		d.Deadline = b.clock.Deadline(a.req.TTL).UnixMilli()
	}
	ops = append(ops, &zk.CreateRequest{Path: a.kp + "/" + slotName(k), Data: d.encode(), Acl: b.acl, Flags: zk.FlagPersistent})
	if a.name != "" {
		ops = append(ops, &zk.DeleteRequest{Path: a.kp + "/" + a.name, Version: 0})
	}
	res, err := call(ctx, func() ([]zk.MultiResponse, error) { return b.conn.Multi(ops...) })
	if isConflict(err) {
		return backend.Permit{}, errConflict
	}
	if err != nil {
		a.tried = k // it may have landed
		return backend.Permit{}, err
	}
	if a.name != "" {
		a.name = ""
	}
	st := &zk.Stat{Czxid: res[0].Stat.Mzxid} // every op of a multi-op has its zxid
	sl := semSlot{k: k, d: d, st: st}
	if a.sess != "" {
		// The multi-op checked the session is still as read.
		sl.d.Deadline, sl.d.TTL = sd.Deadline, sd.TTL
	}
	return sl.permit(a.req.Key, a.secret), nil
}

// Acquire implements backend.Semaphores.
func (s semaphores) Acquire(ctx context.Context, req backend.SemaphoreRequest) (backend.Permit, error) {
	if err := ctx.Err(); err != nil {
		return backend.Permit{}, err
	}
	b := s.q
	a := &semAcquirer{b: b, req: req, kp: b.keyPath(req.Key), secret: lease.NewID(), waitEnd: time.Now().Add(req.Wait), tried: -1}
	if req.Session != "" {
		if !lease.ValidID(req.Session) {
			return backend.Permit{}, backend.ErrSessionExpired
		}
		a.sess = sessionHash(req.Session)
	}
	return inSession(ctx, b, a.sess, req.Wait, fmt.Sprintf("zk semaphore acquire %q", req.Key), a.run)
}

// run retries steps while ZooKeeper fails and the wait lasts.
func (a *semAcquirer) run(ctx context.Context) (backend.Permit, error) {
	return runSteps(ctx, a.b, a.waitEnd, a.step, a.fail, a.fail)
}

// fail ends an acquire that got no permit: its waiter node and any permit
// whose grant's reply was lost go, now or in the background.
func (a *semAcquirer) fail(err error) error {
	refused := errors.Is(err, backend.ErrHeld) || errors.Is(err, backend.ErrPermitsMismatch) || errors.Is(err, backend.ErrSessionExpired)
	if !isCtx(err) && !refused && !errors.Is(err, backend.ErrUnavailable) {
		err = unavailable("semaphore acquire", err)
	}
	if a.name == "" && !a.unknown && a.tried < 0 {
		return err
	}
	cleanup, cancel := context.WithTimeout(a.b.life, 5*time.Second)
	defer cancel()
	left := true
	if a.name != "" {
		derr := a.b.delete(cleanup, a.kp+"/"+a.name, 0)
		left = derr == nil || errors.Is(derr, zk.ErrNoNode)
	}
	if a.tried >= 0 {
		left = a.b.semUndo(cleanup, a.kp, a.tried, nodeHash(a.secret)) == nil && left
	}
	if !left || a.unknown {
		a.b.semCleanupLater(a.kp, a.secret, a.tried)
	}
	return err
}

// semUndo removes slot k if it is the permit of the secret hashed h.
func (b *Backend) semUndo(ctx context.Context, kp string, k int, h string) error {
	if k < 0 {
		return nil
	}
	sl, err := b.semGetSlot(ctx, kp, k)
	if errors.Is(err, zk.ErrNoNode) {
		return nil
	}
	if err != nil {
		return err
	}
	if sl.d.H != h {
		return nil
	}
	err = b.semRemove(ctx, kp, semSlot{k: k, d: sl.d, st: sl.st}) // no session guard: ours goes anyway
	if errors.Is(err, zk.ErrNoNode) {
		return nil
	}
	return err
}

// semCleanupLater removes, in the background, our waiter node and our
// permit at slot k (if any) once ZooKeeper answers: a create or grant whose
// reply was lost may have landed, or may still be on its way.
func (b *Backend) semCleanupLater(kp, secret string, k int) {
	b.cleanupUntilGone(func(ctx context.Context) (bool, error) {
		name, err := b.findNode(ctx, kp, protected(secret))
		if err == nil && name != "" {
			err = b.delete(ctx, kp+"/"+name, 0)
		}
		if err == nil {
			err = b.semUndo(ctx, kp, k, nodeHash(secret))
		}
		return name != "", err
	})
}

// step makes one pass: read the semaphore, and either grant, clear what is
// overdue, queue, give up, or wait for a change. done reports the acquire
// over (granted, or failed with err); otherwise err, if any, is a ZooKeeper
// failure to retry.
func (a *semAcquirer) step(ctx context.Context) (p backend.Permit, done bool, err error) {
	b := a.b
	if a.tried >= 0 {
		// A grant whose reply was lost may have landed: then it is ours.
		sl, err := b.semGetSlot(ctx, a.kp, a.tried)
		if err != nil && !errors.Is(err, zk.ErrNoNode) {
			return p, false, err
		}
		if err == nil && sl.d.H == nodeHash(a.secret) {
			if !sl.valid(b.clock) {
				return p, false, nil // run out already: the next read removes it once overdue
			}
			a.tried, a.name = -1, ""
			return sl.permit(a.req.Key, a.secret), true, nil
		}
		a.tried = -1
	}
	if a.unknown {
		name, err := b.findNode(ctx, a.kp, protected(a.secret))
		if err != nil {
			return p, false, err
		}
		a.name, a.unknown = name, false
	}
	v, err := b.semRead(ctx, a.kp)
	if err != nil {
		return p, false, err
	}
	if !v.exists {
		return p, false, b.ensureKey(ctx, a.kp)
	}
	if again, err := b.semPrune(ctx, a.kp, &v); err != nil || again {
		return p, false, err
	}
	size, err := b.semSize(ctx, a.kp, v)
	if err != nil {
		return p, false, err
	}
	if err := semMismatch(a.req, size); err != nil {
		return p, true, err
	}
	i := -1
	if a.name != "" {
		i = indexOf(v.waiters, a.name)
		if i < 0 {
			// Our node is gone: removed as abandoned by a replica whose
			// clock runs ahead, or by hand. Queue again while the wait
			// lasts.
			a.name = ""
		}
	}
	// The live waiter right ahead of us (everyone in line, for a newcomer),
	// clearing abandoned ones on the way.
	ahead := v.waiters
	if i >= 0 {
		ahead = v.waiters[:i]
	}
	var pred *child
	for j := len(ahead) - 1; j >= 0; j-- {
		if !ahead[j].abandoned(b.clock) {
			pred = &ahead[j]
			break
		}
		_ = b.delete(ctx, a.kp+"/"+ahead[j].name, 0) // never written: version 0; a miss only leaves it to the next
	}
	waiting := time.Now().Before(a.waitEnd)
	if pred == nil {
		if k := v.free(a.req.Permits); k >= 0 {
			p, err := a.grant(ctx, k, v)
			if errors.Is(err, errConflict) {
				return p, false, nil
			}
			if errors.Is(err, backend.ErrSessionExpired) {
				return p, true, err
			}
			return p, err == nil, err
		}
	}
	if !waiting {
		if err := b.sessionOver(ctx, a.sess, "semaphore acquire", a.req.Key); err != nil {
			return p, true, err
		}
		return p, true, b.semHeld(a.req.Key, size, v)
	}
	if a.name == "" {
		return p, false, a.queue(ctx)
	}
	// Wait: the head for any slot to change (or the earliest holder's
	// expiry), anyone else for the waiter ahead to go.
	wake := make(chan struct{}, 1)
	wctx, stop := context.WithCancel(ctx) // ends the forwarding of this step's watches
	defer stop()
	var expiry time.Time
	if pred == nil {
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			gone bool
			werr error
		)
		for _, sl := range v.slots {
			at := time.Now().Add(b.clock.Until(b.clock.FreeAt(sl.freeFrom())))
			if expiry.IsZero() || at.Before(expiry) {
				expiry = at
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				type res struct {
					ok bool
					ch <-chan zk.Event
				}
				r, err := call(ctx, func() (res, error) {
					ok, _, ch, err := b.conn.ExistsW(a.kp + "/" + slotName(sl.k))
					return res{ok, ch}, err
				})
				if err != nil || !r.ok {
					mu.Lock()
					gone, werr = true, err
					mu.Unlock()
					return
				}
				go forward(wctx, r.ch, wake)
			}()
		}
		wg.Wait()
		if gone {
			return p, false, werr // freed since the read (look again), or ZooKeeper failed
		}
	} else {
		ch, err := b.watchDeletion(ctx, a.kp+"/"+pred.name)
		if errors.Is(err, zk.ErrNoNode) {
			return p, false, nil
		}
		if err != nil {
			return p, false, err
		}
		go forward(wctx, ch, wake)
		expiry = time.Now().Add(b.clock.Until(b.clock.FreeAt(time.UnixMilli(pred.waitUntil))))
	}
	var timer <-chan time.Time
	if !expiry.IsZero() {
		t := time.NewTimer(time.Until(expiry) + time.Millisecond)
		defer t.Stop()
		timer = t.C
	}
	waitOver := time.NewTimer(time.Until(a.waitEnd))
	defer waitOver.Stop()
	select {
	case <-wake:
		b.wakes.Add(1)
	case <-timer:
	case <-waitOver.C:
	case <-ctx.Done():
		return p, true, ctx.Err()
	case <-b.life.Done():
		return p, true, errClosed
	}
	return p, false, nil
}

// forward signals wake when a one-shot watch fires (or ctx ends).
func forward(ctx context.Context, ch <-chan zk.Event, wake chan<- struct{}) {
	select {
	case <-ch:
		select {
		case wake <- struct{}{}:
		default:
		}
	case <-ctx.Done():
	}
}

// queue creates our waiter node. When the reply to the create is lost, the
// node may exist all the same: the next step looks for it by its protected
// prefix before creating another.
func (a *semAcquirer) queue(ctx context.Context) error {
	b := a.b
	waitUntil := b.clock.Now().Add(time.Until(a.waitEnd) + b.grace)
	name := nodeName(a.secret, a.req.TTL, waitUntil, a.req.Owner, "")
	data := semData{TTL: a.req.TTL.Milliseconds(), P: a.req.Permits}.encode()
	p, err := call(ctx, func() (string, error) { return b.conn.Create(a.kp+"/"+name, data, zk.FlagSequence, b.acl) })
	switch {
	case err == nil:
		a.name = path.Base(p)
		return nil
	case errors.Is(err, zk.ErrNoNode):
		return b.ensureKey(ctx, a.kp) // reaped meanwhile
	default:
		a.unknown = true // it may still land
		return err
	}
}

// semLease splits a permit's lease id into its secret and slot.
func semLease(leaseID string) (secret string, slot int, ok bool) {
	secret, s, found := strings.Cut(leaseID, ".")
	if !found || len(secret) != 22 || !lease.ValidID(leaseID) {
		return "", 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n >= backend.MaxPermits || strconv.Itoa(n) != s {
		return "", 0, false
	}
	return secret, n, true
}

// semGet reads the slot leaseID names; ok is false when it is not that
// permit's (free, or another permit's).
func (b *Backend) semGet(ctx context.Context, kp, leaseID string) (semSlot, bool, error) {
	secret, k, ok := semLease(leaseID)
	if !ok {
		return semSlot{}, false, nil
	}
	sl, err := b.semGetSlot(ctx, kp, k)
	if errors.Is(err, zk.ErrNoNode) {
		return semSlot{}, false, nil
	}
	if err != nil {
		return semSlot{}, false, err
	}
	if subtle.ConstantTimeCompare([]byte(sl.d.H), []byte(nodeHash(secret))) != 1 {
		return semSlot{}, false, nil
	}
	return sl, true, nil
}

// Renew implements backend.Semaphores: a versioned setData of the slot.
func (s semaphores) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.Permit, error) {
	b := s.q
	kp := b.keyPath(key)
	secret, _, _ := semLease(leaseID)
	for attempt := 0; attempt < 5; attempt++ {
		sl, ok, err := b.semGet(ctx, kp, leaseID)
		if err != nil {
			return backend.Permit{}, unavailable("semaphore renew", err)
		}
		if !ok {
			return backend.Permit{}, leaseExpired("semaphore renew", key)
		}
		if sl.d.S != "" && sl.valid(b.clock) {
			return backend.Permit{}, fmt.Errorf("zk semaphore renew %q: %w", key, backend.ErrSessionBound)
		}
		if !sl.valid(b.clock) {
			if sl.removable(b.clock) { // a late renew or release lifts no lock-delay
				_ = b.semRemove(ctx, kp, sl)
			}
			return backend.Permit{}, leaseExpired("semaphore renew", key)
		}
		d := sl.d
		if ttl > 0 {
			d.TTL = ttl.Milliseconds()
		}
		d.Deadline = b.clock.Deadline(time.Duration(d.TTL) * time.Millisecond).UnixMilli()
		st, err := call(ctx, func() (*zk.Stat, error) { return b.conn.Set(kp+"/"+slotName(sl.k), d.encode(), sl.st.Version) })
		switch {
		case err == nil:
			return semSlot{k: sl.k, d: d, st: st}.permit(key, secret), nil
		case errors.Is(err, zk.ErrNoNode):
			return backend.Permit{}, leaseExpired("semaphore renew", key)
		case errors.Is(err, zk.ErrBadVersion):
			continue
		default:
			return backend.Permit{}, unavailable("semaphore renew", err)
		}
	}
	return backend.Permit{}, unavailable("semaphore renew", errors.New("the permit kept changing"))
}

// Release implements backend.Semaphores: a versioned delete of the slot,
// which wakes the head of the line (it watches every slot). A permit that
// had already run out is removed too once overdue, but the caller is told it
// no longer held.
func (s semaphores) Release(ctx context.Context, key, leaseID string) error {
	b := s.q
	kp := b.keyPath(key)
	for attempt := 0; attempt < 5; attempt++ {
		sl, ok, err := b.semGet(ctx, kp, leaseID)
		if err != nil {
			return unavailable("semaphore release", err)
		}
		if !ok {
			return leaseExpired("semaphore release", key)
		}
		if !sl.valid(b.clock) {
			if sl.removable(b.clock) { // a late renew or release lifts no lock-delay
				_ = b.semRemove(ctx, kp, sl)
			}
			return leaseExpired("semaphore release", key)
		}
		err = b.semRemove(ctx, kp, semSlot{k: sl.k, d: sl.d, st: sl.st})
		switch {
		case err == nil:
			return nil
		case isConflict(err):
			continue // renewed in between: look again
		default:
			return unavailable("semaphore release", err)
		}
	}
	return unavailable("semaphore release", errors.New("the permit kept changing"))
}

// Inspect implements backend.Semaphores.
func (s semaphores) Inspect(ctx context.Context, key string) (backend.SemaphoreState, error) {
	b := s.q
	kp := b.keyPath(key)
	v, err := b.semRead(ctx, kp)
	if err != nil {
		return backend.SemaphoreState{}, unavailable("semaphore inspect", err)
	}
	size, err := b.semSize(ctx, kp, v)
	if err != nil {
		return backend.SemaphoreState{}, unavailable("semaphore inspect", err)
	}
	st := backend.SemaphoreState{Key: key, Permits: size, Waiters: len(v.liveWaiters(b.clock)), Holders: []backend.SemaphoreHolder{}}
	for _, sl := range v.slots {
		switch d := sl.delay(b.clock); {
		case d != nil:
			st.Delayed = append(st.Delayed, backend.SlotDelay{Slot: sl.k, Delay: *d})
		case !sl.overdue(b.clock):
			st.Holders = append(st.Holders, sl.holder())
		}
	}
	return st, nil
}
