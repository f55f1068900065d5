package zk

// Sessions: many grants kept alive by one renew.
//
//	<Root>/_sessions/<h>            persistent, one per session; data: its deadline
//	<Root>/_sessions/<h>/<secret>   persistent, one per grant or waiter made in it
//
// h is a hash of the session's id (the id, a capability, is never stored).
// The session node's data holds the deadline (Unix ms, by the clock of the
// lockd that wrote it), the TTL and the owner. A queue node made in the
// session carries h in its name (node.go); its deadline is the session's,
// read next to it wherever a queue node is read (resolve), so that one
// write — a versioned setData on the session node — renews every grant, and
// the session's expiry frees every grant with no lockd alive: whoever meets
// such a head past the session's deadline plus the skew removes it, guarded
// by the versions of both the head and the session node (sessionGuard).
//
// The node is created in one multi-op with a check of the session node's
// version (read valid just before) and with the session's index entry, a
// child of the session node named by the secret's hash and holding the
// key: Close finds the session's nodes there and releases them at once,
// which wakes their next waiters. A grant in a session is never renewed on
// its own (ErrSessionBound) and is not kept in the grant cache: every use
// reads the session.
//
// These are not ZooKeeper's own ephemeral sessions: a lockd restart must not
// end a session whose TTL still runs, and a session must end at its
// deadline while lockd lives on (see "Leases are node data" in zk.go).
//
// Close marks the session over (a versioned setData of a deadline of 0), so
// no new node joins it and nothing renews it; its grants are released
// before that, while the session still runs, so that they count as released
// rather than expired. A session is never resurrected: Renew needs the
// session valid by the renewer's clock and the node unchanged since.
// Session nodes of sessions over (and their index) are swept by a replica
// that opens sessions, at most every sessSweepEvery; their grants left in
// queues hold nothing once their session is over or gone, and are removed
// by the next acquirer or release of their key.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

var _ backend.Sessioner = (*Backend)(nil)

const (
	sessionDir     = "/_sessions"
	sessSweepEvery = 5 * time.Minute
)

// Sessions implements backend.Sessioner.
func (b *Backend) Sessions() backend.Sessions { return sessions{b} }

type sessions struct{ b *Backend }

func (sessions) Features() backend.SessionFeatures { return backend.SessionFeatures{Expiry: "store"} }

// sessionData is a session node's data.
type sessionData struct {
	Deadline int64  `json:"deadline_ms"` // 0: closed
	TTL      int64  `json:"ttl_ms"`
	Owner    string `json:"owner"`
}

func (d sessionData) encode() []byte {
	raw, _ := json.Marshal(d) // plain struct: cannot fail
	return raw
}

func (d sessionData) session(id string) backend.Session {
	return backend.Session{ID: id, Owner: d.Owner, TTL: time.Duration(d.TTL) * time.Millisecond, ExpiresAt: time.UnixMilli(d.Deadline)}
}

// sessionHash names a session in the store: hashLen hex characters.
func sessionHash(id string) string {
	sum := sha256.Sum256([]byte("lockd/zk/session/" + id))
	return hex.EncodeToString(sum[:hashLen/2])
}

func (b *Backend) sessionPath(h string) string { return b.sessRoot + sessionDir + "/" + h }

// indexEntry is the data of a session's index entry: where its node is.
type indexEntry struct {
	Key       string `json:"k"`
	Elections bool   `json:"e,omitempty"`
	// Sem: the entry is a semaphore permit's, at Slot (semaphore.go).
	Sem  bool `json:"sem,omitempty"`
	Slot int  `json:"slot,omitempty"`
	// RW: the entry is a read-write lock grant's (rwlock.go).
	RW bool `json:"rw,omitempty"`
}

// readSession reads session h; zk.ErrNoNode when it is gone.
func (b *Backend) readSession(ctx context.Context, h string) (sessionData, *zk.Stat, error) {
	p := b.sessionPath(h)
	r, err := b.readRaw(ctx, p)
	if err != nil {
		return sessionData{}, nil, err
	}
	var d sessionData
	if err := json.Unmarshal(r.raw, &d); err != nil {
		return sessionData{}, nil, fmt.Errorf("zk: session node %s holds no lockd data: %w", p, err)
	}
	return d, r.stat, nil
}

// liveSession reads the session with id and checks that it is valid for its
// holder: ErrSessionExpired otherwise.
func (b *Backend) liveSession(ctx context.Context, id string) (string, sessionData, *zk.Stat, error) {
	if !lease.ValidID(id) {
		return "", sessionData{}, nil, backend.ErrSessionExpired
	}
	h := sessionHash(id)
	d, st, err := b.readSession(ctx, h)
	if errors.Is(err, zk.ErrNoNode) || err == nil && !b.clock.Valid(time.UnixMilli(d.Deadline)) {
		return "", sessionData{}, nil, backend.ErrSessionExpired
	}
	if err != nil {
		return "", sessionData{}, nil, unavailable("session", err)
	}
	return h, d, st, nil
}

// resolve gives r, the read of the queue node at p, its session's deadline
// and TTL when it lives in one (a deadline long past when the session is
// gone), and remembers the session node's version for a guarded removal.
func (b *Backend) resolve(ctx context.Context, p string, r *nodeRead) error {
	c, ok := parseChild(p[strings.LastIndexByte(p, '/')+1:])
	if !ok || c.session == "" {
		return nil
	}
	r.sess = c.session
	d, st, err := b.readSession(ctx, c.session)
	if errors.Is(err, zk.ErrNoNode) {
		r.data.Deadline, r.sessGone = 1, true
		return nil
	}
	if err != nil {
		return err
	}
	r.data.Deadline, r.data.TTL, r.sessVer = d.Deadline, d.TTL, st.Version
	return nil
}

// sessionGuard checks, in the multi-op that removes r's node as expired,
// that its session is still as read. A session node that is gone never
// comes back (its id was random), so it needs no check.
func (b *Backend) sessionGuard(r nodeRead) []any {
	if r.sess == "" || r.sessGone {
		return nil
	}
	return []any{&zk.CheckVersionRequest{Path: b.sessionPath(r.sess), Version: r.sessVer}}
}

// dropIndex removes, in the background, the index entry of c, a node of a
// session that has left its queue; a miss only leaves work to Close or the
// sweep.
func (b *Backend) dropIndex(c child) {
	if c.session == "" {
		return
	}
	b.bgMu.Lock()
	defer b.bgMu.Unlock()
	if b.closed {
		return
	}
	b.bg.Add(1)
	go func() {
		defer b.bg.Done()
		ctx, cancel := context.WithTimeout(b.life, 5*time.Second)
		defer cancel()
		_ = b.delete(ctx, b.sessionPath(c.session)+"/"+c.secretHash(), -1)
	}()
}

// Open implements backend.Sessions.
func (s sessions) Open(ctx context.Context, owner string, ttl time.Duration) (backend.Session, error) {
	b := s.b
	id := lease.NewID()
	d := sessionData{Deadline: b.clock.Deadline(ttl).UnixMilli(), TTL: ttl.Milliseconds(), Owner: owner}
	p := b.sessionPath(sessionHash(id))
	for attempt := 0; ; attempt++ {
		_, err := call(ctx, func() (string, error) { return b.conn.Create(p, d.encode(), zk.FlagPersistent, b.acl) })
		if err == nil {
			break
		}
		if !errors.Is(err, zk.ErrNoNode) || attempt > 0 {
			return backend.Session{}, unavailable("open session", err)
		}
		if err := b.ensureSessionDir(ctx); err != nil {
			return backend.Session{}, unavailable("open session", err)
		}
	}
	b.maybeSweepSessions()
	return d.session(id), nil
}

// ensureSessionDir creates <Root>/_sessions (and Root).
func (b *Backend) ensureSessionDir(ctx context.Context) error {
	if _, err := b.ensureRoot(ctx); err != nil {
		return err
	}
	_, err := call(ctx, func() (string, error) {
		return b.conn.Create(b.sessRoot+sessionDir, nil, zk.FlagPersistent, b.acl)
	})
	if errors.Is(err, zk.ErrNodeExists) {
		return nil
	}
	return err
}

// Get implements backend.Sessions.
func (s sessions) Get(ctx context.Context, id string) (backend.Session, error) {
	_, d, _, err := s.b.liveSession(ctx, id)
	if err != nil {
		return backend.Session{}, err
	}
	return d.session(id), nil
}

// Renew implements backend.Sessions: one versioned setData, whatever the
// number of grants.
func (s sessions) Renew(ctx context.Context, id string, ttl time.Duration) (backend.Session, error) {
	b := s.b
	for attempt := 0; attempt < 5; attempt++ {
		h, d, st, err := b.liveSession(ctx, id)
		if err != nil {
			return backend.Session{}, err
		}
		if ttl > 0 {
			d.TTL = ttl.Milliseconds()
		}
		d.Deadline = b.clock.Deadline(time.Duration(d.TTL) * time.Millisecond).UnixMilli()
		// Exactly as read valid: no close, sweep or other renew between.
		_, err = call(ctx, func() (*zk.Stat, error) { return b.conn.Set(b.sessionPath(h), d.encode(), st.Version) })
		switch {
		case err == nil:
			return d.session(id), nil
		case errors.Is(err, zk.ErrNoNode):
			return backend.Session{}, backend.ErrSessionExpired
		case errors.Is(err, zk.ErrBadVersion):
			continue
		default:
			return backend.Session{}, unavailable("renew session", err)
		}
	}
	return backend.Session{}, unavailable("renew session", errors.New("the session kept changing"))
}

// Close implements backend.Sessions: the session's grants are released
// while it still runs (their next waiters get the keys), then the session
// is marked over (its waiters end, nothing joins it any more), then what is
// left of it goes.
func (s sessions) Close(ctx context.Context, id string) error {
	b := s.b
	h, _, _, err := b.liveSession(ctx, id)
	if err != nil {
		return err
	}
	if err := b.releaseIndexed(ctx, h, true); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		_, d, st, err := b.liveSession(ctx, id)
		if err != nil {
			return err // closed or expired meanwhile
		}
		d.Deadline = 0
		_, err = call(ctx, func() (*zk.Stat, error) { return b.conn.Set(b.sessionPath(h), d.encode(), st.Version) })
		if err == nil {
			break
		}
		if errors.Is(err, zk.ErrNoNode) {
			return backend.ErrSessionExpired
		}
		if !errors.Is(err, zk.ErrBadVersion) || attempt >= 5 {
			return unavailable("close session", err)
		}
	}
	// Over: what is left holds nothing. Clean up what ZooKeeper lets us;
	// the sweep takes the rest.
	if err := b.releaseIndexed(ctx, h, false); err == nil {
		_ = b.delete(ctx, b.sessionPath(h), -1)
	}
	return nil
}

// releaseIndexed releases the nodes in session h's index and removes their
// entries: those heading their queue (grants) only, or all of them.
func (b *Backend) releaseIndexed(ctx context.Context, h string, headsOnly bool) error {
	sp := b.sessionPath(h)
	names, err := call(ctx, func() ([]string, error) {
		names, _, err := b.conn.Children(sp)
		return names, err
	})
	if errors.Is(err, zk.ErrNoNode) {
		return nil
	}
	if err != nil {
		return unavailable("close session", err)
	}
	for _, n := range names {
		r, err := b.readRaw(ctx, sp+"/"+n)
		if errors.Is(err, zk.ErrNoNode) {
			continue
		}
		if err != nil {
			return unavailable("close session", err)
		}
		var e indexEntry
		if json.Unmarshal(r.raw, &e) != nil || e.Key == "" {
			_ = b.delete(ctx, sp+"/"+n, -1)
			continue
		}
		if e.Sem {
			// A permit: its slot, if it still holds this permit (the
			// hash matches). Never a waiter: those are not indexed.
			x := b.semq
			kp := x.keyPath(e.Key)
			sl, err := x.semGetSlot(ctx, kp, e.Slot)
			if err != nil && !errors.Is(err, zk.ErrNoNode) {
				return unavailable("close session", err)
			}
			if err == nil && sl.d.H == n && sl.d.S == h {
				if err := x.semRemove(ctx, kp, semSlot{k: sl.k, d: sl.d, st: sl.st}); err != nil && !errors.Is(err, zk.ErrNoNode) {
					return unavailable("close session", err)
				}
			}
			_ = b.delete(ctx, sp+"/"+n, -1)
			continue
		}
		if e.RW {
			// A read-write lock's node: its grant now, a queued one once
			// the session is over (its acquire leaves by itself).
			x := b.rwq
			kp := x.keyPath(e.Key)
			name, err := x.rwFind(ctx, kp, protectedPrefix+n+"-")
			if err != nil {
				return unavailable("close session", err)
			}
			if name != "" {
				r, err := x.read(ctx, kp+"/"+name)
				if err != nil && !errors.Is(err, zk.ErrNoNode) {
					return unavailable("close session", err)
				}
				if err == nil && headsOnly && r.data.Queued {
					continue
				}
				if err == nil {
					if err := x.delete(ctx, kp+"/"+name, r.stat.Version); err != nil && !isConflict(err) {
						return unavailable("close session", err)
					}
				}
			}
			_ = b.delete(ctx, sp+"/"+n, -1)
			continue
		}
		x := b
		if e.Elections {
			x = b.elect
		}
		kp := x.keyPath(e.Key)
		name, err := x.findNode(ctx, kp, protectedPrefix+n+"-")
		if err != nil {
			return unavailable("close session", err)
		}
		if name != "" {
			if headsOnly {
				q, err := x.queue(ctx, kp)
				if err != nil {
					return unavailable("close session", err)
				}
				if len(q) == 0 || q[0].name != name {
					continue // waiting: it leaves once the session is over
				}
			}
			if err := x.leave(ctx, e.Key, name, nil, ""); err != nil {
				return unavailable("close session", err)
			}
		}
		_ = b.delete(ctx, sp+"/"+n, -1)
	}
	return nil
}

// sessionOver is, for an acquire in session h (none when ""), refused
// because nothing was free: ErrSessionExpired when the session is over, so
// that an acquire in an ended session says so rather than "held".
func (b *Backend) sessionOver(ctx context.Context, h, op, key string) error {
	if h == "" {
		return nil
	}
	d, _, err := b.readSession(ctx, h)
	if errors.Is(err, zk.ErrNoNode) || err == nil && !b.clock.Valid(time.UnixMilli(d.Deadline)) {
		return fmt.Errorf("zk %s %q: %w", op, key, backend.ErrSessionExpired)
	}
	return nil // unreadable: the refusal stands
}

// errSessionOver ends the wait of an acquire whose session ended.
var errSessionOver = errors.New("session over")

// watchSession returns a context that ends, with cause errSessionOver, when
// session h is no longer valid for its holder: at its deadline by this
// replica's clock, or when it is closed (its node's data watch fires). stop
// ends the watch.
func (b *Backend) watchSession(ctx context.Context, h string) (context.Context, func()) {
	sctx, cancel := context.WithCancelCause(ctx)
	p := b.sessionPath(h)
	go func() {
		for sctx.Err() == nil {
			type res struct {
				d  sessionData
				ch <-chan zk.Event
			}
			r, err := call(sctx, func() (res, error) {
				raw, _, ch, err := b.conn.GetW(p)
				if err != nil {
					return res{}, err
				}
				var d sessionData
				return res{d, ch}, json.Unmarshal(raw, &d)
			})
			if errors.Is(err, zk.ErrNoNode) || err == nil && !b.clock.Valid(time.UnixMilli(r.d.Deadline)) {
				cancel(errSessionOver)
				return
			}
			if err != nil {
				select {
				case <-sctx.Done():
				case <-b.life.Done():
					return
				case <-time.After(retryDelay):
				}
				continue
			}
			timer := time.NewTimer(b.clock.Until(time.UnixMilli(r.d.Deadline)) + time.Millisecond)
			select {
			case <-r.ch: // renewed, closed, or the watch lost: read again
			case <-timer.C:
			case <-sctx.Done():
			case <-b.life.Done():
				timer.Stop()
				return
			}
			timer.Stop()
		}
	}()
	return sctx, func() { cancel(nil) }
}

// sessState is the bookkeeping of session sweeps, shared by a Backend and
// its elections.
type sessState struct {
	sweepEvery time.Duration
	// delayKeep is how long past its deadline an expired session's node
	// is kept, for the lock-delays of its grants (backend.MaxLockDelay).
	delayKeep time.Duration

	mu       sync.Mutex
	sweeping bool
	swept    time.Time
}

// maybeSweepSessions sweeps the session nodes in the background unless this
// replica swept them less than sweepEvery ago or is sweeping already.
func (b *Backend) maybeSweepSessions() {
	s := b.sess
	now := time.Now()
	s.mu.Lock()
	if s.sweeping || now.Sub(s.swept) < s.sweepEvery {
		s.mu.Unlock()
		return
	}
	s.sweeping, s.swept = true, now
	s.mu.Unlock()
	done := func() {
		s.mu.Lock()
		s.sweeping = false
		s.mu.Unlock()
	}
	b.bgMu.Lock()
	defer b.bgMu.Unlock()
	if b.closed {
		done()
		return
	}
	b.bg.Add(1)
	go func() {
		defer b.bg.Done()
		defer done()
		ctx, cancel := context.WithTimeout(b.life, 5*time.Minute)
		defer cancel()
		_, _ = b.sweepSessions(ctx)
	}()
}

// sweepSessions deletes the nodes of sessions over (past their deadline plus
// the skew, or closed), with their index; it returns how many it deleted.
// Their grants still in queues hold nothing from then on (resolve).
func (b *Backend) sweepSessions(ctx context.Context) (int, error) {
	dir := b.sessRoot + sessionDir
	names, err := call(ctx, func() ([]string, error) {
		names, _, err := b.conn.Children(dir)
		return names, err
	})
	if errors.Is(err, zk.ErrNoNode) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	deleted := 0
	for _, h := range names {
		if ctx.Err() != nil {
			break
		}
		d, st, err := b.readSession(ctx, h)
		// An expired session's grants may be under a lock-delay, which
		// runs from its deadline: its node stays until the longest could
		// end. A closed one (deadline 0) released them all.
		if err != nil || d.Deadline > 0 && !b.clock.Overdue(time.UnixMilli(d.Deadline).Add(b.sess.delayKeep)) {
			continue // unreadable (left alone), or still counted on
		}
		sp := b.sessionPath(h)
		kids, err := call(ctx, func() ([]string, error) {
			kids, _, err := b.conn.Children(sp)
			return kids, err
		})
		if err != nil {
			continue
		}
		var ops []any
		for _, k := range kids {
			ops = append(ops, &zk.DeleteRequest{Path: sp + "/" + k, Version: -1})
		}
		// Versioned: anything written to it meanwhile keeps it.
		ops = append(ops, &zk.DeleteRequest{Path: sp, Version: st.Version})
		if _, err := call(ctx, func() ([]zk.MultiResponse, error) { return b.conn.Multi(ops...) }); err == nil {
			deleted++
		}
	}
	return deleted, ctx.Err()
}
