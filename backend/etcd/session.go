package etcd

// Sessions: many grants kept alive by one renew.
//
// A session is one record <prefix>s/<h>, h a hash of its id (the id, a
// capability, is never stored). Its value starts with the deadline as 13
// digits of unix ms, so that a transaction can compare it with a time:
// Compare(Value(s/<h>), ">", now) holds exactly while the session is valid
// by the comparing replica's clock. A grant made in the session carries h in
// its record (rec.S); its own deadline field only marks it as granted. Its
// real deadline is the session's, read next to it wherever a deadline is
// decided (resolve), so that one write — the session's — renews every grant,
// and the session's expiry frees every grant with no lockd alive: whoever
// meets such a grant past the session's deadline (plus skew) removes it,
// guarded by the mod revisions of both the entry and the session.
//
// Every grant also writes an index entry <prefix>sg/<h>/<lease id> holding
// the grant's key, in the same transaction, so that Close can release the
// session's grants at once and wake their waiters. Grants of a session have
// no etcd lease: the session record has one from the pool, outliving its
// deadline plus the skew; grants left behind by an expired session are
// removed by the next acquirer of their key (until then, they hold nothing).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

var _ backend.Sessioner = (*Backend)(nil)

// Sessions implements backend.Sessioner.
func (b *Backend) Sessions() backend.Sessions { return sessions{b} }

type sessions struct{ b *Backend }

func (sessions) Features() backend.SessionFeatures { return backend.SessionFeatures{Expiry: "store"} }

// sessionHash names a session in the store.
func sessionHash(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:16])
}

func (b *Backend) sessionKey(h string) string   { return b.opts.Prefix + "s/" + h }
func (b *Backend) sessionIndex(h string) string { return b.opts.Prefix + "sg/" + h + "/" }

// sessionRecord is a session's value: "<13-digit deadline> <ttl ms> <owner>".
type sessionRecord struct {
	deadline int64 // unix ms
	ttl      int64 // ms
	owner    string
	modRev   int64
}

func (r sessionRecord) String() string { return fmt.Sprintf("%013d %d %s", r.deadline, r.ttl, r.owner) }

func parseSession(v []byte, modRev int64) (sessionRecord, error) {
	parts := strings.SplitN(string(v), " ", 3)
	if len(parts) != 3 {
		return sessionRecord{}, fmt.Errorf("etcd: corrupt session record %q", v)
	}
	d, err1 := strconv.ParseInt(parts[0], 10, 64)
	t, err2 := strconv.ParseInt(parts[1], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return sessionRecord{}, fmt.Errorf("etcd: corrupt session record %q: %w", v, err)
	}
	return sessionRecord{deadline: d, ttl: t, owner: parts[2], modRev: modRev}, nil
}

// validNow is what a session's value must exceed to be valid by this
// replica's clock: the 13 digits of now, then a byte above the separator, so
// that a deadline equal to now is not valid (lease.Clock.Valid).
func (b *Backend) validNow() string { return fmt.Sprintf("%013d~", b.opts.Clock.Now().UnixMilli()) }

// sessionValid compares in a transaction that the session h is valid.
func (b *Backend) sessionValid(h string) clientv3.Cmp {
	return clientv3.Compare(clientv3.Value(b.sessionKey(h)), ">", b.validNow())
}

// readSession reads session h; nil when it is gone.
func (b *Backend) readSession(ctx context.Context, h string) (*sessionRecord, int64, error) {
	c, cancel := b.opCtx(ctx)
	defer cancel()
	resp, err := b.cli.Get(c, b.sessionKey(h))
	if err != nil {
		return nil, 0, fail(ctx, "read session", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, resp.Header.Revision, nil
	}
	r, err := parseSession(resp.Kvs[0].Value, resp.Kvs[0].ModRevision)
	return &r, resp.Header.Revision, err
}

// liveSession reads the session with id and checks it is valid for its
// holder: ErrSessionExpired otherwise.
func (b *Backend) liveSession(ctx context.Context, id string) (string, sessionRecord, error) {
	if !lease.ValidID(id) {
		return "", sessionRecord{}, backend.ErrSessionExpired
	}
	h := sessionHash(id)
	r, _, err := b.readSession(ctx, h)
	if err != nil {
		return "", sessionRecord{}, err
	}
	if r == nil || !b.opts.Clock.Valid(time.UnixMilli(r.deadline)) {
		return "", sessionRecord{}, backend.ErrSessionExpired
	}
	return h, *r, nil
}

// resolve gives a granted entry of a session the session's deadline and TTL
// (a deadline long past when the session is gone), and remembers the
// session's mod revision for a guarded removal.
func (b *Backend) resolve(ctx context.Context, e *entry) error {
	if e == nil || e.rec.S == "" || !e.rec.held() {
		return nil
	}
	r, _, err := b.readSession(ctx, e.rec.S)
	if err != nil {
		return err
	}
	if r == nil {
		e.rec.Deadline, e.sessRev = 1, 0
		return nil
	}
	e.rec.Deadline, e.rec.TTL, e.sessRev = r.deadline, r.ttl, r.modRev
	return nil
}

// sessionGuard guards the removal of e: its session is still as read.
func (b *Backend) sessionGuard(e *entry) []clientv3.Cmp {
	if e.rec.S == "" {
		return nil
	}
	k := b.sessionKey(e.rec.S)
	if e.sessRev == 0 {
		return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), "=", 0)}
	}
	return []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", e.sessRev)}
}

// Open implements backend.Sessions.
func (s sessions) Open(ctx context.Context, owner string, ttl time.Duration) (backend.Session, error) {
	b := s.b
	id := lease.NewID()
	r := sessionRecord{deadline: b.opts.Clock.Deadline(ttl).UnixMilli(), ttl: ttl.Milliseconds(), owner: owner}
	if err := s.put(ctx, sessionHash(id), r, nil); err != nil {
		return backend.Session{}, err
	}
	return r.session(id), nil
}

func (r sessionRecord) session(id string) backend.Session {
	return backend.Session{ID: id, Owner: r.owner, TTL: time.Duration(r.ttl) * time.Millisecond, ExpiresAt: time.UnixMilli(r.deadline)}
}

// put writes session h if cmps hold; ErrSessionExpired if not.
func (s sessions) put(ctx context.Context, h string, r sessionRecord, cmps []clientv3.Cmp) error {
	b := s.b
	// The record outlives the deadline by the skew, so that until anyone
	// may treat the session as over its record is there to say so, and by
	// the longest lock-delay, so that an expired grant of the session keeps
	// its delay counted from the session's deadline (resolve).
	gc, err := b.leases.get(ctx, b.opts.OpTimeout, time.UnixMilli(r.deadline).Add(b.opts.Clock.MaxSkew+backend.MaxLockDelay))
	if err != nil {
		return err
	}
	resp, err := b.txn(ctx, atOnce, "put session", cmps, []clientv3.Op{clientv3.OpPut(b.sessionKey(h), r.String(), clientv3.WithLease(gc))}, nil)
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return backend.ErrSessionExpired
	}
	return nil
}

// Get implements backend.Sessions.
func (s sessions) Get(ctx context.Context, id string) (backend.Session, error) {
	_, r, err := s.b.liveSession(ctx, id)
	if err != nil {
		return backend.Session{}, err
	}
	return r.session(id), nil
}

// Renew implements backend.Sessions: one guarded write, whatever the number
// of grants.
func (s sessions) Renew(ctx context.Context, id string, ttl time.Duration) (backend.Session, error) {
	b := s.b
	for attempt := 0; attempt < 3; attempt++ {
		h, r, err := b.liveSession(ctx, id)
		if err != nil {
			return backend.Session{}, err
		}
		if ttl > 0 {
			r.ttl = ttl.Milliseconds()
		}
		r.deadline = b.opts.Clock.Deadline(time.Duration(r.ttl) * time.Millisecond).UnixMilli()
		k := b.sessionKey(h)
		// Exactly as read (no close or other renew in between), and still
		// valid now: never resurrected.
		err = s.put(ctx, h, r, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", r.modRev), b.sessionValid(h)})
		if err == nil {
			return r.session(id), nil
		}
		if !errors.Is(err, backend.ErrSessionExpired) {
			return backend.Session{}, err
		}
	}
	return backend.Session{}, fmt.Errorf("%w: session renew kept racing with other writers", backend.ErrUnavailable)
}

// Close implements backend.Sessions: the record and the index go in one
// transaction (from then on every grant of the session holds nothing), then
// the grants' entries, which wakes their waiters.
func (s sessions) Close(ctx context.Context, id string) error {
	b := s.b
	if !lease.ValidID(id) {
		return backend.ErrSessionExpired
	}
	h := sessionHash(id)
	idx := b.sessionIndex(h)
	resp, err := b.txn(ctx, atOnce, "close session",
		[]clientv3.Cmp{b.sessionValid(h)},
		[]clientv3.Op{clientv3.OpDelete(b.sessionKey(h)), clientv3.OpGet(idx, clientv3.WithPrefix()), clientv3.OpDelete(idx, clientv3.WithPrefix())}, nil)
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return backend.ErrSessionExpired
	}
	var ops []clientv3.Op
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		k, v, guarded := strings.Cut(string(kv.Value), "\n")
		if !guarded {
			ops = append(ops, clientv3.OpDelete(k))
			continue
		}
		// A semaphore permit (semaphore.go): its slot key is reused by
		// later holders, so it goes only while it is this permit.
		ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(k), "=", v)}, []clientv3.Op{clientv3.OpDelete(k)}, nil))
	}
	for len(ops) > 0 {
		n := min(len(ops), 100) // under etcd's default --max-txn-ops
		if _, err := b.txn(ctx, atOnce, "release session grants", nil, ops[:n], nil); err != nil {
			// The session is gone: what is left holds nothing and goes
			// with the next acquirer of its key.
			return nil
		}
		ops = ops[n:]
	}
	return nil
}

// errSessionOver ends the wait of an acquire whose session ended.
var errSessionOver = errors.New("session over")

// watchSession returns a context that ends, with cause errSessionOver, when
// session h is no longer valid for its holder: at its deadline by this
// replica's clock, or when it is closed. stop ends the watch.
func (b *Backend) watchSession(ctx context.Context, h string) (context.Context, func()) {
	sctx, cancel := context.WithCancelCause(ctx)
	go func() {
		for sctx.Err() == nil {
			r, rev, err := b.readSession(sctx, h)
			if err != nil {
				select {
				case <-sctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
				continue
			}
			if r == nil || !b.opts.Clock.Valid(time.UnixMilli(r.deadline)) {
				cancel(errSessionOver)
				return
			}
			wctx, wcancel := context.WithCancel(sctx)
			wch := b.cli.Watch(wctx, b.sessionKey(h), clientv3.WithRev(rev+1))
			timer := time.NewTimer(b.opts.Clock.Until(time.UnixMilli(r.deadline)))
			select {
			case <-wch: // renewed, closed, or the watch failed: read again
			case <-timer.C:
			case <-sctx.Done():
			case <-b.life.Done():
			}
			timer.Stop()
			wcancel()
			if b.life.Err() != nil {
				return
			}
		}
	}()
	return sctx, func() { cancel(nil) }
}

// sessionEnded maps the error of a wait under watchSession's context.
func sessionEnded(ctx, sctx context.Context, err error) error {
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(sctx), errSessionOver) {
		return backend.ErrSessionExpired
	}
	return err
}
