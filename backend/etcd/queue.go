package etcd

// The queue of a lock and its entries' records: the layout the package
// comment describes.

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

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

// removeExpired deletes e if it is still the same expired entry.
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
		return record{Owner: req.Owner, TTL: s.ttl, Deadline: s.deadline, Value: value, S: h}, 0, err
	}
	rec := record{Owner: req.Owner, TTL: req.TTL.Milliseconds(), Deadline: b.opts.Clock.Deadline(req.TTL).UnixMilli(), Value: value}
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
func (b *Backend) lookAhead(ctx context.Context, adm admission, q, mine string, myRev int64) (head, pred *entry, err error) {
	release, err := b.slot(ctx, adm)
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
	if err := b.resolve(ctx, head); err != nil {
		return nil, nil, err
	}
	// A head gone between the reads leaves head nil: the caller's next
	// step (a guarded transaction, or a watch that finds pred changed)
	// notices.
	return head, pred, nil
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

// sessionWrite is what a grant of rec at the entry key of leaseID adds to
// its transaction when it lives in a session: the session must be valid,
// and the grant goes into the session's index.
func (b *Backend) sessionWrite(rec record, key, leaseID string) ([]clientv3.Cmp, []clientv3.Op) {
	if rec.S == "" {
		return nil, nil
	}
	return []clientv3.Cmp{b.sessionValid(rec.S)}, []clientv3.Op{clientv3.OpPut(b.sessionIndex(rec.S)+leaseID, key)}
}
