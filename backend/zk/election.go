package zk

// Leader elections: lockd's queue recipe under <Root>/_elect/<name>, whose
// nodes also carry the candidate's value in their data. The term is the
// leader node's czxid, the fencing token of locks; proclaim is a versioned
// setData on the leader's node, so it keeps the czxid.
//
//	<Root>/_elect/<name>               container node; its data is the term log
//	<Root>/_elect/<name>/_c_...-lock-<seq>   one per candidate, as for locks
//
// Observers use one-shot watches (go-zookeeper has no persistent ones), so a
// term may begin and end between an event and the read it triggers. Every
// removal of a leader (resign, expiry, a leader leaving) therefore appends
// the ended term to the container's data in the same multi-op (removeHead):
// the term log. An observer reads it with the queue and learns of every
// term that ended since its last read, even one it never saw lead.

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
)

var _ backend.Elector = (*Backend)(nil)

// electDir is the elections' namespace under Root. Its name starts with '_',
// which no lock key does, so List never takes it for a key.
const electDir = "/_elect"

// logKeep is how many ended terms the term log keeps: an observer that
// falls further behind ends its stream (ErrUnavailable) and is read afresh.
const logKeep = 8

// termLog is an election container's data.
type termLog struct {
	// Ended counts the terms ended in this container (it restarts when
	// ZooKeeper reaps and recreates the container; the czxid tells).
	Ended int64 `json:"ended"`
	// Terms are the last ones ended, oldest first, at most logKeep.
	Terms []endedTerm `json:"terms,omitempty"`
}

// endedTerm is one ended term, as its leader left it.
type endedTerm struct {
	Term     uint64 `json:"term"`
	Owner    string `json:"owner"`
	Value    string `json:"v,omitempty"`
	Deadline int64  `json:"deadline_ms"`
	Reason   string `json:"reason"`
}

func decodeLog(raw []byte) termLog {
	var l termLog
	if len(raw) > 0 {
		_ = json.Unmarshal(raw, &l) // a foreign or empty container: no log
	}
	return l
}

// logEnd is the write that logs the end of head's term (head at version v)
// in the container kp: the caller puts it in the multi-op that removes the
// head, so the log and the queue never disagree. The reason is the lease's
// state by this replica's clock: a head removed while its lease runs
// resigned (or left); otherwise it expired.
func (b *Backend) logEnd(ctx context.Context, kp string, head child, v int32) (*zk.SetDataRequest, error) {
	// Both reads at once: one round trip.
	var (
		c    nodeRead
		cErr error
		done = make(chan struct{})
	)
	go func() {
		c, cErr = b.readRaw(ctx, kp)
		close(done)
	}()
	r, err := b.read(ctx, kp+"/"+head.name)
	<-done
	if err != nil {
		return nil, err
	}
	if r.stat.Version != v {
		return nil, zk.ErrBadVersion // the multi-op would fail on it
	}
	if cErr != nil {
		return nil, cErr
	}
	l := decodeLog(c.raw)
	reason := backend.ReasonResigned
	if !r.data.valid(b.clock) {
		reason = backend.ReasonExpired
	}
	l.Ended++
	l.Terms = append(l.Terms, endedTerm{Term: uint64(r.stat.Czxid), Owner: head.owner, Value: r.data.Value, Deadline: r.data.Deadline, Reason: reason})
	if n := len(l.Terms); n > logKeep {
		l.Terms = l.Terms[n-logKeep:]
	}
	data, _ := json.Marshal(l) // plain structs: cannot fail
	return &zk.SetDataRequest{Path: kp, Data: data, Version: c.stat.Version}, nil
}

// readRaw returns a node's data as it is (a container's).
func (b *Backend) readRaw(ctx context.Context, p string) (nodeRead, error) {
	return call(ctx, func() (nodeRead, error) {
		raw, st, err := b.conn.Get(p)
		return nodeRead{raw: raw, stat: st}, err
	})
}

// Elections implements backend.Elector.
func (b *Backend) Elections() backend.Elections { return elections{b.elect} }

// elections runs on q, the Backend whose queues live under _elect.
type elections struct{ q *Backend }

func (el elections) Features() backend.ElectionFeatures {
	return backend.ElectionFeatures{Observe: "watch"}
}

// Campaign implements backend.Elections: an acquire of the election's queue
// whose node carries the value.
func (el elections) Campaign(ctx context.Context, req backend.CampaignRequest) (backend.Leadership, error) {
	g, err := el.q.acquire(ctx, backend.AcquireRequest{Key: req.Name, Owner: req.Owner, TTL: req.TTL, Wait: req.Wait, Session: req.Session, LockDelay: req.LockDelay}, req.Value)
	if errors.Is(err, backend.ErrHeld) {
		ne := &backend.NotLeaderError{Name: req.Name}
		var he *backend.HeldError
		if errors.As(err, &he) && he.Delay != nil {
			ne.Delay = he.Delay // an expired leader is not a leader
			return backend.Leadership{}, ne
		}
		if st, lerr := el.Leader(ctx, req.Name); lerr == nil {
			ne.Leader = st.Leader
		}
		return backend.Leadership{}, ne
	}
	if err != nil {
		return backend.Leadership{}, err
	}
	return backend.Leadership{Name: req.Name, LeaseID: g.LeaseID, Term: g.Token, Owner: g.Owner, Value: req.Value, TTL: g.TTL, ExpiresAt: g.ExpiresAt}, nil
}

// Proclaim implements backend.Elections: a setData on the leader's node,
// versioned (no renew, removal or other proclaim in between), keeping its
// deadline and czxid.
func (el elections) Proclaim(ctx context.Context, name, leaseID, value string) (backend.Leadership, error) {
	b := el.q
	secret, seq, ok := parseLease(leaseID)
	if !ok {
		return backend.Leadership{}, leaseExpired("proclaim", name)
	}
	kp := b.keyPath(name)
	for attempt := 0; attempt < 10; attempt++ {
		q, err := b.queue(ctx, kp)
		if err != nil {
			return backend.Leadership{}, unavailable("proclaim", err)
		}
		i, found := byLease(q, secret, seq)
		if !found || i != 0 {
			return backend.Leadership{}, leaseExpired("proclaim", name)
		}
		p := kp + "/" + q[0].name
		r, err := b.read(ctx, p)
		if errors.Is(err, zk.ErrNoNode) {
			continue
		}
		if err != nil {
			return backend.Leadership{}, unavailable("proclaim", err)
		}
		if !r.data.valid(b.clock) {
			return backend.Leadership{}, leaseExpired("proclaim", name)
		}
		d := r.data
		d.Value = value
		st, err := call(ctx, func() (*zk.Stat, error) { return b.conn.Set(p, d.encode(), r.stat.Version) })
		switch {
		case err == nil && r.sess != "":
			// Not cached: a session's deadline is read with every use.
			return backend.Leadership{Name: name, LeaseID: leaseID, Term: uint64(r.stat.Czxid), Owner: q[0].owner, Value: value,
				TTL: time.Duration(d.TTL) * time.Millisecond, ExpiresAt: d.deadline()}, nil
		case err == nil:
			b.grants.put(leaseID, cached{key: name, name: q[0].name, owner: q[0].owner, version: st.Version,
				deadline: d.Deadline, ttl: d.TTL, token: r.stat.Czxid, value: value})
			return backend.Leadership{Name: name, LeaseID: leaseID, Term: uint64(r.stat.Czxid), Owner: q[0].owner, Value: value,
				TTL: time.Duration(d.TTL) * time.Millisecond, ExpiresAt: d.deadline()}, nil
		case errors.Is(err, zk.ErrBadVersion), errors.Is(err, zk.ErrNoNode):
			continue // renewed or removed meanwhile: look again
		default:
			return backend.Leadership{}, unavailable("proclaim", err)
		}
	}
	return backend.Leadership{}, unavailable("proclaim", errors.New("the leader's node kept changing"))
}

// Renew implements backend.Elections.
func (el elections) Renew(ctx context.Context, name, leaseID string, ttl time.Duration) (backend.Leadership, error) {
	g, value, err := el.q.renew(ctx, name, leaseID, ttl)
	if err != nil {
		return backend.Leadership{}, err
	}
	return backend.Leadership{Name: name, LeaseID: leaseID, Term: g.Token, Owner: g.Owner, Value: value, TTL: g.TTL, ExpiresAt: g.ExpiresAt}, nil
}

// Resign implements backend.Elections.
func (el elections) Resign(ctx context.Context, name, leaseID string) error {
	return el.q.Release(ctx, name, leaseID)
}

// Leader implements backend.Elections: the head of the queue and its data.
func (el elections) Leader(ctx context.Context, name string) (backend.ElectionState, error) {
	b := el.q
	kp := b.keyPath(name)
	for attempt := 0; ; attempt++ {
		q, err := b.queue(ctx, kp)
		if err != nil {
			return backend.ElectionState{}, unavailable("leader", err)
		}
		st := backend.ElectionState{Name: name}
		if len(q) == 0 {
			return st, nil
		}
		r, err := b.read(ctx, kp+"/"+q[0].name)
		if errors.Is(err, zk.ErrNoNode) && attempt < 10 {
			continue
		}
		if err != nil {
			return backend.ElectionState{}, unavailable("leader", err)
		}
		st.Candidates = len(q) - 1
		if !r.data.overdue(b.clock) {
			st.Leader = &backend.Leader{Term: uint64(r.stat.Czxid), Owner: q[0].owner, Value: r.data.Value, ExpiresAt: r.data.deadline()}
		} else if d := q[0].delayOf(b.clock, r); d != nil {
			st.DelayedUntil = d.Until
		}
		return st, nil
	}
}
