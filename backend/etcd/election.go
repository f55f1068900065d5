package etcd

// Leader elections: lockd's FIFO lock queue under <prefix>e/<name>/, whose
// records also carry the leader's value. The term is the leader entry's
// create revision, the fencing token of locks.

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
)

var _ backend.Elector = (*Backend)(nil)

// Elections implements backend.Elector.
func (b *Backend) Elections() backend.Elections { return elections{b.elect} }

// elections runs on q, the Backend whose queues live under e/.
type elections struct{ q *Backend }

func (el elections) Features() backend.ElectionFeatures {
	return backend.ElectionFeatures{Observe: "watch"}
}

func (e *entry) leadership(name string) backend.Leadership {
	return backend.Leadership{Name: name, LeaseID: e.leaseID, Term: uint64(e.createRev), Owner: e.rec.Owner, Value: e.rec.Value,
		TTL: time.Duration(e.rec.TTL) * time.Millisecond, ExpiresAt: e.rec.deadline()}
}

func (e *entry) leader() *backend.Leader {
	return &backend.Leader{Term: uint64(e.createRev), Owner: e.rec.Owner, Value: e.rec.Value, ExpiresAt: e.rec.deadline()}
}

// Campaign implements backend.Elections: an acquire of the election's queue
// whose grant writes the value with the deadline, in one put.
func (el elections) Campaign(ctx context.Context, req backend.CampaignRequest) (backend.Leadership, error) {
	g, err := el.q.acquire(ctx, backend.AcquireRequest{Key: req.Name, Owner: req.Owner, TTL: req.TTL, Wait: req.Wait, Session: req.Session, LockDelay: req.LockDelay}, req.Value)
	if errors.Is(err, backend.ErrHeld) {
		ne := &backend.NotLeaderError{Name: req.Name}
		var he *backend.HeldError
		if errors.As(err, &he) && he.Delay != nil {
			ne.Delay = he.Delay
		} else if st, lerr := el.Leader(ctx, req.Name); lerr == nil {
			ne.Leader = st.Leader
		}
		return backend.Leadership{}, ne
	}
	if err != nil {
		return backend.Leadership{}, err
	}
	return backend.Leadership{Name: req.Name, LeaseID: g.LeaseID, Term: g.Token, Owner: g.Owner, Value: req.Value, TTL: g.TTL, ExpiresAt: g.ExpiresAt}, nil
}

// Proclaim implements backend.Elections: a put of the leader's entry guarded
// by its create revision (the term) and its mod revision (no renew or
// removal in between), keeping its etcd lease.
func (el elections) Proclaim(ctx context.Context, name, leaseID, value string) (backend.Leadership, error) {
	for attempt := 0; attempt < 3; attempt++ {
		e, err := el.q.get(ctx, name, leaseID)
		if err != nil {
			return backend.Leadership{}, err
		}
		if err := el.q.resolve(ctx, e); err != nil {
			return backend.Leadership{}, err
		}
		if e == nil || !e.rec.valid(el.q.opts.Clock) {
			return backend.Leadership{}, backend.ErrLeaseExpired
		}
		rec := e.rec
		rec.Value = value
		resp, err := el.q.txn(ctx, atOnce, "proclaim",
			[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(e.key), "=", e.createRev), clientv3.Compare(clientv3.ModRevision(e.key), "=", e.modRev)},
			[]clientv3.Op{clientv3.OpPut(e.key, mustJSON(rec), clientv3.WithIgnoreLease())}, nil)
		if err != nil {
			return backend.Leadership{}, err
		}
		if resp.Succeeded {
			e.rec = rec
			return e.leadership(name), nil
		}
	}
	return backend.Leadership{}, fmt.Errorf("%w: proclaim kept racing with other writers", backend.ErrUnavailable)
}

// Renew implements backend.Elections.
func (el elections) Renew(ctx context.Context, name, leaseID string, ttl time.Duration) (backend.Leadership, error) {
	e, err := el.q.renew(ctx, name, leaseID, ttl)
	if err != nil {
		return backend.Leadership{}, err
	}
	return e.leadership(name), nil
}

// Resign implements backend.Elections.
func (el elections) Resign(ctx context.Context, name, leaseID string) error {
	return el.q.Release(ctx, name, leaseID)
}

// Leader implements backend.Elections: the head's record (the queue's first
// key) and the count of entries, in one read.
func (el elections) Leader(ctx context.Context, name string) (backend.ElectionState, error) {
	q := el.q.queue(name)
	resp, err := el.q.txn(ctx, atOnce, "leader", nil,
		[]clientv3.Op{clientv3.OpGet(q, clientv3.WithRange(clientv3.GetPrefixRangeEnd(q)), clientv3.WithLimit(1)), clientv3.OpGet(q, clientv3.WithPrefix(), clientv3.WithCountOnly())}, nil)
	if err != nil {
		return backend.ElectionState{}, err
	}
	st := backend.ElectionState{Name: name, Candidates: int(resp.Responses[1].GetResponseRange().Count)}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return st, nil
	}
	head, err := el.q.decode(kvs[0].Value, string(kvs[0].Key), kvs[0].CreateRevision, kvs[0].ModRevision)
	if err != nil {
		return st, err
	}
	if err := el.q.resolve(ctx, &head); err != nil {
		return st, err
	}
	if head.rec.held() {
		st.Candidates--
		switch {
		case !head.rec.overdue(el.q.opts.Clock):
			st.Leader = head.leader()
		case head.rec.delayed(el.q.opts.Clock):
			st.DelayedUntil = head.delay(el.q.opts.Clock).Until
		}
	}
	return st, nil
}
