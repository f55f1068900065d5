package zk

// Observing an election: a follower (follow.go) on its queue, a timer at the
// leader's deadline plus the declared skew, and the term log (election.go)
// for the terms that began and ended between two reads. The leader is always
// re-derived from the read (the head of the queue, holding a deadline that
// is not overdue by this replica's clock), never taken from an event.

import (
	"context"
	"fmt"
	"time"

	"github.com/lockd/lockd/backend"
)

// Observe implements backend.Elections.
func (el elections) Observe(ctx context.Context, name string) (<-chan backend.ElectionEvent, error) {
	f := &follower{b: el.q, kp: el.q.keyPath(name), outage: el.q.outage}
	v, err := f.read(ctx)
	if err != nil {
		f.close()
		return nil, unavailable("observe", err)
	}
	o := &observer{b: el.q, name: name, out: make(chan backend.ElectionEvent, 16)}
	go func() {
		err := f.follow(ctx, v, func(v view) (time.Time, error) { return o.publish(ctx, v) })
		f.close()
		o.end(err)
	}()
	return o.out, nil
}

type observer struct {
	b    *Backend
	name string
	out  chan backend.ElectionEvent

	leading *backend.Leader // the leader last sent; nil when none
	maxTerm uint64          // the highest term sent: terms only increase
	started bool
	// cz and ended say how much of which term log was taken in: the
	// container's czxid and its log's Ended count.
	cz    int64
	ended int64
}

// publish sends what changed since the last view, and says when to look
// again unprompted: when the leader's grant may be removed.
func (o *observer) publish(ctx context.Context, v view) (time.Time, error) {
	clk := o.b.clock
	var now *backend.Leader
	var at time.Time
	if len(v.q) > 0 && !v.head.data.overdue(clk) {
		now = &backend.Leader{Term: uint64(v.head.stat.Czxid), Owner: v.q[0].owner, Value: v.head.data.Value, ExpiresAt: v.head.data.deadline()}
		at = clk.FreeAt(now.ExpiresAt)
	}
	if !o.started {
		o.started = true
		o.cz, o.ended = v.cz, v.log.Ended
		if now == nil {
			nl := &backend.NoLeader{}
			if len(v.q) > 0 {
				nl = &backend.NoLeader{LastTerm: uint64(v.head.stat.Czxid), Reason: backend.ReasonExpired}
			} else if n := len(v.log.Terms); n > 0 {
				nl = &backend.NoLeader{LastTerm: v.log.Terms[n-1].Term, Reason: v.log.Terms[n-1].Reason}
			}
			o.maxTerm = nl.LastTerm
			return at, o.send(ctx, backend.ElectionEvent{NoLeader: nl})
		}
	}

	// The terms that ended since the last view, in order.
	if v.lost {
		return at, fmt.Errorf("%w: zk observe %q: the election's znode was reaped with terms unseen", backend.ErrUnavailable, o.name)
	}
	if v.cz != o.cz {
		o.cz, o.ended = v.cz, 0 // a new container (or none): its log is all new
	}
	kept := v.log.Ended - int64(len(v.log.Terms)) // ended before the first entry kept
	if kept > o.ended {
		return at, fmt.Errorf("%w: zk observe %q: %d terms ended unseen, beyond the term log", backend.ErrUnavailable, o.name, kept-o.ended)
	}
	for _, t := range v.log.Terms[max(o.ended-kept, 0):] {
		if err := o.ended1(ctx, t); err != nil {
			return at, err
		}
	}
	o.ended = max(o.ended, v.log.Ended)

	// The leader now.
	if o.leading != nil && (now == nil || now.Term != o.leading.Term) {
		// The term ended with no log entry: by its deadline (the head is
		// overdue), or the queue went with its container.
		if err := o.noLeader(ctx, o.leading.Term, o.reason(o.leading)); err != nil {
			return at, err
		}
	}
	if now == nil || o.leading == nil && now.Term <= o.maxTerm {
		return at, nil // a term already ended on this stream never comes back
	}
	changed := o.leading == nil || o.leading.Value != now.Value
	o.leading, o.maxTerm = now, now.Term // keeps the latest deadline, for the reason
	if !changed {
		return at, nil
	}
	l := *now
	return at, o.send(ctx, backend.ElectionEvent{Leader: &l})
}

// ended1 takes in one ended term of the log.
func (o *observer) ended1(ctx context.Context, t endedTerm) error {
	if o.leading != nil && o.leading.Term == t.Term {
		return o.noLeader(ctx, t.Term, t.Reason)
	}
	if t.Term <= o.maxTerm {
		return nil // already ended on this stream (its timer)
	}
	if o.leading != nil {
		// A later term ended: ours ended before it.
		if err := o.noLeader(ctx, o.leading.Term, o.reason(o.leading)); err != nil {
			return err
		}
	}
	// A term that began and ended between two reads.
	o.maxTerm = t.Term
	if err := o.send(ctx, backend.ElectionEvent{Leader: &backend.Leader{Term: t.Term, Owner: t.Owner, Value: t.Value, ExpiresAt: time.UnixMilli(t.Deadline)}}); err != nil {
		return err
	}
	return o.send(ctx, backend.ElectionEvent{NoLeader: &backend.NoLeader{LastTerm: t.Term, Reason: t.Reason}})
}

func (o *observer) noLeader(ctx context.Context, term uint64, reason string) error {
	o.leading = nil
	return o.send(ctx, backend.ElectionEvent{NoLeader: &backend.NoLeader{LastTerm: term, Reason: reason}})
}

// reason is why l's term ended, when no log entry says: by its deadline,
// or before it.
func (o *observer) reason(l *backend.Leader) string {
	if o.b.clock.Valid(l.ExpiresAt) {
		return backend.ReasonResigned
	}
	return backend.ReasonExpired
}

func (o *observer) send(ctx context.Context, ev backend.ElectionEvent) error {
	select {
	case o.out <- ev:
		return nil
	case <-ctx.Done():
		return ctx.Err()
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
