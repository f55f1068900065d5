package zk

// Turning the views of a follower (follow.go) into the changes of who holds
// a queue: an election's leader (Observe, here) or a lock's holder (Watch,
// watch.go), one implementation for both. The holder is always re-derived
// from the view (the head of the queue, holding a deadline that is not
// overdue by this replica's clock), never taken from an event; a timer at
// its deadline plus the declared skew reads the queue again when nobody
// touches it; and the term log (election.go) gives the grants that began
// and ended between two reads.

import (
	"context"
	"fmt"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// term is one grant of a queue as followers show it: an election's term,
// a lock's grant.
type term struct {
	id      uint64 // the node's czxid: the term, the token
	owner   string
	value   string
	expires time.Time
}

// sink receives a tracker's changes, in order; an error ends the stream.
type sink interface {
	// first is the state when the stream starts: cur holds, or nobody
	// does and last (0: none known) is the grant that ended, for reason
	// ("" when unknown).
	first(cur *term, last uint64, reason string) error
	began(t term) error
	// changed: the same grant has a new value (a proclaim).
	changed(t term) error
	ended(id uint64, reason string) error
}

// tracker derives a queue's changes from its views.
type tracker struct {
	clk  lease.Clock
	what string // for errors
	sink sink
	// logged: every removal is logged, watched or not (elections).
	logged bool

	cur     *term  // the grant last sent; nil when none
	max     uint64 // the highest grant sent: grants only increase
	started bool
	// cz and ended say how much of which term log was taken in: the
	// container's czxid and its log's Ended count.
	cz    int64
	ended int64
}

// head is the grant v shows now, if any.
func (tr *tracker) head(v view) *term {
	if len(v.q) == 0 || v.head.data.overdue(tr.clk) {
		return nil
	}
	return &term{id: uint64(v.head.stat.Czxid), owner: v.q[0].owner, value: v.head.data.Value, expires: v.head.data.deadline()}
}

// resume starts the tracker at v with nothing sent: the stream goes on
// from a state the caller already knows.
func (tr *tracker) resume(v view) {
	tr.started = true
	tr.cz, tr.ended = v.cz, v.log.Ended
	if now := tr.head(v); now != nil {
		tr.cur, tr.max = now, now.id
	}
}

// publish sends what changed since the last view, and says when to look
// again unprompted: when the grant may be removed.
func (tr *tracker) publish(v view) (time.Time, error) {
	now := tr.head(v)
	var at time.Time
	if now != nil {
		at = tr.clk.FreeAt(now.expires)
	}
	if !tr.started {
		tr.started = true
		tr.cz, tr.ended = v.cz, v.log.Ended
		if now != nil {
			tr.cur, tr.max = now, now.id
			return at, tr.sink.first(now, 0, "")
		}
		var last uint64
		reason := ""
		if len(v.q) > 0 {
			last, reason = uint64(v.head.stat.Czxid), backend.ReasonExpired
		} else if n := len(v.log.Terms); n > 0 {
			last, reason = v.log.Terms[n-1].Term, v.log.Terms[n-1].Reason
		}
		tr.max = last
		return at, tr.sink.first(nil, last, reason)
	}

	// The grants that ended since the last view, in order.
	if v.lost {
		return at, fmt.Errorf("%w: zk %s: the znode was reaped with changes unseen", backend.ErrUnavailable, tr.what)
	}
	if v.unregistered && !tr.logged {
		return at, fmt.Errorf("%w: zk %s: the session expired, and with it the node that has removals logged", backend.ErrUnavailable, tr.what)
	}
	if v.cz != tr.cz {
		tr.cz, tr.ended = v.cz, 0 // a new container (or none): its log is all new
	}
	kept := v.log.Ended - int64(len(v.log.Terms)) // ended before the first entry kept
	if kept > tr.ended {
		return at, fmt.Errorf("%w: zk %s: %d grants ended unseen, beyond the term log", backend.ErrUnavailable, tr.what, kept-tr.ended)
	}
	for _, t := range v.log.Terms[max(tr.ended-kept, 0):] {
		if err := tr.takeLogged(t); err != nil {
			return at, err
		}
	}
	tr.ended = max(tr.ended, v.log.Ended)

	// The grant now.
	if tr.cur != nil && (now == nil || now.id != tr.cur.id) {
		// It ended with no log entry: by its deadline (the head is
		// overdue), or the log was not kept (a lock nobody watched then).
		if err := tr.end(tr.cur.id, tr.reason(tr.cur)); err != nil {
			return at, err
		}
	}
	if now == nil || tr.cur == nil && now.id <= tr.max {
		return at, nil // a grant already ended on this stream never comes back
	}
	prev := tr.cur
	tr.cur, tr.max = now, now.id // keeps the latest deadline, for the reason
	switch {
	case prev == nil:
		return at, tr.sink.began(*now)
	case prev.value != now.value:
		return at, tr.sink.changed(*now)
	}
	return at, nil
}

// takeLogged takes in one ended grant of the log.
func (tr *tracker) takeLogged(t endedTerm) error {
	if tr.cur != nil && tr.cur.id == t.Term {
		if tr.cur.value != t.Value {
			// Proclaimed again before it ended, unseen: the last value
			// of a term is never lost (earlier ones may coalesce).
			last := *tr.cur
			last.value = t.Value
			if err := tr.sink.changed(last); err != nil {
				return err
			}
		}
		return tr.end(t.Term, t.Reason)
	}
	if t.Term <= tr.max {
		return nil // already ended on this stream (its timer)
	}
	if tr.cur != nil {
		// A later grant ended: ours ended before it.
		if err := tr.end(tr.cur.id, tr.reason(tr.cur)); err != nil {
			return err
		}
	}
	// A grant that began and ended between two reads.
	tr.max = t.Term
	if err := tr.sink.began(term{id: t.Term, owner: t.Owner, value: t.Value, expires: time.UnixMilli(t.Deadline)}); err != nil {
		return err
	}
	return tr.sink.ended(t.Term, t.Reason)
}

func (tr *tracker) end(id uint64, reason string) error {
	tr.cur = nil
	return tr.sink.ended(id, reason)
}

// reason is why t ended, when no log entry says: by its deadline, or
// before it.
func (tr *tracker) reason(t *term) string {
	if tr.clk.Valid(t.expires) {
		return backend.ReasonResigned
	}
	return backend.ReasonExpired
}

// Observe implements backend.Elections.
func (el elections) Observe(ctx context.Context, name string) (<-chan backend.ElectionEvent, error) {
	f := &follower{b: el.q, kp: el.q.keyPath(name), outage: el.q.outage}
	v, err := f.read(ctx)
	if err != nil {
		f.close()
		return nil, unavailable("observe", err)
	}
	o := &observer{ctx: ctx, out: make(chan backend.ElectionEvent, 16)}
	tr := &tracker{clk: el.q.clock, what: fmt.Sprintf("observe %q", name), sink: o, logged: true}
	go func() {
		err := f.follow(ctx, v, tr.publish)
		f.close()
		o.end(err)
	}()
	return o.out, nil
}

// observer is the sink of an election's stream.
type observer struct {
	ctx context.Context
	out chan backend.ElectionEvent
}

func leaderOf(t term) *backend.Leader {
	return &backend.Leader{Term: t.id, Owner: t.owner, Value: t.value, ExpiresAt: t.expires}
}

func (o *observer) first(cur *term, last uint64, reason string) error {
	if cur != nil {
		return o.send(backend.ElectionEvent{Leader: leaderOf(*cur)})
	}
	return o.send(backend.ElectionEvent{NoLeader: &backend.NoLeader{LastTerm: last, Reason: reason}})
}

func (o *observer) began(t term) error   { return o.send(backend.ElectionEvent{Leader: leaderOf(t)}) }
func (o *observer) changed(t term) error { return o.send(backend.ElectionEvent{Leader: leaderOf(t)}) }
func (o *observer) ended(id uint64, reason string) error {
	return o.send(backend.ElectionEvent{NoLeader: &backend.NoLeader{LastTerm: id, Reason: reason}})
}

func (o *observer) send(ev backend.ElectionEvent) error {
	select {
	case o.out <- ev:
		return nil
	case <-o.ctx.Done():
		return o.ctx.Err()
	}
}

// end sends the stream's last event, carrying why it ended, and closes it.
func (o *observer) end(err error) {
	select {
	case o.out <- backend.ElectionEvent{Err: err}:
	case <-time.After(time.Second): // nobody reads any more
	}
	close(o.out)
}
