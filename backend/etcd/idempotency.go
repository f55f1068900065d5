package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
)

// Idempotent acquires.
//
// An acquire with an idempotency key writes <prefix>idem/<key> = {f, l}
// (the request's fingerprint and the lease id it queued or was granted
// under) in the same transaction that puts its queue entry, guarded by the
// record not existing yet. The record hangs on a GC lease that outlives the
// acquire by backend.IdempotencyWindow. A retry reads the record first and
// follows it to the entry: held, it returns that grant; waiting, it waits
// in that entry's place; gone, the grant ended (ErrLeaseExpired) — unless
// the record says the entry was never granted (its lockd died while it
// queued, and the entry went with its waiter lease): then the retry is a
// fresh attempt. The grant rewrites the record with Granted set, in the
// grant's own transaction.
//
// The acquire that created the entry owns it: its give-up removes the entry
// and the record together, and only while the entry still waits (a grant a
// twin returned is never undone). A retry attached to the entry never
// removes it.

var _ backend.Idempotent = (*Backend)(nil)

// IdempotentAcquire implements backend.Idempotent.
func (b *Backend) IdempotentAcquire() {}

type idemRecord struct {
	Fingerprint string `json:"f"`
	LeaseID     string `json:"l"`
	Granted     bool   `json:"g,omitempty"`
}

func (b *Backend) idemKey(req backend.AcquireRequest) string {
	return b.opts.Prefix + "idem/" + req.Idempotency.Key
}

// idemWrite returns the compare (no record yet) and the put that record req
// as queued or granted under lease id, or nothing when req has no
// idempotency key.
func (b *Backend) idemWrite(ctx context.Context, req backend.AcquireRequest, id string, granted bool) ([]clientv3.Cmp, []clientv3.Op, error) {
	if req.Idempotency.Key == "" {
		return nil, nil, nil
	}
	keep := time.Now().Add(max(req.TTL, req.Wait) + backend.IdempotencyWindow).Truncate(time.Minute).Add(time.Minute)
	gc, err := b.leases.get(ctx, b.opts.OpTimeout, keep)
	if err != nil {
		return nil, nil, err
	}
	v, _ := json.Marshal(idemRecord{Fingerprint: req.Idempotency.Fingerprint, LeaseID: id, Granted: granted})
	k := b.idemKey(req)
	return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), "=", 0)},
		[]clientv3.Op{clientv3.OpPut(k, string(v), clientv3.WithLease(gc))}, nil
}

// replay answers an acquire whose idempotency key is already recorded;
// found is false when it is not (the acquire runs afresh).
func (b *Backend) replay(ctx context.Context, req backend.AcquireRequest) (g backend.Grant, found bool, err error) {
	if req.Idempotency.Key == "" {
		return backend.Grant{}, false, nil
	}
	c, cancel := b.opCtx(ctx)
	defer cancel()
	resp, err := b.cli.Get(c, b.idemKey(req))
	if err != nil {
		return backend.Grant{}, true, fail(ctx, "read idempotency record", err)
	}
	if len(resp.Kvs) == 0 {
		return backend.Grant{}, false, nil
	}
	var rec idemRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		return backend.Grant{}, true, fmt.Errorf("etcd: corrupt idempotency record: %w", err)
	}
	if rec.Fingerprint != req.Idempotency.Fingerprint {
		return backend.Grant{}, true, fmt.Errorf("etcd acquire %q: %w", req.Key, backend.ErrIdempotencyKeyReused)
	}
	e, err := b.get(ctx, req.Key, rec.LeaseID)
	if err == nil {
		err = b.resolve(ctx, e) // a grant in a session lives by the session's deadline
	}
	if err != nil {
		return backend.Grant{}, true, err
	}
	switch {
	case e == nil && !rec.Granted:
		// Never granted, and its entry is gone: the attempt died with its
		// lockd while it queued. Drop the record (unless a twin just
		// rewrote it) and run afresh.
		k := b.idemKey(req)
		c, cancel := b.opCtx(ctx)
		defer cancel()
		if _, err := b.cli.Txn(c).If(clientv3.Compare(clientv3.ModRevision(k), "=", resp.Kvs[0].ModRevision)).Then(clientv3.OpDelete(k)).Commit(); err != nil {
			return backend.Grant{}, true, fail(ctx, "drop idempotency record", err)
		}
		return backend.Grant{}, false, nil
	case e == nil, e.rec.held() && !e.rec.valid(b.opts.Clock):
		return backend.Grant{}, true, fmt.Errorf("etcd acquire %q: the grant of this idempotency key ended: %w", req.Key, backend.ErrLeaseExpired)
	case e.rec.held():
		g = e.grant(req.Key)
		g.Replayed = true
		return g, true, nil
	}
	// Still waiting: wait in its place.
	wctx, stop := ctx, func() {}
	if req.Session != "" {
		wctx, stop = b.watchSession(ctx, sessionHash(req.Session))
	}
	defer stop()
	g, err = b.waitTurn(wctx, req, rec.LeaseID, e.createRev, time.Now().Add(req.Wait), "", nil)
	err = sessionEnded(ctx, wctx, err)
	g.Replayed = err == nil
	return g, true, err
}

// giveUp removes the entry mine (and req's idempotency record) when this
// acquire gave up. Without an idempotency key the entry goes whatever it
// holds, so that a grant whose reply was lost is undone. With one, it goes
// only while it still waits: a retry may have been handed its grant.
//
// When the store is out of reach (a partition, a member stopped or lost
// with the leader) the removal fails, yet the waiters' lease the entry
// hangs on outlives the fault: this Backend keeps it alive. Left there, the
// entry would head the queue and block the key for as long as this Backend
// lives, so the removal is tried again in the background until it is done
// or the Backend closes (and its lease goes).
func (b *Backend) giveUp(req backend.AcquireRequest, mine string) {
	if b.removeEntry(req, mine) == nil {
		return
	}
	go func() {
		delay := 100 * time.Millisecond
		for {
			t := time.NewTimer(delay)
			select {
			case <-b.life.Done():
				t.Stop()
				return
			case <-t.C:
			}
			if b.removeEntry(req, mine) == nil {
				return
			}
			delay = min(2*delay, 2*time.Second)
		}
	}()
}

// removeEntry is one try of giveUp's removal.
func (b *Backend) removeEntry(req backend.AcquireRequest, mine string) error {
	c, cancel := context.WithTimeout(b.life, b.opts.OpTimeout)
	defer cancel()
	if req.Idempotency.Key == "" {
		_, err := b.cli.Delete(c, mine)
		return err
	}
	waiting := mustJSON(record{Owner: req.Owner, TTL: req.TTL.Milliseconds()})
	rec := b.idemKey(req)
	gone := clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(mine), "=", 0)}, []clientv3.Op{clientv3.OpDelete(rec)}, nil)
	_, err := b.cli.Txn(c).If(clientv3.Compare(clientv3.Value(mine), "=", waiting)).
		Then(clientv3.OpDelete(mine), clientv3.OpDelete(rec)).Else(gone).Commit()
	return err
}
